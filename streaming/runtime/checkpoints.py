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

In lockstep (:mod:`learner.distributed`) a checkpoint is one collective act of every rank,
taken between two rounds that all ranks agreed on: each rank's offsets, ledger and
de-duplication window are gathered to rank 0, which writes them with the weights (once); only
when rank 0 says the checkpoint is on disk does any rank commit. At start the rank whose
directory holds the newest intact checkpoint (rank 0's, unless a restart made another pod rank
0) sends its files to every rank, so each restores the same weights, optimizer and schedule,
seeks the partitions it reads now (they may be others than before a restart with another world
size) and keeps the ledger ranges of those partitions.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
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
        self.lockstep = getattr(learner, "lockstep", None)

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
            pairs=segment.pairs,
            pairs_skipped=0 if stepped else len(segment.pairs),
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
            if self.lockstep is not None:
                self.stages.want_checkpoint.set()  # taken by all ranks after the next round
            else:
                self._switched = not self.checkpoint()

    def maybe(self, now: float) -> None:
        """Checkpoint once applied work has waited ``every_s`` without one."""
        if (
            self.checkpoints is not None
            and self._uncheckpointed
            and now - self._last >= self.every_s
        ):
            if self.lockstep is not None:
                self.stages.want_checkpoint.set()
            else:
                self.checkpoint()

    def settle(self) -> None:
        """Checkpoint what is applied and commit it, waiting for the broker (revoke, shutdown)."""
        if self.lockstep is not None:
            self.lockstep_checkpoint(wait=True)
        elif self.checkpoints is not None:
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
                        self.checkpoints.save(self.learner, self._state(offsets, governor=True))
                        saved = True
                        break
                self.collect()  # the step that finished meanwhile
        finally:
            self.stages.may_step.set()
            self._writing = False
        if not saved:
            return False
        self._written()
        self.commits.commit(offsets, wait=wait)
        return True

    def _state(self, offsets: dict[TopicPartition, int], governor: bool) -> dict[str, Any]:
        """What a checkpoint holds beside the weights (a lockstep rank's part: no governor)."""
        state = {
            "offsets": [[t, p, o] for (t, p), o in sorted(offsets.items())],
            "ledger": self.ledger.to_json(),
            "dedup": self.ingestor.snapshot(),
            "mining": self.ingestor.mining_snapshot(),
        }
        if governor:
            state["governor"] = self.governor.state_dict() if self.governor is not None else None
        return state

    def _written(self) -> None:
        """A checkpoint is on disk: count it, restart the clocks."""
        self._uncheckpointed = False
        self._switched = False
        self._steps = 0
        self._last = time.monotonic()
        self.summary.checkpoints += 1
        self.metrics.checkpoints.inc()

    def lockstep_checkpoint(self, wait: bool = False) -> bool:
        """Every rank's part of one lockstep checkpoint (the trainer waits between rounds).

        Called on every rank at the same round (the ``checkpoint`` mark) or at the stop. Rank 0
        writes; every rank commits its own offsets once rank 0 says the checkpoint is durable.
        """
        lockstep = self.lockstep
        assert lockstep is not None and self.checkpoints is not None
        with self.lock:
            offsets = dict(self.offsets)
            parts = lockstep.gather_json(self._state(offsets, governor=False))
            saved: bool | None = None
            if parts is not None:
                extra = _merged(parts)
                extra["governor"] = (
                    self.governor.state_dict() if self.governor is not None else None
                )
                try:
                    self.checkpoints.save(self.learner, extra)
                    saved = True
                except (OSError, ValueError) as exc:
                    log.error("the lockstep checkpoint could not be written: %s", exc)
                    saved = False
            saved = bool(lockstep.broadcast_json(saved))  # no rank commits before it is durable
        if not saved:
            return False
        self._written()
        if offsets:
            self.commits.commit(offsets, wait=wait)
        elif wait:
            self.commits.check(block=True)
        return True

    def restore(self) -> int | None:
        """Resume from the newest intact checkpoint: weights, governor, dedup, ledger, offsets.

        Every partition the checkpoint covers is sought to its offset as soon as it is assigned;
        the others start from the group's committed offsets (the source logs which).
        Returns the restored step, or None when there is no checkpoint.
        """
        if self.checkpoints is None:
            return None
        if self.lockstep is not None:
            return self._restore_lockstep()
        loaded = self.checkpoints.load_latest(self.learner)
        if loaded is None:
            log.info("no checkpoint in %s; starting fresh", self.checkpoints.directory)
            return None
        return self._resume(loaded)

    def _resume(self, loaded: Any, owned: set[TopicPartition] | None = None) -> int:
        """Take a loaded checkpoint's offsets, ledger, windows and governor state.

        ``owned``: a lockstep rank's partitions now; it keeps only their offsets and ledger
        ranges (the group's counters stay with rank 0), and the windows of every rank before.
        """
        extra = loaded.extra
        offsets = {(t, int(p)): int(o) for t, p, o in extra.get("offsets", [])}
        ledger = Ledger.from_json(extra.get("ledger"))
        if owned is not None:
            offsets = {tp: o for tp, o in offsets.items() if tp in owned}
            ledger = ledger.share(owned, counters=self.lockstep is None or self.lockstep.leader)
        self.source.seek(offsets)
        self.offsets.update(offsets)
        self.ledger = ledger
        world = int(extra.get("world", 1))
        self.ingestor.restore(extra.get("dedup", []), self.dedup_window * world)
        try:
            self.ingestor.restore_mining(extra.get("mining"))
        except ValueError as exc:
            raise CheckpointError(f"{loaded.path}: {exc}") from exc
        if self.governor is not None and extra.get("governor") is not None:
            self.governor.load_state_dict(extra["governor"])
        log.info(
            "%srestored checkpoint %s (step %d); reading on from %s",
            "" if self.lockstep is None else f"rank {self.lockstep.rank} ",
            loaded.path.name,
            loaded.step,
            {f"{t}:{p}": o for (t, p), o in sorted(offsets.items())},
        )
        return int(loaded.step)

    def _restore_lockstep(self) -> int | None:
        """Every rank restores the group's newest intact checkpoint (see the module doc).

        Each rank looks into its own checkpoint directory (one shared folder, or one volume per
        pod of which only rank 0's is written): the newest by step wins, the lowest rank on a
        tie, so a restart that makes another pod rank 0 does not resume from an older one.
        """
        lockstep, checkpoints = self.lockstep, self.checkpoints
        assert lockstep is not None and checkpoints is not None
        found = checkpoints.latest_extra()
        steps = lockstep.gather_json(found[1] if found is not None else -1)
        src = -1  # on rank 0: the rank with the newest checkpoint (-1: none anywhere)
        if steps is not None and max(steps) >= 0:
            src = steps.index(max(steps))
        src = int(lockstep.broadcast_json(src))
        loaded = None
        if src < 0:
            log.info("no checkpoint in %s; every rank starts fresh", checkpoints.directory)
        else:
            mine = lockstep.rank == src
            assert not mine or found is not None
            packed = lockstep.broadcast_bytes(_pack(found[0]) if mine and found else None, src)
            if mine:
                loaded = checkpoints.load_latest(self.learner)
            else:
                folder = Path(tempfile.mkdtemp(prefix="feedstep-rank-ckpt-"))
                try:
                    _unpack(packed, folder)
                    loaded = CheckpointManager(folder).load_latest(self.learner)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
        # every rank starts from rank 0's weights (a fresh start too: its store's LIVE)
        self.learner.sync_from_leader(reset=False)
        if loaded is None:
            return None
        return self._resume(loaded, owned=set(self.source.position()))

    def release(self, revoked: Iterable[TopicPartition]) -> None:
        """Revoked partitions leave the applied offsets; the next checkpoint drops them."""
        revoked = list(revoked)
        for tp in revoked:
            self.offsets.pop(tp, None)
        self.commits.forget(revoked)
        self._uncheckpointed = self.checkpoints is not None


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One checkpoint's extra from every rank's part: offsets, ledgers and windows, united."""
    ledgers = [Ledger.from_json(part["ledger"]) for part in parts]
    return {
        "offsets": sorted(o for part in parts for o in part["offsets"]),
        "ledger": Ledger.union(ledgers).to_json(),
        "ranks": [ledger.to_json() for ledger in ledgers],
        "dedup": [chunk for part in parts for chunk in part["dedup"]],
        "mining": None,
        "world": len(parts),
    }


def _pack(folder: Path) -> bytes:
    """A checkpoint folder as bytes: a JSON header line (name, sizes), then the files."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    header = {"name": folder.name, "files": [[p.name, p.stat().st_size] for p in files]}
    return json.dumps(header).encode() + b"\n" + b"".join(p.read_bytes() for p in files)


def _unpack(data: bytes, into: Path) -> None:
    """Write what :func:`_pack` made as a checkpoint folder under ``into``."""
    line, _, body = data.partition(b"\n")
    header = json.loads(line)
    folder = into / Path(header["name"]).name
    folder.mkdir()
    at = 0
    for name, size in header["files"]:
        (folder / Path(name).name).write_bytes(body[at : at + size])
        at += size
