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


# -- online EWC -------------------------------------------------------------------------------


def test_ewc_fisher_is_a_moving_average_of_squared_gradients():
    from learner.regularizers import OnlineEWC

    p = [torch.nn.Parameter(torch.zeros(3))]
    ewc = OnlineEWC(p, [torch.zeros(3)], weight=1.0, decay=0.75)
    p[0].grad = torch.tensor([1.0, 2.0, 0.0])
    ewc.update_fisher()
    p[0].grad = torch.tensor([3.0, 0.0, 0.0])
    ewc.update_fisher()
    first = 0.25 * torch.tensor([1.0, 4.0, 0.0])
    expected = 0.75 * first + 0.25 * torch.tensor([9.0, 0.0, 0.0])
    assert torch.allclose(ewc.fisher[0], expected)


def test_ewc_pulls_harder_where_fisher_is_large_and_matches_autograd():
    from learner.regularizers import OnlineEWC

    torch.manual_seed(0)
    p = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.full((2, 2), 2.0))]
    anchors = [torch.zeros(4), torch.ones(2, 2)]
    ewc = OnlineEWC(p, anchors, weight=3.0, decay=0.0)
    ewc.fisher = [torch.tensor([0.0, 0.1, 1.0, 10.0]), torch.tensor([[1.0, 0.0], [0.0, 5.0]])]
    ewc.add_grad()
    pull = p[0].grad
    assert pull[0] == 0 and pull[0] < pull[1] < pull[2] < pull[3]  # same displacement, more F
    # gradient and penalty agree with autograd on λ/2 Σ F (θ - θ0)²
    q = [t.detach().clone().requires_grad_(True) for t in p]
    penalty = sum(
        0.5 * 3.0 * (f * (x - a) ** 2).sum() for f, x, a in zip(ewc.fisher, q, anchors, strict=True)
    )
    penalty.backward()
    for mine, ref in zip(p, q, strict=True):
        assert torch.allclose(mine.grad, ref.grad)
    assert math.isclose(float(ewc.penalty()), float(penalty.detach()), rel_tol=1e-6)


def test_ewc_holds_back_the_weights_with_large_fisher(tiny_parts, objective, examples):
    make, _ = tiny_parts
    batch = objective.collate(examples)

    def run(ewc_weight: float) -> Learner:
        cfg = StepConfig(
            lr=1e-3, l2sp_weight=0.0, weight_decay=0.0, ewc_weight=ewc_weight, ewc_decay=0.5
        )
        learner = Learner(make(0), objective, cfg)
        for _ in range(8):
            learner.step(batch)
        assert learner.ewc.enabled == (ewc_weight > 0)
        return learner

    def moved(learner: Learner) -> torch.Tensor:
        pairs = zip(learner.params, learner.anchors, strict=True)
        return torch.cat([(p.detach() - a).abs().flatten() for p, a in pairs])

    free, pulled = run(0.0), run(1e5)
    fisher = torch.cat([f.flatten() for f in pulled.ewc.fisher])
    active = fisher[fisher > 0].sort().values
    top = fisher >= active[int(0.99 * active.numel())]
    low = (fisher > 0) & (fisher <= active[active.numel() // 2])
    ratio_top = float(moved(pulled)[top].mean() / moved(free)[top].mean())
    ratio_low = float(moved(pulled)[low].mean() / moved(free)[low].mean())
    assert ratio_top < 0.5 < 0.8 < ratio_low, (ratio_top, ratio_low)


# -- trust region -----------------------------------------------------------------------------


def _update_norm(before, learner) -> float:
    now = dict(zip(learner.param_names, learner.params, strict=True))
    return math.sqrt(sum(float((now[n].detach() - before[n]).pow(2).sum()) for n in now))


def test_trust_region_caps_the_update_norm_and_reports_the_scale(tiny_parts, objective, examples):
    make, _ = tiny_parts
    batch = objective.collate(examples)
    free = Learner(make(0), objective, StepConfig(lr=1e-2))
    before = _weights(free.candidate)
    free.step(batch)
    proposed = _update_norm(before, free)
    cap = proposed / 4
    capped = Learner(make(0), objective, StepConfig(lr=1e-2, max_update_norm=cap))
    before = _weights(capped.candidate)
    result = capped.step(batch)
    measured = _update_norm(before, capped)
    assert math.isclose(measured, cap, rel_tol=1e-4), (measured, cap)
    assert math.isclose(result.update_norm, cap, rel_tol=1e-4)
    assert math.isclose(result.update_scale, 0.25, rel_tol=1e-3), result.update_scale
    # the capped update points the same way as the free one
    delta_free = free.params[0].detach() - before[free.param_names[0]]
    delta_capped = capped.params[0].detach() - before[capped.param_names[0]]
    assert torch.allclose(delta_capped, 0.25 * delta_free, atol=1e-6)


def test_trust_region_leaves_a_small_update_alone(tiny_parts, objective, examples):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-4, max_update_norm=1e3))
    before = _weights(learner.candidate)
    result = learner.step(objective.collate(examples))
    assert result.update_scale == 1.0
    assert math.isclose(result.update_norm, _update_norm(before, learner), rel_tol=1e-4)


