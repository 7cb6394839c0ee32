import math

import pytest
import torch

from learner.base import Example
from learner.step import Learner, StepConfig


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_loss_goes_down_on_a_fixed_batch(tiny_parts, objective, examples):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=5e-3, l2sp_weight=0.0))
    batch = objective.collate(examples)
    losses = [learner.step(batch).task_loss for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(b < a for a, b in zip(losses[:5], losses[1:6], strict=True)), losses
    assert learner.steps == 15 and learner.skipped == 0


def test_candidate_scores_are_pre_step_and_baseline_stays_frozen(tiny_parts, objective, examples):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-3))
    batch = objective.collate(examples)
    before = _weights(learner.baseline)
    first = learner.step(batch)
    # Before any step both models are the same function: identical scores.
    assert torch.allclose(first.candidate.score, first.baseline.score, atol=1e-6)
    second = learner.step(batch)
    assert not torch.allclose(second.candidate.score, second.baseline.score, atol=1e-6)
    assert torch.allclose(second.baseline.score, first.baseline.score, atol=1e-6)
    for name, value in _weights(learner.baseline).items():
        assert torch.equal(value, before[name]), name


def _distance_after(tiny_parts, objective, examples, l2sp: float) -> float:
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-3, l2sp_weight=l2sp, weight_decay=0.0))
    batch = objective.collate(examples)
    for _ in range(12):
        learner.step(batch)
    return learner.param_distance()


def test_larger_l2sp_weight_moves_weights_less(tiny_parts, objective, examples):
    free = _distance_after(tiny_parts, objective, examples, 0.0)
    pulled = _distance_after(tiny_parts, objective, examples, 50.0)
    assert free > 0
    assert pulled < 0.9 * free, (free, pulled)


def test_l2sp_gradient_matches_autograd():
    from learner.regularizers import L2SP

    torch.manual_seed(0)
    p = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    anchors = [torch.randn(4, 3), torch.randn(5)]
    reg = L2SP(p, anchors, weight=0.3)
    reg.add_grad()
    expected = [0.3 * (q.detach() - a) for q, a in zip(p, anchors, strict=True)]
    for q, e in zip(p, expected, strict=True):
        assert torch.allclose(q.grad, e)
    manual = 0.5 * 0.3 * sum(((q.detach() - a) ** 2).sum() for q, a in zip(p, anchors, strict=True))
    assert math.isclose(float(reg.penalty()), float(manual), rel_tol=1e-6)


def test_nan_batch_leaves_weights_and_optimizer_bit_identical(tiny_parts, objective, examples):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-3))
    good = objective.collate(examples)
    learner.step(good)
    weights = _weights(learner.candidate)
    state = {
        k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)}
        for k, s in learner.optimizer.state.items()
    }
    bad = objective.collate(examples)
    bad.weights = torch.full_like(bad.weights, float("nan"))
    result = learner.step(bad)
    assert not result.applied and result.skip_reason == "non_finite_loss"
    assert learner.skipped == 1 and learner.steps == 1
    for name, value in _weights(learner.candidate).items():
        assert torch.equal(value, weights[name]), name
    for k, s in learner.optimizer.state.items():
        for n, v in s.items():
            if torch.is_tensor(v):
                assert torch.equal(v, state[k][n])


def test_non_finite_gradient_is_skipped(tiny_parts, objective, examples):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-3))
    weights = _weights(learner.candidate)
    hook = learner.params[0].register_hook(lambda g: g * float("inf"))
    result = learner.step(objective.collate(examples))
    hook.remove()
    assert result.skip_reason == "non_finite_gradient"
    for name, value in _weights(learner.candidate).items():
        assert torch.equal(value, weights[name]), name


def test_trainable_modes_select_parameters(tiny_parts, objective):
    make, _ = tiny_parts
    full = Learner(make(0), objective, StepConfig(trainable="full"))
    head = Learner(make(0), objective, StepConfig(trainable="head"))
    bias = Learner(make(0), objective, StepConfig(trainable="bias"))
    assert head.trainable_parameters == 32 + 1
    assert head.trainable_parameters < bias.trainable_parameters < full.trainable_parameters
    assert full.trainable_parameters == full.total_parameters


def test_weight_decay_is_off_for_biases_and_norms(tiny_parts, objective):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(weight_decay=0.1))
    decay, no_decay = learner.optimizer.param_groups
    names = {id(p): n for n, p in learner.candidate.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("LayerNorm" in names[id(p)] for p in no_decay["params"])


def test_step_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr"):
        StepConfig(lr=0)
    with pytest.raises(ValueError, match="trainable"):
        StepConfig(trainable="everything")


def test_example_needs_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        Example("p", "r")
    with pytest.raises(ValueError, match="exactly one"):
        Example("p", "r", target=1.0, rejected="x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Example("p", "r", target=2.0)
