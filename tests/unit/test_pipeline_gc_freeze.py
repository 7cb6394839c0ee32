"""Pipeline.run keeps the heap alive at its start out of the collector, and only during the run."""

from __future__ import annotations

import gc

import pytest

from monitors.metrics import Metrics
from streaming.errors import PipelineError
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource, NullLearner
from streaming.testing.simulate import SimulatedFeedback


def _pipeline(learner: NullLearner, freeze: bool) -> tuple[Pipeline, list[int]]:
    source = MemorySource(list(SimulatedFeedback(seed=11).payloads(40)))
    settings = PipelineSettings(batch_size=4, max_wait_ms=0, gc_freeze=freeze)
    pipe = Pipeline(source, MemorySink(), learner, Metrics(), settings)  # type: ignore[arg-type]
    frozen: list[int] = []
    pipe.on_progress = lambda _summary: frozen.append(gc.get_freeze_count())
    return pipe, frozen


@pytest.mark.parametrize("freeze", [True, False])
def test_the_heap_is_frozen_during_the_run_only(freeze):
    assert gc.get_freeze_count() == 0
    pipe, frozen = _pipeline(NullLearner(), freeze)
    pipe.run()
    assert len(frozen) == 10
    assert all(n > 0 for n in frozen) if freeze else frozen == [0] * 10
    assert gc.get_freeze_count() == 0


class _BrokenLearner(NullLearner):
    def step(self, batch):  # type: ignore[no-untyped-def]
        if self.steps == 3:
            raise RuntimeError("device lost")
        return super().step(batch)


def test_a_failed_run_unfreezes_too():
    pipe, frozen = _pipeline(_BrokenLearner(), True)
    with pytest.raises(PipelineError, match="device lost"):
        pipe.run()
    assert frozen and all(n > 0 for n in frozen)
    assert gc.get_freeze_count() == 0
