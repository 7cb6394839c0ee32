"""The ``sft`` objective: supervised fine-tuning of a causal LM on the preferred text.

A correction event arrives as a pair with the corrected text preferred over the original reply;
SFT trains on the corrected text (``Example.response``) as the target and ignores the rejected
one. The chosen reply of a preference and a reply with a thumb up (``target == 1.0``) are
preferred text too and are accepted; anything else (a thumb down, a rating below 5) is refused,
since imitating it would teach the wrong thing.

The loss is the mean negative log-likelihood per response token (prompt tokens are context,
not target). ``score`` is the mean log-likelihood per response token (higher is better);
``correct`` is NaN: a single reply has no right or wrong side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from learner.base import Example, ObjectiveOutput, TensorBatch
from learner.objectives.causal import CausalLMObjective


class SFTObjective(CausalLMObjective):
    """Mean token NLL on the preferred reply, response tokens only.

    Args:
        tokenizer: see :class:`~learner.objectives.causal.CausalLMObjective`.
        **kwargs: ``max_length``, ``padding_side``, ``pad_to_multiple_of``.

    Example:
        >>> obj = SFTObjective(tokenizer)  # doctest: +SKIP
        >>> correction = Example("q", "the corrected reply", rejected="the old reply")
        >>> obj.collate([correction]).size  # doctest: +SKIP
        1
    """

    name = "sft"

    def check(self, example: Example) -> None:
        """Accept corrections and preferences (train on ``response``) and thumbs up."""
        if example.rejected is None and example.target != 1.0:
            raise ValueError(
                "sft imitates preferred text: a correction, a preference's chosen reply or a "
                f"reply with a thumb up (target 1.0); got a pointwise target of {example.target}"
            )

    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        """One sequence per example: the prompt and the preferred reply."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        for ex in examples:
            self.check(ex)
        tensors = self.encode([ex.prompt for ex in examples], [ex.response for ex in examples])
        return self._batch(tensors, examples)

    def from_values(
        self, values: torch.Tensor, batch: TensorBatch, reference: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        """Mean NLL per response token (``reference`` is not used)."""
        tokens = batch.tensors["response_tokens"].to(values.dtype)
        mean_logp = values / tokens
        loss = -mean_logp
        return ObjectiveOutput(
            loss=loss, score=mean_logp, correct=torch.full_like(loss, float("nan"))
        )
