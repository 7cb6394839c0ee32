"""In-memory fakes of :class:`~streaming.base.Source` and :class:`~streaming.base.Sink` for tests.

They are shipped in the package (like bytewax's ``testing.py``) so that unit tests of the
sidecar loop, and users' own tests, run in milliseconds without a broker. They follow the Kafka
conventions of :mod:`streaming.base` (positions and commits are "next offset to read") and are
stricter than Kafka where that catches bugs: committing or seeking past the end of a partition,
or to a partition the source does not have, raises.

Example:
    >>> src = MemorySource([{"event_id": "a"}, {"event_id": "b"}, b"not json"], partitions=2)
    >>> [(r.partition, r.offset) for r in src.poll(0.0)]
    [(0, 0), (1, 0), (0, 1)]
    >>> src.at_end(), src.lag()
    (True, {('feedback', 0): 0, ('feedback', 1): 0})
    >>> sink = MemorySink()
    >>> sink.send("feedback-dlq", b"not json", headers=[("reason", b"bad_json")])
    >>> sink.by_topic("feedback-dlq")[0].header("reason")
    b'bad_json'
"""

from __future__ import annotations

import bisect
import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streaming.base import Record, Sink, Source, TopicPartition

__all__ = ["MemorySink", "MemorySource", "SentMessage"]

KeyFunction = Callable[[Any], bytes | str | None]
"""Maps an appended value (before encoding) to its message key; None means no key."""


