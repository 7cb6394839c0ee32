"""Reward centering: ``c · (r_chosen + r_rejected)²`` on each preference pair's loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from learner.base import Example
from learner.objectives import RewardObjective
from learner.step import Learner, StepConfig

POINTS = [
    Example("How long do I boil an egg?", "About nine minutes.", target=1.0),
    Example("Reverse a list?", "Use reversed(items).", target=0.0),
]
PAIRS = [
    Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea."),
    Example("Is the stove off?", "Check the knob and the pilot light.", rejected="Whatever."),
]


def _values(tiny_parts, obj, batch):
    with torch.no_grad():
        return obj.model_values(tiny_parts[0](3).eval(), batch)


@pytest.mark.parametrize("reference", ["none", "live"])
def test_a_pair_adds_c_times_its_squared_reward_sum_and_a_point_nothing(tiny_parts, reference):
    plain = RewardObjective(tiny_parts[1], max_length=48, reference=reference)
    centred = RewardObjective(tiny_parts[1], max_length=48, reference=reference, center=0.25)
    batch = centred.collate([POINTS[0], PAIRS[0], POINTS[1], PAIRS[1]])
    values = _values(tiny_parts, centred, batch) + 0.7  # a level away from 0 to pull back
    live = values - 0.2
    a, b = plain.from_values(values, batch, live), centred.from_values(values, batch, live)
    first, second = batch.tensors["first"], batch.tensors["second"]
    for i in (1, 3):  # the pairs: Bradley-Terry by hand, plus the centring term
        chosen, rejected = values[first[i]], values[second[i]]
        bt = F.binary_cross_entropy_with_logits(chosen - rejected, torch.tensor(1.0))
        want = bt + 0.25 * (chosen + rejected) ** 2
        assert torch.allclose(b.loss[i], want) and torch.allclose(a.loss[i], bt)
    for i in (0, 2):  # pointwise examples keep their loss
        assert torch.equal(a.loss[i], b.loss[i])
    assert torch.equal(a.score, b.score) and torch.equal(a.correct.isnan(), b.correct.isnan())


def test_centring_holds_the_level_of_trained_pairs_near_zero(tiny_parts):
    """Pairs alone leave the level free; with c > 0 the pairs' mean reward stays near 0."""
    torch.manual_seed(0)
    levels = {}
    for center in (0.0, 1.0):
        obj = RewardObjective(tiny_parts[1], max_length=48, center=center)
        model = tiny_parts[0](0)
        with torch.no_grad():  # start every run from the same level, far from 0
            model.head.bias.fill_(3.0)
        config = StepConfig(lr=5e-3, weight_decay=0.0, l2sp_weight=0.0)
        learner = Learner(model, obj, config)
        batch = obj.collate(PAIRS)
        for _ in range(40):
            learner.step(batch)
        _, cand = learner.score(
            obj.collate([Example(p.prompt, p.response, target=1.0) for p in PAIRS])
        )
        _, worse = learner.score(
            obj.collate([Example(p.prompt, p.rejected or "", target=0.0) for p in PAIRS])
        )
        levels[center] = float((cand.score + worse.score).mean() / 2)
        assert bool((cand.score > worse.score).all())  # both still learn the order
    assert abs(levels[1.0]) < 0.5 < abs(levels[0.0])


def test_bad_centring_coefficients_are_refused(tiny_parts):
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="reward center must be a finite coefficient >= 0"):
            RewardObjective(tiny_parts[1], center=bad)


def test_the_config_passes_reward_center_to_the_objective_and_refuses_it_elsewhere():
    from streaming.cli.wiring import build_learner
    from streaming.config import load_config
    from streaming.errors import ConfigError

    cfg = load_config(
        overrides={"model": "tiny", "reward_center": 0.01, "max_length": 32}, environ={}
    )
    assert build_learner(cfg).objective.center == 0.01
    with pytest.raises(ConfigError, match="reward_center=0.01.*objective='dpo'"):
        load_config(overrides={"reward_center": 0.01, "objective": "dpo"}, environ={})
