"""The one step: score → loss → regularize → clip → step → guard.

:class:`Learner` owns two resident copies of the model on one device: the frozen ``baseline``
(the live model) and the trainable ``candidate``. For each micro-batch :meth:`Learner.step`

1. scores the batch with the baseline (one no-grad forward),
2. runs the candidate forward once: its per-example scores are the candidate's *pre-step*
   predictions (test-then-train) and its losses are the training loss,
3. adds the L2-SP pull toward the baseline,
4. guards against a non-finite loss or gradient (the step is skipped, weights and optimizer
   state untouched, the reason reported),
5. clips the gradient norm and makes exactly one AdamW step.

Dropout is switched off in the candidate: the forward that gives the training loss is also the
candidate's test score, so it must be the same deterministic function the baseline computes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from learner.base import Objective, ObjectiveOutput, TensorBatch
from learner.regularizers import L2SP

TRAINABLE = ("full", "head", "bias")


@dataclass(frozen=True, slots=True)
class StepConfig:
    """Hyper-parameters of the one step.

    Attributes:
        lr: AdamW learning rate.
        weight_decay: decoupled weight decay, off for biases and norm layers.
        betas: AdamW betas.
        eps: AdamW epsilon.
        l2sp_weight: λ of the L2-SP pull toward the baseline (0 = off).
        max_grad_norm: gradient clipping threshold (0 = off).
        trainable: ``full``, ``head`` (only the task head) or ``bias`` (BitFit).
    """

    lr: float = 2e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    l2sp_weight: float = 0.01
    max_grad_norm: float = 1.0
    trainable: str = "full"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.l2sp_weight < 0 or self.max_grad_norm < 0:
            raise ValueError(
                "weight_decay, l2sp_weight and max_grad_norm must be >= 0, got "
                f"{self.weight_decay}, {self.l2sp_weight}, {self.max_grad_norm}"
            )
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did, in plain values (CPU tensors of shape ``[batch]``)."""

    step: int
    applied: bool
    skip_reason: str | None
    batch_size: int
    task_loss: float
    reg_loss: float
    grad_norm: float
    duration_s: float
    candidate: ObjectiveOutput
    baseline: ObjectiveOutput


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or lowered.endswith(".bias")


def _select(model: nn.Module, mode: str) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters():
        if mode == "full" or (mode == "head" and name.startswith("head.")):
            yield name, param
        elif mode == "bias" and (name.endswith(".bias") or name.startswith("head.")):
            yield name, param


class Learner:
    """A frozen baseline and a trainable candidate on one device, stepped once per batch.

    Args:
        model: the starting model; it becomes the candidate and a deep copy the baseline.
        objective: turns batches into per-example losses.
        config: the step's hyper-parameters.
        device: where both models live for the life of the learner.

    Example:
        >>> learner = Learner(model, RewardObjective(tok), StepConfig(lr=1e-4))  # doctest: +SKIP
        >>> result = learner.step(learner.objective.collate(examples))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: StepConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config or StepConfig()
        self.objective = objective
        self.device = torch.device(device)
        self.candidate = model.to(self.device).eval()  # eval(): dropout off, see module doc
        self.baseline = copy.deepcopy(self.candidate).eval().requires_grad_(False)
        chosen = dict(_select(self.candidate, self.config.trainable))
        for name, param in self.candidate.named_parameters():
            param.requires_grad_(name in chosen)
        self._names = list(chosen)
        self.params = list(chosen.values())
        base = dict(self.baseline.named_parameters())
        self.regularizer = L2SP(
            self.params, [base[n] for n in self._names], self.config.l2sp_weight
        )
        decay = [p for n, p in chosen.items() if not _is_no_decay(n, p)]
        no_decay = [p for n, p in chosen.items() if _is_no_decay(n, p)]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.config.lr,
            betas=self.config.betas,
            eps=self.config.eps,
            foreach=True,
        )
        self.steps = 0
        self.skipped = 0
        self._autocast = self.device.type == "cuda"

    @property
    def trainable_parameters(self) -> int:
        """Number of scalar weights the step updates."""
        return sum(p.numel() for p in self.params)

    @property
    def total_parameters(self) -> int:
        """Number of scalar weights in the candidate."""
        return sum(p.numel() for p in self.candidate.parameters())

    def _forward(self, model: nn.Module, batch: TensorBatch) -> ObjectiveOutput:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            return self.objective.forward(model, batch)

    def score(self, batch: TensorBatch) -> tuple[ObjectiveOutput, ObjectiveOutput]:
        """Baseline and candidate outputs without training (for holdouts and dry runs)."""
        batch = batch.to(self.device)
        with torch.no_grad():
            return _cpu(self._forward(self.baseline, batch)), _cpu(
                self._forward(self.candidate, batch)
            )

    def step(self, batch: TensorBatch) -> StepResult:
        """Score ``batch`` with both models, then make exactly one step on the candidate."""
        started = time.perf_counter()
        batch = batch.to(self.device)
        with torch.no_grad():
            base_out = self._forward(self.baseline, batch)
        cand_out = self._forward(self.candidate, batch)
        weights = batch.weights.to(cand_out.loss.dtype)
        task = (cand_out.loss * weights).sum() / weights.sum()
        reg = self.regularizer.penalty()
        skip: str | None = None
        grad_norm = float("nan")
        if not bool(torch.isfinite(task)):
            skip = "non_finite_loss"
        else:
            task.backward()
            self.regularizer.add_grad()
            if self.config.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(
                    self.params, self.config.max_grad_norm, foreach=True
                )
            else:
                norm = torch.linalg.vector_norm(
                    torch.stack(
                        [
                            torch.linalg.vector_norm(p.grad)
                            for p in self.params
                            if p.grad is not None
                        ]
                    )
                )
            grad_norm = float(norm)
            if not math.isfinite(grad_norm):
                skip = "non_finite_gradient"
            else:
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if skip is None:
            self.steps += 1
        else:
            self.skipped += 1
        return StepResult(
            step=self.steps,
            applied=skip is None,
            skip_reason=skip,
            batch_size=batch.size,
            task_loss=float(task.detach()),
            reg_loss=float(reg),
            grad_norm=grad_norm,
            duration_s=time.perf_counter() - started,
            candidate=_cpu(cand_out),
            baseline=_cpu(base_out),
        )

    def param_distance(self) -> float:
        """L2 distance ``‖θ_candidate - θ_baseline‖`` over the trainable weights."""
        return math.sqrt(float(self.regularizer.sq_distance()))


def _cpu(out: ObjectiveOutput) -> ObjectiveOutput:
    stacked = torch.stack([out.loss.detach(), out.score.detach(), out.correct]).float().cpu()
    return ObjectiveOutput(loss=stacked[0], score=stacked[1], correct=stacked[2])
