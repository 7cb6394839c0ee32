"""The feedback topic as a :class:`~streaming.base.Source`: kafka-python's ``KafkaConsumer``.

:class:`KafkaSource` is a consumer-group member in the sidecar's own process, with auto-commit
off: offsets are committed only by the pipeline, after the checkpoint that covers them. It uses
kafka-python's public API only, and kafka-python's own record reader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.future import Future
from kafka.structs import OffsetAndMetadata, TopicPartition

from streaming.base import Record, Source
from streaming.base import TopicPartition as TP
from streaming.config import KafkaConfig
from streaming.errors import BrokerUnavailable, CommitRejected
from streaming.kafka.client import client_options, to_record, warn_if_slow_crc
from streaming.kafka.topicrange import read_before

log = logging.getLogger(__name__)

# One poll while a rebalance is under way: long enough for a JoinGroup/SyncGroup round on a
# loaded machine, short enough that the loop is back soon after the assignment on a quiet topic.
_REBALANCE_POLL_MS = 1000


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs the source's rebalance work in a worker thread while the client's IO loop waits.

    kafka-python (3.x) calls listeners on its IO thread, where blocking consumer calls
    (commit, committed offsets) are not allowed and a long call would stop heartbeats. The
    work — finishing the step in flight, checkpointing, committing — runs in a worker thread
    instead; the listener awaits it with the loop's own sleep, so heartbeats go on.
    """

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # kafka-python calls this before every join, the first one included (with no partitions)
        self._source._rebalancing = True
        tps = [(tp.topic, tp.partition) for tp in revoked]
        log.info("partitions revoked: %s", tps)
        hook = self._source.on_revoke
        if hook is not None and tps:
            await self._source._in_worker(lambda: hook(tps))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in assigned]
        log.info("partitions assigned: %s", tps)
        try:
            await self._source._in_worker(lambda: self._source._seek_assigned(list(assigned)))
            hook = self._source.on_assign
            if hook is not None and tps:
                hook(tps)
        finally:
            self._source._rebalancing = False


