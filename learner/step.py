"""The one step: score → loss → regularize → clip → step → guard.

:class:`Learner` owns a frozen ``baseline`` (the live model) and a trainable ``candidate`` on
one device for the life of the process. For each micro-batch :meth:`Learner.step`

1. scores the batch with the baseline (one no-grad forward); for objectives with a reference
   (KTO, DPO) the same values are the reference's, so the baseline runs once per step,
2. runs the candidate forward once: its per-example scores are the candidate's *pre-step*
   predictions (test-then-train) and its weighted mean loss is the task loss,
3. guards: a non-finite loss or task gradient skips the step, leaving weights, optimizer
   state, EWC Fisher and schedule untouched, and says why; a batch whose examples all weigh 0
   (scored only: thumbs that pair mining holds back) is done without any update,
4. folds the task gradient into the EWC Fisher estimate, clips the task gradient's norm, and
   adds the exact gradients of the L2-SP and EWC pulls toward the anchors (not clipped),
5. makes exactly one AdamW step at the scheduled (possibly boosted) rate, and, with a trust
   region, scales the update ``Δθ`` back to ``max_update_norm`` when it is longer: with Adam
   every coordinate moves by about the rate whatever the gradient, so clipping the gradient
   does not bound the update. The scale applied is reported, never silent,
6. with weight averaging (``ema_decay`` = d > 0) moves the average toward the new weights,
   ``θ̄ ← d·θ̄ + (1-d)·θ``.

Weight averaging: with ``ema_decay`` the candidate the outside sees (the scores and losses a
step reports, :meth:`Learner.score`, what is published and promoted, the probe) is the
exponential moving average ``θ̄`` of the trained weights, not the trained weights themselves.
The trained weights carry each step's gradient noise; the average keeps what the last
``1/(1-d)`` steps agree on, so a reply's score moves less between two moments (the halves of a
mined pair, arriving up to a thousand events apart) at the price of lagging the trained weights.
It costs a third copy of the trainable weights and one more forward (no gradient) per step: the
average scores the batch, the trained weights give the loss that is stepped.

Dropout is switched off in the candidate: the forward that gives the training loss is also the
candidate's test score, so it must be the same deterministic function the baseline computes.

What trains (``trainable``): ``full``; ``head`` (the task head: ``head`` of the reward model,
``lm_head`` of a causal LM); ``bias`` (BitFit: biases and the head); ``lora`` (peft adapters,
see :mod:`learner.lora`). The anchors the regularizers pull toward are the baseline's weights:
for ``full``/``head``/``bias`` the baseline copy's tensors, for ``lora`` the ``live`` adapter's
(shared, not copied). A promotion makes the candidate the new anchor in both cases.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from learner.base import Objective, ObjectiveOutput, TensorBatch
from learner.distributed import Lockstep
from learner.lora import (
    AVERAGE,
    CANDIDATE,
    DIGEST,
    LIVE,
    Adapter,
    AdapterView,
    adapter_state,
    add_adapter_copy,
    attach_adapters,
    load_adapter_state,
    tensor_digest,
)
from learner.regularizers import L2SP, OnlineEWC
from learner.schedule import LRSchedule

log = logging.getLogger(__name__)

TRAINABLE = ("full", "head", "bias", "lora")
_HEADS = ("head.", "lm_head.")


@dataclass(frozen=True, slots=True)
class StepConfig:
    """Hyper-parameters of the one step. The defaults are one plain regularized AdamW step.

    Attributes:
        lr: peak AdamW learning rate.
        weight_decay: decoupled weight decay, off for biases and norm layers.
        betas: AdamW betas.
        eps: AdamW epsilon.
        l2sp_weight: λ of the L2-SP pull toward the anchors (0 = off).
        ewc_weight: λ of the online-EWC pull (0 = off). Squared gradients are small, so
            useful values are large (1e2 to 1e6).
        ewc_decay: γ of the Fisher moving average ``F ← γF + (1-γ)g²``, in [0, 1).
        max_grad_norm: clipping threshold of the task gradient's norm (0 = off).
        max_update_norm: trust region, the cap on ``‖Δθ‖`` of one step (0 = off).
        warmup_steps: linear warm-up length in applied steps (0 = off).
        cosine_decay_steps: cosine decay length after warm-up (0 = constant rate).
        min_lr: the floor the cosine decays to (<= lr).
        trainable: ``full``, ``head``, ``bias`` (BitFit) or ``lora``.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is ``alpha / r · BA``).
        lora_target_modules: module names to adapt; empty = the attention projections.
        compile: run the models through ``torch.compile`` (falls back to eager on failure).
        ema_decay: weight averaging, the decay d of ``θ̄ ← d·θ̄ + (1-d)·θ`` per applied step
            (0 = off: the trained weights are the candidate; see the module doc).
    """

    lr: float = 2e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    l2sp_weight: float = 0.01
    ewc_weight: float = 0.0
    ewc_decay: float = 0.99
    max_grad_norm: float = 1.0
    max_update_norm: float = 0.0
    warmup_steps: int = 0
    cosine_decay_steps: int = 0
    min_lr: float = 0.0
    trainable: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = ()
    compile: bool = False
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        non_negative = {
            "weight_decay": self.weight_decay,
            "l2sp_weight": self.l2sp_weight,
            "ewc_weight": self.ewc_weight,
            "max_grad_norm": self.max_grad_norm,
            "max_update_norm": self.max_update_norm,
            "warmup_steps": self.warmup_steps,
            "cosine_decay_steps": self.cosine_decay_steps,
            "min_lr": self.min_lr,
        }
        for key, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if not 0.0 <= self.ewc_decay < 1.0:
            raise ValueError(f"ewc_decay must lie in [0, 1), got {self.ewc_decay}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"ema_decay must lie in [0, 1) (0 turns weight averaging off), got {self.ema_decay}"
            )
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.lora_r < 1 or not self.lora_alpha > 0:
            raise ValueError(
                f"lora_r must be >= 1 and lora_alpha > 0, got {self.lora_r} and {self.lora_alpha}"
            )


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did, in plain values (CPU tensors of shape ``[batch]``).

    ``lr`` is the rate the step used (or would have used, when skipped). ``update_norm`` is
    ``‖Δθ‖`` of the applied update, measured only with a trust region (else NaN), and
    ``update_scale`` the factor the trust region applied to AdamW's update (1.0 = untouched;
    NaN when the step was skipped).
    """

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
    lr: float = float("nan")
    update_norm: float = float("nan")
    update_scale: float = float("nan")


