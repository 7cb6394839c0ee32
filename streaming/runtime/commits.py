"""Offset commits: the one owner of commit state (sent, answered, failing, retried).

A commit goes to the source only after the checkpoint that covers it is durable (the pipeline
calls :meth:`Committer.commit` right after writing it) and after the dead letters it covers are
acknowledged. Periodic commits are sent without waiting (``Source.commit_nowait``) and their
answers read on a later loop turn (:meth:`Committer.check`); a failure is counted and retried
with a capped exponential backoff while the loop keeps running (newer offsets supersede older
ones); a refused commit (the group moved on) is not retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from monitors.metrics import Metrics
from streaming.base import Sink, Source, TopicPartition
from streaming.errors import FeedstepError

log = logging.getLogger("streaming.runtime.pipeline")

Offsets = dict[TopicPartition, int]


class Committer:
    """Commits offsets to a source, flushing dead letters first; retries failures with backoff.

    Args:
        source: Where offsets are committed.
        dead_letters: Flushed before any commit once :meth:`dead_lettered` was called.
        metrics: ``commit_failures`` is counted here.
        backoff_s: First retry delay; doubled per failure up to ``backoff_max_s``.
        on_change: Called when commits start or stop failing (readiness).
        on_done: Called with the offsets of every commit that went through.

    Example:
        >>> from streaming.testing import MemorySink, MemorySource
        >>> source = MemorySource([b"a", b"b"])
        >>> committer = Committer(source, MemorySink(), Metrics(), 0.5, 30.0)
        >>> committer.commit({("feedback", 0): 2}), source.committed(), committer.due
        (True, {('feedback', 0): 2}, None)
    """

    def __init__(
        self,
        source: Source,
        dead_letters: Sink,
        metrics: Metrics,
        backoff_s: float,
        backoff_max_s: float,
        on_change: Callable[[], None] = lambda: None,
        on_done: Callable[[Offsets], None] = lambda offsets: None,
    ) -> None:
        self.source = source
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._on_change = on_change
        self._on_done = on_done
        self._dlq_dirty = False
        self._due: Offsets | None = None  # failed, waiting for its retry
        self._sent: Offsets | None = None  # sent without waiting, answer not read yet
        self._retry_at = 0.0
        self._backoff = backoff_s

    @property
    def due(self) -> Offsets | None:
        """Offsets whose commit failed and waits for its retry (None: commits are healthy)."""
        return self._due

    @property
    def sent(self) -> Offsets | None:
        """Offsets of a commit sent without waiting whose answer is not read yet."""
        return self._sent

    def dead_lettered(self) -> None:
        """Dead letters were queued: the next commit flushes them first."""
        self._dlq_dirty = True

    def commit(self, offsets: Offsets, force: bool = False, wait: bool = True) -> bool:
        """Flush the dead letters, then commit ``offsets``; on failure retry later, backing off.

        While a failed commit waits for its retry, a new one only replaces its offsets (unless
        ``force``). With ``wait`` False the commit is only sent; :meth:`check` reads its answer.
        """
        if not offsets:
            return True
        if self._due is not None and not force:
            self._due = dict(offsets)  # the retry commits the newest offsets
            return False
        try:
            if self._dlq_dirty:
                self.dead_letters.flush(timeout_s=10.0)  # rejects are durable first
                self._dlq_dirty = False
            self._sent = None  # superseded: both calls settle (or raise) the one still out
            if wait:
                self.source.commit(offsets)
            else:
                self.source.commit_nowait(offsets)
                self._sent = dict(offsets)
                return True
        except FeedstepError as exc:
            return self._failed(offsets, exc)
        self._done(offsets)
        return True

    def check(self, block: bool = False) -> None:
        """Account for the outcome of a commit sent without waiting, once it is known."""
        if self._sent is None:
            return
        try:
            if not self.source.commit_result(wait=block):
                return  # still under way
        except FeedstepError as exc:
            offsets, self._sent = self._sent, None
            if self._due is None:  # a newer due commit supersedes it
                self._failed(offsets, exc)
            return
        offsets, self._sent = self._sent, None
        self._done(offsets)

    def retry(self, now: float) -> None:
        """Retry the failed commit once its backoff has passed."""
        if self._due is not None and now >= self._retry_at:
            self.commit(self._due, force=True)

    def retry_until(self, deadline: float) -> None:
        """Shutdown: retry the failed commit, backing off, while the deadline allows."""
        backoff = self._backoff_s
        while self._due is not None and time.monotonic() + backoff < deadline:
            time.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max_s)
            self.commit(self._due, force=True)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Revoked partitions: a failed commit no longer retries their offsets."""
        if self._due is not None:
            gone = set(partitions)
            self._due = {tp: o for tp, o in self._due.items() if tp not in gone} or None

    def _failed(self, offsets: Offsets, exc: FeedstepError) -> bool:
        """Count a failed commit and schedule its retry (a refused one is not retried)."""
        if not exc.retriable:
            log.warning("commit of %s refused (%s); not retried", fmt_offsets(offsets), exc)
            self._due = None
            return False
        self.metrics.commit_failures.inc()
        self._due = dict(offsets)
        self._retry_at = time.monotonic() + self._backoff
        log.warning(
            "commit failed (%s); retrying in %.1f s, the loop keeps running", exc, self._backoff
        )
        self._backoff = min(self._backoff * 2, self._backoff_max_s)
        self._on_change()
        return False

    def _done(self, offsets: Offsets) -> None:
        self._due = None
        self._backoff = self._backoff_s
        self._on_done(offsets)
        self._on_change()


def fmt_offsets(offsets: Offsets) -> str:
    """``topic:partition@offset, ...`` for logs."""
    return ", ".join(f"{t}:{p}@{o}" for (t, p), o in sorted(offsets.items()))
