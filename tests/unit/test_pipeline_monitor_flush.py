"""Monitoring once per loop turn gives the values that step-by-step monitoring gives."""

from __future__ import annotations

import math
import random

import pytest
import torch

from learner.base import ObjectiveOutput, TensorBatch
from learner.step import StepResult
from monitors.metrics import Metrics
from monitors.prequential import PairedPrequential
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource, NullLearner
from streaming.testing.simulate import SimulatedFeedback


class _NoisyLearner(NullLearner):
    """Seeded per-example losses and correctness (undefined for ~30%); every 7th step skipped."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.results: list[StepResult] = []

    def step(self, batch: TensorBatch) -> StepResult:
        self.steps += 1
        self.examples += batch.size

        defined = [self.rng.random() < 0.7 for _ in range(batch.size)]  # a right answer exists

        def output() -> ObjectiveOutput:
            loss = [self.rng.random() for _ in range(batch.size)]
            correct = [float(self.rng.random() < 0.5) if d else math.nan for d in defined]
            return ObjectiveOutput(torch.tensor(loss), torch.tensor(loss), torch.tensor(correct))

        applied = self.steps % 7 != 0
        result = StepResult(
            step=self.steps,
            applied=applied,
            skip_reason=None if applied else "non_finite_loss",
            batch_size=batch.size,
            task_loss=self.rng.random(),
            reg_loss=self.rng.random(),
            grad_norm=self.rng.random(),
            duration_s=self.rng.random() / 100,
            candidate=output(),
            baseline=output(),
        )
        self.results.append(result)
        return result


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


@pytest.mark.parametrize("seed", [0, 1])
def test_turn_flush_matches_step_by_step_monitoring(seed):
    learner = _NoisyLearner(seed)
    metrics = Metrics()
    settings = PipelineSettings(batch_size=5, max_wait_ms=0, prequential_window=40)
    source = MemorySource(list(SimulatedFeedback(seed=seed).payloads(600)), partitions=3)
    pipe = Pipeline(source, MemorySink(), learner, metrics, settings)  # type: ignore[arg-type]
    summary = pipe.run()

    results = learner.results
    assert len(results) == summary.steps + summary.skipped_steps == 120
    want = PairedPrequential(40)
    scored = base_right = cand_right = 0.0
    for r in results:  # what updating after every step gives
        want.update(
            r.baseline.loss.tolist(),
            r.candidate.loss.tolist(),
            r.baseline.correct.tolist(),
            r.candidate.correct.tolist(),
        )
        for b, c in zip(r.baseline.correct.tolist(), r.candidate.correct.tolist(), strict=True):
            if c == c:
                scored, base_right, cand_right = scored + 1, base_right + b, cand_right + c
    got, snap = pipe.prequential.snapshot(), want.snapshot()
    assert got.events == snap.events == 600
    assert got.candidate_loss == pytest.approx(snap.candidate_loss, rel=1e-12)
    assert got.mean_loss_difference == pytest.approx(snap.mean_loss_difference, abs=1e-12)
    assert got.baseline_accuracy == pytest.approx(snap.baseline_accuracy, rel=1e-12)
    assert (summary.scored, summary.baseline_correct, summary.candidate_correct) == (
        scored,
        base_right,
        cand_right,
    )

    applied = [r for r in results if r.applied]
    assert _sample(metrics, "feedstep_steps_total") == len(applied) == summary.steps
    assert _sample(metrics, "feedstep_batch_size_events_count") == 120
    assert _sample(metrics, "feedstep_batch_size_events_sum") == 600
    assert _sample(metrics, "feedstep_step_duration_seconds_sum") == pytest.approx(
        sum(r.duration_s for r in results), rel=1e-12
    )
    assert _sample(metrics, "feedstep_feedback_to_update_seconds_count") == 5 * len(applied)
    last = results[-1]  # the gauges show the last step
    assert _sample(metrics, "feedstep_task_loss") == pytest.approx(last.task_loss)
    assert _sample(metrics, "feedstep_grad_norm") == pytest.approx(last.grad_norm)
    assert _sample(metrics, "feedstep_prequential_loss", model="candidate") == pytest.approx(
        snap.candidate_loss, rel=1e-12
    )


def test_on_progress_sees_each_step_with_its_monitors_up_to_date():
    learner = _NoisyLearner(3)
    settings = PipelineSettings(batch_size=4, max_wait_ms=0)
    source = MemorySource(list(SimulatedFeedback(seed=3).payloads(80)))
    pipe = Pipeline(source, MemorySink(), learner, Metrics(), settings)  # type: ignore[arg-type]
    seen: list[int] = []

    def progress(summary):  # type: ignore[no-untyped-def]
        seen.append(pipe.prequential.snapshot().events)

    pipe.on_progress = progress
    pipe.run()
    assert seen == [4 * (i + 1) for i in range(20)]