def _is_no_decay(name: str, param: nn.Parameter) -> bool:
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or lowered.endswith(".bias")


def _select(model: nn.Module, mode: str) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters():
        is_head = name.startswith(_HEADS)
        if (
            mode == "full"
            or (mode == "head" and is_head)
            or (mode == "lora" and param.requires_grad)
        ):
            yield name, param
        elif mode == "bias" and (name.endswith(".bias") or is_head):
            yield name, param


class Learner:
    """A frozen baseline and a trainable candidate on one device, stepped once per batch.

    Args:
        model: the starting model. It becomes the candidate; the baseline is a deep copy, or,
            with ``trainable="lora"``, the same peft model with its ``live`` adapter active.
        objective: turns batches into per-example losses.
        config: the step's hyper-parameters.
        device: where both models live for the life of the learner.
        base: what the starting model is called (``name`` as ``--model`` takes it, ``seed``);
            recorded with published LoRA adapters, beside the digest of the base weights.
        lockstep: the ranks this learner trains with (:mod:`learner.distributed`); None: alone.

    Example:
        >>> learner = Learner(model, RewardObjective(tok), StepConfig(lr=1e-4))  # doctest: +SKIP
        >>> result = learner.step(learner.objective.collate(examples))  # doctest: +SKIP
        >>> learner.boost(2.0, steps=10)  # drift: learn faster for a while  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: StepConfig | None = None,
        device: torch.device | str = "cpu",
        base: Mapping[str, Any] | None = None,
        lockstep: Lockstep | None = None,
    ) -> None:
        cfg = self.config = config or StepConfig()
        self.lockstep = lockstep
        self.objective = objective
        self.device = torch.device(device)
        model = model.to(self.device).eval()  # eval(): dropout off, see module doc
        self.base: dict[str, Any] | None = None
        if cfg.trainable == "lora":
            model.requires_grad_(False)
            self.base = {
                "name": type(model).__name__,
                **(base or {}),
                "sha256": tensor_digest(model),
                "digest": DIGEST,
            }
            self.candidate: nn.Module = attach_adapters(
                model, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules
            ).eval()
            self.baseline: nn.Module = AdapterView(self.candidate, LIVE, CANDIDATE)
        else:
            self.candidate = model
            self.baseline = copy.deepcopy(model).eval().requires_grad_(False)
        chosen = dict(_select(self.candidate, cfg.trainable))
        for name, param in self.candidate.named_parameters():
            param.requires_grad_(name in chosen)
        self.param_names = list(chosen)
        self.params = list(chosen.values())
        # Weight averaging: the averaged model and its tensors, in the order of ``params``.
        self.average: nn.Module | None = None
        self.average_params: list[torch.Tensor] = []
        if cfg.ema_decay:
            if cfg.trainable == "lora":
                add_adapter_copy(self.candidate, AVERAGE, CANDIDATE)
                for name, param in self.candidate.named_parameters():  # as set above
                    param.requires_grad_(name in chosen)
                self.average = AdapterView(self.candidate, AVERAGE, CANDIDATE)
                named = dict(self.candidate.named_parameters())
                self.average_params = [named[_twin_name(n, AVERAGE)] for n in self.param_names]
            else:
                self.average = copy.deepcopy(self.candidate).eval().requires_grad_(False)
                named = dict(self.average.named_parameters())
                self.average_params = [named[n] for n in self.param_names]
        # With LoRA the anchors (the live adapter) are not rebuilt from the store's files at
        # start, so checkpoints keep them.
        self.owns_anchors = cfg.trainable == "lora"
        if self.owns_anchors:
            live = dict(self.candidate.named_parameters())
            self.anchors = [live[_twin_name(n, LIVE)] for n in self.param_names]
        else:
            base = dict(self.baseline.named_parameters())
            self.anchors = [base[n] for n in self.param_names]
        self.l2sp = L2SP(self.params, self.anchors, cfg.l2sp_weight)
        self.ewc = OnlineEWC(self.params, self.anchors, cfg.ewc_weight, cfg.ewc_decay)
        self.schedule = LRSchedule(cfg.lr, cfg.warmup_steps, cfg.cosine_decay_steps, cfg.min_lr)
        decay = [p for n, p in chosen.items() if not _is_no_decay(n, p)]
        no_decay = [p for n, p in chosen.items() if _is_no_decay(n, p)]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.schedule.rate(1),
            betas=cfg.betas,
            eps=cfg.eps,
            foreach=True,
        )
        # Trust region: room for the pre-step weights, allocated once.
        self._before = [torch.empty_like(p) for p in self.params] if cfg.max_update_norm else []
        self._models = {"baseline": self.baseline, "candidate": self.candidate}
        if self.average is not None:
            self._models["average"] = self.average
        self._compiled = _compile(self._models) if cfg.compile else {}
        self.steps = 0
        self.skipped = 0
        # Switches since the start (promotion, rollback, boost) and whether the last cleared the
        # optimizer: lockstep ranks copy rank 0's state when it changes (see sync_from_leader).
        self.changes = 0
        self.reset_pending = False
        self._distance: tuple[int, float] | None = None
        self._autocast = self.device.type == "cuda"

    # -- facts ----------------------------------------------------------------------------------
    @property
    def trainable_parameters(self) -> int:
        """Number of scalar weights the step updates."""
        return sum(p.numel() for p in self.params)

    @property
    def total_parameters(self) -> int:
        """Number of scalar weights in the candidate (base weights, adapters and all)."""
        return sum(p.numel() for p in self.candidate.parameters())

    @property
    def judged(self) -> nn.Module:
        """The model the outside sees as the candidate: the weight average when there is one."""
        return self.candidate if self.average is None else self.average

    @property
    def lr(self) -> float:
        """The rate the next step will use."""
        return self.schedule.rate(self.steps + 1)

    def device_memory_bytes(self) -> int:
        """Bytes of device memory held by tensors (``torch.cuda.memory_allocated``; 0 on CPU)."""
        if self.device.type != "cuda":
            return 0
        return int(torch.cuda.memory_allocated(self.device))

    def param_distance(self) -> float:
        """L2 distance ``‖θ - θ_anchor‖`` over the trainable weights (computed once per step)."""
        cached = self._distance
        if cached is None or cached[0] != self.steps:
            cached = self._distance = (self.steps, math.sqrt(float(self.l2sp.sq_distance())))
        return cached[1]

    def boost(self, factor: float, steps: int) -> None:
        """Multiply the scheduled rate by ``factor`` for the next ``steps`` applied steps.

        The drift monitors call it; afterwards the rate returns to the schedule.
        """
        self.schedule.boost(factor, steps)
        self.changes += 1

    # -- switching (promotion, rollback) ------------------------------------------------------
    @torch.no_grad()
    def rebase(self) -> None:
        """Make the candidate the new baseline (after a promotion).

        The baseline's weights become a copy of the candidate's (with LoRA: the candidate
        adapter is copied into the live one), so the L2-SP/EWC anchor and the paired comparison
        restart from the promoted model; the optimizer keeps its moments. With weight averaging
        the promoted model is the average; the trained weights go on from where they are.
        """
        if self.config.trainable == "lora":
            promoted = self.average_params or self.params
            for anchor, param in zip(self.anchors, promoted, strict=True):
                anchor.copy_(param)
        else:
            self.baseline.load_state_dict(self.judged.state_dict())
        self._distance = None
        self.changes += 1

    @torch.no_grad()
    def reset_to(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` into both models and clear the optimizer's moments (after a rollback).

        ``state`` is a full state dict, or with LoRA an adapter's weights in peft's file layout
        (``adapter_model.safetensors``), loaded into the live and the candidate adapter.
        """
        if self.config.trainable == "lora":
            load_adapter_state(self.candidate, LIVE, state)
            load_adapter_state(self.candidate, CANDIDATE, state)
            if self.average is not None:
                load_adapter_state(self.candidate, AVERAGE, state)
        else:
            self.candidate.load_state_dict(state)
            self.baseline.load_state_dict(state)
            if self.average is not None:
                self.average.load_state_dict(state)
        self.optimizer.state.clear()
        self._distance = None
        self.changes += 1
        self.reset_pending = True

    @torch.no_grad()
    def sync_from_leader(self, reset: bool) -> None:
        """Take rank 0's trainable weights, anchors and schedule (lockstep, after a switch).

        ``reset``: the switch was a rollback, which cleared the optimizer's moments on rank 0.
        The weights that never train are the same on every rank from the start.
        """
        assert self.lockstep is not None
        seen: set[int] = set()
        tensors = []
        for t in [*self.params, *self.anchors, *self.average_params]:
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
        schedule = self.lockstep.sync_from_leader(tensors, self.schedule.state())
        self.schedule.load(schedule)
        if reset:
            self.optimizer.state.clear()
        self.reset_pending = False
        self._distance = None

    def publishable(self, role: str = "candidate") -> Any:
        """What the model store writes for ``role`` (``candidate`` or ``baseline``).

        The model itself, or with LoRA an :class:`learner.lora.Adapter`: that role's adapter
        weights, its peft config and the reference to the base. With weight averaging the
        candidate is the average.
        """
        if role not in ("candidate", "baseline"):
            raise ValueError(f"role must be 'candidate' or 'baseline', got {role!r}")
        if self.base is None:
            return self.judged if role == "candidate" else self.baseline
        if role == "baseline":
            adapter = LIVE
        else:
            adapter = CANDIDATE if self.average is None else AVERAGE
        config = self.candidate.peft_config[adapter]  # type: ignore[index]
        inner = self.candidate.get_base_model()  # type: ignore[operator]
        model_type = "reward_model" if hasattr(inner, "head") else "pretrained"
        return Adapter(adapter_state(self.candidate, adapter), config, dict(self.base), model_type)

    # -- scoring --------------------------------------------------------------------------------
    def _values(self, role: str, batch: TensorBatch) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._autocast):
            compiled = self._compiled.get(role)
            if compiled is not None:
                try:
                    return self.objective.model_values(compiled, batch)
                except Exception as exc:  # compile errors surface at the first call
                    log.warning("torch.compile failed, running eagerly from now on: %s", exc)
                    self._compiled = {}
            return self.objective.model_values(self._models[role], batch)

    def _outputs(
        self, batch: TensorBatch, train: bool = True
    ) -> tuple[ObjectiveOutput, ObjectiveOutput, ObjectiveOutput]:
        """Baseline (no grad), judged and trained outputs; the baseline runs once.

        Without weight averaging the judged and the trained outputs are one forward of the
        candidate. With it the average is judged (no grad) and, when ``train``, the trained
        weights run too, for the loss that is stepped.
        """
        with torch.no_grad():
            base_values = self._values("baseline", batch).detach()
        reference = base_values if self.objective.needs_reference else None
        base_out = self.objective.from_values(base_values, batch, reference)
        if self.average is None:
            cand_out = self.objective.from_values(
                self._values("candidate", batch), batch, reference
            )
            return base_out, cand_out, cand_out
        with torch.no_grad():
            judged = self.objective.from_values(self._values("average", batch), batch, reference)
        if not train:
            return base_out, judged, judged
        trained = self.objective.from_values(self._values("candidate", batch), batch, reference)
        return base_out, judged, trained

    def score(self, batch: TensorBatch) -> tuple[ObjectiveOutput, ObjectiveOutput]:
        """Baseline and candidate outputs without training (for holdouts and dry runs)."""
        batch = batch.to(self.device)
        with torch.no_grad():
            base_out, cand_out, _ = self._outputs(batch, train=False)
        return _cpu(base_out), _cpu(cand_out)

    # -- the step -------------------------------------------------------------------------------
    def step(self, batch: TensorBatch | None) -> StepResult:
        """Score ``batch`` with both models, then make exactly one step on the candidate.

        With a :class:`~learner.distributed.Lockstep` the step is the mean over every rank's
        batch, and ``batch`` is None on a rank that holds none this round (it contributes a
        zero gradient with weight zero, and no outcomes).
        """
        started = time.perf_counter()
        lr = self.schedule.rate(self.steps + 1)
        weight = 0.0
        if batch is not None:
            batch = batch.to(self.device)
            base_out, cand_out, trained = self._outputs(batch)
            weights = batch.weights.to(trained.loss.dtype)
            weighted = (trained.loss * weights).sum()
            weight = float(weights.sum())
            task = weighted / weight if weight > 0 else weighted  # all weigh 0: scored only
        else:
            if self.lockstep is None:
                raise ValueError("step(None) is a lockstep rank's empty round; pass a batch")
            base_out = cand_out = _EMPTY
            task = weighted = torch.zeros((), device=self.device)
        reg = self.l2sp.penalty() + self.ewc.penalty()
        skip: str | None = None
        grad_norm = update_norm = update_scale = float("nan")
        finite = bool(torch.isfinite(task))
        if finite and weight > 0:
            # alone: the mean's gradient; in lockstep the sum's, divided by every rank's weight
            (task if self.lockstep is None else weighted).backward()
        total = weight
        if self.lockstep is not None:
            total, finite = self.lockstep.reduce_gradients(self.params, weight, finite)
        # guard, regularize, clip, step
        if not finite:
            skip = "non_finite_loss"
        elif total <= 0:  # every example weighs 0 (held back by pair mining): nothing to train
            grad_norm = 0.0
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            grad_norm = float(norm)
            if not math.isfinite(grad_norm):
                skip = "non_finite_gradient"
            else:
                self.ewc.update_fisher()
                if self.config.max_grad_norm > 0:
                    torch.nn.utils.clip_grads_with_norm_(
                        self.params, self.config.max_grad_norm, norm, foreach=True
                    )
                self.l2sp.add_grad()
                self.ewc.add_grad()
                update_norm, update_scale = self._apply_update(lr)
                self._average()
        self.optimizer.zero_grad(set_to_none=True)
        if skip is not None:
            self.skipped += 1
        elif total > 0:
            self.steps += 1
            self.schedule.advance()
        return StepResult(
            step=self.steps,
            applied=skip is None,
            skip_reason=skip,
            batch_size=batch.size if batch is not None else 0,
            task_loss=float(task.detach()),
            reg_loss=float(reg),
            grad_norm=grad_norm,
            duration_s=time.perf_counter() - started,
            candidate=_cpu(cand_out),
            baseline=_cpu(base_out),
            lr=lr,
            update_norm=update_norm,
            update_scale=update_scale,
        )

    @torch.no_grad()
    def _average(self) -> None:
        """Weight averaging after an applied step: ``θ̄ ← d·θ̄ + (1-d)·θ``."""
        if self.average_params:
            weights: list[torch.Tensor] = [*self.params]
            torch._foreach_lerp_(self.average_params, weights, 1.0 - self.config.ema_decay)

    @torch.no_grad()
    def _apply_update(self, lr: float) -> tuple[float, float]:
        """One AdamW step at ``lr``, its norm capped by the trust region: (‖Δθ‖, scale)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        cap = self.config.max_update_norm
        params: list[torch.Tensor] = [*self.params]
        if not cap:
            self.optimizer.step()
            return float("nan"), 1.0
        torch._foreach_copy_(self._before, params)
        self.optimizer.step()
        torch._foreach_sub_(self._before, params)  # now holds -Δθ
        size = float(torch.stack(torch._foreach_norm(self._before)).norm())
        if size <= cap:
            return size, 1.0
        scale = cap / size
        # θ_new = θ_before + scale·Δθ = θ_after - (1 - scale)·Δθ
        torch._foreach_add_(params, self._before, alpha=1.0 - scale)
        return cap, scale


def _twin_name(candidate_name: str, adapter: str) -> str:
    """``adapter``'s parameter that pairs with a candidate adapter's parameter."""
    marker = f".{CANDIDATE}."
    if marker not in candidate_name:
        raise ValueError(f"{candidate_name!r} is not a weight of the {CANDIDATE!r} adapter")
    return candidate_name.replace(marker, f".{adapter}.", 1)


def _compile(models: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """``torch.compile`` each model; on failure log it and run eagerly."""
    try:
        return {role: torch.compile(model) for role, model in models.items()}  # type: ignore[misc]
    except Exception as exc:  # an optional speed-up, never fatal
        log.warning("torch.compile unavailable, running eagerly: %s", exc)
        return {}


_EMPTY = ObjectiveOutput(loss=torch.zeros(0), score=torch.zeros(0), correct=torch.zeros(0))


def _cpu(out: ObjectiveOutput) -> ObjectiveOutput:
    stacked = torch.stack([out.loss.detach(), out.score.detach(), out.correct]).float().cpu()
    return ObjectiveOutput(loss=stacked[0], score=stacked[1], correct=stacked[2])