class MemorySource(Source):
    """A finite, in-memory :class:`~streaming.base.Source` with Kafka-like positions.

    Values may be ``bytes`` (used as is), ``str`` (UTF-8 encoded), ``None`` (a tombstone),
    mappings (JSON-encoded) or :class:`~streaming.base.Record` objects. Plain values go to
    ``topic``, spread over ``partitions`` round-robin, or by the CRC32 of the key returned by
    ``key`` when it is given. Their offsets count up from 0 in each partition. Records keep their
    own topic, partition, offset (which must increase within a partition; gaps are allowed, as
    in compacted or transactional topics), key, headers and timestamp.

    :meth:`poll` never waits: it returns what is there, taking one record from each partition
    in turn (so values spread round-robin come back in the order they were given). Every
    partition starts at position 0.

    Args:
        values: The initial contents; more can be added with :meth:`append`.
        partitions: How many partitions ``topic`` has (>= 1).
        topic: Topic of plain values.
        key: Optional function from a plain value to its key, which also picks its partition.

    Example:
        >>> src = MemorySource([b"a", b"b", b"c"])
        >>> [r.value for r in src.poll(0.0, max_records=2)]
        [b'a', b'b']
        >>> src.position(), src.lag()
        ({('feedback', 0): 2}, {('feedback', 0): 1})
        >>> src.seek({("feedback", 0): 0})
        >>> [r.offset for r in src.poll(0.0)]
        [0, 1, 2]
    """

    def __init__(
        self,
        values: Iterable[bytes | str | Mapping[str, Any] | Record | None] = (),
        *,
        partitions: int = 1,
        topic: str = "feedback",
        key: KeyFunction | None = None,
    ) -> None:
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"MemorySource partitions must be an int >= 1, got {partitions!r}")
        if not topic:
            raise ValueError("MemorySource topic must be a non-empty string")
        self._topic = topic
        self._partitions = partitions
        self._key = key
        self._round_robin = 0
        self._logs: dict[TopicPartition, list[Record]] = {}
        self._log_offsets: dict[TopicPartition, list[int]] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._appended: list[Record] = []
        self._closed = False
        self.commit_log: list[dict[TopicPartition, int]] = []
        self._paused = False
        self._delivered = 0
        self._rebalance_at: list[int] = []
        self._starts: dict[TopicPartition, int] = {}
        self._on_revoke: Callable[[list[TopicPartition]], None] | None = None
        self._on_assign: Callable[[list[TopicPartition]], None] | None = None
        self.rebalances = 0
        """Every :meth:`commit` call's offsets, in order (for asserting when commits happen)."""
        for partition in range(partitions):
            self._add_partition((topic, partition))
        self.append(values)

    # -- building ---------------------------------------------------------------------------

    def _add_partition(self, tp: TopicPartition) -> None:
        self._logs[tp] = []
        self._log_offsets[tp] = []
        self._positions[tp] = 0

    def append(
        self, values: Iterable[bytes | str | Mapping[str, Any] | Record | None]
    ) -> list[Record]:
        """Add more values at the end of their partitions (a live stream growing).

        Args:
            values: Same kinds as the constructor takes.

        Returns:
            The records created, in the order given.

        Raises:
            TypeError: A value is of an unsupported type.
            ValueError: A record's offset does not increase within its partition.
        """
        added = []
        for value in values:
            record = value if isinstance(value, Record) else self._to_record(value)
            tp = record.tp
            if tp not in self._logs:
                self._add_partition(tp)
            offsets = self._log_offsets[tp]
            if record.offset < 0 or (offsets and record.offset <= offsets[-1]):
                last = offsets[-1] if offsets else None
                raise ValueError(
                    f"record offset {record.offset} for {tp} must be >= 0 and greater than the "
                    f"last offset in that partition ({last}); give records in offset order"
                )
            self._logs[tp].append(record)
            offsets.append(record.offset)
            self._appended.append(record)
            added.append(record)
        return added

    def _to_record(self, value: bytes | str | Mapping[str, Any] | None) -> Record:
        if value is None or isinstance(value, bytes):
            payload = value
        elif isinstance(value, (bytearray, memoryview)):
            payload = bytes(value)
        elif isinstance(value, str):
            payload = value.encode("utf-8")
        elif isinstance(value, Mapping):
            payload = json.dumps(dict(value), separators=(",", ":")).encode("utf-8")
        else:
            raise TypeError(
                f"MemorySource values must be bytes, str, a mapping, a Record or None, got "
                f"{type(value).__name__}"
            )
        key = self._key(value) if self._key is not None else None
        if isinstance(key, str):
            key = key.encode("utf-8")
        if key is None:
            partition = self._round_robin % self._partitions
            self._round_robin += 1
        else:
            partition = zlib.crc32(key) % self._partitions
        tp = (self._topic, partition)
        offsets = self._log_offsets[tp]
        offset = offsets[-1] + 1 if offsets else 0
        return Record(topic=self._topic, partition=partition, offset=offset, key=key, value=payload)

    # -- inspection -------------------------------------------------------------------------

    def records(self) -> list[Record]:
        """Every record this source holds, in the order they were added."""
        return list(self._appended)

    def end_offsets(self) -> dict[TopicPartition, int]:
        """One past the last offset of every partition (0 for an empty one)."""
        return {tp: (offs[-1] + 1 if offs else 0) for tp, offs in self._log_offsets.items()}

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    # -- Source -----------------------------------------------------------------------------

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Return up to ``max_records`` records from the current positions without waiting."""
        if self._closed:
            raise RuntimeError("MemorySource.poll called after close()")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        if self._rebalance_at and self._delivered >= self._rebalance_at[0]:
            self._rebalance_at.pop(0)
            self._rebalance()
        if self._paused:
            return []
        if self._rebalance_at:
            max_records = min(max_records, max(1, self._rebalance_at[0] - self._delivered))
        cursors = {
            tp: bisect.bisect_left(self._log_offsets[tp], self._positions[tp])
            for tp in sorted(self._logs)
        }
        active = [tp for tp, i in cursors.items() if i < len(self._logs[tp])]
        out: list[Record] = []
        while active and len(out) < max_records:
            still_active = []
            for tp in active:
                if len(out) >= max_records:
                    break
                log = self._logs[tp]
                record = log[cursors[tp]]
                out.append(record)
                self._positions[tp] = record.offset + 1
                cursors[tp] += 1
                if cursors[tp] < len(log):
                    still_active.append(tp)
            active = still_active
        self._delivered += len(out)
        return out

    # -- rebalances and backpressure (as a Kafka consumer-group member sees them) --------------
    def schedule_rebalance(self, after_records: int) -> None:
        """Simulate an eager rebalance at the first poll after ``after_records`` were delivered.

        Every partition is revoked (the revoke hook runs), positions go back to the committed
        offsets (0 where none) as for a newly assigned partition, then the assign hook runs.
        """
        self._rebalance_at = sorted([*self._rebalance_at, after_records])

    def _rebalance(self) -> None:
        tps = sorted(self._logs)
        self.rebalances += 1
        if self._on_revoke is not None:
            self._on_revoke(tps)
        self._paused = False
        self._positions = {tp: self._committed.get(tp, 0) for tp in tps}
        self._starts = dict(self._positions)
        if self._on_assign is not None:
            self._on_assign(tps)

    def read_back(self, tp: TopicPartition, count: int) -> list[bytes | None]:
        """Values of up to ``count`` records before where ``tp`` restarted at the last rebalance."""
        start = self._starts.get(tp, 0)
        if count <= 0:
            return []
        return [r.value for r in self._logs.get(tp, []) if r.offset < start][-count:]

    def set_rebalance_hooks(
        self,
        on_revoke: Callable[[list[TopicPartition]], None] | None,
        on_assign: Callable[[list[TopicPartition]], None] | None,
    ) -> None:
        """Hooks run by :meth:`schedule_rebalance`'s simulated rebalance."""
        self._on_revoke = on_revoke
        self._on_assign = on_assign

    def pause(self) -> None:
        """:meth:`poll` returns nothing until :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._paused = False

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def _check_offsets(self, offsets: Mapping[TopicPartition, int], verb: str) -> None:
        ends = self.end_offsets()
        for tp, offset in offsets.items():
            if tp not in ends:
                raise ValueError(f"cannot {verb} {tp}: this MemorySource has only {sorted(ends)}")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(f"cannot {verb} {tp} to {offset!r}: offsets are ints >= 0")
            if offset > ends[tp]:
                raise ValueError(
                    f"cannot {verb} {tp} to offset {offset}: past the end offset {ends[tp]}; "
                    "offsets are 'next offset to read', at most one past the last record"
                )

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record ``offsets`` as committed (see :meth:`committed` and :attr:`commit_log`)."""
        self._check_offsets(offsets, "commit")
        self._committed.update(offsets)
        self.commit_log.append(dict(offsets))

    def committed(self) -> dict[TopicPartition, int]:
        """The last committed offset of every partition committed so far."""
        return dict(self._committed)

    def position(self) -> dict[TopicPartition, int]:
        """Next offset to read for every partition."""
        return dict(self._positions)

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Continue each given partition from the given next offset; others are untouched."""
        self._check_offsets(offsets, "seek")
        self._positions.update(offsets)

    def lag(self) -> dict[TopicPartition, int]:
        """End offset minus position for every partition."""
        return {tp: max(0, end - self._positions[tp]) for tp, end in self.end_offsets().items()}

    @property
    def finite(self) -> bool:
        """Always True: the source holds a known list of records."""
        return True

    def at_end(self) -> bool:
        """True when every partition has been read to its end."""
        return all(self._positions[tp] >= end for tp, end in self.end_offsets().items())

    def close(self) -> None:
        """Mark the source closed; later polls raise."""
        self._closed = True


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One message handed to :meth:`MemorySink.send`.

    Example:
        >>> m = SentMessage("t", b"v", headers=(("reason", b"bad_json"),))
        >>> m.header("reason"), m.header("missing")
        (b'bad_json', None)
    """

    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)

    def header(self, name: str) -> bytes | None:
        """The value of the first header called ``name``, or None."""
        for header_name, value in self.headers:
            if header_name == name:
                return value
        return None


