"""Checkpoint commits are sent without waiting for the answer, which is accounted for later.

A fake source answers each ``commit_nowait`` only after a number of ``commit_result`` checks
(or when waited for) and can fail chosen commits, so the tests see commits still out while the
pipeline reads on, failures noticed late and retried, and revokes and shutdown settling them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from monitors.metrics import Metrics
from streaming.base import TopicPartition
from streaming.errors import CommitRejected, FeedstepError, SourceBusy
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource, NullCheckpoints, NullLearner
from streaming.testing.simulate import SimulatedFeedback


class _LateCommitSource(MemorySource):
    """Answers a commit sent with ``commit_nowait`` after ``delay`` non-waiting checks.

    ``fail`` maps the number of a sent commit (1, 2, ...) to the error its answer raises.
    ``events`` lists what happened, in order: ("sent", n), ("answered", n), ("sync",),
    ("revoke", pending before, pending after).
    """

    def __init__(
        self, values: list[bytes], *, delay: int, fail: dict[int, FeedstepError] | None = None
    ) -> None:
        super().__init__(values, partitions=3)
        self.delay = delay
        self.fail = dict(fail or {})
        self.sent = 0
        self.late_checks = 0
        self.pending: list[Any] | None = None  # [offsets, checks left, number]
        self.events: list[tuple[Any, ...]] = []

    def commit_nowait(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commit_result(wait=True)
        self.sent += 1
        self.pending = [dict(offsets), self.delay, self.sent]
        self.events.append(("sent", self.sent))

    def commit_result(self, wait: bool = False) -> bool:
        if self.pending is None:
            return True
        if not wait and self.pending[1] > 0:
            self.pending[1] -= 1
            self.late_checks += 1
            return False
        offsets, _, number = self.pending
        self.pending = None
        self.events.append(("answered", number))
        error = self.fail.pop(number, None)
        if error is not None:
            raise error
        super().commit(offsets)
        return True

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            self.commit_result(wait=True)
        except FeedstepError:
            pass  # superseded by this one, as KafkaSource does
        self.events.append(("sync",))
        super().commit(offsets)

    def set_rebalance_hooks(
        self,
        on_revoke: Callable[[list[TopicPartition]], None] | None,
        on_assign: Callable[[list[TopicPartition]], None] | None,
    ) -> None:
        def revoke(tps: list[TopicPartition]) -> None:
            before = self.pending is not None
            assert on_revoke is not None
            on_revoke(tps)
            self.events.append(("revoke", before, self.pending is not None))

        super().set_rebalance_hooks(revoke if on_revoke is not None else None, on_assign)


def _run(source: _LateCommitSource, events: int) -> tuple[Pipeline, Metrics]:
    settings = PipelineSettings(
        batch_size=4,
        max_wait_ms=0,
        stop_after_events=events,
        checkpoint_every_steps=5,
        commit_backoff_s=0.001,
        commit_backoff_max_s=0.001,
    )
    metrics = Metrics()
    pipe = Pipeline(
        source,
        MemorySink(),
        NullLearner(),  # type: ignore[arg-type]
        metrics,
        settings,
        checkpoints=NullCheckpoints(),  # type: ignore[arg-type]
    )
    pipe.run()
    return pipe, metrics


def _values(n: int, seed: int) -> list[bytes]:
    return list(SimulatedFeedback(seed=seed).payloads(n))


def _failures(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("feedstep_commit_failures_total") or 0.0


def test_commits_are_answered_later_and_every_one_is_accounted_for():
    source = _LateCommitSource(_values(600, 1), delay=3)
    pipe, metrics = _run(source, 600)
    assert source.committed() == source.end_offsets()
    assert pipe.summary.final_offsets == source.end_offsets()
    assert source.sent >= 10 and source.late_checks > 0  # the pipeline read on meanwhile
    sent = [e[1] for e in source.events if e[0] == "sent"]
    answered = [e[1] for e in source.events if e[0] == "answered"]
    assert answered == sent  # each commit's answer was read, in order
    assert source.pending is None and pipe.commits.sent is None
    assert _failures(metrics) == 0
    assert pipe.ledger.violations == [] and pipe.ledger.trained == 600


def test_a_commit_that_fails_late_is_counted_and_retried():
    source = _LateCommitSource(_values(600, 2), delay=2, fail={2: SourceBusy("no answer")})
    pipe, metrics = _run(source, 600)
    assert _failures(metrics) == 1
    assert ("sync",) in source.events  # the retry (or the final commit) waited for its answer
    assert source.committed() == source.end_offsets()
    assert pipe.summary.final_offsets == source.end_offsets()
    assert pipe.commits.due is None


def test_a_refused_commit_is_not_retried_and_later_ones_go_on(caplog):
    source = _LateCommitSource(_values(600, 3), delay=1, fail={1: CommitRejected("fenced")})
    with caplog.at_level(logging.WARNING, logger="streaming.runtime.pipeline"):
        pipe, metrics = _run(source, 600)
    assert _failures(metrics) == 0
    assert any("refused" in r.getMessage() for r in caplog.records)
    assert source.committed() == source.end_offsets()
    assert source.sent >= 2


@pytest.mark.parametrize("after", [97, 301])
def test_a_revoke_settles_the_commit_still_out_before_letting_go(after):
    source = _LateCommitSource(_values(600, 4), delay=10**9)  # answered only when waited for
    source.schedule_rebalance(after_records=after)
    pipe, _ = _run(source, 600)
    revokes = [e for e in source.events if e[0] == "revoke"]
    assert revokes and all(not out_after for _, _, out_after in revokes)
    assert any(out_before for _, out_before, _ in revokes)  # one was out when it began
    # after the rebalance the source restarts from the committed offsets: had the commit still
    # been out, events would be read and trained twice
    assert pipe.ledger.violations == []
    assert pipe.ledger.trained == 600 and pipe.summary.duplicates == 0
    assert source.committed() == source.end_offsets()
