"""The ``reward`` objective: a scalar reward model on (prompt, response).

Thumbs and ratings train it pointwise (binary cross-entropy against a graded target);
preference pairs train it pairwise with the Bradley-Terry loss ``-log σ(r_chosen - r_rejected)``.
One micro-batch may mix both: every sequence of the batch goes through the encoder in one
forward pass, and the per-example losses are gathered back in the examples' order.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    Example:
        >>> obj = RewardObjective(tokenizer, max_length=64)  # doctest: +SKIP
        >>> batch = obj.collate([Example("hi", "hello!", target=1.0)])  # doctest: +SKIP
    """

    name = "reward"

    def __init__(
        self, tokenizer: object, max_length: int = 256, pad_to_multiple_of: int | None = None
    ) -> None:
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
        """Per-example losses in the examples' order (``reference`` is not used).

        ``score`` is the reward (pointwise) or the reward margin chosen - rejected (pairs);
        ``correct`` is whether its sign agrees with the feedback, NaN for a neutral rating.
        """
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
        defined = safe_target != 0.5
        hit = ((score > 0) == (safe_target > 0.5)).float()
        correct = torch.where(defined, hit, torch.full_like(hit, float("nan")))
        return ObjectiveOutput(loss=loss, score=score, correct=correct)
