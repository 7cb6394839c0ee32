"""The sidecar loop: source → decode → de-duplicate → micro-batch → tokenize → step → commit.

Three stages joined by bounded queues:

* the **ingest** stage (the caller's thread) polls the source, decodes and validates each
  record, sends rejects to the dead-letter topic, drops duplicates and forms micro-batches;
* the **tokenize** stage (one thread) turns a micro-batch into tensors in pinned memory;
* the **train** stage (one thread) makes exactly one step per batch and hands back the result.

Closed batches that are waiting when a queue has room cross it together, as one handoff (one
wake-up of the next stage instead of one per batch); each batch still gets its own step, in
order. A queue holds ``queue_batches`` handoffs and at most ``2 * queue_batches + 2`` batches
are in flight between the ingest stage and a collected result, as when batches crossed one by
one.

When both queues are full the ingest stage pauses the source's partitions and keeps polling
(so a Kafka member stays in its group however slow a step is) until there is room again: a slow
step slows consumption instead of growing memory.

Effectively-once. The records read since the previous batch closed form a **segment**
(:mod:`streaming.ingest.offsets`); a segment is *applied* once its batch's step is done (a
segment of rejects and duplicates only is applied when nothing is in flight). Applied segments
move the per-partition ``applied`` offsets and extend the
:class:`~streaming.ingest.offsets.Ledger`. A checkpoint holds the weights together with exactly
those offsets, the ledger, the ids of the applied events for de-duplication and the monitors'
state; Kafka offsets are committed only after the checkpoint that covers them is on disk. A
restart seeks every partition to the checkpoint's offsets, so the model state is a function of
exactly the events it trained on.

Rebalances and shutdown settle the same way: close the open batch, finish every step in
flight, checkpoint, commit — then release the partitions or exit. A batch smaller than the
objective allows (``kto`` needs 4) is given up instead: its events are forgotten by the
de-duplicator and read again later. Broker outages make commits fail; they are retried with a
capped exponential backoff while the loop keeps polling, and ``/readyz`` says not ready.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from learner.base import Example, Objective
from learner.checkpoint import CheckpointManager
from learner.step import Learner, StepResult
from monitors.metrics import Metrics
from monitors.prequential import PairedPrequential
from monitors.server import HealthState
from streaming.base import Record, Sink, Source, TopicPartition
from streaming.errors import PipelineError
from streaming.events import DecodeLimits, Rejection, decode_event, to_example
from streaming.ingest.batcher import MicroBatcher
from streaming.ingest.deadletter import send_to_dead_letter
from streaming.ingest.dedup import Deduplicator
from streaming.ingest.offsets import Ledger, Segment, id_hash
from streaming.promotion.governor import Governor, features_of
from streaming.runtime.commits import Committer, fmt_offsets
from streaming.runtime.stages import Abandoned, Batch, Stages
from streaming.runtime.telemetry import RunSummary, Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """The loop's own knobs (the model's are in the learner)."""

    batch_size: int = 16
    max_wait_ms: float = 1000.0
    dead_letter_topic: str = "feedback.dlq"
    dedup_window: int = 100_000
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    prequential_window: int = 1000
    stop_after_events: int | None = None
    stop_when_idle_s: float | None = None
    poll_timeout_s: float = 0.5
    queue_batches: int = 2
    log_every_s: float = 10.0
    checkpoint_every_steps: int = 100
    checkpoint_every_s: float = 60.0
    shutdown_timeout_s: float = 30.0
    pause_after_s: float = 1.0
    dedup_prime_records: int = 1000
    commit_backoff_s: float = 0.5
    commit_backoff_max_s: float = 30.0
    gc_freeze: bool = True


class Pipeline:
    """Wires a source, the learner and the monitors into the sidecar loop.

    Example:
        >>> from streaming.testing.memory import MemorySource, MemorySink
        >>> pipe = Pipeline(MemorySource(data), MemorySink(), learner, Metrics())  # doctest: +SKIP
        >>> summary = pipe.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Source,
        dead_letters: Sink,
        learner: Learner,
        metrics: Metrics,
        settings: PipelineSettings | None = None,
        health: HealthState | None = None,
        on_progress: Callable[[RunSummary], None] | None = None,
        governor: Governor | None = None,
        checkpoints: CheckpointManager | None = None,
    ) -> None:
        self.source = source
        self.dead_letters = dead_letters
        self.learner = learner
        self.metrics = metrics
        self.settings = settings or PipelineSettings()
        self.health = health or HealthState()
        self.on_progress = on_progress
        self.governor = governor
        self.checkpoints = checkpoints
        # Held by the training thread during a step and by the governor while it reads or
        # switches weights (holdout scoring, promotion, rollback).
        self.learner_lock = governor.lock if governor is not None else threading.Lock()
        s = self.settings
        self.batcher: MicroBatcher[tuple[Example, float, Any]] = MicroBatcher(
            s.batch_size, s.max_wait_ms
        )
        self.dedup = Deduplicator(s.dedup_window)
        self.telemetry = Telemetry(metrics, learner, source, s.prequential_window)
        self.summary = self.telemetry.summary
        self.ledger = Ledger()
        self._segment = Segment()  # read since the last batch closed
        self._applied: dict[TopicPartition, int] = {}  # what the model state accounts for
        self._unapplied_ids: set[str] = set()  # in the dedup window, not yet applied
        self._ready: deque[Batch] = deque()  # closed batches waiting for queue room
        self.stages = Stages(learner, self.learner_lock, s.queue_batches)
        self._in_flight = 0  # batches handed to the tokenize/train stages, not collected yet
        # queued for tokenizing + being tokenized + queued for training + being trained
        self._max_in_flight = 2 * s.queue_batches + 2
        self.commits = Committer(
            source,
            dead_letters,
            metrics,
            s.commit_backoff_s,
            s.commit_backoff_max_s,
            on_change=self._set_ready,
            on_done=self.summary.final_offsets.update,
        )
        self._uncheckpointed = False
        self._steps_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._paused = False
        self._switched = False
        self._checkpointing = False
        self._started = time.monotonic()
        self._was_disconnected = False
        self._owned_before: set[TopicPartition] = set()  # partitions held before a rebalance
        self._ready_since: float | None = None
        self._running = False
        self._connected = True
        self._stop = threading.Event()
        self._stop_at: float | None = None
        source.set_rebalance_hooks(self._on_revoke, self._on_assign)

    # -- public -------------------------------------------------------------------------------
    @property
    def prequential(self) -> PairedPrequential:
        """The paired prequential windows of both models (see :class:`Telemetry`)."""
        return self.telemetry.prequential

    def stop(self) -> None:
        """Ask the loop to finish the step in flight, commit and return (signal-safe).

        From now on the settling is bounded by ``shutdown_timeout_s``: batches not started by
        then are given up (read again by the next run). Without a stop request, a run that ends
        (a finite source at its end, ``stop_after_events``, ``stop_when_idle_s``) trains every
        batch in flight, however long the steps take.
        """
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()

    def _deadline(self) -> float | None:
        """When settling gives up batches not started: None until :meth:`stop` is called."""
        at = self._stop_at
        return None if at is None else at + self.settings.shutdown_timeout_s

    def run(self) -> RunSummary:
        """Run until a stop condition, then settle (step, checkpoint, commit) and return."""
        s = self.settings
        started = time.monotonic()
        last_data = started
        last_log = started
        self._running = True
        self._started = time.monotonic()
        if s.gc_freeze:
            # What is alive now (modules, model, config: ~10^5-10^6 objects with torch loaded)
            # lives as long as the run; frozen, a full collection no longer walks it (measured:
            # six full collections took 0.55 s of a 200,000-event run). Unfrozen at the end.
            gc.freeze()
        self.stages.start()
        self._set_ready()
        failed = False
        try:
            while not self._stop.is_set():
                self.health.beat()
                self._collect(block=False)
                if self._ready:  # training is behind: wait for queue room, not for records
                    self._pump(wait_s=0.2)
                self._backpressure()
                self._check_connection()
                records: list[Record] = []
                if self._paused:
                    self.source.poll(0.0, max_records=1)  # keeps the membership; no records
                elif not self._ready:
                    timeout = s.poll_timeout_s
                    left = self.batcher.time_left_s()
                    if left is not None:
                        timeout = min(timeout, max(0.0, left))
                    records = self.source.poll(timeout, max_records=self._room())
                now = time.monotonic()
                if (
                    records
                    or self._paused
                    or self._ready
                    or self._in_flight
                    or not self.source.has_assignment()
                ):
                    last_data = now  # not idle while work is pending or the group is assigning
                if records:
                    self._ingest(records)
                due = self.batcher.due()
                if due:
                    self._dispatch_or_hold(due)
                self._apply_idle()
                self._maybe_checkpoint(now)
                self.commits.check()
                self.commits.retry(now)
                self.telemetry.publish()
                if now - last_log >= s.log_every_s:
                    last_log = now
                    self.telemetry.report()
                if self._should_stop(now - last_data):
                    break
        except BaseException:
            failed = True
            raise
        finally:
            try:
                if failed:
                    self.stages.stop(s.shutdown_timeout_s)  # checkpoint and commit nothing more
                else:
                    self._shutdown()
            finally:
                self._running = False
                if s.gc_freeze:
                    gc.unfreeze()  # collectable again once the run is over
            self.summary.elapsed_s = time.monotonic() - started
            self.summary.stopped = self._stop_at is not None
            self.metrics.ready.set(0)
            self.health.set_ready(False, "stopped")
        self.telemetry.report()
        return self.summary

    # -- ingest stage -------------------------------------------------------------------------
    def _room(self) -> int:
        left = self.settings.stop_after_events
        if left is None:
            return 500
        return max(1, min(500, left - self.summary.consumed))

    def _ingest(self, records: list[Record]) -> None:
        """Decode, validate, de-duplicate and batch the records of one poll.

        Accepted and duplicate events are added to their metrics once per poll, with the same
        totals as counting each event (a scrape sees a poll's events when the poll is done).
        """
        summary, dedup, batcher = self.summary, self.dedup, self.batcher
        objective = self.learner.objective
        # Objective.check is a no-op unless an objective overrides it: then it is not called.
        check = None if type(objective).check is Objective.check else objective.check
        limits = self.settings.limits
        unapplied = self._unapplied_ids
        truncated = self.metrics.truncated
        with_features = self.governor is not None
        accepted = duplicates = 0
        first = 0  # records[first:] are not in a segment yet
        try:
            for i, record in enumerate(records):
                summary.consumed += 1
                event = decode_event(record.value, limits)
                if isinstance(event, Rejection):
                    self._reject(record, event)
                    self._segment.rejected += 1
                    continue
                event_id = event.event_id
                for name in event.truncated_fields:
                    truncated.labels(field=name).inc()
                if dedup.check_and_add(event_id):
                    summary.duplicates += 1
                    self._segment.duplicates += 1
                    duplicates += 1
                    continue
                try:
                    example = to_example(event)
                    if check is not None:
                        check(example)
                except ValueError as exc:  # a valid event the objective cannot use
                    dedup.forget((event_id,))
                    self._reject(record, _unusable(str(exc)))
                    self._segment.rejected += 1
                    continue
                summary.accepted += 1
                segment = self._segment
                segment.event_ids.append(event_id)
                segment.digest += id_hash(event_id)
                unapplied.add(event_id)
                accepted += 1
                features = (
                    features_of(event.prompt, event.response, event.feedback.type)
                    if with_features
                    else None
                )
                full = batcher.add((example, event.ts_epoch_s, features))
                if full:
                    self._segment.read_all(records[first : i + 1])
                    first = i + 1
                    self._dispatch(full, pump=False)
            if first < len(records):
                self._segment.read_all(records[first:])
            if self._ready:  # the poll's closed batches go to the tokenize stage together
                self._pump()
        finally:
            if accepted:
                self.metrics.events.labels(outcome="accepted").inc(accepted)
            if duplicates:
                self.metrics.events.labels(outcome="duplicate").inc(duplicates)

    def _reject(self, record: Record, rejection: Rejection) -> None:
        reason = str(rejection.reason.value)
        send_to_dead_letter(
            self.dead_letters, self.settings.dead_letter_topic, record, reason, rejection.detail
        )
        self.commits.dead_lettered()
        self.summary.rejected += 1
        self.metrics.events.labels(outcome="rejected").inc()
        self.metrics.dead_letter.labels(reason=reason).inc()
        log.debug(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )

    def _dispatch_or_hold(
        self, items: list[tuple[Example, float, Any]], final: bool = False
    ) -> None:
        """Dispatch a batch, unless it is smaller than the objective allows.

        A too-small batch waits for more events; when the run ends or the partitions are
        revoked it is given up (see :meth:`_give_up_open`).
        """
        need = self.learner.objective.min_batch_size
        if len(items) >= need:
            self._dispatch(items)
        elif final:
            log.warning(
                "%d events left untrained (%s needs batches of >= %d); their offsets are not "
                "committed and they will be read again",
                len(items),
                self.learner.objective.name,
                need,
            )
            self._give_up_open()
        else:
            for item in items:
                self.batcher.add(item)

    def _give_up_open(self) -> None:
        """Drop the open segment: its events are forgotten and will be read again."""
        seg, self._segment = self._segment, Segment()
        self.dedup.forget(seg.event_ids)
        self._unapplied_ids.difference_update(seg.event_ids)
        self.summary.given_up += len(seg.event_ids)
        self.batcher.flush()
        if seg.start:  # read the segment again when we keep these partitions
            self.source.seek({tp: self._applied.get(tp, start) for tp, start in seg.start.items()})

    def _dispatch(self, items: list[tuple[Example, float, Any]], pump: bool = True) -> None:
        segment, self._segment = self._segment, Segment()
        self._ready.append(
            Batch(
                examples=[e for e, _, _ in items],
                ts=[t for _, t, _ in items],
                features=[f for _, _, f in items],
                segment=segment,
            )
        )
        if pump:
            self._pump()

    def _pump(self, wait_s: float = 0.0, block: bool = False) -> None:
        """Move closed batches to the tokenize stage, waiting up to ``wait_s`` for room.

        The batches waiting go in one handoff, as many as the in-flight bound allows. With
        ``block`` it waits until all are queued, collecting results meanwhile.
        """
        until = time.monotonic() + wait_s
        while self._ready:
            if self._in_flight >= self._max_in_flight:  # bounds results waiting to be handled
                self._collect(block=False)
                if self._in_flight >= self._max_in_flight:
                    left = until - time.monotonic()
                    if not block and left <= 0:
                        return
                    self.health.beat()
                    self._collect_one(0.05 if block else max(0.001, min(left, 0.05)))
                    if block:
                        self._abandon_if_late()
                    continue
            group = list(itertools.islice(self._ready, self._max_in_flight - self._in_flight))
            try:
                self.stages.tokenize_q.put_nowait(group)
            except queue.Full:
                left = until - time.monotonic()
                if not block and left <= 0:
                    return
                try:
                    timeout = 0.1 if block else max(0.001, min(left, 0.1))
                    self.stages.tokenize_q.put(group, timeout=timeout)
                except queue.Full:
                    if block:
                        self.health.beat()
                        self._collect(block=False)
                        self._abandon_if_late()
                    continue
            for _ in group:
                self._ready.popleft()
            self._in_flight += len(group)
        self._ready_since = None

    def _backpressure(self) -> None:
        """Pause the source once closed batches have waited ``pause_after_s`` for room.

        A short wait just holds off the next poll; a long one (a slow step) pauses every
        partition so the loop can keep polling — a Kafka member stays in its group however
        long the step takes — without taking in more records. Resumes once they are queued.
        """
        if self._ready:
            now = time.monotonic()
            if self._ready_since is None:
                self._ready_since = now
            if not self._paused and now - self._ready_since >= self.settings.pause_after_s:
                self.source.pause()
                self._paused = True
                self.metrics.consumer_paused.set(1)
                log.debug("training is behind: consumption paused")
        elif self._paused:
            self.source.resume()
            self._paused = False
            self.metrics.consumer_paused.set(0)

    def _abandon_if_late(self) -> None:
        """Past the stop deadline: batches not started are given up (never while draining)."""
        deadline = self._deadline()
        if deadline is not None and time.monotonic() > deadline:
            if not self.stages.abandon.is_set():
                log.warning("shutdown deadline reached: giving up batches not started")
            self.stages.abandon.set()

    def _collect(self, block: bool) -> None:
        while self._in_flight:
            if not block and self.stages.results.empty():
                return
            try:
                batch, result = (
                    self.stages.results.get(timeout=0.2)
                    if block
                    else self.stages.results.get_nowait()
                )
            except queue.Empty:
                if not block:
                    return
                self.health.beat()
                self._abandon_if_late()
                deadline = self._deadline()
                if deadline is not None and (
                    time.monotonic() > deadline + self.settings.shutdown_timeout_s
                ):
                    raise PipelineError(
                        "the step in flight did not finish within twice shutdown_timeout_s; "
                        "nothing more is checkpointed or committed"
                    ) from None
                if not self.stages.alive():
                    raise PipelineError("a pipeline stage died without a result") from None
                continue
            self._handle(batch, result)

    def _collect_one(self, timeout: float) -> None:
        """Wait up to ``timeout`` for one result and handle it."""
        try:
            batch, result = self.stages.results.get(timeout=timeout)
        except queue.Empty:
            if not self.stages.alive():
                raise PipelineError("a pipeline stage died without a result") from None
            return
        self._handle(batch, result)

    def _handle(self, batch: Batch, result: StepResult | BaseException | Abandoned) -> None:
        """Account for one finished batch: monitors, ledger, maybe a checkpoint."""
        self._in_flight -= 1
        if isinstance(result, Abandoned):
            self._give_up(batch)
            return
        if isinstance(result, BaseException):
            raise PipelineError(
                f"the step failed ({type(result).__name__}: {result}); offsets of the failed "
                "batch were not committed, so its events will be read again on restart"
            ) from result
        self._after_step(batch, result)
        self._apply(batch.segment, stepped=result.applied)
        self._steps_since_checkpoint += 1
        if self.checkpoints is not None and (
            self._switched or self._steps_since_checkpoint >= self.settings.checkpoint_every_steps
        ):
            self._switched = not self._checkpoint()

    def _give_up(self, batch: Batch) -> None:
        seg = batch.segment
        self.dedup.forget(seg.event_ids)
        self._unapplied_ids.difference_update(seg.event_ids)
        self.summary.given_up += len(seg.event_ids)
        log.warning(
            "gave up a batch of %d events at the shutdown deadline; they will be read again",
            len(seg.event_ids),
        )

    def _apply(self, segment: Segment, stepped: bool = True) -> None:
        """Account for a segment whose step is done (or that needed none)."""
        if segment.empty:
            return
        self.ledger.apply(
            segment.ranges(),
            trained_ids=segment.event_ids,
            digest=segment.digest,
            skipped=0 if stepped else len(segment.event_ids),
            rejected=segment.rejected,
            duplicates=segment.duplicates,
        )
        self._applied.update(segment.end)
        self._unapplied_ids.difference_update(segment.event_ids)
        if self.checkpoints is None:
            self.commits.commit(self._applied)
        else:
            self._uncheckpointed = True

    def _apply_idle(self) -> None:
        """Apply a segment of rejects and duplicates once nothing is pending or in flight."""
        if self._in_flight or self._ready or self.batcher.pending or self._segment.empty:
            return
        segment, self._segment = self._segment, Segment()
        self._apply(segment, stepped=False)

    # -- checkpoints and commits --------------------------------------------------------------
    def restore(self) -> int | None:
        """Resume from the newest intact checkpoint: weights, monitors, dedup, ledger, offsets.

        Every partition the checkpoint covers is sought to its offset as soon as it is assigned;
        the others start from the group's committed offsets (the source logs which).
        Returns the restored step, or None when there is no checkpoint.
        """
        if self.checkpoints is None:
            return None
        loaded = self.checkpoints.load_latest(self.learner)  # type: ignore[arg-type]
        if loaded is None:
            log.info("no checkpoint in %s; starting fresh", self.checkpoints.directory)
            return None
        extra = loaded.extra
        offsets = {(t, int(p)): int(o) for t, p, o in extra.get("offsets", [])}
        self.source.seek(offsets)
        self._applied.update(offsets)
        self.ledger = Ledger.from_json(extra.get("ledger"))
        self.dedup = Deduplicator.restore(extra.get("dedup", []), self.settings.dedup_window)
        if self.governor is not None and extra.get("governor") is not None:
            self.governor.load_state_dict(extra["governor"])
        log.info(
            "restored checkpoint %s (step %d); reading on from %s",
            loaded.path.name,
            loaded.step,
            {f"{t}:{p}": o for (t, p), o in sorted(offsets.items())},
        )
        return loaded.step

    def _maybe_checkpoint(self, now: float) -> None:
        if (
            self.checkpoints is not None
            and self._uncheckpointed
            and now - self._last_checkpoint >= self.settings.checkpoint_every_s
        ):
            self._checkpoint()

    def _checkpoint(self, wait: bool = False) -> bool:
        """Write a checkpoint covering every applied segment, then commit its offsets.

        The training stage is held between steps meanwhile; the step in flight finishes and
        its result is collected first, so the weights saved are exactly those that the saved
        offsets account for. Returns False when it could not be taken now (called from within
        a checkpoint, or the stages kept producing results); the next collect tries again.

        The commit is sent without waiting for the broker's answer unless ``wait`` (revokes and
        shutdown wait): the checkpoint is already durable, so the pipeline goes on, and the
        answer is read on a later loop (:meth:`Committer.check`), a failure retried as usual.
        """
        assert self.checkpoints is not None
        if not self._uncheckpointed:
            if wait:
                self.commits.check(block=True)
            return True
        if self._checkpointing:
            return False
        self._checkpointing = True
        self.stages.may_step.clear()  # no new step starts until the checkpoint is written
        saved = False
        try:
            for _ in range(4):
                with self.learner_lock:
                    if self.stages.results.empty():
                        offsets = dict(self._applied)
                        unapplied = self._unapplied_ids
                        extra = {
                            "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
                            "ledger": self.ledger.to_json(),
                            "dedup": self.dedup.snapshot_chunks(exclude=unapplied),
                            "governor": (
                                self.governor.state_dict() if self.governor is not None else None
                            ),
                        }
                        self.checkpoints.save(self.learner, extra)  # type: ignore[arg-type]
                        saved = True
                        break
                self._collect(block=False)  # the step that finished meanwhile
        finally:
            self.stages.may_step.set()
            self._checkpointing = False
        if not saved:
            return False
        self._uncheckpointed = False
        self._steps_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self.summary.checkpoints += 1
        self.metrics.checkpoints.inc()
        self.commits.commit(offsets, wait=wait)
        return True

    # -- connection, readiness ----------------------------------------------------------------
    def _check_connection(self) -> None:
        connected = self.source.connected()
        if connected != self._connected:
            self._connected = connected
            if connected and self._was_disconnected:
                log.info("broker reachable again; resuming")
            elif not connected and self._running_since_s() > 5.0:  # not while still joining
                self._was_disconnected = True
                log.warning("broker unreachable; the client reconnects with capped backoff")
            self._set_ready()

    def _running_since_s(self) -> float:
        return time.monotonic() - self._started

    def _set_ready(self) -> None:
        self.metrics.broker_connected.set(1 if self._connected else 0)
        if not self._connected:
            self.health.set_ready(False, "broker unreachable")
        elif self.commits.due is not None:
            self.health.set_ready(False, "offset commits failing; retrying")
        else:
            self.health.set_ready(True)
        self.metrics.ready.set(1 if self.health.ready else 0)

    # -- rebalances, shutdown -----------------------------------------------------------------
    def _settle(self) -> None:
        """Close the open batch, finish every step in flight and apply what is left.

        Bounded by the stop deadline once :meth:`stop` was called (see :meth:`stop`).
        """
        rest = self.batcher.flush()
        if rest:
            self._dispatch_or_hold(rest, final=True)
        self._pump(block=True)
        self._collect(block=True)
        self._apply_idle()

    def _on_revoke(self, revoked: list[TopicPartition]) -> None:
        """Rebalance: finish the step in flight, checkpoint, commit, then let the partitions go."""
        if not self._running:
            return  # the source is closing after the run: everything is settled already
        self.metrics.rebalances.labels(event="revoked").inc()
        self._settle()
        if self.checkpoints is not None:
            self._checkpoint(wait=True)
        else:
            self.commits.commit(self._applied, force=True)
        if self.commits.due is not None:
            log.error(
                "could not commit %s before the rebalance; the checkpoint covers them and the "
                "next owner may read some events again",
                fmt_offsets(self.commits.due),
            )
        self._owned_before = set(self._applied)  # read and applied here: our window has them
        for tp in revoked:
            self._applied.pop(tp, None)
        self.commits.forget(revoked)
        self._uncheckpointed = self.checkpoints is not None  # the next checkpoint drops them

    def _on_assign(self, assigned: list[TopicPartition]) -> None:
        """Prime the de-duplication window of partitions taken over from another member."""
        self.metrics.rebalances.labels(event="assigned").inc()
        want = self.settings.dedup_prime_records
        for tp in assigned:
            if want <= 0 or tp in self._applied or tp in self._owned_before:
                continue  # our own checkpoint or window already covers it
            ids = [i for i in map(_event_id, self.source.read_back(tp, want)) if i is not None]
            for event_id in ids:
                self.dedup.check_and_add(event_id)
            if ids:
                log.info(
                    "%s:%d: de-duplication window primed with %d event ids read back",
                    tp[0],
                    tp[1],
                    len(ids),
                )
        self._owned_before = set()

    def _shutdown(self) -> None:
        """Settle (drained, or within the stop deadline), checkpoint, commit, stop the stages."""
        try:
            self._settle()
            deadline = self._deadline() or time.monotonic() + self.settings.shutdown_timeout_s
            if self.checkpoints is not None:
                self._checkpoint(wait=True)
            elif self.commits.due is not None:
                self.commits.commit(self.commits.due, force=True)
            self.commits.retry_until(deadline)
            if self.commits.due is not None:
                self.summary.commit_pending = True
                log.error(
                    "offsets %s are not committed (broker unreachable); the checkpoint covers "
                    "them, so a restart with the same checkpoint directory loses nothing",
                    fmt_offsets(self.commits.due),
                )
        finally:
            self.stages.stop(self.settings.shutdown_timeout_s)

    def _should_stop(self, idle_s: float) -> bool:
        s = self.settings
        if s.stop_after_events is not None and self.summary.consumed >= s.stop_after_events:
            return True
        if self.source.finite and self.source.at_end():
            return True
        return s.stop_when_idle_s is not None and idle_s >= s.stop_when_idle_s

    def _after_step(self, batch: Batch, result: StepResult) -> None:
        """Account for a finished step: telemetry, the governor, ``on_progress``."""
        self.telemetry.account(result, batch.ts)
        if self.governor is not None:
            live = self.governor.live_version
            self.governor.after_step(
                result, batch.features, getattr(self.learner.objective, "tokenizer", None)
            )
            if self.governor.live_version != live:
                self._switched = True  # checkpoint right after it: a restart must not undo it
        if self.on_progress is not None:
            self.telemetry.flush()
            self.on_progress(self.summary)


def _unusable(detail: str) -> Rejection:
    from streaming.events import RejectReason

    return Rejection(
        RejectReason.BAD_VALUE, f"event is valid but cannot train the objective: {detail}"
    )


def _event_id(value: bytes | None) -> str | None:
    """The ``event_id`` of a raw event, or None when it has none (any malformed input)."""
    if not value:
        return None
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return None
    event_id = obj.get("event_id") if isinstance(obj, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None