def test_without_a_trust_region_the_update_is_not_measured(tiny_parts, objective, examples):
    make, _ = tiny_parts
    result = Learner(make(0), objective, StepConfig()).step(objective.collate(examples))
    assert math.isnan(result.update_norm) and result.update_scale == 1.0


# -- learning-rate schedule and boost ---------------------------------------------------------


def test_warmup_and_cosine_schedule_values():
    from learner.schedule import LRSchedule

    s = LRSchedule(1.0, warmup_steps=4, cosine_decay_steps=10, min_lr=0.1)
    assert [s.rate(t) for t in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert math.isclose(s.rate(9), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(s.rate(14), 0.1) and math.isclose(s.rate(1000), 0.1)
    assert LRSchedule(0.5).rate(1) == LRSchedule(0.5).rate(10_000) == 0.5


def test_learner_follows_the_schedule(tiny_parts, objective, examples):
    make, _ = tiny_parts
    cfg = StepConfig(lr=1e-3, warmup_steps=2, cosine_decay_steps=2, min_lr=1e-4)
    learner = Learner(make(0), objective, cfg)
    batch = objective.collate(examples)
    rates = [learner.step(batch).lr for _ in range(5)]
    assert rates == pytest.approx([5e-4, 1e-3, 5.5e-4, 1e-4, 1e-4])
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_boost_multiplies_the_rate_for_exactly_n_applied_steps(tiny_parts, objective, examples):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-3))
    good = objective.collate(examples)
    bad = objective.collate(examples)
    bad.weights = torch.full_like(bad.weights, float("nan"))
    learner.boost(3.0, steps=2)
    assert learner.lr == pytest.approx(3e-3)
    rates = [learner.step(good).lr]
    skipped = learner.step(bad)  # a skipped step does not use up the boost
    assert not skipped.applied
    rates += [learner.step(good).lr for _ in range(3)]
    assert rates == pytest.approx([3e-3, 3e-3, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="factor"):
        learner.boost(0.0, steps=1)


# -- LoRA ---------------------------------------------------------------------------------------


def _storages(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def test_lora_keeps_one_copy_of_the_base_weights(tiny_parts, objective):
    make, _ = tiny_parts
    model = make(0)
    base = _storages(model.parameters())
    learner = Learner(model, objective, StepConfig(trainable="lora", lora_r=4))
    assert list(learner.baseline.parameters()) == []  # the baseline holds no weights
    held = _storages(learner.candidate.parameters())
    assert set(base) <= set(held)  # the base weights were wrapped, not copied
    new_bytes = sum(n for ptr, n in held.items() if ptr not in base)
    trainable_bytes = 4 * learner.trainable_parameters
    # only the two adapters (candidate and live), each with its copy of the head
    assert new_bytes == 2 * trainable_bytes
    anchors = _storages(learner.anchors)
    assert set(anchors) <= set(held) and not set(anchors) & set(_storages(learner.params))
    assert learner.trainable_parameters < 0.05 * learner.total_parameters
    names = learner.param_names
    assert all("lora_" in n or "modules_to_save" in n for n in names), names
    assert any("query" in n for n in names) and any("head" in n for n in names)


def test_lora_baseline_is_the_live_adapter_starting_as_the_base(tiny_parts, objective, examples):
    make, _ = tiny_parts
    batch = objective.collate(examples)
    reference = objective.model_values(make(0).eval(), batch).detach()
    learner = Learner(make(0), objective, StepConfig(trainable="lora", lr=1e-2, l2sp_weight=0.0))
    losses = [learner.step(batch).task_loss for _ in range(5)]
    assert losses[-1] < losses[0]
    with torch.no_grad():
        baseline = objective.model_values(learner.baseline, batch)
        with learner.candidate.disable_adapter():
            disabled = objective.model_values(learner.candidate, batch)
        candidate = objective.model_values(learner.candidate, batch)
    assert torch.allclose(baseline, reference, atol=1e-6)
    assert torch.allclose(disabled, reference, atol=1e-6)
    assert not torch.allclose(candidate, reference, atol=1e-4)
    assert learner.param_distance() > 0


def test_lora_on_a_causal_lm_targets_the_attention_projections(tiny_causal_parts):
    from learner.objectives import DPOObjective

    make, tokenizer = tiny_causal_parts
    objective = DPOObjective(tokenizer, max_length=32)
    learner = Learner(make(0), objective, StepConfig(trainable="lora", lr=1e-2, lora_r=2))
    suffixes = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in learner.param_names}
    assert suffixes == {"q_proj", "k_proj", "v_proj", "o_proj"}
    batch = objective.collate([Example("Hi?", "Hello there.", rejected="Go away.")])
    first = learner.step(batch)
    assert math.isclose(first.task_loss, math.log(2), rel_tol=1e-5)  # candidate == reference
    assert learner.step(batch).task_loss < first.task_loss


# -- guards keep everything, including the new state ---------------------------------------------


def _state(learner):
    return {
        "weights": _weights(learner.candidate),
        "optimizer": {
            k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)}
            for k, s in learner.optimizer.state.items()
        },
        "fisher": [f.clone() for f in learner.ewc.fisher],
        "schedule": learner.schedule.state(),
        "counts": (learner.steps, learner.skipped),
    }


