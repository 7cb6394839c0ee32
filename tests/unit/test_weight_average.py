"""Weight averaging (``ema_decay``): the candidate that is judged, promoted and published is the
moving average of the trained weights."""

from __future__ import annotations

import pytest
import torch

from learner.checkpoint import CheckpointManager
from learner.lora import AVERAGE, CANDIDATE
from learner.step import Learner, StepConfig

DECAY = 0.8
PLAIN = StepConfig(lr=1e-2, weight_decay=0.0, l2sp_weight=0.0)
AVERAGED = StepConfig(lr=1e-2, weight_decay=0.0, l2sp_weight=0.0, ema_decay=DECAY)
LORA = StepConfig(trainable="lora", lr=1e-2, lora_r=4, l2sp_weight=0.1, ema_decay=DECAY)


def _scores(learner: Learner, model, batch) -> torch.Tensor:
    """``model``'s per-example scores of ``batch``."""
    with torch.no_grad():
        values = learner.objective.model_values(model, batch)
    return learner.objective.from_values(values, batch, None).score


def test_the_average_follows_the_recursion_and_the_trained_weights_equal_a_plain_run(
    tiny_parts, objective, examples
):
    plain = Learner(tiny_parts[0](0), objective, PLAIN)
    averaged = Learner(tiny_parts[0](0), objective, AVERAGED)
    batch = objective.collate(examples)
    want = [p.detach().clone() for p in averaged.params]
    for _ in range(4):
        plain.step(batch)
        averaged.step(batch)
        pairs = zip(want, averaged.params, strict=True)
        want = [DECAY * w + (1 - DECAY) * p.detach() for w, p in pairs]
    # training is unchanged: the gradient is the trained weights', not the average's
    for a, b in zip(plain.params, averaged.params, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for w, avg in zip(want, averaged.average_params, strict=True):
        assert torch.allclose(w, avg, atol=1e-6)
    assert not all(
        torch.allclose(a, p) for a, p in zip(averaged.average_params, averaged.params, strict=True)
    )  # it lags the trained weights


def test_reported_scores_and_score_are_the_averages_and_training_uses_the_weights(
    tiny_parts, objective, examples
):
    learner = Learner(tiny_parts[0](0), objective, AVERAGED)
    batch = objective.collate(examples)
    for _ in range(3):
        learner.step(batch)
    assert learner.judged is learner.average
    expected = _scores(learner, learner.average, batch)
    trained = _scores(learner, learner.candidate, batch)
    assert not torch.allclose(expected, trained, atol=1e-5)
    _, cand = learner.score(batch)
    result = learner.step(batch)  # scores come before this step's update
    assert torch.allclose(cand.score, expected, atol=1e-5)
    assert torch.allclose(result.candidate.score, expected, atol=1e-5)
    assert learner.publishable("candidate") is learner.average


def test_promotion_makes_the_average_the_baseline_and_rollback_resets_all_three(
    tiny_parts, objective, examples
):
    learner = Learner(tiny_parts[0](0), objective, AVERAGED)
    start = {k: v.clone() for k, v in learner.candidate.state_dict().items()}
    batch = objective.collate(examples)
    for _ in range(3):
        learner.step(batch)
    learner.rebase()
    assert torch.allclose(
        _scores(learner, learner.baseline, batch), _scores(learner, learner.average, batch)
    )
    learner.reset_to(start)
    for model in (learner.candidate, learner.baseline, learner.average):
        for name, value in model.state_dict().items():
            assert torch.equal(value, start[name]), name


def test_resume_restores_the_average_and_an_older_checkpoint_starts_it_at_the_weights(
    tiny_parts, objective, examples, tmp_path
):
    batch = objective.collate(examples)
    learner = Learner(tiny_parts[0](0), objective, AVERAGED)
    for _ in range(3):
        learner.step(batch)
    CheckpointManager(tmp_path / "a").save(learner)
    fresh = Learner(tiny_parts[0](0), objective, AVERAGED)
    CheckpointManager(tmp_path / "a").load_latest(fresh)
    for a, b in zip(learner.average_params, fresh.average_params, strict=True):
        assert torch.equal(a, b)
    # both go on identically: same reported scores after one more step each
    assert torch.equal(learner.step(batch).candidate.score, fresh.step(batch).candidate.score)

    plain = Learner(tiny_parts[0](0), objective, PLAIN)
    plain.step(batch)
    CheckpointManager(tmp_path / "b").save(plain)
    turned_on = Learner(tiny_parts[0](0), objective, AVERAGED)
    CheckpointManager(tmp_path / "b").load_latest(turned_on)
    for avg, p in zip(turned_on.average_params, plain.params, strict=True):
        assert torch.equal(avg, p)


def test_lora_averages_a_third_adapter_and_publishes_it(tiny_parts, objective, examples):
    learner = Learner(tiny_parts[0](0), objective, LORA, base={"name": "tiny", "seed": 0})
    assert all(f".{CANDIDATE}." in n for n in learner.param_names)  # only the candidate trains
    names = {id(p): n for n, p in learner.candidate.named_parameters()}
    assert all(f".{AVERAGE}." in names[id(a)] for a in learner.average_params)
    batch = objective.collate(examples)
    for _ in range(3):
        learner.step(batch)
    assert not torch.allclose(
        _scores(learner, learner.average, batch), _scores(learner, learner.candidate, batch)
    )
    published = learner.publishable("candidate")
    for key, value in published.state.items():
        assert any(torch.equal(value, a.detach().cpu()) for a in learner.average_params), key
    learner.rebase()  # the live adapter (the anchor) becomes the average
    for anchor, average in zip(learner.anchors, learner.average_params, strict=True):
        assert torch.equal(anchor, average)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_a_decay_outside_0_1_is_refused_with_what_to_set(decay):
    with pytest.raises(ValueError, match=r"ema_decay must lie in \[0, 1\)"):
        StepConfig(ema_decay=decay)
