"""The end of a finite source drains every batch in flight; a stop request bounds the settling."""

from __future__ import annotations

import threading
import time

from monitors.metrics import Metrics
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource, NullLearner
from streaming.testing.simulate import SimulatedFeedback


def _stream(n: int) -> list[bytes]:
    values = list(SimulatedFeedback(seed=5).payloads(n))
    values.insert(7, b"{nope")  # a reject
    values.insert(20, values[3])  # a redelivery
    return values


def _pipeline(source, learner, **settings) -> Pipeline:
    base = {"batch_size": 4, "max_wait_ms": 1e9, "shutdown_timeout_s": 0.05, "log_every_s": 3600}
    return Pipeline(
        source,
        MemorySink(),
        learner,  # type: ignore[arg-type]
        Metrics(),
        PipelineSettings(**{**base, **settings}),
    )


def test_a_finite_source_is_drained_whatever_the_step_time():
    # Each step takes 4x shutdown_timeout_s and up to six batches are in flight when the
    # source ends: the old deadline gave most of them up.
    learner = NullLearner(step_s=0.2)
    source = MemorySource(_stream(40))
    summary = _pipeline(source, learner).run()
    assert (summary.consumed, summary.accepted, summary.rejected, summary.duplicates) == (
        42,
        40,
        1,
        1,
    )
    assert summary.given_up == 0
    assert summary.trained_examples == learner.examples == 40
    assert summary.accounted and not summary.stopped
    assert source.committed() == source.end_offsets()  # every offset applied and committed


def test_a_stop_request_gives_up_what_has_not_started_by_its_deadline():
    learner = NullLearner(step_s=0.2)
    source = MemorySource(_stream(200))
    pipe = _pipeline(source, learner, shutdown_timeout_s=0.3, queue_batches=4)
    threading.Timer(0.3, pipe.stop).start()
    started = time.monotonic()
    summary = pipe.run()
    took = time.monotonic() - started
    assert summary.stopped
    assert not summary.accounted  # read but not trained: given up, read again next time
    assert summary.given_up > 0
    assert summary.trained_examples == learner.examples < summary.accepted
    # the stop deadline plus the step in flight, with slack for a loaded machine
    assert took < 0.3 + 0.3 + 0.2 + 2.0, took
    committed = sum(source.committed().values())
    assert committed < sum(source.end_offsets().values())  # the given-up events are not


def test_accounted_is_false_when_a_final_batch_is_too_small_to_train():
    class NeedsFour(NullLearner):
        def __init__(self) -> None:
            super().__init__()
            self.objective.min_batch_size = 4  # type: ignore[misc]

    learner = NeedsFour()
    summary = _pipeline(MemorySource(list(SimulatedFeedback(seed=1).payloads(10))), learner).run()
    assert summary.trained_examples == 8 and summary.given_up == 2
    assert not summary.accounted and not summary.stopped
