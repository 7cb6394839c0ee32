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
segment with nothing to train - rejects, duplicates, thumbs a ``dpo`` miner holds - is applied
when nothing is in flight). Applied segments move the per-partition ``applied`` offsets and
extend the :class:`~streaming.ingest.offsets.Ledger`. A checkpoint holds the weights together
with exactly those offsets, the ledger, the ids of the applied events for de-duplication, the
pair miner's buffers and the monitors' state; Kafka offsets are committed only after the
checkpoint that covers them is on disk. A restart seeks every partition to the checkpoint's
offsets, so the model state is a function of exactly the events it trained on.

Rebalances and shutdown settle the same way: close the open batch, finish every step in
flight, checkpoint, commit — then release the partitions or exit. A batch smaller than the
objective allows (``kto`` needs 4) is given up instead: its events are forgotten by the
de-duplicator and read again later. Broker outages make commits fail; they are retried with a
capped exponential backoff while the loop keeps polling, and ``/readyz`` says not ready.

In lockstep (a learner with a :class:`~learner.distributed.Lockstep`, ``feedstep run
--distributed`` under torchrun) the ranks agree on every step, checkpoint and stop through the
trainer's rounds (:mod:`streaming.runtime.stages`): a stop request or the end of a run is asked
of the next round, and the loop ends when the round says so, checkpointing once with every rank.
Batches not stepped by then are given up and read again by the next run.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from learner.base import ObjectiveOutput
from learner.checkpoint import CheckpointManager
from learner.step import Learner, StepResult
from monitors.metrics import Metrics
from monitors.prequential import PairedPrequential
from monitors.server import HealthState
from streaming.base import Record, Sink, Source, TopicPartition
from streaming.config import FeedstepConfig
from streaming.errors import PipelineError
from streaming.events import DecodeLimits
from streaming.ingest.ingestor import Batch, Ingestor
from streaming.ingest.mining import MiningSettings
from streaming.ingest.offsets import Ledger
from streaming.promotion.governor import Governor, features_of
from streaming.runtime.checkpoints import CheckpointTracker
from streaming.runtime.commits import Committer, fmt_offsets
from streaming.runtime.rebalance import RebalanceHandler
from streaming.runtime.stages import Abandoned, Stages
from streaming.runtime.telemetry import Readiness, RunSummary, Telemetry

__all__ = ["Pipeline", "PipelineSettings", "RunSummary"]

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
    mining: MiningSettings = field(default_factory=MiningSettings)

    @classmethod
    def from_config(cls, config: FeedstepConfig) -> PipelineSettings:
        """The loop's settings from the configuration's sections.

        ``checkpoint_every_steps = 0`` (no checkpoints at all) still counts as 1 here.
        """
        ingest, run = config.ingest, config.run
        return cls(
            batch_size=ingest.batch_size,
            max_wait_ms=ingest.max_wait_ms,
            dead_letter_topic=config.kafka.dlq_topic,
            dedup_window=ingest.dedup_window,
            dedup_prime_records=ingest.dedup_prime_records,
            limits=DecodeLimits(
                max_text_chars=ingest.max_text_chars, max_event_bytes=ingest.max_event_bytes
            ),
            prequential_window=config.metrics.prequential_window,
            stop_after_events=run.stop_after_events,
            stop_when_idle_s=run.stop_when_idle_s,
            log_every_s=run.log_every_s,
            checkpoint_every_steps=max(1, config.checkpoints.every_steps),
            checkpoint_every_s=config.checkpoints.every_s,
            shutdown_timeout_s=run.shutdown_timeout_s,
            mining=MiningSettings(
                mode=ingest.mining,
                window_events=ingest.mining_window_events,
                window_s=ingest.mining_window_s,
                min_rating_gap=ingest.mining_min_rating_gap,
                max_pending=ingest.mining_max_pending,
            ),
        )


