"""The reward objective's reference point: ``none`` (plain BCE), ``live`` and ``mean``."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from learner.base import Example, ObjectiveOutput
from learner.checkpoint import CheckpointError, CheckpointManager
from learner.objectives import RewardObjective
from learner.step import Learner, StepConfig

POINTS = [
    Example("How long do I boil an egg?", "About nine minutes.", target=1.0),
    Example("How long do I boil an egg?", "Go away.", target=0.0),
    Example("Reverse a list?", "Use reversed(items).", target=0.75),
    Example("Warm-up before lifting?", "Light sets first.", target=0.5),
]
PAIR = Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea.")
BATCH = [*POINTS[:2], PAIR, *POINTS[2:]]


def _values(tiny_parts, obj, batch, seed):
    with torch.no_grad():
        return obj.model_values(tiny_parts[0](seed).eval(), batch)


def _plain_as_before(values, batch) -> ObjectiveOutput:
    """The reward objective's from_values before the reference option, line for line."""
    t = batch.tensors
    first, second, target = t["first"], t["second"], t["target"]
    pair = second >= 0
    r_first = values[first]
    r_second = values[second.clamp(min=0)]
    score = torch.where(pair, r_first - r_second, r_first)
    safe_target = torch.where(pair, torch.ones_like(target), target)
    loss = F.binary_cross_entropy_with_logits(score, safe_target, reduction="none")
    defined = safe_target != 0.5
    hit = ((score > 0) == (safe_target > 0.5)).float()
    correct = torch.where(defined, hit, torch.full_like(hit, float("nan")))
    return ObjectiveOutput(loss=loss, score=score, correct=correct)


def test_none_is_bit_identical_to_the_plain_objective(tiny_parts):
    obj = RewardObjective(tiny_parts[1], max_length=48)
    assert obj.reference == "none" and not obj.needs_reference and obj.state_dict() == {}
    batch = obj.collate(BATCH)
    values = _values(tiny_parts, obj, batch, 0)
    got, want = obj.from_values(values, batch), _plain_as_before(values, batch)
    for name in ("loss", "score", "correct"):
        a, b = getattr(got, name), getattr(want, name)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_live_logit_is_candidate_minus_live_by_hand(tiny_parts):
    obj = RewardObjective(tiny_parts[1], max_length=48, reference="live")
    assert obj.needs_reference
    batch = obj.collate(BATCH)
    cand, live = _values(tiny_parts, obj, batch, 0), _values(tiny_parts, obj, batch, 1)
    out = obj.from_values(cand, batch, live)
    first, second = batch.tensors["first"].tolist(), batch.tensors["second"].tolist()
    for i, ex in enumerate(BATCH):
        if ex.pairwise:  # Bradley-Terry on the candidate's own margin, unchanged
            logit = float(cand[first[i]] - cand[second[i]])
            target = 1.0
        else:
            logit = float(cand[first[i]] - live[first[i]])
            target = float(ex.target)
        want = -(target * math.log(_sigmoid(logit)) + (1 - target) * math.log(_sigmoid(-logit)))
        assert float(out.score[i]) == pytest.approx(logit, abs=1e-6)
        assert float(out.loss[i]) == pytest.approx(want, abs=1e-5)
    # The live model judged against itself: a coin flip, no side taken (as with KTO).
    own = obj.from_values(live, batch, live)
    pointwise = torch.tensor([not ex.pairwise for ex in BATCH])
    assert torch.equal(own.score[pointwise], torch.zeros(4))
    assert torch.allclose(own.loss[pointwise], torch.full((4,), math.log(2)))
    assert torch.isnan(own.correct[pointwise]).all()


def test_live_needs_the_reference_values(tiny_parts):
    obj = RewardObjective(tiny_parts[1], max_length=48, reference="live")
    batch = obj.collate(POINTS)
    with pytest.raises(ValueError, match="needs the live model's rewards"):
        obj.from_values(_values(tiny_parts, obj, batch, 0), batch, None)


def test_the_learner_gives_live_the_baselines_rewards(tiny_parts):
    obj = RewardObjective(tiny_parts[1], max_length=48, reference="live")
    learner = Learner(tiny_parts[0](0), obj, StepConfig(lr=1e-3, l2sp_weight=0.0))
    batch = obj.collate(POINTS)
    first = learner.step(batch)
    assert torch.equal(first.candidate.score, torch.zeros(4))  # still the same weights
    with torch.no_grad():
        cand = obj.model_values(learner.candidate, batch)
        live = obj.model_values(learner.baseline, batch)
    second = learner.step(batch)
    assert torch.allclose(second.candidate.score, cand - live, atol=1e-6)
    assert torch.allclose(second.baseline.loss, torch.full((4,), math.log(2)))


