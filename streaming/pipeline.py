"""The sidecar loop: source → decode → de-duplicate → micro-batch → tokenize → step → commit.

Two stages joined by bounded queues:

* the **ingest** stage (the caller's thread) polls the source, decodes and validates each
  record, sends rejects to the dead-letter topic, drops duplicates, forms micro-batches,
  tokenizes them (off the training thread) and commits offsets;
* the **train** stage (one thread) makes exactly one step per batch and hands back the
  result.

Offsets: every record consumed moves a per-partition "seen" watermark. A batch carries the
watermark at the moment it closed; its offsets are committed only after its step is done (and
the dead-letter producer is flushed). Records handled without a step (rejects, duplicates) are
committed once no batch is pending or in flight, so the committed offset never passes an
event that has not been trained on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from learner.base import Example, TensorBatch
from learner.checkpoint import CheckpointManager
from learner.step import Learner, StepResult
from monitors.metrics import Metrics
from monitors.prequential import PairedPrequential
from monitors.server import HealthState
from streaming.base import Record, Sink, Source, TopicPartition
from streaming.batcher import MicroBatcher
from streaming.convert import to_example
from streaming.deadletter import send_to_dead_letter
from streaming.dedup import Deduplicator
from streaming.errors import PipelineError
from streaming.events import DecodeLimits, FeedbackEvent, Rejection, decode_event
from streaming.governance import Governor, features_of

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


@dataclass(slots=True)
class _Batch:
    examples: list[Example]
    ts: list[float]
    offsets: dict[TopicPartition, int]
    features: list[Any]
    tensors: TensorBatch | None = None


@dataclass(slots=True)
class RunSummary:
    """What a run did, for the CLI's closing line and for tests."""

    consumed: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    steps: int = 0
    skipped_steps: int = 0
    trained_examples: int = 0
    baseline_correct: float = 0.0
    candidate_correct: float = 0.0
    scored: int = 0
    elapsed_s: float = 0.0
    final_offsets: dict[TopicPartition, int] = field(default_factory=dict)

    @property
    def baseline_accuracy(self) -> float:
        """Prequential accuracy of the baseline over the whole run."""
        return self.baseline_correct / self.scored if self.scored else math.nan

    @property
    def candidate_accuracy(self) -> float:
        """Prequential accuracy of the candidate over the whole run (scored before each step)."""
        return self.candidate_correct / self.scored if self.scored else math.nan


