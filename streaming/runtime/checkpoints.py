"""Checkpoint, then commit: what the model state accounts for, saved together, committed after.

A segment whose step is done is *applied* (:meth:`CheckpointTracker.apply`): it moves the
per-partition ``applied`` offsets and extends the :class:`~streaming.ingest.offsets.Ledger`. A
checkpoint holds the weights together with exactly those offsets, the ledger, the
de-duplication window of applied events, the pair miner's buffers as the applied events left
them, and the governor's state; only once it is on disk are
its offsets committed (:class:`~streaming.runtime.commits.Committer`). A restart restores the
newest intact checkpoint and seeks every partition to its offsets, so the model state is a
function of exactly the events it trained on. Without a checkpoint manager, applied offsets are
committed after every step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from learner.checkpoint import CheckpointError, CheckpointManager
from monitors.metrics import Metrics
from streaming.base import Source, TopicPartition
from streaming.ingest.ingestor import Ingestor
from streaming.ingest.offsets import Ledger, Segment
from streaming.runtime.commits import Committer
from streaming.runtime.stages import Stages

log = logging.getLogger("streaming.runtime.pipeline")


class CheckpointTracker:
    """Applied offsets and the ledger; when to checkpoint; writing one, then committing it.

    Args:
        checkpoints: The manager that writes and loads checkpoints (None: no checkpoints).
        learner: Whose weights and optimizer are saved.
        lock: The learner lock, held while the checkpoint is taken.
        stages: The training stage is held between steps while a checkpoint is written.
        ingestor: Its de-duplication window is saved and restored.
        commits: Commits the offsets of every checkpoint written.
        source: Sought to the restored offsets.
        governor: Its state is saved and restored (or None).
        summary, metrics: Checkpoints are counted there.
        every_steps, every_s: Checkpoint after this many steps, or once applied work is this old.
        dedup_window: The window size a restored window keeps.
        collect: Handles the results that finished meanwhile (the pipeline's).
    """

    def __init__(
        self,
        checkpoints: CheckpointManager | None,
        learner: Any,
        lock: threading.Lock,
        stages: Stages,
        ingestor: Ingestor,
        commits: Committer,
        source: Source,
        governor: Any,
        summary: Any,
        metrics: Metrics,
        every_steps: int,
        every_s: float,
        dedup_window: int,
        collect: Callable[[], None],
    ) -> None:
        self.checkpoints = checkpoints
        self.learner = learner
        self.lock = lock
        self.stages = stages
        self.ingestor = ingestor
        self.commits = commits
        self.source = source
        self.governor = governor
        self.summary = summary
        self.metrics = metrics
        self.every_steps = every_steps
        self.every_s = every_s
        self.dedup_window = dedup_window
        self.collect = collect
        self.ledger = Ledger()
        self.offsets: dict[TopicPartition, int] = {}  # what the model state accounts for
        self._uncheckpointed = False
        self._steps = 0  # since the last checkpoint
        self._last = time.monotonic()
        self._writing = False
        self._switched = False

    def apply(self, segment: Segment, stepped: bool = True) -> None:
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
        self.offsets.update(segment.end)
        self.ingestor.applied(segment)
        if self.checkpoints is None:
            self.commits.commit(self.offsets)
        else:
            self._uncheckpointed = True

    def stepped(self, switched: bool) -> None:
        """One more step applied; ``switched``: the live model changed (checkpoint at once)."""
        self._steps += 1
        self._switched = self._switched or switched
        if self.checkpoints is not None and (self._switched or self._steps >= self.every_steps):
            self._switched = not self.checkpoint()

    def maybe(self, now: float) -> None:
        """Checkpoint once applied work has waited ``every_s`` without one."""
        if (
            self.checkpoints is not None
            and self._uncheckpointed
            and now - self._last >= self.every_s
        ):
            self.checkpoint()

    def settle(self) -> None:
        """Checkpoint what is applied and commit it, waiting for the broker (revoke, shutdown)."""
        if self.checkpoints is not None:
            self.checkpoint(wait=True)
        else:
            self.commits.commit(self.offsets, force=True)

    def checkpoint(self, wait: bool = False) -> bool:
        """Write a checkpoint covering every applied segment, then commit its offsets.

        The training stage is held between steps meanwhile; the step in flight finishes and
        its result is collected first, so the weights saved are exactly those that the saved
        offsets account for. Returns False when it could not be taken now (called from within
        a checkpoint, or the stages kept producing results); the next collect tries again.

        The commit is sent without waiting for the broker's answer unless ``wait`` (revokes and
        shutdown wait): the checkpoint is already durable, so the pipeline goes on, and the
        answer is read on a later loop turn (:meth:`Committer.check`).
        """
        assert self.checkpoints is not None
        if not self._uncheckpointed:
            if wait:
                self.commits.check(block=True)
            return True
        if self._writing:
            return False
        self._writing = True
        self.stages.may_step.clear()  # no new step starts until the checkpoint is written
        saved = False
        try:
            for _ in range(4):
                with self.lock:
                    if self.stages.results.empty():
                        offsets = dict(self.offsets)
                        extra = {
                            "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
                            "ledger": self.ledger.to_json(),
                            "dedup": self.ingestor.snapshot(),
                            "mining": self.ingestor.mining_snapshot(),
                            "governor": (
                                self.governor.state_dict() if self.governor is not None else None
                            ),
                        }
                        self.checkpoints.save(self.learner, extra)
                        saved = True
                        break
                self.collect()  # the step that finished meanwhile
        finally:
            self.stages.may_step.set()
            self._writing = False
        if not saved:
            return False
        self._uncheckpointed = False
        self._steps = 0
        self._last = time.monotonic()
        self.summary.checkpoints += 1
        self.metrics.checkpoints.inc()
        self.commits.commit(offsets, wait=wait)
        return True

    def restore(self) -> int | None:
        """Resume from the newest intact checkpoint: weights, governor, dedup, ledger, offsets.

        Every partition the checkpoint covers is sought to its offset as soon as it is assigned;
        the others start from the group's committed offsets (the source logs which).
        Returns the restored step, or None when there is no checkpoint.
        """
        if self.checkpoints is None:
            return None
        loaded = self.checkpoints.load_latest(self.learner)
        if loaded is None:
            log.info("no checkpoint in %s; starting fresh", self.checkpoints.directory)
            return None
        extra = loaded.extra
        offsets = {(t, int(p)): int(o) for t, p, o in extra.get("offsets", [])}
        self.source.seek(offsets)
        self.offsets.update(offsets)
        self.ledger = Ledger.from_json(extra.get("ledger"))
        self.ingestor.restore(extra.get("dedup", []), self.dedup_window)
        try:
            self.ingestor.restore_mining(extra.get("mining"))
        except ValueError as exc:
            raise CheckpointError(f"{loaded.path}: {exc}") from exc
        if self.governor is not None and extra.get("governor") is not None:
            self.governor.load_state_dict(extra["governor"])
        log.info(
            "restored checkpoint %s (step %d); reading on from %s",
            loaded.path.name,
            loaded.step,
            {f"{t}:{p}": o for (t, p), o in sorted(offsets.items())},
        )
        return int(loaded.step)

    def release(self, revoked: Iterable[TopicPartition]) -> None:
        """Revoked partitions leave the applied offsets; the next checkpoint drops them."""
        revoked = list(revoked)
        for tp in revoked:
            self.offsets.pop(tp, None)
        self.commits.forget(revoked)
        self._uncheckpointed = self.checkpoints is not None