def test_mean_judges_each_model_against_its_own_mean_from_before_the_batch(tiny_parts):
    obj = RewardObjective(tiny_parts[1], max_length=48, reference="mean", reference_decay=0.9)
    learner = Learner(tiny_parts[0](0), obj, StepConfig(lr=1e-2, l2sp_weight=0.0))
    batch = obj.collate(BATCH)
    pointwise = torch.tensor([not ex.pairwise for ex in BATCH])
    with torch.no_grad():
        before = obj.model_values(learner.candidate, batch)[batch.tensors["first"]]
    first = learner.step(batch)
    assert torch.allclose(first.candidate.score[pointwise], before[pointwise], atol=1e-6)
    means = obj.running_means()  # debiased: after one batch, exactly its mean
    assert means["candidate"] == pytest.approx(float(before[pointwise].mean()), abs=1e-6)
    assert means["live"] == pytest.approx(means["candidate"], abs=1e-6)
    learner.score(batch)  # scoring without a gradient does not move the means
    assert obj.running_means() == means
    with torch.no_grad():
        values = obj.model_values(learner.candidate, batch)
        cand = values[batch.tensors["first"]]
        live = obj.model_values(learner.baseline, batch)[batch.tensors["first"]]
    second = learner.step(batch)
    want_c, want_l = cand - means["candidate"], live - means["live"]
    assert torch.allclose(second.candidate.score[pointwise], want_c[pointwise], atol=1e-5)
    assert torch.allclose(second.baseline.score[pointwise], want_l[pointwise], atol=1e-5)
    margin = values[batch.tensors["first"][2]] - values[batch.tensors["second"][2]]
    assert torch.allclose(second.candidate.score[~pointwise], margin.view(1), atol=1e-6)
    after = obj.running_means()
    assert after["candidate"] == pytest.approx(
        (0.9 * 0.1 * means["candidate"] + 0.1 * float(cand[pointwise].mean())) / (0.9 * 0.1 + 0.1)
    )


def _mean_learner(tiny_parts, seed=0):
    obj = RewardObjective(tiny_parts[1], max_length=48, reference="mean", reference_decay=0.8)
    return Learner(tiny_parts[0](seed), obj, StepConfig(lr=1e-2))


def test_mean_state_round_trips_through_a_checkpoint(tiny_parts, tmp_path):
    batch_examples = [*POINTS, PAIR]
    learner = _mean_learner(tiny_parts)
    batch = learner.objective.collate(batch_examples)
    for _ in range(3):
        learner.step(batch)
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(learner)
    saved = json.loads((path / "state.json").read_text())["objective_state"]
    assert saved["reference"] == "mean" and set(saved) >= {"live", "candidate"}

    resumed = _mean_learner(tiny_parts)  # built from the same (live) model, fresh means
    assert resumed.objective.running_means() != learner.objective.running_means()
    manager.load_latest(resumed)
    assert resumed.objective.running_means() == learner.objective.running_means()
    a, b = learner.step(batch), resumed.step(resumed.objective.collate(batch_examples))
    assert torch.allclose(a.candidate.loss, b.candidate.loss, atol=1e-6)
    assert resumed.objective.running_means() == pytest.approx(learner.objective.running_means())


def test_checkpoints_without_objective_state_still_load(tiny_parts, tmp_path):
    import hashlib

    learner = _mean_learner(tiny_parts)
    learner.step(learner.objective.collate(POINTS))
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(learner)
    # Rewrite it as an older feedstep wrote it: no objective_state, checksums to match.
    state = json.loads((path / "state.json").read_text())
    del state["objective_state"]
    (path / "state.json").write_bytes(json.dumps(state).encode())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.json"] = hashlib.sha256((path / "state.json").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))

    fresh = _mean_learner(tiny_parts, seed=1)
    assert manager.load_latest(fresh).step == 1
    assert fresh.objective.running_means() == {"live": 0.0, "candidate": 0.0}


def test_an_unreadable_mean_state_is_a_checkpoint_error(tiny_parts, tmp_path):
    obj = RewardObjective(tiny_parts[1], max_length=48, reference="mean")
    with pytest.raises(ValueError, match="running means are unreadable"):
        obj.load_state_dict({"reference": "mean", "live": [1.0], "candidate": [0.0, 1.0]})
    learner = _mean_learner(tiny_parts)
    manager = CheckpointManager(tmp_path / "ckpt")
    path = manager.save(learner)
    state = json.loads((path / "state.json").read_text())
    state["objective_state"]["live"] = ["x", 1]
    (path / "state.json").write_bytes(json.dumps(state).encode())
    import hashlib

    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.json"] = hashlib.sha256((path / "state.json").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="running means are unreadable"):
        manager.load_latest(_mean_learner(tiny_parts))


def test_bad_reference_options_are_refused(tiny_parts):
    with pytest.raises(ValueError, match="one of none, live, mean"):
        RewardObjective(tiny_parts[1], reference="baseline")
    with pytest.raises(ValueError, match="reference_decay"):
        RewardObjective(tiny_parts[1], reference="mean", reference_decay=1.0)


def test_config_refuses_a_reference_or_mining_outside_the_reward_objective():
    from streaming.config import load_config
    from streaming.errors import ConfigError

    cfg = load_config(overrides={"reward_reference": "live", "mining": "add"}, environ={})
    assert (cfg.learner.reward_reference, cfg.ingest.mining) == ("live", "add")
    with pytest.raises(ConfigError, match="reward_reference='mean'.*objective='kto'"):
        load_config(overrides={"reward_reference": "mean", "objective": "kto"}, environ={})
    with pytest.raises(ConfigError, match="mining='add'.*objective='dpo'"):
        load_config(overrides={"mining": "add", "objective": "dpo"}, environ={})


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
