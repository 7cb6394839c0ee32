"""A finite range of a Kafka topic as a :class:`~streaming.base.Source` (record and replay).

:class:`TopicRangeSource` reads with ``assign()``, never as a consumer-group member, and commits
nothing: recording or replaying a topic leaves every group's offsets alone. Each partition's
range is fixed when the source is created:

* start: ``from_offset`` (the same offset for every partition, raised to the first offset
  still retained), or the first record at or after ``from_time_ms`` (``offsets_for_times``),
  or the beginning;
* end (exclusive): the end offset at creation, or, with ``to_time_ms``, the first record at or
  after that time, whichever comes first. Records produced after the start are not read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from streaming.base import Record, Source
from streaming.base import TopicPartition as TP
from streaming.config import KafkaConfig
from streaming.errors import BrokerUnavailable, FeedstepError, SourceError
from streaming.kafka.client import client_options, to_record

log = logging.getLogger(__name__)

__all__ = ["PartitionRange", "TopicRangeSource"]


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition, fixed at the source's creation."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        """Offsets in the range (records, unless some were compacted away)."""
        return max(0, self.end - self.start)


class TopicRangeSource(Source):
    """Reads ``[start, end)`` of every selected partition of one topic, then ends.

    Args:
        config: connection settings (bootstrap servers, security, client id).
        topic: the topic to read.
        partitions: the partitions to read (default: all of them).
        from_offset: start offset for every partition (None: see ``from_time_ms``).
        from_time_ms: start at the first record with a timestamp at or after this time.
        to_time_ms: end before the first record with a timestamp at or after this time.
        timeout_s: how long to wait for the topic's metadata.

    Example:
        >>> src = TopicRangeSource(config, "feedback", from_time_ms=1795860000000)  # doctest: +SKIP
        >>> while not src.at_end():  # doctest: +SKIP
        ...     records = src.poll(1.0)
    """

    def __init__(
        self,
        config: KafkaConfig,
        topic: str,
        *,
        partitions: Sequence[int] | None = None,
        from_offset: int | None = None,
        from_time_ms: int | None = None,
        to_time_ms: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if from_offset is not None and from_time_ms is not None:
            raise FeedstepError("--from-offset and --from-time exclude each other; pass one")
        if from_offset is not None and from_offset < 0:
            raise FeedstepError(f"--from-offset must be >= 0, got {from_offset}")
        if from_time_ms is not None and to_time_ms is not None and to_time_ms <= from_time_ms:
            raise FeedstepError(
                f"--to-time ({to_time_ms} ms) must be later than --from-time ({from_time_ms} ms)"
            )
        self.topic = topic
        try:
            self._consumer = KafkaConsumer(
                group_id=None,
                enable_auto_commit=False,
                allow_auto_create_topics=False,  # a typo in --topic must not create a topic
                # Should the broker ever call a position out of range, go back, never forward:
                # records before the range are skipped, none inside it can be lost.
                auto_offset_reset="earliest",
                max_poll_records=config.max_poll_records,
                request_timeout_ms=max(int(timeout_s * 1000), 5000) + 1000,
                **client_options(config),
            )
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"no Kafka broker answers at {config.bootstrap_servers}; start one "
                "(deploy/local/kafka.sh start) or fix --bootstrap-servers"
            ) from exc
        try:
            self.ranges = self._plan(partitions, from_offset, from_time_ms, to_time_ms)
        except BaseException:
            self._consumer.close(autocommit=False)
            raise
        self._tps = {r.partition: TopicPartition(topic, r.partition) for r in self.ranges}
        self._start = {r.partition: r.start for r in self.ranges}
        self._end = {r.partition: r.end for r in self.ranges}
        self._position = {r.partition: r.start for r in self.ranges}
        active = [self._tps[r.partition] for r in self.ranges if r.size > 0]
        self._consumer.assign(active)
        for r in self.ranges:
            if r.size > 0:
                self._consumer.seek(self._tps[r.partition], r.start)
        self._open = {r.partition for r in self.ranges if r.size > 0}
        log.info(
            "reading %s: %s",
            topic,
            ", ".join(f"[{r.partition}] {r.start}..{r.end}" for r in self.ranges),
        )

    def _plan(
        self,
        partitions: Sequence[int] | None,
        from_offset: int | None,
        from_time_ms: int | None,
        to_time_ms: int | None,
    ) -> list[PartitionRange]:
        consumer = self._consumer
        try:
            known = consumer.partitions_for_topic(self.topic)
        except KafkaError as exc:
            raise SourceError(
                f"could not read the metadata of topic {self.topic!r}: {exc}"
            ) from exc
        if not known:
            raise SourceError(
                f"topic {self.topic!r} does not exist (or has no partitions); check --topic and "
                "--bootstrap-servers"
            )
        chosen = sorted(known) if partitions is None else sorted(set(partitions))
        missing = sorted(set(chosen) - set(known))
        if missing:
            raise FeedstepError(
                f"--partitions {missing} not in topic {self.topic!r}, which has partitions "
                f"{sorted(known)}"
            )
        tps = [TopicPartition(self.topic, p) for p in chosen]
        # Each lookup is read until two reads agree: under load this client has been seen to
        # answer one ListOffsets call with another's result (begin offsets equal to the end
        # offsets), which would silently empty a range. End offsets only grow, so the largest
        # read is kept.
        reads = [self._lookup(tps, from_time_ms, to_time_ms) for _ in range(2)]
        while reads[-1][0::2] != reads[-2][0::2]:
            if len(reads) >= 6:
                raise SourceError(
                    f"the broker gave {len(reads)} different answers for the offsets of "
                    f"{self.topic!r}; retry, and check the broker's health"
                )
            reads.append(self._lookup(tps, from_time_ms, to_time_ms))
        begins, _, found = reads[-1]
        ends = {tp: max(r[1][tp] for r in reads) for tp in tps}
        from_found, to_found = found
        starts = dict(begins)
        if from_offset is not None:
            starts = {tp: max(begins[tp], from_offset) for tp in tps}
        elif from_time_ms is not None:
            starts = {tp: ends[tp] if (o := from_found[tp]) is None else o for tp in tps}
        stops = dict(ends)
        if to_time_ms is not None:
            stops = {
                tp: ends[tp] if (o := to_found[tp]) is None else min(ends[tp], o) for tp in tps
            }
        if from_offset is not None:
            for tp in tps:
                if from_offset < begins[tp]:
                    log.warning(
                        "%s[%d]: offset %d is no longer retained; starting at %d",
                        self.topic,
                        tp.partition,
                        from_offset,
                        begins[tp],
                    )
        return [PartitionRange(tp.partition, starts[tp], max(starts[tp], stops[tp])) for tp in tps]

    def _lookup(
        self, tps: list[Any], from_time_ms: int | None, to_time_ms: int | None
    ) -> tuple[dict[Any, int], dict[Any, int], tuple[dict[Any, int | None], dict[Any, int | None]]]:
        """One read of the begin offsets, the end offsets and the offsets at the two times."""
        consumer = self._consumer

        def at(ms: int | None) -> dict[Any, int | None]:
            if ms is None:
                return {}
            found = consumer.offsets_for_times({tp: ms for tp in tps})
            return {tp: None if found[tp] is None else found[tp].offset for tp in tps}

        try:
            begins = dict(consumer.beginning_offsets(tps))
            ends = dict(consumer.end_offsets(tps))
            return begins, ends, (at(from_time_ms), at(to_time_ms))
        except KafkaError as exc:
            raise SourceError(f"could not read the offsets of topic {self.topic!r}: {exc}") from exc

    @property
    def partitions(self) -> list[int]:
        """The partitions being read."""
        return [r.partition for r in self.ranges]

    @property
    def total(self) -> int:
        """Offsets in all ranges (an upper bound on the records to read)."""
        return sum(r.size for r in self.ranges)

    # -- reading ----------------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Records inside the ranges, in offset order per partition."""
        if not self._open:
            return []
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Record] = []
        for tp, records in batches.items():
            start, end = self._start[tp.partition], self._end[tp.partition]
            for r in records:
                if r.offset < start:
                    continue
                if r.offset >= end:
                    break
                out.append(to_record(tp, r))
                self._position[tp.partition] = r.offset + 1
        self._close_finished()
        return out

    def _close_finished(self) -> None:
        for partition in sorted(self._open):
            tp = self._tps[partition]
            # The consumer's position also moves past offsets with no record (transaction
            # markers, compacted records), so it decides when a partition is done.
            position = max(self._position[partition], self._consumer.position(tp) or 0)
            if position >= self._end[partition]:
                if self._position[partition] < self._end[partition]:
                    log.info(
                        "%s[%d]: offsets %d..%d hold no records (compacted or markers)",
                        self.topic,
                        partition,
                        self._position[partition],
                        self._end[partition],
                    )
                self._position[partition] = self._end[partition]
                self._open.discard(partition)
                self._consumer.pause(tp)

    def at_end(self) -> bool:
        """True once every partition reached the end of its range."""
        return not self._open

    @property
    def finite(self) -> bool:
        """Always True: the ranges are fixed at creation."""
        return True

    # -- positions --------------------------------------------------------------------------
    def position(self) -> dict[TP, int]:
        """Next offset to read per partition (its end once done)."""
        return {(self.topic, p): o for p, o in self._position.items()}

    def seek(self, offsets: Mapping[TP, int]) -> None:
        """Continue partitions from the given offsets (clamped to their ranges)."""
        for (topic, partition), offset in offsets.items():
            if topic != self.topic or partition not in self._end:
                raise FeedstepError(f"cannot seek {(topic, partition)}: not in this topic range")
            r = next(x for x in self.ranges if x.partition == partition)
            target = min(max(offset, r.start), r.end)
            self._position[partition] = target
            if target < r.end:
                tp = self._tps[partition]
                if tp not in self._consumer.assignment():
                    self._consumer.assign([*self._consumer.assignment(), tp])
                self._consumer.resume(tp)
                self._consumer.seek(tp, target)
                self._open.add(partition)
            else:
                self._open.discard(partition)

    def commit(self, offsets: Mapping[TP, int]) -> None:
        """Nothing: a topic range belongs to no consumer group."""

    def lag(self) -> dict[TP, int]:
        """Offsets left in each partition's range."""
        return {(self.topic, p): max(0, self._end[p] - self._position[p]) for p in self._position}

    def close(self) -> None:
        """Close the consumer (there is no group to leave, nothing to commit)."""
        self._consumer.close(autocommit=False)


def read_before(
    config: KafkaConfig, tp: tuple[str, int], before: int, count: int, timeout_s: float = 10.0
) -> list[bytes | None]:
    """Values of up to ``count`` records of ``tp`` just before offset ``before``.

    Read with a separate, group-less consumer (``assign()``: nothing is committed or consumed
    for any group). Empty when the broker does not answer (logged) or nothing is retained there.
    """
    ktp = TopicPartition(*tp)
    reader = None
    out: list[bytes | None] = []
    try:
        reader = KafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            max_poll_records=min(count, 2000),
            **client_options(config),
        )
        reader.assign([ktp])
        begin = reader.beginning_offsets([ktp], timeout_ms=int(timeout_s * 1000))[ktp]
        start = max(begin, before - count)
        if start >= before:
            return []
        reader.seek(ktp, start)
        deadline = time.monotonic() + timeout_s
        while reader.position(ktp) < before and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=200).values():
                out.extend(r.value for r in records if r.offset < before)
    except KafkaError as exc:
        log.warning("%s[%d]: could not read back recent records: %s", tp[0], tp[1], exc)
    finally:
        if reader is not None:
            reader.close(autocommit=False)
    return out
