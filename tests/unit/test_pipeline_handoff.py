"""Closed batches cross the stage queues several at a time; each still gets its own step."""

from __future__ import annotations

import queue
from collections.abc import Sequence

import pytest

from learner.base import Example, TensorBatch
from monitors.metrics import Metrics
from streaming.errors import PipelineError
from streaming.events import decode_event, to_example
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource, NullLearner, NullObjective
from streaming.testing.simulate import SimulatedFeedback


class _RecordingObjective(NullObjective):
    """Remembers the examples of every batch it collated; fails on the ``fail_on``-th one."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.collated = 0
        self.examples_of: dict[int, list[Example]] = {}

    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        self.collated += 1
        if self.collated == self.fail_on:
            raise RuntimeError("tokenizer broke")
        batch = super().collate(examples)
        self.examples_of[id(batch)] = list(examples)
        return batch


class _RecordingLearner(NullLearner):
    """A NullLearner that keeps, in step order, the examples each step trained on."""

    def __init__(self, objective: _RecordingObjective) -> None:
        super().__init__()
        self.objective = objective
        self.trained: list[Example] = []

    def step(self, batch: TensorBatch):  # type: ignore[no-untyped-def]
        self.trained += self.objective.examples_of.pop(id(batch))
        return super().step(batch)


class _SizesQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that records how many batches each handoff carried."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.sizes: list[int] = []

    def _put(self, item) -> None:  # type: ignore[no-untyped-def]
        if item is not None:
            self.sizes.append(len(item))
        super()._put(item)


def _pipeline(events: int, learner: _RecordingLearner) -> tuple[Pipeline, MemorySource]:
    values = list(SimulatedFeedback(seed=5).payloads(events))
    source = MemorySource(values)
    settings = PipelineSettings(batch_size=2, queue_batches=1, max_wait_ms=0)
    pipe = Pipeline(source, MemorySink(), learner, Metrics(), settings)  # type: ignore[arg-type]
    pipe.stages.tokenize_q = _SizesQueue(maxsize=1)
    return pipe, source


def test_batches_handed_over_together_are_each_stepped_once_in_order():
    learner = _RecordingLearner(_RecordingObjective())
    pipe, source = _pipeline(400, learner)
    summary = pipe.run()
    assert summary.steps == learner.steps == 200 and summary.trained_examples == 400
    assert max(pipe.stages.tokenize_q.sizes) > 1  # the test covers handoffs of several batches
    assert sum(pipe.stages.tokenize_q.sizes) == 200
    polled = MemorySource(list(SimulatedFeedback(seed=5).payloads(400))).poll(0.0, 1000)
    expected = [to_example(decode_event(r.value)) for r in polled]  # type: ignore[arg-type]
    assert learner.trained == expected
    assert source.committed() == source.end_offsets()
    assert pipe.ledger.trained == 400 and pipe.ledger.violations == []


@pytest.mark.parametrize("fail_on", [2, 7, 40])
def test_a_collate_failure_inside_a_handoff_commits_nothing_of_its_batch(fail_on):
    learner = _RecordingLearner(_RecordingObjective(fail_on=fail_on))
    pipe, source = _pipeline(400, learner)
    with pytest.raises(PipelineError, match="tokenizer broke"):
        pipe.run()
    # Batch ``fail_on`` (events 2 * (fail_on - 1) onwards) was never stepped nor committed.
    assert learner.steps <= fail_on - 1
    assert source.committed().get(("feedback", 0), 0) <= 2 * (fail_on - 1)
