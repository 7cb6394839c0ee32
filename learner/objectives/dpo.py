"""The ``dpo`` objective: Direct Preference Optimization (Rafailov et al., 2023) on a causal LM.

Each example is a preference pair (``Example.rejected`` set; a correction event arrives as the
correction preferred over the original reply). With ``r(y) = log π(y|x) - log π_ref(y|x)`` the
implicit reward of a reply under the policy π and the frozen reference π_ref (the baseline),

    h = β · (r(chosen) - r(rejected)),        loss = -log σ(h).

``score`` is the implicit reward margin ``h``; ``correct`` is 1 when ``h > 0`` (the policy has
moved toward the chosen reply more than toward the rejected one), 0 when ``h < 0``, and NaN on
an exact tie. The baseline is its own reference, so its margin is 0: its loss is log 2 and its
correctness undefined, which is what the candidate is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from learner.base import Example, ObjectiveOutput, TensorBatch
from learner.objectives.causal import CausalLMObjective


class DPOObjective(CausalLMObjective):
    """DPO on preference pairs, the baseline as reference.

    Args:
        tokenizer: see :class:`~learner.objectives.causal.CausalLMObjective`.
        beta: inverse temperature β of the implicit reward (larger = stay closer to the
            reference).
        **kwargs: ``max_length``, ``padding_side``, ``pad_to_multiple_of``.

    Example:
        >>> obj = DPOObjective(tokenizer, beta=0.1)  # doctest: +SKIP
        >>> obj.collate([Example("q", "good", rejected="bad")]).size  # doctest: +SKIP
        1
    """

    name = "dpo"
    needs_reference = True

    def __init__(self, tokenizer: object, beta: float = 0.1, **kwargs: object) -> None:
        super().__init__(tokenizer, **kwargs)  # type: ignore[arg-type]
        if not beta > 0:
            raise ValueError(f"dpo beta must be > 0, got {beta}")
        self.beta = float(beta)

    def check(self, example: Example) -> None:
        """Only preference pairs (and corrections, which arrive as pairs) can train DPO.

        A thumb or rating can train it only inside a pair mined from the stream (the pair
        miner's ``replace`` mode), which is why the message names what mining needs.
        """
        if example.rejected is None:
            raise ValueError(
                "dpo trains on preference pairs (a preference or correction event); got a "
                f"pointwise example with target {example.target}. A thumb or rating trains dpo "
                'only in a pair mined from the stream (ingest.mining = "replace"), which needs '
                "a conversation_id (two replies to one prompt) or a response_id / "
                "regenerated_from link on the event - use kto for unpaired thumbs"
            )

    def collate(self, examples: Sequence[Example]) -> TensorBatch:
        """Two sequences per example: the chosen reply at ``2i``, the rejected one at ``2i+1``."""
        if not examples:
            raise ValueError("cannot collate an empty batch")
        prompts: list[str] = []
        responses: list[str] = []
        for ex in examples:
            self.check(ex)
            prompts += [ex.prompt, ex.prompt]
            responses += [ex.response, str(ex.rejected)]
        return self._batch(self.encode(prompts, responses), examples)

    def from_values(
        self, values: torch.Tensor, batch: TensorBatch, reference: torch.Tensor | None = None
    ) -> ObjectiveOutput:
        """Per-example DPO loss from policy and reference response log-probs."""
        if reference is None:
            raise ValueError("dpo needs the reference model's log-probs (reference=None given)")
        implicit = values - reference
        margin = self.beta * (implicit[0::2] - implicit[1::2])
        loss = -F.logsigmoid(margin)
        hit = (margin > 0).float()
        correct = torch.where(margin == 0, torch.full_like(hit, float("nan")), hit)
        return ObjectiveOutput(loss=loss, score=margin, correct=correct)
