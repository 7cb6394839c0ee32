"""The resume-equivalence recipe, shared by test_checkpoint and a fresh process it starts.

``python -m tests.unit.resume_worker CKPT_DIR FIRST COUNT OUT`` builds the recipe's learner,
restores the newest checkpoint from CKPT_DIR, takes steps FIRST..FIRST+COUNT-1 of the recipe
and writes the learner's tensors to OUT.safetensors and a few facts to OUT.json.
"""

import json
import random
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from learner.base import Example
from learner.checkpoint import CheckpointManager
from learner.models import ModelSpec, build_reward_model
from learner.objectives import RewardObjective
from learner.step import Learner, StepConfig

EXAMPLES = [
    Example("How long do I boil an egg?", "About nine minutes.", target=1.0),
    Example("How long do I boil an egg?", "Go away.", target=0.0),
    Example("Reverse a list?", "Use reversed(items).", target=0.75),
    Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea."),
    Example("Warm-up before lifting?", "Light sets first.", target=0.5, weight=2.0),
    Example("Jet lag?", "Shift your sleep early.", rejected="Whatever.", weight=0.5),
]
CONFIG = StepConfig(
    lr=3e-3,
    l2sp_weight=0.1,
    ewc_weight=1e3,
    ewc_decay=0.9,
    max_update_norm=0.5,
    warmup_steps=2,
    cosine_decay_steps=6,
    min_lr=1e-4,
)


def seed_everything(seed: int = 7) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def build() -> Learner:
    model, tokenizer = build_reward_model(ModelSpec("tiny", seed=0))
    return Learner(model, RewardObjective(tokenizer, max_length=48), CONFIG)


def run(learner: Learner, first: int, count: int) -> list[tuple[float, float]]:
    """Steps ``first .. first+count-1``: a different batch each, a boost after step 1.

    Returns the (lr, update_scale) of each step.
    """
    seen = []
    for i in range(first, first + count):
        rotated = EXAMPLES[i % len(EXAMPLES) :] + EXAMPLES[: i % len(EXAMPLES)]
        result = learner.step(learner.objective.collate(rotated[:4]))
        seen.append((result.lr, result.update_scale))
        if i == 1:
            learner.boost(2.0, steps=3)
    return seen


def draws() -> dict:
    return {
        "torch": torch.rand(3).tolist(),
        "python": random.random(),
        "numpy": float(np.random.rand()),
    }


def tensors(learner: Learner) -> dict[str, torch.Tensor]:
    names = learner.param_names
    out = {f"w/{n}": p.detach().clone() for n, p in zip(names, learner.params, strict=True)}
    if learner.ewc.enabled:
        out.update({f"f/{n}": f.clone() for n, f in zip(names, learner.ewc.fisher, strict=True)})
    for index, state in learner.optimizer.state_dict()["state"].items():
        out.update({f"o/{index}.{k}": v.clone() for k, v in state.items()})
    return out


def main(ckpt_dir: str, first: int, count: int, out: str) -> None:
    seed_everything(99)  # a different process state: everything must come from the checkpoint
    learner = build()
    loaded = CheckpointManager(ckpt_dir).load_latest(learner)
    assert loaded is not None
    seen = run(learner, first, count)
    facts = {"step": learner.steps, "extra": loaded.extra, "draws": draws(), "seen": seen}
    save_file(tensors(learner), out + ".safetensors")
    with open(out + ".json", "w") as fh:
        json.dump(facts, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
