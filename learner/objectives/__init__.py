"""Objectives: one interface (:class:`learner.base.Objective`), one implementation per file.

``OBJECTIVES`` maps a config name to its class; ``CAUSAL_LM`` names those that train a causal
LM (build it with :func:`learner.models.build_causal_lm`), the others take a reward model.
"""

from learner.base import Objective
from learner.objectives.causal import CausalLMObjective
from learner.objectives.dpo import DPOObjective
from learner.objectives.kto import KTOObjective
from learner.objectives.reward import RewardObjective
from learner.objectives.sft import SFTObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "reward": RewardObjective,
    "kto": KTOObjective,
    "dpo": DPOObjective,
    "sft": SFTObjective,
}
CAUSAL_LM = frozenset({"kto", "dpo", "sft"})

__all__ = [
    "CAUSAL_LM",
    "OBJECTIVES",
    "CausalLMObjective",
    "DPOObjective",
    "KTOObjective",
    "RewardObjective",
    "SFTObjective",
]