def _kafka_offsets(offsets: Mapping[TP, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


def _commit_error(exc: BaseException | None) -> BrokerUnavailable | CommitRejected:
    """The feedstep error a failed commit stands for."""
    if isinstance(exc, CommitFailedError):
        return CommitRejected(f"the group rebalanced before the commit: {exc}")
    return BrokerUnavailable(f"could not commit offsets ({type(exc).__name__}: {exc})")


class KafkaSource(Source):
    """A feedback topic read by a consumer-group member with manual commits.

    Args:
        config: The Kafka settings.
        on_revoke, on_assign: The rebalance hooks (see :meth:`set_rebalance_hooks`).
        share: Picks the partitions to read out of the topic's (sorted) ones, assigned by hand
            instead of by the group (lockstep ranks, see
            :func:`learner.distributed.partitions_of`); offsets are still committed as the
            group's. None: a group member with subscription.

    Example:
        >>> config = load_config(overrides={"topic": "feedback"})  # doctest: +SKIP
        >>> source = KafkaSource(config.kafka)  # doctest: +SKIP
        >>> records = source.poll(timeout_s=1.0)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: KafkaConfig,
        on_revoke: Callable[[list[TP]], None] | None = None,
        on_assign: Callable[[list[TP]], None] | None = None,
        share: Callable[[list[int]], list[int]] | None = None,
    ) -> None:
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        warn_if_slow_crc()
        try:
            self._consumer = KafkaConsumer(
                group_id=config.group_id,
                group_instance_id=config.group_instance_id,
                enable_auto_commit=False,
                auto_offset_reset=config.auto_offset_reset,
                max_poll_records=config.max_poll_records,
                session_timeout_ms=config.session_timeout_ms,
                max_poll_interval_ms=config.max_poll_interval_ms,
                **client_options(config),
            )
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"no Kafka broker answers at {config.bootstrap_servers}; start one "
                "(deploy/local/kafka.sh start) or fix --bootstrap-servers"
            ) from exc
        self._wake_partition = TopicPartition(config.topic, 0)
        self._connected_at = (0.0, True)  # (when checked, connected)
        if share is None:
            self._consumer.subscribe([config.topic], listener=_Listener(self))
        known = None
        try:  # know the topic's partitions before joining, or the first assignment is empty
            known = self._consumer.partitions_for_topic(config.topic)
        except KafkaError as exc:
            if share is not None:
                raise BrokerUnavailable(f"no metadata for {config.topic}: {exc}") from exc
            log.warning(
                "no metadata for %s yet (%s); the group assigns it later", config.topic, exc
            )
        self._commit_timeout_ms = 10_000
        # the commit sent by commit_nowait: (offsets, future, answered, answer due by)
        self._pending_commit: tuple[dict[TP, int], Any, threading.Event, float] | None = None
        self._config = config
        self._rebalancing = False  # from a revoke (or the first join) until the assignment
        self._paused = False
        self._starts: dict[TP, int] = {}  # where each assigned partition started
        self._committed: dict[TP, int] = {}
        self._pending_seeks: dict[TP, int] = {}
        self._end_cache: dict[TP, int] = {}
        self._end_checked = 0.0
        if share is not None:
            mine = share(sorted(known or ()))
            if not mine:
                raise ValueError(
                    f"topic {config.topic!r} has partitions {sorted(known or ())}, none of them "
                    "for this rank: create the topic first, with at least as many partitions "
                    "as ranks"
                )
            assigned = [TopicPartition(config.topic, p) for p in mine]
            self._consumer.assign(assigned)
            log.info("reading partitions %s (a fixed share)", mine)
            self._seek_assigned(assigned)

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Records from the assigned partitions, in offset order per partition.

        A rebalance that starts in this call is awaited here until the group has assigned
        partitions (at most the rebalance timeout, ``max_poll_interval_ms``), however short
        ``timeout_s`` is: kafka-python (3.0.x) takes the outcome of a JoinGroup/SyncGroup round
        only in a ``poll`` that is waiting for it when it completes. Once a ``poll`` has given
        up waiting, a round that completes before the next one is thrown away and a new
        JoinGroup sent, which starts another rebalance for the whole group: with short polls
        (a 100 ms batch deadline) and a slow revoke, members rejoined over and over and
        commits failed in between. Polls back to back, each long enough for a round, leave
        only microseconds between them.
        """
        started = time.monotonic()
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        give_up = started + self._config.max_poll_interval_ms / 1000
        while not batches and self._rebalancing and time.monotonic() < give_up:
            batches = self._consumer.poll(timeout_ms=_REBALANCE_POLL_MS, max_records=max_records)
        if not batches and not self._consumer.assignment():
            # the client returns at once while nothing is assigned: wait out the timeout here
            time.sleep(max(0.0, min(0.1, timeout_s - (time.monotonic() - started))))
        return [to_record(tp, r) for tp, records in batches.items() for r in records]

    def set_rebalance_hooks(
        self,
        on_revoke: Callable[[list[TP]], None] | None,
        on_assign: Callable[[list[TP]], None] | None,
    ) -> None:
        """Run ``on_revoke`` before partitions are released and ``on_assign`` after seeking."""
        self.on_revoke = on_revoke
        self.on_assign = on_assign

    async def _in_worker(self, work: Callable[[], None]) -> None:
        """Run ``work`` in a thread; wait for it without blocking the client's IO loop.

        The listener awaits a ``kafka.future.Future`` that the worker resolves. kafka-python
        resumes a task whose future was resolved from another thread only when its IO loop next
        wakes up, so the worker then makes one cheap request through the consumer's public API
        (the end offset of partition 0), which wakes the loop at once.
        """
        done = Future()

        def target() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, on the IO thread
                done.failure(exc)
            else:
                done.success(None)
            try:
                self._consumer.end_offsets([self._wake_partition], timeout_ms=5_000)
            except Exception as exc:  # noqa: BLE001 - only a wake-up: the loop may be closing
                log.debug("wake-up request after the rebalance work failed: %s", exc)

        threading.Thread(target=target, name="feedstep-rebalance", daemon=True).start()
        try:
            await done
        except BaseException as exc:
            log.error("rebalance work failed: %s", exc)
            raise

    def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit next-offsets synchronously, waiting at most 10 s.

        A commit sent by :meth:`commit_nowait` is settled first; this one supersedes it.

        Raises:
            BrokerUnavailable: the coordinator did not answer in time (retry later).
            CommitRejected: the group was rebalanced and this member may not commit them.
        """
        try:
            self.commit_result(wait=True)
        except (BrokerUnavailable, CommitRejected) as exc:
            log.info("an earlier commit failed (%s); committing the newer offsets now", exc)
        todo = {tp: off for tp, off in offsets.items() if self._committed.get(tp) != off}
        if not todo:
            return
        try:
            self._consumer.commit(_kafka_offsets(todo), timeout_ms=self._commit_timeout_ms)
        except KafkaError as exc:
            raise _commit_error(exc) from exc
        self._committed.update(todo)

    def commit_nowait(self, offsets: Mapping[TP, int]) -> None:
        """Send a commit and return; the client's IO thread carries it while polling goes on.

        A synchronous commit waits for the coordinator to write the offsets (~7 ms on the
        local broker), time in which nothing is polled. :meth:`commit_result` tells how it
        ended. An earlier one is settled first (its error is raised).
        """
        self.commit_result(wait=True)
        todo = {tp: off for tp, off in offsets.items() if self._committed.get(tp) != off}
        if not todo:
            return
        answered = threading.Event()
        try:
            future = self._consumer.commit_async(_kafka_offsets(todo))
        except KafkaError as exc:
            raise _commit_error(exc) from exc
        future.add_both(lambda _: answered.set())
        due = time.monotonic() + self._commit_timeout_ms / 1000
        self._pending_commit = (todo, future, answered, due)

    def commit_result(self, wait: bool = False) -> bool:
        """Whether the commit sent by :meth:`commit_nowait` is done (True when none is out).

        Raises:
            BrokerUnavailable: it failed, or no answer came within 10 s (retry later).
            CommitRejected: the group was rebalanced and this member may not commit them.
        """
        pending = self._pending_commit
        if pending is None:
            return True
        todo, future, answered, due = pending
        if not answered.is_set():
            if not wait and time.monotonic() < due:
                return False
            if not answered.wait(max(0.0, due - time.monotonic())):
                self._pending_commit = None
                raise BrokerUnavailable(
                    f"the commit of {len(todo)} partitions was not answered within "
                    f"{self._commit_timeout_ms / 1000:.0f} s"
                )
        self._pending_commit = None
        if future.failed():
            raise _commit_error(future.exception)
        self._committed.update(todo)
        return True

    def pause(self) -> None:
        """Stop fetching from every assigned partition; :meth:`poll` keeps the membership.

        Partitions assigned while paused (a rebalance during backpressure) start paused too.
        """
        self._consumer.pause(*self._consumer.assignment())
        self._paused = True

    def resume(self) -> None:
        """Fetch again from every paused partition."""
        self._consumer.resume(*self._consumer.paused())
        self._paused = False

    def has_assignment(self) -> bool:
        """True while the group has assigned this member partitions (False during a rebalance)."""
        return bool(self._consumer.assignment()) and not self._rebalancing

    def connected(self) -> bool:
        """False while the client has no broker connection (``connection-count`` is 0).

        Read from the consumer's public metrics at most twice a second.
        """
        checked, up = self._connected_at
        now = time.monotonic()
        if now - checked >= 0.5:
            count = self._consumer.metrics().get("consumer-metrics", {}).get("connection-count")
            up = count is None or count > 0  # a client without the metric: claim no outage
            self._connected_at = (now, up)
        return up

    def position(self) -> dict[TP, int]:
        """Next offset to read per assigned partition."""
        return {
            (tp.topic, tp.partition): self._consumer.position(tp)
            for tp in self._consumer.assignment()
        }

    def seek(self, offsets: Mapping[TP, int]) -> None:
        """Continue each partition from the given next offset.

        Partitions not assigned yet (before the first rebalance) are sought as soon as the
        group assigns them; the checkpoint's offsets win over the group's committed ones.
        """
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        for (topic, partition), off in offsets.items():
            if (topic, partition) in assigned:
                self._consumer.seek(TopicPartition(topic, partition), off)
            else:
                self._pending_seeks[(topic, partition)] = off

    def _seek_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        """Start each newly assigned partition from the checkpoint, else the group's offset.

        A checkpoint offset behind the group's committed offset means another member applied
        the events in between (this one lost the partition after its checkpoint); reading them
        again would apply them twice, so the committed offset wins then, and the log says so.
        """
        if self._paused:  # partitions assigned during backpressure start paused too
            self._consumer.pause(*assigned)
        for tp in assigned:
            off = self._pending_seeks.pop((tp.topic, tp.partition), None)
            committed = self._committed_offset(tp)
            start = committed if off is None else max(off, committed or 0)
            if start is not None:
                self._starts[(tp.topic, tp.partition)] = start
            else:
                self._starts.pop((tp.topic, tp.partition), None)
            if off is None:
                log.info(
                    "%s[%d]: no checkpoint covers it; starting from the group's committed offset "
                    "%s",
                    tp.topic,
                    tp.partition,
                    "(none: auto_offset_reset applies)" if committed is None else committed,
                )
            elif committed is not None and committed > off:
                log.warning(
                    "%s[%d]: the group's committed offset %d is past the checkpoint's %d "
                    "(another member applied them); starting from %d",
                    tp.topic,
                    tp.partition,
                    committed,
                    off,
                    committed,
                )
                self._consumer.seek(tp, committed)
            else:
                log.info("%s[%d]: seeking to %d from the checkpoint", tp.topic, tp.partition, off)
                self._consumer.seek(tp, off)

    def read_back(self, tp: TP, count: int, timeout_s: float = 10.0) -> list[bytes | None]:
        """Values of up to ``count`` records just before where ``tp`` started being read.

        Used to prime the de-duplication window of a partition taken over from another member
        (see :func:`~streaming.kafka.topicrange.read_before`). Empty when the partition started
        at its beginning or the broker does not answer.
        """
        before = self._starts.get(tp)
        if before is None or before <= 0 or count <= 0:
            return []
        return read_before(self._config, tp, before, count, timeout_s)

    def _committed_offset(self, tp: TopicPartition) -> int | None:
        try:
            meta = self._consumer.committed(tp, metadata=True)
        except KafkaError as exc:
            log.warning(
                "%s[%d]: could not read the committed offset: %s", tp.topic, tp.partition, exc
            )
            return None
        if meta is None:
            return None
        return int(meta.offset) if hasattr(meta, "offset") else int(meta)

    def committed(self) -> dict[TP, int]:
        """Offsets this member committed in this process."""
        return dict(self._committed)

    def lag(self) -> dict[TP, int]:
        """End offset minus position per assigned partition (telemetry: never blocks or raises).

        Uses the high-water mark from the last fetch; when a partition has not been fetched
        yet it asks the broker for end offsets, at most once every 5 seconds. A partition whose
        position the client cannot give right now (an outage that began since the last
        connection check leaves positions awaiting validation) is left out of this report.
        """
        out: dict[TP, int] = {}
        if not self.connected():
            return out
        positions: dict[TopicPartition, int] = {}
        for tp in self._consumer.assignment():
            try:
                # timeout 0: the position as known now; validation waits for the next poll
                position = self._consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                positions[tp] = position
        missing = []
        for tp, position in positions.items():
            high = self._consumer.highwater(tp)
            if high is None:
                missing.append(tp)
            else:
                out[(tp.topic, tp.partition)] = max(0, high - position)
        if missing and time.monotonic() - self._end_checked > 5.0:
            self._end_checked = time.monotonic()
            try:
                ends = self._consumer.end_offsets(missing, timeout_ms=2_000)
                self._end_cache.update({(tp.topic, tp.partition): e for tp, e in ends.items()})
            except KafkaError as exc:
                log.warning("could not read end offsets: %s", exc)
        for tp in missing:
            key = (tp.topic, tp.partition)
            if key in self._end_cache:
                out[key] = max(0, self._end_cache[key] - positions[tp])
        return out

    def close(self) -> None:
        """Leave the group (no auto-commit: offsets are only what the pipeline committed)."""
        self._consumer.close(autocommit=False)
