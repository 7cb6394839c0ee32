"""The tokenize and train stages: two threads joined to the loop by bounded queues.

The loop hands closed batches to :attr:`Stages.tokenize_q` in groups (one handoff wakes the
tokenizer once for several batches); the tokenizer collates each into tensors in pinned memory
and hands the group to the trainer, which makes exactly one step per batch, under the learner
lock, and puts ``(batch, result)`` on :attr:`Stages.results` in order. A result is a
:class:`~learner.step.StepResult`, the exception that broke the stage, or :data:`ABANDONED` for a
batch given up at a stop deadline (:attr:`Stages.abandon`). :attr:`Stages.may_step` holds the
trainer between steps while a checkpoint is written.

In lockstep (:mod:`learner.distributed`) the trainer takes a round at least every
``round_wait_s``, with a batch or without one, so no rank waits forever for a quiet partition;
a round ends with a mark on :attr:`Stages.marks` when the ranks agreed to checkpoint
(``"checkpoint"``: the trainer then waits for :attr:`Stages.resume`) or to stop (``"stop"``:
it returns). Rank 0 also gets the rounds in which only other ranks held a batch, as results of a
batch with no examples and no segment: their evidence is the gate's too.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from learner.step import StepResult
from streaming.errors import PipelineError
from streaming.ingest.ingestor import Batch
from streaming.ingest.offsets import Segment

log = logging.getLogger("streaming.runtime.pipeline")


class Abandoned:
    """The result of a batch that was given up at a shutdown deadline (no step was made)."""


ABANDONED = Abandoned()


Result = StepResult | BaseException | Abandoned


class Stages:
    """The tokenize and train threads of a run.

    The loop puts closed batches on :attr:`ready`; :meth:`pump` hands them over, as many as
    the in-flight bound allows (``2 * queue_batches + 2``: queued for tokenizing, being
    tokenized, queued for training, being trained), and :meth:`collect` hands each result to
    ``handle`` in order.

    Args:
        learner: Its ``objective.collate`` runs on the tokenize thread, ``step`` on the train one.
        lock: Held around each step (the governor holds it to read or switch weights).
        queue_batches: Handoffs each queue holds.
        handle: Called with each ``(batch, result)``, in order, on the caller's thread.
        beat: Called while waiting (the liveness heartbeat).
        deadline: When batches not started are given up (None: never, the run drains).
        grace_s: How long past the deadline the step in flight may take before the run fails.
        round_wait_s: In lockstep, how long the trainer waits for a batch before it takes a
            round without one.
    """

    def __init__(
        self,
        learner: Any,
        lock: threading.Lock,
        queue_batches: int,
        handle: Callable[[Batch, Result], None],
        beat: Callable[[], None] = lambda: None,
        deadline: Callable[[], float | None] = lambda: None,
        grace_s: float = 30.0,
        round_wait_s: float = 1.0,
    ) -> None:
        self._learner = learner
        self._lockstep = getattr(learner, "lockstep", None)
        self._round_wait_s = round_wait_s
        # lockstep: what this rank asks of the next round, and what the rounds decided
        self.want_checkpoint = threading.Event()
        self.want_stop = threading.Event()
        self.idle = threading.Event()
        self.resume = threading.Event()
        self.marks: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._lock = lock
        self._handle = handle
        self._beat = beat
        self._deadline = deadline
        self._grace_s = grace_s
        self.ready: deque[Batch] = deque()  # closed batches waiting for queue room
        self.waiting_since: float | None = None  # since when batches wait for room
        self.in_flight = 0  # handed to the tokenize/train threads, not collected yet
        # queued for tokenizing + being tokenized + queued for training + being trained
        self.max_in_flight = 2 * queue_batches + 2
        self.tokenize_q: queue.Queue[list[Batch] | None] = queue.Queue(maxsize=queue_batches)
        self._train_q: queue.Queue[list[Batch] | None] = queue.Queue(maxsize=queue_batches)
        # Unbounded (the loop's in-flight bound limits it); a SimpleQueue is cheap to put to and
        # to look into, which the loop does many times per step.
        self.results: queue.SimpleQueue[tuple[Batch, Result]] = queue.SimpleQueue()
        self.abandon = threading.Event()
        self.may_step = threading.Event()
        self.may_step.set()
        self._tokenizer = threading.Thread(
            target=self._tokenize_loop, name="feedstep-tokenize", daemon=True
        )
        self._trainer = threading.Thread(
            target=self._train_loop if self._lockstep is None else self._lockstep_loop,
            name="feedstep-train",
            daemon=True,
        )

    def start(self) -> None:
        """Start both threads."""
        self._tokenizer.start()
        self._trainer.start()

    def alive(self) -> bool:
        """Both threads still run (a stage that failed has handed its error and returned)."""
        return self._tokenizer.is_alive() and self._trainer.is_alive()

    def pump(self, wait_s: float = 0.0, block: bool = False) -> None:
        """Move closed batches to the tokenize stage, waiting up to ``wait_s`` for room.

        The batches waiting go in one handoff, as many as the in-flight bound allows. With
        ``block`` it waits until all are queued, collecting results meanwhile.
        """
        until = time.monotonic() + wait_s
        while self.ready:
            if self.in_flight >= self.max_in_flight:  # bounds results waiting to be handled
                self.collect(block=False)
                if self.in_flight >= self.max_in_flight:
                    left = until - time.monotonic()
                    if not block and left <= 0:
                        return
                    self._beat()
                    self._collect_one(0.05 if block else max(0.001, min(left, 0.05)))
                    if block:
                        self._abandon_if_late()
                    continue
            group = list(itertools.islice(self.ready, self.max_in_flight - self.in_flight))
            try:
                self.tokenize_q.put_nowait(group)
            except queue.Full:
                left = until - time.monotonic()
                if not block and left <= 0:
                    return
                try:
                    timeout = 0.1 if block else max(0.001, min(left, 0.1))
                    self.tokenize_q.put(group, timeout=timeout)
                except queue.Full:
                    if block:
                        self._beat()
                        self.collect(block=False)
                        self._abandon_if_late()
                    continue
            for _ in group:
                self.ready.popleft()
            self.in_flight += len(group)
        self.waiting_since = None

    def _abandon_if_late(self) -> None:
        """Past the stop deadline: batches not started are given up (never while draining)."""
        deadline = self._deadline()
        if deadline is not None and time.monotonic() > deadline:
            if not self.abandon.is_set():
                log.warning("shutdown deadline reached: giving up batches not started")
            self.abandon.set()

    def collect(self, block: bool) -> None:
        """Handle the results that are in (with ``block``: every batch in flight)."""
        while self.in_flight or not self.results.empty():
            if not block and self.results.empty():
                return
            try:
                batch, result = (
                    self.results.get(timeout=0.2) if block else self.results.get_nowait()
                )
            except queue.Empty:
                if not block:
                    return
                self._beat()
                self._abandon_if_late()
                deadline = self._deadline()
                if deadline is not None and (time.monotonic() > deadline + self._grace_s):
                    raise PipelineError(
                        "the step in flight did not finish within twice shutdown_timeout_s; "
                        "nothing more is checkpointed or committed"
                    ) from None
                if not self.alive():
                    raise PipelineError("a pipeline stage died without a result") from None
                continue
            if batch.examples:  # not another rank's round (lockstep)
                self.in_flight -= 1
            self._handle(batch, result)

    def _collect_one(self, timeout: float) -> None:
        """Wait up to ``timeout`` for one result and handle it."""
        try:
            batch, result = self.results.get(timeout=timeout)
        except queue.Empty:
            if not self.alive():
                raise PipelineError("a pipeline stage died without a result") from None
            return
        if batch.examples:
            self.in_flight -= 1
        self._handle(batch, result)

    def stop(self, timeout_s: float) -> None:
        """Give up batches not started, wake both threads and wait for them to end."""
        # After a clean settle the queues are empty; after a failure a stage may have returned.
        self.abandon.set()
        self.may_step.set()
        self.resume.set()
        for q in (self.tokenize_q, self._train_q):
            with contextlib.suppress(queue.Empty):
                while True:  # batches never started: nothing collects them any more
                    q.get_nowait()
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)
        for thread in (self._tokenizer, self._trainer):
            if thread.is_alive():
                thread.join(timeout=timeout_s)

    def _tokenize_loop(self) -> None:
        while True:
            group = self.tokenize_q.get()
            if group is None:
                with contextlib.suppress(queue.Full):
                    self._train_q.put_nowait(None)
                return
            collated: list[Batch] = []
            failed: tuple[Batch, BaseException] | None = None
            for batch in group:
                if self.abandon.is_set():
                    self.results.put((batch, ABANDONED))
                    continue
                try:
                    batch.tensors = self._learner.objective.collate(batch.examples).pin()
                except BaseException as exc:  # handed to the ingest stage, which raises it
                    failed = (batch, exc)
                    break
                collated.append(batch)
            if collated:
                self._hand_to_trainer(collated)
            if failed is not None:
                self.results.put(failed)
                return

    def _hand_to_trainer(self, group: list[Batch]) -> None:
        while True:
            try:
                self._train_q.put(group, timeout=0.2)
                return
            except queue.Full:
                if self.abandon.is_set() and not self._trainer.is_alive():
                    for batch in group:
                        self.results.put((batch, ABANDONED))
                    return

    def _train_loop(self) -> None:
        while True:
            group = self._train_q.get()
            if group is None:
                return
            for batch in group:
                if self.abandon.is_set():
                    self.results.put((batch, ABANDONED))
                    continue
                self.may_step.wait()  # held while a checkpoint is being written
                try:
                    assert batch.tensors is not None
                    with self._lock:
                        result: StepResult | BaseException = self._learner.step(batch.tensors)
                        # Handed over under the lock: a checkpoint never sees weights whose step
                        # the ingest stage has not accounted for.
                        self.results.put((batch, result))
                except BaseException as exc:  # handed to the ingest stage, which raises it
                    self.results.put((batch, exc))
                    return

    def _lockstep_loop(self) -> None:
        """Rounds with the other ranks: one per batch, or one per ``round_wait_s`` without."""
        learner, lockstep = self._learner, self._lockstep
        assert lockstep is not None
        pending: deque[Batch] = deque()
        synced = learner.changes
        while True:
            if not pending:
                try:
                    group = self._train_q.get(timeout=self._round_wait_s)
                except queue.Empty:
                    group = []
                if group is None:  # stopped without a stop round: a failure, end quietly
                    return
                pending.extend(group)
            batch = pending.popleft() if pending else None
            try:
                # rank 0's switches since the last round (read under the lock: never mid-switch)
                with self._lock:
                    switched = learner.changes != synced
                    reset = learner.reset_pending
                agreed = lockstep.round(
                    batch is not None,
                    checkpoint=self.want_checkpoint.is_set(),
                    stop=self.want_stop.is_set(),
                    idle=self.idle.is_set() and batch is None,
                    switched=switched,
                    reset=reset,
                )
                with self._lock:
                    if agreed.switch:
                        learner.sync_from_leader(agreed.reset)
                    synced = learner.changes
                    if agreed.batches:
                        self._lockstep_step(batch)
            except BaseException as exc:  # handed to the ingest stage, which raises it
                self.results.put((batch or _other_ranks([]), exc))
                return
            if agreed.checkpoint:
                self.want_checkpoint.clear()
                self.resume.clear()
                self.marks.put("checkpoint")
                self.resume.wait()
            if agreed.stop:
                if batch is not None and not agreed.batches:
                    pending.appendleft(batch)
                self.marks.put("stop")
                return

    def _lockstep_step(self, batch: Batch | None) -> None:
        """One lockstep step (under the lock); rank 0's result carries every rank's outcomes."""
        learner, lockstep = self._learner, self._lockstep
        assert lockstep is not None
        result = learner.step(batch.tensors if batch is not None else None)
        ts = batch.ts if batch is not None else []
        candidate, baseline, every_ts = lockstep.gather_outputs(
            result.candidate, result.baseline, ts
        )
        if lockstep.leader:
            result = replace(result, candidate=candidate, baseline=baseline)
            handed = replace(batch, ts=every_ts, mined=[]) if batch is not None else None
            self.results.put((handed or _other_ranks(every_ts), result))
        elif batch is not None:
            self.results.put((batch, result))


def _other_ranks(ts: list[float]) -> Batch:
    """A round in which this rank held no batch: no examples, no segment (see the module doc)."""
    return Batch(examples=[], ts=ts, features=[], segment=Segment())