class Pipeline:
    """Wires a source, the learner and the monitors into the sidecar loop.

    Example:
        >>> from streaming.testing import MemorySource, MemorySink
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
        self._uncheckpointed: dict[TopicPartition, int] | None = None
        self._steps_since_checkpoint = 0
        # Held by the training thread during a step and by the governor while it reads or
        # switches weights (holdout scoring, promotion, rollback).
        self.learner_lock = governor.lock if governor is not None else threading.Lock()
        s = self.settings
        self.batcher: MicroBatcher[tuple[Example, float, Any]] = MicroBatcher(
            s.batch_size, s.max_wait_ms
        )
        self.dedup = Deduplicator(s.dedup_window)
        self.prequential = PairedPrequential(s.prequential_window)
        self.summary = RunSummary()
        self._seen: dict[TopicPartition, int] = {}
        self._inbox: queue.Queue[_Batch | None] = queue.Queue(maxsize=s.queue_batches)
        self._outbox: queue.Queue[tuple[_Batch, StepResult | BaseException]] = queue.Queue()
        self._in_flight = 0
        self._dlq_dirty = False
        self._held = False  # a final batch too small to train: its offsets stay uncommitted
        self._stop = threading.Event()
        self._trainer = threading.Thread(
            target=self._train_loop, name="feedstep-train", daemon=True
        )

    # -- public -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the step in flight, commit and return (signal-safe)."""
        self._stop.set()

    def run(self) -> RunSummary:
        """Run until a stop condition, then drain, commit and return the summary."""
        s = self.settings
        started = time.monotonic()
        last_data = started
        last_log = started
        self._trainer.start()
        self.health.set_ready(True)
        self.metrics.ready.set(1)
        failed = False
        try:
            while not self._stop.is_set():
                self.health.beat()
                self._collect(block=False)
                timeout = s.poll_timeout_s
                left = self.batcher.time_left_s()
                if left is not None:
                    timeout = min(timeout, max(0.0, left))
                records = self.source.poll(timeout, max_records=self._room())
                now = time.monotonic()
                if records:
                    last_data = now
                for record in records:
                    self._ingest(record)
                due = self.batcher.due()
                if due:
                    self._dispatch_or_hold(due)
                self._commit_idle()
                if now - last_log >= s.log_every_s:
                    last_log = now
                    self._report()
                if self._should_stop(now - last_data):
                    break
        except BaseException:
            failed = True
            raise
        finally:
            if failed:
                self._stop_trainer()  # commit nothing more
            else:
                self._drain()
            self.summary.elapsed_s = time.monotonic() - started
            self.metrics.ready.set(0)
            self.health.set_ready(False, "stopped")
        self._report()
        return self.summary

    # -- ingest stage -------------------------------------------------------------------------
    def _room(self) -> int:
        left = self.settings.stop_after_events
        if left is None:
            return 500
        return max(1, min(500, left - self.summary.consumed))

    def _ingest(self, record: Record) -> None:
        self.summary.consumed += 1
        self._seen[record.tp] = record.next_offset
        decoded = decode_event(record.value, self.settings.limits)
        if isinstance(decoded, Rejection):
            self._reject(record, decoded)
            return
        event: FeedbackEvent = decoded
        for name in event.truncated_fields:
            self.metrics.truncated.labels(field=name).inc()
        if self.dedup.check_and_add(event.event_id):
            self.summary.duplicates += 1
            self.metrics.events.labels(outcome="duplicate").inc()
            return
        try:
            example = to_example(event)
            self.learner.objective.check(example)
        except ValueError as exc:  # a valid event the objective cannot use
            self._reject(record, _unusable(str(exc)))
            return
        self.summary.accepted += 1
        self.metrics.events.labels(outcome="accepted").inc()
        features = (
            features_of(event.prompt, event.response, event.feedback.type)
            if self.governor is not None
            else None
        )
        full = self.batcher.add((example, event.ts_epoch_s, features))
        if full:
            self._dispatch(full)

    def _reject(self, record: Record, rejection: Rejection) -> None:
        reason = str(rejection.reason.value)
        send_to_dead_letter(
            self.dead_letters, self.settings.dead_letter_topic, record, reason, rejection.detail
        )
        self._dlq_dirty = True
        self.summary.rejected += 1
        self.metrics.events.labels(outcome="rejected").inc()
        self.metrics.dead_letter.labels(reason=reason).inc()
        log.debug(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )

    def _dispatch_or_hold(
        self, items: list[tuple[Example, float, Any]], final: bool = False
    ) -> None:
        """Dispatch a time-triggered batch, unless it is smaller than the objective allows.

        A too-small batch waits for more events; at the end of a run it is left untrained and
        its offsets uncommitted, so a restart reads those events again.
        """
        need = self.learner.objective.min_batch_size
        if len(items) >= need:
            self._dispatch(items)
        elif final:
            log.warning(
                "%d events left untrained at the end (%s needs batches of >= %d); their "
                "offsets are not committed and will be read again",
                len(items),
                self.learner.objective.name,
                need,
            )
            self._held = True
        else:
            for item in items:
                self.batcher.add(item)

    def _dispatch(self, items: list[tuple[Example, float, Any]]) -> None:
        batch = _Batch(
            examples=[e for e, _, _ in items],
            ts=[t for _, t, _ in items],
            offsets=dict(self._seen),
            features=[f for _, _, f in items],
        )
        batch.tensors = self.learner.objective.collate(batch.examples).pin()
        while True:  # bounded queue: a slow step slows consumption instead of growing memory
            try:
                self._inbox.put(batch, timeout=0.5)
                break
            except queue.Full:
                self.health.beat()
                self._collect(block=False)
        self._in_flight += 1

    def _collect(self, block: bool) -> None:
        while self._in_flight:
            try:
                batch, result = (
                    self._outbox.get(timeout=1.0) if block else self._outbox.get_nowait()
                )
            except queue.Empty:
                if block:
                    self.health.beat()
                    if not self._trainer.is_alive():
                        raise PipelineError("the training thread died without a result") from None
                    continue
                return
            self._in_flight -= 1
            if isinstance(result, BaseException):
                raise PipelineError(
                    f"the step failed ({type(result).__name__}: {result}); offsets of the failed "
                    "batch were not committed, so its events will be read again on restart"
                ) from result
            self._after_step(batch, result)
            if self.checkpoints is None:
                self._commit(batch.offsets)
            else:
                self._uncheckpointed = batch.offsets
                self._steps_since_checkpoint += 1
                if self._steps_since_checkpoint >= self.settings.checkpoint_every_steps:
                    self._checkpoint()

    def _commit_idle(self, final: bool = False) -> None:
        if self._in_flight or self.batcher.pending or not self._seen or self._held:
            return
        if self.checkpoints is None:
            self._commit(self._seen)
        elif final:  # everything read is applied: one checkpoint covers it all
            self._uncheckpointed = dict(self._seen)
            self._checkpoint()

    # -- checkpoints --------------------------------------------------------------------------
    def restore(self) -> int | None:
        """Resume from the newest intact checkpoint: weights, monitors, dedup window, offsets.

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
        self._seen.update(offsets)
        self.dedup = Deduplicator.restore(extra.get("dedup", []), self.settings.dedup_window)
        if self.governor is not None and extra.get("governor") is not None:
            self.governor.load_state_dict(extra["governor"])
        log.info(
            "restored checkpoint %s (step %d); reading on from %s",
            loaded.path.name,
            loaded.step,
            offsets,
        )
        return loaded.step

    def _checkpoint(self) -> None:
        """Write a checkpoint covering every applied batch, then commit its offsets.

        Taken under the learner lock with no finished-but-unprocessed step, so the weights in
        it are exactly those that the saved offsets account for.
        """
        assert self.checkpoints is not None
        if self._uncheckpointed is None:
            return
        with self.learner_lock:
            if not self._outbox.empty():
                return  # a step finished meanwhile; the next collect checkpoints after it
            offsets = self._uncheckpointed
            extra = {
                "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
                "dedup": self.dedup.snapshot(),
                "governor": self.governor.state_dict() if self.governor is not None else None,
            }
            self.checkpoints.save(self.learner, extra)  # type: ignore[arg-type]
        self._commit(offsets)
        self._uncheckpointed = None
        self._steps_since_checkpoint = 0

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._dlq_dirty:
            self.dead_letters.flush()  # rejects are durable before their offsets are committed
            self._dlq_dirty = False
        self.source.commit(offsets)
        self.summary.final_offsets.update(offsets)

    def _should_stop(self, idle_s: float) -> bool:
        s = self.settings
        if s.stop_after_events is not None and self.summary.consumed >= s.stop_after_events:
            return True
        if self.source.finite and self.source.at_end():
            return True
        return s.stop_when_idle_s is not None and idle_s >= s.stop_when_idle_s

    def _drain(self) -> None:
        try:
            rest = self.batcher.flush()
            if rest and self._trainer.is_alive():
                self._dispatch_or_hold(rest, final=True)
            self._collect(block=True)
            if self.checkpoints is not None and self._uncheckpointed is not None:
                self._checkpoint()
            self._commit_idle(final=True)
        finally:
            self._stop_trainer()

    def _stop_trainer(self) -> None:
        # After a clean drain the queue is empty; after a failure the trainer has already
        # returned. Either way a full queue must not block the caller.
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(None)
        if self._trainer.is_alive():
            self._trainer.join(timeout=60)

    # -- train stage --------------------------------------------------------------------------
    def _train_loop(self) -> None:
        while True:
            batch = self._inbox.get()
            if batch is None:
                return
            try:
                assert batch.tensors is not None
                with self.learner_lock:
                    result: StepResult | BaseException = self.learner.step(batch.tensors)
                    # Handed over under the lock: a checkpoint never sees weights whose step
                    # the ingest stage has not accounted for.
                    self._outbox.put((batch, result))
            except BaseException as exc:  # handed to the ingest stage, which raises it
                result = exc
                self._outbox.put((batch, result))
            if isinstance(result, BaseException):
                return

    # -- monitoring ---------------------------------------------------------------------------
    def _after_step(self, batch: _Batch, result: StepResult) -> None:
        m, s = self.metrics, self.summary
        now = time.time()
        cand, base = result.candidate, result.baseline
        self.prequential.update(
            base.loss.tolist(), cand.loss.tolist(), base.correct.tolist(), cand.correct.tolist()
        )
        defined = ~torch.isnan(cand.correct)
        s.scored += int(defined.sum())
        s.baseline_correct += float(base.correct[defined].sum())
        s.candidate_correct += float(cand.correct[defined].sum())
        m.batch_size.observe(result.batch_size)
        m.step_duration.observe(result.duration_s)
        if result.applied:
            s.steps += 1
            s.trained_examples += result.batch_size
            m.steps.inc()
            m.last_step_timestamp.set(now)
            for ts in batch.ts:
                m.feedback_to_update.observe(max(0.0, now - ts))
        else:
            s.skipped_steps += 1
            m.skipped_steps.labels(reason=result.skip_reason or "unknown").inc()
            log.warning(
                "step skipped: %s (batch of %d kept out)", result.skip_reason, result.batch_size
            )
        snap = self.prequential.snapshot()
        m.prequential_loss.labels(model="baseline").set(snap.baseline_loss)
        m.prequential_loss.labels(model="candidate").set(snap.candidate_loss)
        m.prequential_accuracy.labels(model="baseline").set(snap.baseline_accuracy)
        m.prequential_accuracy.labels(model="candidate").set(snap.candidate_accuracy)
        m.loss_difference.set(snap.mean_loss_difference)
        m.task_loss.set(result.task_loss)
        m.regularizer_loss.set(result.reg_loss)
        m.grad_norm.set(result.grad_norm)
        m.learning_rate.set(self.learner.optimizer.param_groups[0]["lr"])
        m.param_distance.set(self.learner.param_distance())
        m.device_memory.set(self.learner.device_memory_bytes())
        for (topic, partition), lag in self.source.lag().items():
            m.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        if self.governor is not None:
            self.governor.after_step(
                result, batch.features, getattr(self.learner.objective, "tokenizer", None)
            )
        if self.on_progress is not None:
            self.on_progress(s)

    def _report(self) -> None:
        for (topic, partition), lag in self.source.lag().items():
            self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        snap = self.prequential.snapshot()
        log.info(
            "consumed=%d accepted=%d rejected=%d duplicates=%d steps=%d skipped=%d "
            "preq_acc baseline=%.3f candidate=%.3f",
            self.summary.consumed,
            self.summary.accepted,
            self.summary.rejected,
            self.summary.duplicates,
            self.summary.steps,
            self.summary.skipped_steps,
            snap.baseline_accuracy,
            snap.candidate_accuracy,
        )


def _unusable(detail: str) -> Rejection:
    from streaming.events import RejectReason

    return Rejection(
        RejectReason.BAD_VALUE, f"event is valid but cannot train the objective: {detail}"
    )
