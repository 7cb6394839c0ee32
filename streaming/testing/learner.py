"""A learner that learns nothing, for tests whose subject is the loop rather than the model.

:class:`NullLearner` offers what the pipeline uses of :class:`learner.step.Learner`; its step
costs microseconds (or ``step_s`` seconds, to stand in for a slow model), which also makes it the
learner to measure the ingest path with (``bench/ingest.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learner.base import Example, Objective, ObjectiveOutput, TensorBatch
from learner.step import StepResult

_ONES: dict[int, torch.Tensor] = {}  # NullObjective's all-ones weights, per batch size


class NullObjective(Objective):
    """An objective that accepts every example and turns a batch into no tensors at all.

    :meth:`collate` keeps only the batch size and the example weights, so the cost of a batch
    is the pipeline's, not a tokenizer's.

    Example:
        >>> batch = NullObjective().collate([Example("p", "r", target=1.0)])
        >>> batch.size, batch.tensors
        (1, {})
    """

    name = "null"
    needs_reference = False
    min_batch_size = 1

    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        """A batch of ``len(examples)`` with the examples' weights and no other tensors.

        Building a tensor from a list costs ~10-30 µs, a no-op learner's whole step several
        times over; the usual all-ones weights come from a tensor kept per batch size (never
        written to).
        """
        n = len(examples)
        weights = [e.weight for e in examples]
        if weights.count(1.0) == n:
            ones = _ONES.get(n)
            if ones is None:
                ones = _ONES[n] = torch.ones(n)
            return TensorBatch({}, n, ones)
        return TensorBatch({}, n, torch.tensor(weights))

    def model_values(self, model: nn.Module, batch: TensorBatch) -> torch.Tensor:
        """Zero for every example (the model is never called)."""
        return torch.zeros(batch.size)

    def from_values(
        self, values: torch.Tensor, batch: TensorBatch, reference: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        """Zero loss and score; correctness undefined (NaN) for every example."""
        return _null_output(batch.size)


def _null_output(size: int) -> ObjectiveOutput:
    zeros = torch.zeros(size)
    return ObjectiveOutput(loss=zeros, score=zeros, correct=torch.full((size,), math.nan))


class _NullOptimizer:
    """Just enough of an optimizer for the loop's metrics: one param group with a rate."""

    def __init__(self, lr: float) -> None:
        self.param_groups: list[dict[str, Any]] = [{"lr": lr, "params": []}]


class NullLearner:
    """A stand-in for :class:`learner.step.Learner` whose step changes nothing.

    It offers what :class:`~streaming.runtime.pipeline.Pipeline` uses of a learner (``objective``,
    ``step``, ``score``, ``optimizer.param_groups``, ``param_distance``,
    ``device_memory_bytes``, ``device``) and counts what it was given. Every step is
    "applied", with zero loss and score and undefined correctness (NaN) per example, so
    prequential accuracy stays undefined. No model, no gradients: the cost of a step is a few
    microseconds, which makes it the learner to measure the ingest path with.

    Args:
        lr: The rate reported in ``optimizer.param_groups[0]["lr"]``.
        step_s: Seconds each step sleeps, to stand in for a slow model.

    Example:
        >>> learner = NullLearner()
        >>> result = learner.step(learner.objective.collate([Example("p", "r", target=0.0)]))
        >>> result.applied, result.batch_size, learner.steps, learner.examples
        (True, 1, 1, 1)
    """

    def __init__(self, lr: float = 0.0, step_s: float = 0.0) -> None:
        self.objective = NullObjective()
        self.step_s = step_s
        self.optimizer = _NullOptimizer(lr)
        self.device = torch.device("cpu")
        self.steps = 0
        """Steps taken."""
        self.examples = 0
        """Examples seen over all steps."""
        self.trainable_parameters = 0
        self.total_parameters = 0
        self._outputs: dict[int, ObjectiveOutput] = {}

    @property
    def lr(self) -> float:
        """The rate the next step would use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def param_distance(self) -> float:
        """Always 0.0: the candidate never moves."""
        return 0.0

    def device_memory_bytes(self) -> int:
        """Always 0: nothing lives on a device."""
        return 0

    def score(self, batch: TensorBatch) -> tuple[ObjectiveOutput, ObjectiveOutput]:
        """(baseline, candidate) outputs of ``batch``, both the null output."""
        out = self._output(batch.size)
        return out, out

    def step(self, batch: TensorBatch) -> StepResult:
        """Count the batch and report an applied step with zero loss."""
        started = time.perf_counter()
        if self.step_s:
            time.sleep(self.step_s)
        out = self._output(batch.size)
        self.steps += 1
        self.examples += batch.size
        return StepResult(
            step=self.steps,
            applied=True,
            skip_reason=None,
            batch_size=batch.size,
            task_loss=0.0,
            reg_loss=0.0,
            grad_norm=0.0,
            duration_s=time.perf_counter() - started,
            candidate=out,
            baseline=out,
            lr=self.lr,
        )

    def boost(self, factor: float, steps: int) -> None:
        """Accepted and ignored (there is no rate to raise)."""

    def _output(self, size: int) -> ObjectiveOutput:
        # Outputs are never written to, so one per batch size is shared between steps.
        out = self._outputs.get(size)
        if out is None:
            out = self._outputs[size] = _null_output(size)
        return out


class NullCheckpoints:
    """What the pipeline needs of a checkpoint manager; it writes nothing.

    It sets the commit cadence (offsets are committed after each "checkpoint") without the
    cost of saving weights, for benchmarks of the ingest path.

    Example:
        >>> checkpoints = NullCheckpoints()
        >>> checkpoints.save(learner=None, extra={"offsets": []}).name, checkpoints.saves
        ('nonexistent', 1)
    """

    def __init__(self) -> None:
        self.directory = Path("/nonexistent")
        self.saves = 0

    def save(self, learner: object, extra: dict[str, Any] | None = None) -> Path:
        """Count the call; nothing is written."""
        self.saves += 1
        return self.directory

    def load_latest(self, learner: object) -> None:
        """There is never a checkpoint to load."""
        return None
