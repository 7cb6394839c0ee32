"""The ``kto`` objective: Kahneman-Tversky Optimization (Ethayarajh et al., 2024).

KTO learns a causal LM from unpaired binary feedback. An example is *desirable* when its target
is above 0.5 (a thumb up, a rating of 4 or 5) and *undesirable* below 0.5 (a thumb down, a
rating of 1 or 2); a neutral rating (0.5) and a preference pair are refused. With the implicit
reward ``r = log π(y|x) - log π_ref(y|x)`` (π_ref the frozen baseline) and the reference point

    z0 = max(0, mean_j [log π(y'_j|x_j) - log π_ref(y'_j|x_j)])   (no gradient)

estimated, as in the paper, from *mismatched* pairs within the batch (prompt ``j`` with the
response of example ``j+1 mod n``), the value and loss of an example are

    v = λ_D · σ(β(r - z0))   if desirable,      v = λ_U · σ(β(z0 - r))   if undesirable,
    loss = λ_y - v.

The estimate needs a batch of at least 4 examples (``min_batch_size``); smaller ones are
refused. ``score`` is the implicit reward ``β·r``; ``correct`` is 1 when its sign agrees with
the feedback, 0 when it disagrees, NaN when ``r == 0``. The baseline is its own reference:
``r = z0 = 0``, so its loss is ``λ_y / 2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from learner.base import Example, ObjectiveOutput, TensorBatch
from learner.objectives.causal import CausalLMObjective


class KTOObjective(CausalLMObjective):
    """KTO on thumbs (and graded ratings), the baseline as reference.

    Args:
        tokenizer: see :class:`~learner.objectives.causal.CausalLMObjective`.
        beta: β, how sharply the value saturates (larger = stay closer to the reference).
        desirable_weight: λ_D.
        undesirable_weight: λ_U. The paper advises λ_D·n_D / (λ_U·n_U) in [1, 4/3].
        **kwargs: ``max_length``, ``padding_side``, ``pad_to_multiple_of``.

    Example:
        >>> obj = KTOObjective(tokenizer, beta=0.1)  # doctest: +SKIP
        >>> batch = obj.collate([Example("q", "a", target=1.0)] * 4)  # doctest: +SKIP
    """

    name = "kto"
    needs_reference = True
    min_batch_size = 4

    def __init__(
        self,
        tokenizer: object,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        **kwargs: object,
    ) -> None:
        super().__init__(tokenizer, **kwargs)  # type: ignore[arg-type]
        if not beta > 0:
            raise ValueError(f"kto beta must be > 0, got {beta}")
        if not (desirable_weight > 0 and undesirable_weight > 0):
            raise ValueError(
                "kto desirable_weight and undesirable_weight must be > 0, got "
                f"{desirable_weight} and {undesirable_weight}"
            )
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)

    def check(self, example: Example) -> None:
        """Accept pointwise examples that are clearly desirable or undesirable."""
        if example.target is None:
            raise ValueError(
                "kto trains on unpaired thumbs or ratings; got a preference pair - use dpo"
            )
        if example.target == 0.5:
            raise ValueError(
                "kto needs desirable or undesirable feedback; a neutral rating is neither"
            )

    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        """``n`` matched sequences, then ``n`` mismatched ones for the KL reference point."""
        n = len(examples)
        if n < self.min_batch_size:
            raise ValueError(
                f"kto needs at least {self.min_batch_size} examples per batch to estimate its "
                f"reference point from mismatched prompt/response pairs; got {n}. Raise "
                f"batch_size to {self.min_batch_size} or more"
            )
        for ex in examples:
            self.check(ex)
        prompts = [ex.prompt for ex in examples]
        responses = [ex.response for ex in examples]
        shifted = responses[1:] + responses[:1]
        desirable = torch.tensor([float(ex.target) > 0.5 for ex in examples])  # type: ignore[arg-type]
        return self._batch(
            self.encode(prompts + prompts, responses + shifted), examples, desirable=desirable
        )

    def from_values(
        self, values: torch.Tensor, batch: TensorBatch, reference: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        """Per-example KTO loss from policy and reference response log-probs."""
        if reference is None:
            raise ValueError("kto needs the reference model's log-probs (reference=None given)")
        n = batch.size
        implicit = values - reference
        reward, mismatched = implicit[:n], implicit[n:]
        z0 = mismatched.mean().clamp(min=0).detach()
        desirable = batch.tensors["desirable"]
        weight = torch.where(
            desirable,
            torch.full_like(reward, self.desirable_weight),
            torch.full_like(reward, self.undesirable_weight),
        )
        gap = torch.where(desirable, reward - z0, z0 - reward)
        loss = weight - weight * torch.sigmoid(self.beta * gap)
        hit = ((reward > 0) == desirable).float()
        correct = torch.where(reward == 0, torch.full_like(hit, float("nan")), hit)
        return ObjectiveOutput(loss=loss, score=self.beta * reward, correct=correct)
