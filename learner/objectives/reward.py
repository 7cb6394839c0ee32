"""The ``reward`` objective: a scalar reward model on (prompt, response).

Thumbs and ratings train it pointwise (binary cross-entropy against a graded target);
preference pairs train it pairwise with the Bradley-Terry loss ``-log σ(r_chosen - r_rejected)``.
One micro-batch may mix both: every sequence of the batch goes through the encoder in one
forward pass, and the per-example losses are gathered back in the examples' order.

A pointwise label says "good" or "bad" in absolute terms, yet a thumb often means "better (or
worse) than usual": on HH-RLHF, a "chosen" reply is only better than its rejected twin. The
``reference`` option judges the reward against a reference point instead (KTO, arXiv 2402.01306;
BCO, arXiv 2404.04656); the BCE logit of a pointwise example is

==========  ==============================================================================
``none``    ``r`` — the reward itself (the default; exactly the plain objective)
``live``    ``r - r_live`` — minus the frozen live model's reward on the same example
``mean``    ``r - δ`` — minus δ, the running mean (no gradient) of the judged model's rewards
==========  ==============================================================================

Preference pairs keep the Bradley-Terry loss on the margin in every mode: a pair is its own
reference.

The Bradley-Terry loss sees only margins, so nothing holds the rewards' level: it drifts from
step to step and from prompt to prompt. A reward served to a chat service is compared across
model versions and prompts (a threshold, a best-of-n score logged beside a thumb later), and a
pair mined from thumbs is judged by two scores taken at two times. ``center`` (a coefficient
``c``) adds ``c · (r_chosen + r_rejected)²`` to each pair's loss, the auxiliary loss of
Eisenstein et al. 2023 (arXiv 2312.09244; TRL's ``center_rewards_coefficient``): the two replies
of a prompt are pulled toward mean 0, so a reward says how a reply compares with the replies
to its own prompt. Pointwise examples have absolute targets and no centering term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from learner.base import Example, Objective, ObjectiveOutput, TensorBatch


class RewardObjective(Objective):
    """Pointwise + pairwise reward-model objective.

    Args:
        tokenizer: a Hugging Face tokenizer with ``cls``/``sep`` (or ``bos``/``eos``) tokens.
        max_length: tokens per (prompt, response) sequence. When too long, the prompt keeps
            its end (the turn being answered) and the response keeps its beginning; the
            response always keeps at least half the budget.
        pad_to_multiple_of: round the padded width up to a multiple of this (fewer distinct
            shapes, so fewer recompilations with ``torch.compile``); None pads to the longest.
        reference: the reference point of pointwise examples, ``none``, ``live`` or ``mean``
            (see the module doc and :meth:`from_values`).
        reference_decay: ``mean`` only: the decay ``γ`` of the running means, in [0, 1); each
            training step moves them by ``1 - γ`` toward that batch's mean reward.
        center: the reward-centering coefficient ``c >= 0`` of preference pairs (see the module
            doc); 0 turns it off. It is part of each pair's loss, so the gate's paired
            differences compare the candidate and the baseline on the same centred loss.

    Example:
        >>> obj = RewardObjective(tokenizer, max_length=64, reference="live")  # doctest: +SKIP
        >>> batch = obj.collate([Example("hi", "hello!", target=1.0)])  # doctest: +SKIP
    """

    name = "reward"

    def __init__(
        self,
        tokenizer: object,
        max_length: int = 256,
        pad_to_multiple_of: int | None = None,
        reference: str = "none",
        reference_decay: float = 0.99,
        center: float = 0.0,
    ) -> None:
        if reference not in REFERENCES:
            raise ValueError(
                f"reward reference must be one of {', '.join(REFERENCES)}, got {reference!r}"
            )
        if not 0.0 <= reference_decay < 1.0:
            raise ValueError(f"reward reference_decay must lie in [0, 1), got {reference_decay}")
        if not (math.isfinite(center) and center >= 0.0):
            raise ValueError(f"reward center must be a finite coefficient >= 0, got {center}")
        self.reference = reference
        self.reference_decay = float(reference_decay)
        self.center = float(center)
        # ``live`` needs the baseline's rewards of the batch; ``mean`` too, for the live model's
        # running mean. The learner's one baseline pass provides them (see learner.step).
        self.needs_reference = reference != "none"
        self._means = {"live": _RunningMean(), "candidate": _RunningMean()}
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {max_length}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_to_multiple_of = pad_to_multiple_of
        self.tokenizer = tokenizer
        self.max_length = max_length
        tok = tokenizer
        start = getattr(tok, "cls_token_id", None)
        sep = getattr(tok, "sep_token_id", None)
        if start is None or sep is None:
            start, sep = getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)
        if start is None or sep is None:
            raise ValueError(
                "the reward objective needs a tokenizer with cls/sep or bos/eos tokens; "
                f"{type(tok).__name__} has neither - pick an encoder tokenizer such as MiniLM's"
            )
        pad = getattr(tok, "pad_token_id", None)
        self._start, self._sep, self._pad = int(start), int(sep), int(pad if pad is not None else 0)

    # -- collate (CPU, off the training thread) ---------------------------------------------
    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        """Tokenize examples; each pointwise example is one sequence, each pair two."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        prompts: list[str] = []
        responses: list[str] = []
        first_seq: list[int] = []
        second_seq: list[int] = []
        targets: list[float] = []
        for ex in examples:
            first_seq.append(len(responses))
            prompts.append(ex.prompt)
            responses.append(ex.response)
            if ex.rejected is not None:
                second_seq.append(len(responses))
                prompts.append(ex.prompt)
                responses.append(ex.rejected)
                targets.append(float("nan"))
            else:
                second_seq.append(-1)
                targets.append(float(ex.target))  # type: ignore[arg-type]
        enc = self.tokenizer  # type: ignore[operator]
        p_ids = enc(prompts, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        r_ids = enc(responses, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        budget = self.max_length - 3
        rows: list[list[int]] = []
        types: list[list[int]] = []
        for p, r in zip(p_ids, r_ids, strict=True):
            r_keep = min(len(r), max(budget - len(p), budget // 2))
            p_keep = min(len(p), budget - r_keep)
            p_part = p[len(p) - p_keep :] if p_keep else []
            row = [self._start, *p_part, self._sep, *r[:r_keep], self._sep]
            rows.append(row)
            types.append([0] * (p_keep + 2) + [1] * (r_keep + 1))
        width = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        token_types = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, tt) in enumerate(zip(rows, types, strict=True)):
            ids[i, : len(row)] = torch.tensor(row)
            token_types[i, : len(row)] = torch.tensor(tt)
            mask[i, : len(row)] = 1
        return TensorBatch(
            tensors={
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": token_types,
                "first": torch.tensor(first_seq, dtype=torch.long),
                "second": torch.tensor(second_seq, dtype=torch.long),
                "target": torch.tensor(targets, dtype=torch.float32),
            },
            size=len(examples),
            weights=torch.tensor([ex.weight for ex in examples], dtype=torch.float32),
        )

    # -- forward (device) ----------------------------------------------------------------------
    def model_values(self, model: nn.Module, batch: TensorBatch) -> torch.Tensor:
        """The reward of every sequence, one encoder pass, shape ``[sequences]``."""
        t = batch.tensors
        rewards: torch.Tensor = model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            token_type_ids=t["token_type_ids"],
        )
        return rewards.float()

    def from_values(
        self, values: torch.Tensor, batch: TensorBatch, reference: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        """Per-example losses in the examples' order.

        ``score`` is the BCE logit: for a pointwise example the reward minus its reference
        point (the reward itself with ``none``), for a pair the margin chosen - rejected.
        ``correct`` is whether the score's sign agrees with the feedback: NaN for a neutral
        rating and, with a reference point, for a score of exactly 0 (no side taken).

        ``reference`` holds the live model's rewards of the same batch (``live`` and ``mean``
        need it). Called with ``reference`` equal to ``values`` the live model is judged: with
        ``live`` it is its own reference, so its logit is 0, its loss ``log 2`` and its
        ``correct`` NaN (as with KTO); the gate's paired difference is then the candidate's
        gain over that coin flip. With ``mean`` each model is judged against its *own* running
        mean (``δ_live`` or ``δ_candidate``), so neither wins the gate by a global offset of
        its rewards, only by ordering examples better. The means are updated after each
        training forward (values that carry a gradient), from that forward's pointwise rewards,
        so every example is judged with the means from before its batch (test, then train);
        scoring without a gradient (holdouts, dry runs) leaves them alone. After a promotion
        or rollback both models are the same weights: the live mean takes the candidate's.
        """
        if self.reference == "none":
            return self._plain(values, batch)
        if reference is None:
            raise ValueError(
                f"reward reference={self.reference!r} needs the live model's rewards of the "
                "batch; pass reference=<the baseline's values> (the learner does)"
            )
        t = batch.tensors
        first, second, target = t["first"], t["second"], t["target"]
        pair = second >= 0
        r_first = values[first]
        r_second = values[second.clamp(min=0)]
        margin = r_first - r_second
        same = values is reference or torch.equal(values, reference)
        if self.reference == "live":
            point = r_first - reference[first]
        else:
            point = r_first - self._means["live" if same else "candidate"].value
            if values.requires_grad and torch.is_grad_enabled():
                self._update_means(values[first][~pair], reference[first][~pair], same)
        score = torch.where(pair, margin, point)
        safe_target = torch.where(pair, torch.ones_like(target), target)
        loss = F.binary_cross_entropy_with_logits(score, safe_target, reduction="none")
        loss = self._centred(loss, r_first, r_second, pair)
        defined = (safe_target != 0.5) & (score != 0)
        hit = ((score > 0) == (safe_target > 0.5)).float()
        correct = torch.where(defined, hit, torch.full_like(hit, float("nan")))
        return ObjectiveOutput(loss=loss, score=score, correct=correct)

    @torch.no_grad()
    def _update_means(self, rewards: torch.Tensor, live: torch.Tensor, same: bool) -> None:
        if same:  # a promotion or rollback made the live model the candidate (or both new)
            self._means["live"] = self._means["candidate"].copy()
        for key, x in (("candidate", rewards), ("live", live)):
            x = x.detach().float()
            x = x[torch.isfinite(x)]
            if x.numel():
                self._means[key].update(float(x.mean()), self.reference_decay)

    # -- state (the learner checkpoint) -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The running means of ``mean`` (JSON-ready); empty for ``none`` and ``live``."""
        if self.reference != "mean":
            return {}
        return {
            "reference": "mean",
            "decay": self.reference_decay,
            **{key: mean.to_json() for key, mean in self._means.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; an empty state (older checkpoints) keeps fresh means.

        A state saved in another mode is ignored: only ``mean`` has state.
        """
        if self.reference != "mean" or not state or state.get("reference") != "mean":
            return
        try:
            means = {key: _RunningMean.from_json(state[key]) for key in self._means}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"the reward objective's saved running means are unreadable ({exc}); expected "
                '{"live": [sum, weight], "candidate": [sum, weight]}'
            ) from exc
        self._means = means

    def running_means(self) -> dict[str, float]:
        """``δ_live`` and ``δ_candidate`` (``mean``; 0.0 before the first step).

        Example:
            >>> RewardObjective(tokenizer, reference="mean").running_means()  # doctest: +SKIP
            {'live': 0.0, 'candidate': 0.0}
        """
        return {key: mean.value for key, mean in self._means.items()}

    def _plain(self, values: torch.Tensor, batch: TensorBatch) -> ObjectiveOutput:
        t = batch.tensors
        rewards = values
        first, second, target = t["first"], t["second"], t["target"]
        pair = second >= 0
        r_first = rewards[first]
        r_second = rewards[second.clamp(min=0)]
        # Pairwise: margin between the chosen and the rejected reply; pointwise: the reward.
        score = torch.where(pair, r_first - r_second, r_first)
        safe_target = torch.where(pair, torch.ones_like(target), target)
        # For pairs the "target" of the margin is 1, so BCE-with-logits(margin, 1) equals the
        # Bradley-Terry loss -log σ(r_chosen - r_rejected); one formula covers both kinds.
        loss = F.binary_cross_entropy_with_logits(score, safe_target, reduction="none")
        loss = self._centred(loss, r_first, r_second, pair)
        defined = safe_target != 0.5
        hit = ((score > 0) == (safe_target > 0.5)).float()
        correct = torch.where(defined, hit, torch.full_like(hit, float("nan")))
        return ObjectiveOutput(loss=loss, score=score, correct=correct)

    def _centred(
        self, loss: torch.Tensor, r_first: torch.Tensor, r_second: torch.Tensor, pair: torch.Tensor
    ) -> torch.Tensor:
        """``loss`` plus ``c · (r_chosen + r_rejected)²`` on the pairs (unchanged when c = 0)."""
        if self.center == 0.0:
            return loss
        return loss + torch.where(pair, self.center * (r_first + r_second).square(), 0.0)


REFERENCES = ("none", "live", "mean")
"""The reference points of pointwise examples (``learner.reward_reference``)."""


class _RunningMean:
    """A debiased exponential moving average: ``Σγ^k x / Σγ^k`` (0.0 before any value).

    The debiasing (Adam's) makes the first batches count fully instead of pulling δ toward 0.
    """

    __slots__ = ("total", "weight")

    def __init__(self, total: float = 0.0, weight: float = 0.0) -> None:
        self.total = total
        self.weight = weight

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight > 0 else 0.0

    def update(self, x: float, decay: float) -> None:
        self.total = decay * self.total + (1.0 - decay) * x
        self.weight = decay * self.weight + (1.0 - decay)

    def copy(self) -> _RunningMean:
        return _RunningMean(self.total, self.weight)

    def to_json(self) -> list[float]:
        return [self.total, self.weight]

    @classmethod
    def from_json(cls, value: Any) -> _RunningMean:
        total, weight = (float(v) for v in value)
        if not (math.isfinite(total) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"not a finite [sum, weight >= 0]: {value!r}")
        return cls(total, weight)