class MemorySink(Sink):
    """A :class:`~streaming.base.Sink` that keeps every message in :attr:`messages`.

    It checks types the way a Kafka producer would (topic a non-empty str, value and key
    bytes, header names str and values bytes) so a wrong call fails in unit tests too.

    Example:
        >>> sink = MemorySink()
        >>> sink.send("model-updates", b'{"version": 3}', key=b"reward")
        >>> [m.key for m in sink.by_topic("model-updates")], sink.by_topic("other")
        ([b'reward'], [])
    """

    def __init__(self) -> None:
        self.messages: list[SentMessage] = []
        """Every message sent, in order."""
        self.flush_count = 0
        """How many times :meth:`flush` was called."""
        self._closed = False

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Append one message to :attr:`messages`."""
        if self._closed:
            raise RuntimeError("MemorySink.send called after close()")
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        if key is not None and not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"key must be bytes or None, got {type(key).__name__}")
        checked = []
        for header in headers:
            name, header_value = header
            if not isinstance(name, str) or not isinstance(header_value, (bytes, bytearray)):
                raise TypeError(
                    f"headers must be (str, bytes) pairs, got ({type(name).__name__}, "
                    f"{type(header_value).__name__})"
                )
            checked.append((name, bytes(header_value)))
        self.messages.append(
            SentMessage(
                topic=topic,
                value=bytes(value),
                key=None if key is None else bytes(key),
                headers=tuple(checked),
            )
        )

    def by_topic(self, topic: str) -> list[SentMessage]:
        """The messages sent to ``topic``, in order."""
        return [m for m in self.messages if m.topic == topic]

    def flush(self, timeout_s: float = 30.0) -> None:
        """Nothing to wait for; counts the call in :attr:`flush_count`."""
        self.flush_count += 1

    def close(self) -> None:
        """Flush and refuse further sends."""
        self.flush()
        self._closed = True

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed
