"""The tokenize and train stages: two threads joined to the loop by bounded queues.

The loop hands closed batches to :attr:`Stages.tokenize_q` in groups (one handoff wakes the
tokenizer once for several batches); the tokenizer collates each into tensors in pinned memory
and hands the group to the trainer, which makes exactly one step per batch, under the learner
lock, and puts ``(batch, result)`` on :attr:`Stages.results` in order. A result is a
:class:`~learner.step.StepResult`, the exception that broke the stage, or :data:`ABANDONED` for a
batch given up at a stop deadline (:attr:`Stages.abandon`). :attr:`Stages.may_step` holds the
trainer between steps while a checkpoint is written.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any

from learner.step import StepResult
from streaming.ingest.ingestor import Batch


class Abandoned:
    """The result of a batch that was given up at a shutdown deadline (no step was made)."""


ABANDONED = Abandoned()


Result = StepResult | BaseException | Abandoned


class Stages:
    """The tokenize and train threads of a run.

    Args:
        learner: Its ``objective.collate`` runs on the tokenize thread, ``step`` on the train one.
        lock: Held around each step (the governor holds it to read or switch weights).
        queue_batches: Handoffs each queue holds.
    """

    def __init__(self, learner: Any, lock: threading.Lock, queue_batches: int) -> None:
        self._learner = learner
        self._lock = lock
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
            target=self._train_loop, name="feedstep-train", daemon=True
        )

    def start(self) -> None:
        """Start both threads."""
        self._tokenizer.start()
        self._trainer.start()

    def alive(self) -> bool:
        """Both threads still run (a stage that failed has handed its error and returned)."""
        return self._tokenizer.is_alive() and self._trainer.is_alive()

    def stop(self, timeout_s: float) -> None:
        """Give up batches not started, wake both threads and wait for them to end."""
        # After a clean settle the queues are empty; after a failure a stage may have returned.
        self.abandon.set()
        self.may_step.set()
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
