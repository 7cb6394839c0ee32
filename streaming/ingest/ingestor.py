"""Records in, micro-batches out: decode, dead-letter, de-duplicate, map to examples, batch.

The :class:`Ingestor` owns everything between a poll's records and a closed micro-batch: the
decoder's verdict (a rejection goes to the dead-letter topic with its reason), the
de-duplication window, the objective's own check of an example, the batcher, and the open
**segment** — the records read since the previous batch closed (its events plus the rejects
and duplicates in between), which a batch carries so that its offsets are applied only once its
step is done (:mod:`streaming.ingest.offsets`).

With mining on, every accepted event also goes through the
:class:`~streaming.ingest.mining.PairMiner`; a pair it completes joins the micro-batch of the
event that completed it (after that event's own example, even when that makes the batch longer
than ``batch_size``), so it is scored before it trains like any example and is applied,
checkpointed and committed with that event's offset. With ``replace`` a pairable event's own
example stays in its batch with weight 0 (scored, so the prequential metrics and the gate see
it as before, but not trained: the pair replaces it), and the examples the miner releases (held
back, their events evicted unpaired) join the batch being formed, after the example of the event
whose arrival evicted them. An objective with no pointwise loss (``dpo``) refuses a thumb in its
``check``; with ``replace`` a thumb or rating the miner can buffer is accepted all the same
(counted, its offset applied, in the ledger) and adds no item at all: it cannot be scored, and
only the pair it completes joins a batch; one evicted unpaired trains nothing. So a segment may
hold events and no item: when nothing waits in the batcher it is closed without a step
(:meth:`Ingestor.idle_segment`), as a segment of rejects is. ``Batch.mined`` flags what is no
evidence for the monitors and the gate: the pairs of ``add`` (scored after their first half
trained) and released examples (already scored when their events arrived). The miner's buffers
are snapshotted at every batch close; once a batch is applied its snapshot is what a checkpoint
saves (:meth:`Ingestor.mining_snapshot`), exactly as the applied events left them, as the
de-duplication window leaves out events not yet applied: a held example is in the checkpoint
until the batch that trains it (released or as a pair) is applied, so it trains exactly once.
The segment of a batch lists the pairs it trains by their halves' event ids, so the ledger
counts every mined pair applied (:class:`~streaming.ingest.offsets.Ledger`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from learner.base import Example, Objective, TensorBatch
from monitors.metrics import Metrics
from streaming.base import Record, Sink, TopicPartition
from streaming.config import mining_refusal
from streaming.events import DecodeLimits, Rejection, RejectReason, decode_event, to_example
from streaming.ingest.batcher import MicroBatcher
from streaming.ingest.deadletter import send_to_dead_letter
from streaming.ingest.dedup import Deduplicator
from streaming.ingest.mining import MinerState, MiningSettings, PairMiner
from streaming.ingest.offsets import Segment, id_hash

log = logging.getLogger("streaming.runtime.pipeline")

Item = tuple[Example, float, Any, bool]
"""One example in the batcher: the example, event time (epoch s), gate features, and whether it
is no evidence (``Batch.mined``)."""


@dataclass(slots=True)
class Batch:
    """A closed micro-batch: its examples, event times, gate features and segment.

    ``mined`` flags the examples the miner added that are no paired evidence for the monitors
    and the gate (empty: mining off). They train like the others. With ``add`` those are the
    pairs: when a pair is scored the candidate has already trained on its first half's label,
    so its loss difference is not test-then-train. With ``replace`` a pair is evidence (neither
    half trained before it), and the flagged ones are the released examples of events evicted
    unpaired: each was already scored, as evidence, when its event arrived.
    """

    examples: list[Example]
    ts: list[float]
    features: list[Any]
    segment: Segment
    tensors: TensorBatch | None = None
    mined: list[bool] = field(default_factory=list)


class Ingestor:
    """Turns polled records into closed micro-batches; counts every record once.

    Args:
        objective: Its ``check`` refuses examples it cannot train on; its ``min_batch_size``
            holds a batch back until it is big enough.
        summary: Run totals (``consumed``, ``accepted``, ``rejected``, ``duplicates``,
            ``given_up``) are counted into it.
        metrics: Event outcomes, dead-letter reasons, truncated fields.
        dead_letters: Where rejects go, with their reason.
        dead_letter_topic: Their topic.
        batch_size, max_wait_ms, dedup_window, limits: As in the pipeline settings.
        features: Computes the governor's input-drift features of an event, or None.
        on_dead_letter: Called after each dead letter is queued (the next commit flushes them).
        on_give_up: Called with where each partition of a given-up open segment starts: the
            source must read it again from there.
        mining: How thumbs and ratings are paired (None or mode ``off``: not at all).

    Raises:
        ValueError: ``mining`` does not fit the objective (``kto``, ``sft``; ``dpo`` takes
            ``replace`` only: :func:`~streaming.config.mining_refusal` says why).

    Example:
        >>> from monitors.metrics import Metrics
        >>> from streaming.runtime.telemetry import RunSummary
        >>> from streaming.testing import MemorySink, MemorySource, NullObjective
        >>> from streaming.testing.simulate import SimulatedFeedback
        >>> ingestor = Ingestor(NullObjective(), RunSummary(), Metrics(), MemorySink(), "dlq",
        ...                     batch_size=2, max_wait_ms=1000)
        >>> records = MemorySource(list(SimulatedFeedback(seed=0).payloads(5)) + [b"{"]).poll(0)
        >>> [len(b.examples) for b in ingestor.ingest(records)], ingestor.summary.rejected
        ([2, 2], 1)
    """

    def __init__(
        self,
        objective: Objective,
        summary: Any,
        metrics: Metrics,
        dead_letters: Sink,
        dead_letter_topic: str,
        batch_size: int,
        max_wait_ms: float,
        dedup_window: int = 100_000,
        limits: DecodeLimits | None = None,
        features: Callable[[str, str, str], Any] | None = None,
        on_dead_letter: Callable[[], None] = lambda: None,
        on_give_up: Callable[[dict[TopicPartition, int]], None] = lambda starts: None,
        mining: MiningSettings | None = None,
    ) -> None:
        self.objective = objective
        self.summary = summary
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.dead_letter_topic = dead_letter_topic
        self.limits = limits or DecodeLimits()
        self.features = features
        self.on_dead_letter = on_dead_letter
        self.on_give_up = on_give_up
        if mining is not None and (problem := mining_refusal(objective.name, mining.mode)):
            raise ValueError(problem)
        for reason in RejectReason:  # at 0 from the start, so rate() sees the first one
            metrics.dead_letter.labels(reason=reason.value)
        self.batcher: MicroBatcher[Item] = MicroBatcher(batch_size, max_wait_ms)
        self.dedup = Deduplicator(dedup_window)
        self.segment = Segment()  # read since the last batch closed
        self.unapplied: set[str] = set()  # in the dedup window, not yet applied
        self.miner = PairMiner(mining) if mining is not None and mining.mode != "off" else None
        self._replace = mining is not None and mining.mode == "replace"
        if self.miner is not None:
            for why in self.miner.evicted:  # at 0 from the start, like the dead letters
                metrics.mining_evictions.labels(reason=why)
        self._mined_applied = MinerState({})  # the buffers as the applied events left them
        self._mined_at_close = self._mined_applied  # ... as the last closed batch left them
        self._mined_closed: deque[tuple[Segment, MinerState]] = deque()  # closed, not applied
        self._mining_counted: tuple[int, dict[str, int]] = (0, {})  # already in the metrics

    def ingest(self, records: list[Record]) -> list[Batch]:
        """Decode, validate, de-duplicate and batch the records of one poll.

        Returns the batches that closed. Accepted and duplicate events are added to their
        metrics once per poll, with the same totals as counting each event.
        """
        summary, dedup, batcher = self.summary, self.dedup, self.batcher
        objective = self.objective
        # Objective.check is a no-op unless an objective overrides it: then it is not called.
        check = None if type(objective).check is Objective.check else objective.check
        # replace: a thumb the objective refuses pointwise (dpo) may still train in a pair
        pairing = self.miner if self._replace else None
        truncated = self.metrics.truncated
        closed: list[Batch] = []
        accepted = duplicates = 0
        first = 0  # records[first:] are not in a segment yet
        try:
            for i, record in enumerate(records):
                summary.consumed += 1
                event = decode_event(record.value, self.limits)
                if isinstance(event, Rejection):
                    self._reject(record, event)
                    continue
                event_id = event.event_id
                for name in event.truncated_fields:
                    truncated.labels(field=name).inc()
                if dedup.check_and_add(event_id):
                    summary.duplicates += 1
                    self.segment.duplicates += 1
                    duplicates += 1
                    continue
                pointwise = True  # the objective can score (and train) the event's example
                try:
                    example = to_example(event)
                    if check is not None:
                        try:
                            check(example)
                        except ValueError:  # ... but maybe in a mined pair (dpo and thumbs)
                            if pairing is None or not pairing.can_pair(event):
                                raise
                            pointwise = False  # buffered; it adds nothing to the batch
                except ValueError as exc:  # a valid event the objective cannot use
                    dedup.forget((event_id,))
                    self._reject(record, _unusable(str(exc)))
                    continue
                summary.accepted += 1
                segment = self.segment
                segment.event_ids.append(event_id)
                segment.digest += id_hash(event_id)
                self.unapplied.add(event_id)
                accepted += 1
                features = (
                    self.features(event.prompt, event.response, event.feedback.type)
                    if self.features is not None
                    else None
                )
                ts = event.ts_epoch_s
                items: list[Item] = [(example, ts, features, False)] if pointwise else []
                if self.miner is not None:
                    where = (record.topic, record.partition)
                    fed = self.miner.feed(where, event, example, pointwise)
                    if fed.held and pointwise:  # scored now, trained as a pair or once released
                        items = [(dataclasses.replace(example, weight=0.0), ts, features, False)]
                    items += [(held, ts, None, True) for held in fed.released]
                    if fed.pair is not None:
                        items.append((fed.pair, ts, features, not self._replace))
                        # the batch being formed closes with this segment: the ledger counts it
                        segment.pairs.append(fed.pair_ids or ("", ""))
                full = None
                for item in items:  # a mined pair stays in its completing event's batch
                    if full is None:
                        full = batcher.add(item)
                    else:
                        full.append(item)
                if full:
                    self.segment.read_all(records[first : i + 1])
                    first = i + 1
                    closed.append(self._close(full))
            if first < len(records):
                self.segment.read_all(records[first:])
        finally:
            if self.miner is not None:
                self._count_mining()
            if accepted:
                self.metrics.events.labels(outcome="accepted").inc(accepted)
            if duplicates:
                self.metrics.events.labels(outcome="duplicate").inc(duplicates)
        return closed

    def time_left_s(self) -> float | None:
        """Seconds until the open batch is due by ``max_wait_ms`` (None: nothing open)."""
        return self.batcher.time_left_s()

    def due(self, final: bool = False) -> Batch | None:
        """The open batch if it is due (or, with ``final``, whatever is open), else None.

        A batch smaller than the objective allows waits for more events; with ``final`` (the
        run ends, the partitions are revoked) it is given up instead (:meth:`give_up_open`).
        """
        items = self.batcher.flush() if final else self.batcher.due()
        if not items:
            return None
        need = self.objective.min_batch_size
        if len(items) >= need:
            return self._close(items)
        if final:
            log.warning(
                "%d events left untrained (%s needs batches of >= %d); their offsets are not "
                "committed and they will be read again",
                len(items),
                self.objective.name,
                need,
            )
            self.give_up_open()
        else:
            for item in items:
                self.batcher.add(item)
        return None

    def idle_segment(self) -> Segment | None:
        """The open segment when no item waits in the batcher: nothing of it is left to train.

        It holds rejects, duplicates and events that added no item (thumbs a ``dpo`` miner
        buffers). Those events are closed like a batch of zero items: the miner's buffers are
        snapshotted, so that once the segment is applied (without a step) the checkpoint holds
        them as these events left them, and their offsets are not stranded in an open segment.
        """
        if self.batcher.pending or self.segment.empty:
            return None
        if self.segment.event_ids:
            return self._close([]).segment
        segment, self.segment = self.segment, Segment()
        return segment

    def give_up_open(self) -> None:
        """Drop the open segment: its events are forgotten and will be read again."""
        segment, self.segment = self.segment, Segment()
        self.batcher.flush()
        if self.miner is not None:  # they will be mined again when read again
            self.miner.load(self._mined_at_close)
        self.forget(segment)
        if segment.start:
            self.on_give_up(dict(segment.start))

    def forget(self, segment: Segment) -> None:
        """Events of a segment that will not be trained now: read again, not duplicates."""
        self.dedup.forget(segment.event_ids)
        self.unapplied.difference_update(segment.event_ids)
        self.summary.given_up += len(segment.event_ids)
        closed = self._mined_closed
        at = next((i for i, (s, _) in enumerate(closed) if s is segment), None)
        if self.miner is not None and at is not None:
            # A closed batch given up (and those after it): mining rewinds to before it.
            before = closed[at - 1][1] if at else self._mined_applied
            while len(closed) > at:
                closed.pop()
            self.miner.load(before)
            self._mined_at_close = before

    def applied(self, segment: Segment) -> None:
        """A segment's step is done: its events are remembered by checkpoints from now on."""
        self.unapplied.difference_update(segment.event_ids)
        closed = self._mined_closed
        if closed and closed[0][0] is segment:  # batches are applied in order
            self._mined_applied = closed.popleft()[1]

    def snapshot(self) -> list[Any]:
        """The de-duplication window of applied events, for a checkpoint."""
        return self.dedup.snapshot_chunks(exclude=self.unapplied)

    def restore(self, chunks: list[Any], window: int) -> None:
        """The de-duplication window saved by :meth:`snapshot`."""
        self.dedup = Deduplicator.restore(chunks, window)

    def keep_mining(self, owned: Collection[TopicPartition]) -> None:
        """A rebalance left this member ``owned``: the miner forgets every other partition.

        Their unpaired events can no longer pair here (eviction reason ``rebalance``). The held
        examples among them (``replace``; their offsets are committed, so the new owner will
        not read them) join the batch being formed, which may grow past ``batch_size``: they
        train with the next batch, pointwise, and leave the checkpointed buffer when it is
        applied, exactly like a window eviction. Partitions kept keep their buffers, so an
        eager rebalance that gives a member its partitions back loses no pending pair.
        """
        if self.miner is None:
            return
        released = self.miner.keep(owned)
        if released:
            self.batcher.extend([(example, ts, None, True) for example, ts in released])
            log.info(
                "%d held thumbs/ratings of partitions moved to another member train pointwise "
                "now (their partners will be read there)",
                len(released),
            )
        self._count_mining()

    def mining_snapshot(self) -> dict[str, Any] | None:
        """The miner's buffers as the applied events left them, for a checkpoint (JSON)."""
        return self._mined_applied.to_json() if self.miner is not None else None

    def restore_mining(self, saved: dict[str, Any] | None) -> None:
        """The buffers saved by :meth:`mining_snapshot` (None: start empty, e.g. mining was off).

        Raises:
            ValueError: ``saved`` is not a mining state (says what was found).
        """
        if self.miner is None:
            if saved is not None and (held := MinerState.from_json(saved).held):
                log.warning(
                    "the checkpoint holds %d thumbs/ratings that mining 'replace' held back, "
                    "not trained yet; with mining off they are dropped (turn mining on to "
                    "keep them)",
                    held,
                )
            return
        state = MinerState.from_json(saved) if saved is not None else MinerState({})
        self.miner.load(state)
        self._mined_applied = self._mined_at_close = state
        self._mined_closed.clear()

    def _count_mining(self) -> None:
        miner, m = self.miner, self.metrics
        assert miner is not None
        seen = self._mining_counted
        if miner.mined != seen[0]:
            m.mining_pairs.inc(miner.mined - seen[0])
        for reason, n in miner.evicted.items():
            if n != seen[1].get(reason, 0):
                m.mining_evictions.labels(reason=reason).inc(n - seen[1].get(reason, 0))
        self._mining_counted = (miner.mined, dict(miner.evicted))
        m.mining_pending.set(miner.pending)

    def _close(self, items: list[Item]) -> Batch:
        segment, self.segment = self.segment, Segment()
        if self.miner is not None:
            self._mined_at_close = self.miner.snapshot()
            self._mined_closed.append((segment, self._mined_at_close))
        return Batch(
            examples=[e for e, _, _, _ in items],
            ts=[t for _, t, _, _ in items],
            features=[f for _, _, f, _ in items],
            segment=segment,
            mined=[m for *_, m in items] if self.miner is not None else [],
        )

    def _reject(self, record: Record, rejection: Rejection) -> None:
        reason = str(rejection.reason.value)
        send_to_dead_letter(
            self.dead_letters, self.dead_letter_topic, record, reason, rejection.detail
        )
        self.on_dead_letter()
        self.segment.rejected += 1
        self.summary.rejected += 1
        self.metrics.events.labels(outcome="rejected").inc()
        self.metrics.dead_letter.labels(reason=reason).inc()
        log.debug(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )


def _unusable(detail: str) -> Rejection:
    return Rejection(
        RejectReason.BAD_VALUE, f"event is valid but cannot train the objective: {detail}"
    )