class Pipeline:
    """Wires a source, the learner and the monitors into the sidecar loop.

    The loop (:meth:`run`) delegates: the :class:`~streaming.ingest.ingestor.Ingestor` turns
    records into micro-batches, :class:`~streaming.runtime.stages.Stages` tokenize and step
    them, the :class:`~streaming.runtime.checkpoints.CheckpointTracker` applies finished
    batches and checkpoints, the :class:`~streaming.runtime.commits.Committer` commits what a
    checkpoint covers, the :class:`~streaming.runtime.rebalance.RebalanceHandler` settles at a
    rebalance and :class:`~streaming.runtime.telemetry.Telemetry` feeds the monitors.

    Example:
        >>> from monitors.metrics import Metrics
        >>> from streaming.testing import MemorySink, MemorySource, NullLearner
        >>> from streaming.testing.simulate import SimulatedFeedback
        >>> source = MemorySource(list(SimulatedFeedback(seed=0).payloads(40)))
        >>> pipe = Pipeline(source, MemorySink(), NullLearner(), Metrics(),
        ...                 PipelineSettings(batch_size=8, log_every_s=3600))
        >>> summary = pipe.run()
        >>> summary.consumed, summary.steps, summary.accounted, source.committed()
        (40, 5, True, {('feedback', 0): 40})
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
        self.learner = learner
        self.metrics = metrics
        self.settings = s = settings or PipelineSettings()
        self.health = health or HealthState()
        self.on_progress = on_progress
        self.governor = governor
        # Held by the training thread during a step and by the governor while it reads or
        # switches weights (holdout scoring, promotion, rollback).
        self.learner_lock = governor.lock if governor is not None else threading.Lock()
        self.telemetry = Telemetry(metrics, learner, source, s.prequential_window)
        self.readiness = Readiness(
            source, self.health, metrics, commits_failing=lambda: self.commits.due is not None
        )
        self.summary = self.telemetry.summary
        self.commits = Committer(
            source,
            dead_letters,
            metrics,
            s.commit_backoff_s,
            s.commit_backoff_max_s,
            on_change=self.readiness.update,
            on_done=self.summary.final_offsets.update,
        )
        self.ingestor = Ingestor(
            learner.objective,
            self.summary,
            metrics,
            dead_letters,
            s.dead_letter_topic,
            s.batch_size,
            s.max_wait_ms,
            s.dedup_window,
            s.limits,
            features=features_of if governor is not None else None,
            on_dead_letter=self.commits.dead_lettered,
            on_give_up=self._read_again,
            mining=s.mining,
        )
        self.stages = Stages(
            learner,
            self.learner_lock,
            s.queue_batches,
            handle=self._handle,
            beat=self.health.beat,
            deadline=self._deadline,
            grace_s=s.shutdown_timeout_s,
            round_wait_s=s.max_wait_ms / 1000,
        )
        if s.mining.mode == "replace" and checkpoints is None and not source.finite:
            other = (
                "or objective = 'kto' for unpaired thumbs"
                if learner.objective.name == "dpo"
                else "or use mining = 'add'"
            )
            raise ValueError(
                "ingest.mining = 'replace' holds thumbs back until their pair arrives; without "
                "checkpoints their offsets would be committed while they wait and a restart "
                f"would lose them: set checkpoints.every_steps > 0, {other}"
            )
        self._lockstep = getattr(learner, "lockstep", None)
        if self._lockstep is not None and (checkpoints is None or s.mining.mode != "off"):
            raise ValueError(
                "a lockstep run needs checkpoints (checkpoints.every_steps > 0) and mining off; "
                "set them so in the configuration"
            )
        self.tracker = CheckpointTracker(
            checkpoints,
            learner,
            self.learner_lock,
            self.stages,
            self.ingestor,
            self.commits,
            source,
            governor,
            self.summary,
            metrics,
            s.checkpoint_every_steps,
            s.checkpoint_every_s,
            s.dedup_window,
            collect=lambda: self.stages.collect(block=False),
        )
        self.rebalance = RebalanceHandler(
            source,
            self.tracker,
            self.ingestor,
            metrics,
            settle=self._settle,
            running=lambda: self._running,
            prime_records=s.dedup_prime_records,
        )
        self._paused = False
        self._running = False
        self._stop = threading.Event()
        self._stop_at: float | None = None
        source.set_rebalance_hooks(self.rebalance.on_revoke, self.rebalance.on_assign)

    # -- public -------------------------------------------------------------------------------
    @property
    def prequential(self) -> PairedPrequential:
        """The paired prequential windows of both models (see :class:`Telemetry`)."""
        return self.telemetry.prequential

    @property
    def ledger(self) -> Ledger:
        """The applied offset ranges, counts and digest of the trained events."""
        return self.tracker.ledger

    def restore(self) -> int | None:
        """Resume from the newest intact checkpoint (see :meth:`CheckpointTracker.restore`)."""
        return self.tracker.restore()

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

    def run(self) -> RunSummary:
        """Run until a stop condition, then settle (step, checkpoint, commit) and return."""
        s = self.settings
        started = last_data = last_log = time.monotonic()
        self._running = True
        if s.gc_freeze:
            # What is alive now (modules, model, config: ~10^5-10^6 objects with torch loaded)
            # lives as long as the run; frozen, full collections no longer walk it over and
            # over. Unfrozen at the end.
            gc.freeze()
        self.stages.start()
        self.readiness.start()
        failed = False
        lockstep = self._lockstep is not None
        try:
            while lockstep or not self._stop.is_set():
                self.health.beat()
                self.stages.collect(block=False)
                if lockstep and self._rounds_say_stop():
                    break
                if self.stages.ready:  # training is behind: wait for queue room, not for records
                    self.stages.pump(wait_s=0.2)
                self._backpressure()
                self.readiness.check_connection()
                records = self._poll()
                now = time.monotonic()
                if records or self._busy() or not self.source.has_assignment():
                    last_data = now  # not idle while work is pending or the group is assigning
                last_data = max(last_data, self.rebalance.assigned_at)  # a rebalance is no idle
                if records:
                    self.stages.ready.extend(self.ingestor.ingest(records))
                due = self.ingestor.due()
                if due is not None:
                    self.stages.ready.append(due)
                if self.stages.ready:  # the turn's closed batches go to the tokenize stage together
                    self.stages.pump()
                self._apply_idle()
                self.tracker.maybe(now)
                self.commits.check()
                self.commits.retry(now)
                self.telemetry.publish()
                if now - last_log >= s.log_every_s:
                    last_log = now
                    self.telemetry.report()
                if lockstep:  # the ranks stop together: ask the next round
                    if self._stop.is_set():
                        self.stages.want_stop.set()
                    done = self._should_stop(now - last_data) and not self._busy()
                    (self.stages.idle.set if done else self.stages.idle.clear)()
                elif self._should_stop(now - last_data):
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

    # -- the loop's steps ---------------------------------------------------------------------
    def _rounds_say_stop(self) -> bool:
        """Act on the lockstep rounds' marks: checkpoint with every rank, or stop."""
        stages = self.stages
        while not stages.marks.empty():
            mark = stages.marks.get_nowait()
            stages.collect(block=False)  # every result of the rounds before the mark
            if mark == "stop":
                return True
            self.tracker.lockstep_checkpoint()
            stages.resume.set()
        return False

    def _poll(self) -> list[Record]:
        """Records of one poll; none while paused or while closed batches wait for room."""
        if self._paused:
            self.source.poll(0.0, max_records=1)  # keeps the membership; no records
            return []
        if self.stages.ready:
            return []
        timeout = self.settings.poll_timeout_s
        left = self.ingestor.time_left_s()
        if left is not None:
            timeout = min(timeout, max(0.0, left))
        return self.source.poll(timeout, max_records=self._room())

    def _room(self) -> int:
        left = self.settings.stop_after_events
        if left is None:
            return 500
        return max(1, min(500, left - self.summary.consumed))

    def _busy(self) -> bool:
        return bool(self._paused or self.stages.ready or self.stages.in_flight)

    def _read_again(self, starts: dict[TopicPartition, int]) -> None:
        """A given-up open segment: read its partitions again when we keep them."""
        applied = self.tracker.offsets
        self.source.seek({tp: applied.get(tp, start) for tp, start in starts.items()})

    def _apply_idle(self) -> None:
        """Apply a segment with nothing to train once nothing is pending or in flight.

        Rejects and duplicates, and events that added no item (thumbs a ``dpo`` miner holds):
        they need no step, so none is skipped.
        """
        if self.stages.in_flight or self.stages.ready:
            return
        segment = self.ingestor.idle_segment()
        if segment is not None:
            self.tracker.apply(segment)

    def _should_stop(self, idle_s: float) -> bool:
        s = self.settings
        if s.stop_after_events is not None and self.summary.consumed >= s.stop_after_events:
            return True
        if self.source.finite and self.source.at_end():
            return True
        return s.stop_when_idle_s is not None and idle_s >= s.stop_when_idle_s

    def _backpressure(self) -> None:
        """Pause the source once closed batches have waited ``pause_after_s`` for room.

        A short wait just holds off the next poll; a long one (a slow step) pauses every
        partition so the loop can keep polling — a Kafka member stays in its group however
        long the step takes — without taking in more records. Resumes once they are queued.
        """
        if self.stages.ready:
            now = time.monotonic()
            if self.stages.waiting_since is None:
                self.stages.waiting_since = now
            if not self._paused and now - self.stages.waiting_since >= self.settings.pause_after_s:
                self.source.pause()
                self._paused = True
                self.metrics.consumer_paused.set(1)
                log.debug("training is behind: consumption paused")
        elif self._paused:
            self.source.resume()
            self._paused = False
            self.metrics.consumer_paused.set(0)

    def _handle(self, batch: Batch, result: StepResult | BaseException | Abandoned) -> None:
        """Account for one finished batch: telemetry, governor, ledger, maybe a checkpoint."""
        if isinstance(result, Abandoned):
            self.ingestor.forget(batch.segment)
            log.warning(
                "gave up a batch of %d events at the shutdown deadline; they will be read again",
                len(batch.segment.event_ids),
            )
            return
        if isinstance(result, BaseException):
            raise PipelineError(
                f"the step failed ({type(result).__name__}: {result}); offsets of the failed "
                "batch were not committed, so its events will be read again on restart"
            ) from result
        evidence, ts, features = _evidence(result, batch)
        self.telemetry.account(evidence, ts)
        switched = False
        if self.governor is not None:
            live = self.governor.live_version
            self.governor.after_step(
                evidence, features, getattr(self.learner.objective, "tokenizer", None)
            )
            switched = self.governor.live_version != live  # checkpoint now: a restart keeps it
        if self.on_progress is not None:
            self.telemetry.flush()
            self.on_progress(self.summary)
        self.tracker.apply(batch.segment, stepped=result.applied)
        self.tracker.stepped(switched)

    # -- settling, shutdown ----------------------------------------------------------------------
    def _deadline(self) -> float | None:
        """When settling gives up batches not started: None until :meth:`stop` is called."""
        at = self._stop_at
        return None if at is None else at + self.settings.shutdown_timeout_s

    def _settle(self) -> None:
        """Close the open batch, finish every step in flight and apply what is left.

        Bounded by the stop deadline once :meth:`stop` was called (see :meth:`stop`).
        """
        rest = self.ingestor.due(final=True)
        if rest is not None:
            self.stages.ready.append(rest)
        self.stages.pump(block=True)
        self.stages.collect(block=True)
        self._apply_idle()

    def _shutdown(self) -> None:
        """Settle (drained, or within the stop deadline), checkpoint, commit, stop the stages."""
        try:
            if self._lockstep is None:
                self._settle()
            else:  # the last round is taken: what was not stepped is read again next run
                self.stages.collect(block=False)
            deadline = self._deadline() or time.monotonic() + self.settings.shutdown_timeout_s
            self.tracker.settle()
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


def _evidence(result: StepResult, batch: Batch) -> tuple[StepResult, list[float], list[Any]]:
    """The step's paired outcomes without its mined pairs, for the monitors and the gate.

    A mined pair trains, but it is no test-then-train evidence: the candidate already trained
    on its first half's label (see :class:`~streaming.ingest.ingestor.Batch`).
    """
    if not any(batch.mined):
        return result, batch.ts, batch.features
    keep = torch.tensor([not m for m in batch.mined])

    def events_only(out: ObjectiveOutput) -> ObjectiveOutput:
        return ObjectiveOutput(
            loss=out.loss[keep], score=out.score[keep], correct=out.correct[keep]
        )

    kept = replace(
        result, candidate=events_only(result.candidate), baseline=events_only(result.baseline)
    )
    ts = [t for t, m in zip(batch.ts, batch.mined, strict=True) if not m]
    features = [f for f, m in zip(batch.features, batch.mined, strict=True) if not m]
    return kept, ts, features