def _assert_same(a, b):
    for name, value in a["weights"].items():
        assert torch.equal(value, b["weights"][name]), name
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for k, s in a["optimizer"].items():
        for n, v in s.items():
            assert torch.equal(v, b["optimizer"][k][n]), (k, n)
    assert len(a["fisher"]) == len(b["fisher"]) > 0
    assert all(torch.equal(x, y) for x, y in zip(a["fisher"], b["fisher"], strict=True))
    assert a["schedule"] == b["schedule"]


def test_nan_guard_is_bit_identical_with_every_feature_on(tiny_parts, objective, examples):
    make, _ = tiny_parts
    cfg = StepConfig(
        lr=1e-3, ewc_weight=100.0, max_update_norm=1e-3, warmup_steps=3, cosine_decay_steps=5
    )
    learner = Learner(make(0), objective, cfg)
    learner.step(objective.collate(examples))
    learner.boost(2.0, steps=3)
    before = _state(learner)
    bad = objective.collate(examples)
    bad.weights = torch.full_like(bad.weights, float("nan"))
    result = learner.step(bad)
    assert result.skip_reason == "non_finite_loss" and math.isnan(result.update_scale)
    after = _state(learner)
    _assert_same(before, after)
    assert after["counts"] == (1, 1)
    # a non-finite gradient is caught before the Fisher or the optimizer see it
    hook = learner.params[0].register_hook(lambda g: g * float("nan"))
    result = learner.step(objective.collate(examples))
    hook.remove()
    assert result.skip_reason == "non_finite_gradient"
    _assert_same(before, _state(learner))


# -- device residency and compile -------------------------------------------------------------


def test_device_memory_is_zero_on_cpu(tiny_parts, objective):
    learner = Learner(tiny_parts[0](0), objective, StepConfig())
    assert learner.device_memory_bytes() == 0


def test_a_failing_compile_falls_back_to_eager(
    tiny_parts, objective, examples, monkeypatch, caplog
):
    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("inductor exploded")

    monkeypatch.setattr(torch, "compile", lambda model, *a, **k: Broken())
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-3, compile=True))
    eager = Learner(make(0), objective, StepConfig(lr=1e-3))
    batch = objective.collate(examples)
    with caplog.at_level("WARNING", logger="learner.step"):
        result = learner.step(batch)
    assert result.applied and "torch.compile failed" in caplog.text
    assert result.task_loss == eager.step(batch).task_loss


@pytest.mark.gpu
def test_cuda_learner_keeps_models_resident_and_reports_memory(tiny_parts, objective, examples):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-3, ewc_weight=10.0), device="cuda")
    batch = objective.collate(examples).pin()
    assert torch.cuda.is_available() and batch.tensors["input_ids"].is_pinned()
    results = [learner.step(batch) for _ in range(3)]
    assert all(r.applied for r in results) and results[-1].task_loss < results[0].task_loss
    assert learner.device_memory_bytes() > 0
    assert all(p.device.type == "cuda" for p in learner.candidate.parameters())
    assert all(p.device.type == "cuda" for p in learner.baseline.parameters())
    assert results[0].candidate.loss.device.type == "cpu"


@pytest.mark.gpu
def test_cuda_compile_matches_eager(tiny_parts, objective, examples):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    make, _ = tiny_parts
    batch = objective.collate(examples)
    compiled = Learner(make(0), objective, StepConfig(lr=1e-3, compile=True), device="cuda")
    eager = Learner(make(0), objective, StepConfig(lr=1e-3), device="cuda")
    for _ in range(2):
        a, b = compiled.step(batch), eager.step(batch)
    assert compiled._compiled, "torch.compile fell back to eager"
    assert math.isclose(a.task_loss, b.task_loss, rel_tol=2e-2)


def test_step_config_rejects_bad_new_values():
    with pytest.raises(ValueError, match="ewc_decay"):
        StepConfig(ewc_decay=1.0)
    with pytest.raises(ValueError, match="max_update_norm"):
        StepConfig(max_update_norm=-1.0)
    with pytest.raises(ValueError, match=r"min_lr \(0.1\).*lr \(0.01\)"):
        StepConfig(lr=0.01, min_lr=0.1)
    with pytest.raises(ValueError, match="lora_r"):
        StepConfig(trainable="lora", lora_r=0)


def test_a_batch_whose_examples_all_weigh_zero_is_scored_but_changes_nothing(tiny_parts, objective):
    make, _ = tiny_parts
    learner = Learner(make(0), objective, StepConfig(lr=1e-2, weight_decay=0.1))
    before = _weights(learner.candidate)
    held = [
        Example("Q?", "A.", target=1.0, weight=0.0),
        Example("Q?", "B.", target=0.0, weight=0.0),
    ]
    result = learner.step(objective.collate(held))
    assert result.applied and result.skip_reason is None
    assert result.candidate.score.shape == (2,) and torch.isfinite(result.candidate.loss).all()
    assert learner.steps == 0 and learner.skipped == 0
    for name, value in _weights(learner.candidate).items():
        assert torch.equal(value, before[name]), name  # no decay, no momentum: untouched
