"""Forgetting is measured: KL(candidate ‖ live) over a probe set, its gate check and its metric.

The KL is checked against computations that do not share the probe's code path: the sequences
are built here from the tokenizer's own ids, each one run alone through both models, and the
divergences come from ``torch.distributions``.
"""

from __future__ import annotations

import copy
import json
import logging
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, kl_divergence

from learner.base import Example
from learner.objectives import SFTObjective
from learner.probe import Probe, ProbeError, ProbeLine, bernoulli_kl, read_probe_file
from learner.step import Learner, StepConfig
from monitors.decision import GateDecision
from monitors.gate import Gate, GateConfig
from monitors.metrics import Metrics
from streaming.errors import ConfigError
from streaming.promotion.governor import GovernanceSettings, Governor
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource
from streaming.testing.learner import NullObjective
from streaming.testing.simulate import SimulatedFeedback

LINES = [
    ProbeLine("How long do I boil an egg?", "About nine minutes."),
    ProbeLine("What is the capital of Portugal?"),  # prompt only: the reply's first token
    ProbeLine("Reverse a list in Python?", "Use reversed(items) or items[::-1]."),
]
CORRECTIONS = [
    Example("Say something rude.", "I would rather not.", rejected="Get lost."),
    Example("Summarize the plot of Hamlet.", "A prince avenges his father.", rejected="No."),
]


def _perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Move every weight a seeded random step: a candidate that differs from live everywhere."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture()
def causal(tiny_causal_parts):
    make, tokenizer = tiny_causal_parts
    objective = SFTObjective(tokenizer, max_length=32)
    return Learner(make(0), objective, StepConfig(lr=1e-2, l2sp_weight=0.0))


@pytest.fixture()
def reward(tiny_parts, objective):
    return Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-2, l2sp_weight=0.0))


# --- causal LMs


def test_kl_is_zero_while_the_candidate_is_the_live_model(causal, reward):
    for learner in (causal, reward):
        result = Probe(learner.objective, LINES[::2]).measure(learner)
        assert result.kl == 0.0 and set(result.per_example) == {0.0}


def test_kl_grows_when_steps_change_the_candidate(causal):
    probe = Probe(causal.objective, LINES)
    batch = causal.objective.collate(CORRECTIONS)
    seen = [probe.measure(causal).kl]
    for _ in range(3):
        causal.step(batch)
        seen.append(probe.measure(causal).kl)
    assert seen[0] == 0.0
    assert all(kl > 1e-4 for kl in seen[1:]), seen
    causal.rebase()  # a promotion: the candidate is the live model again
    assert probe.measure(causal).kl == 0.0


def _by_hand(learner: Learner, line: ProbeLine) -> list[float]:
    """Per-position KL of one line, laid out from the tokenizer's ids, run alone (no padding)."""
    tok = learner.objective.tokenizer
    ids = [tok.cls_token_id, *tok(line.prompt, add_special_tokens=False)["input_ids"]]
    ids.append(tok.sep_token_id)  # the tiny vocabulary is BERT-style: [CLS] prompt [SEP] ...
    if line.response is not None:
        # ... response [SEP]; the last token's distribution (after the end) is not compared
        ids += tok(line.response, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        c = learner.candidate(input_ids=x).logits[0].double()
        lv = learner.baseline(input_ids=x).logits[0].double()
    kl = kl_divergence(Categorical(logits=c), Categorical(logits=lv))
    return kl.tolist()


def test_kl_equals_a_hand_computation(causal):
    _perturb(causal.candidate)
    result = Probe(causal.objective, LINES).measure(causal)
    per_line = [_by_hand(causal, line) for line in LINES]
    positions = [kl for line in per_line for kl in line]
    assert result.positions == len(positions)
    assert result.kl == pytest.approx(sum(positions) / len(positions), rel=1e-5)
    expected = [sum(line) / len(line) for line in per_line]
    assert list(result.per_example) == pytest.approx(expected, rel=1e-5)
    assert result.kl > 1e-4  # the perturbation is visible, so the comparison means something


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padding_does_not_change_the_kl(tiny_causal_parts, padding_side):
    make, tokenizer = tiny_causal_parts
    objective = SFTObjective(tokenizer, max_length=32, padding_side=padding_side)
    learner = Learner(make(0), objective)
    _perturb(learner.candidate)
    short, long = LINES[1], LINES[2]
    alone = Probe(objective, [short]).measure(learner)
    together = Probe(objective, [short, long], batch_size=2).measure(learner)  # short is padded
    apart = Probe(objective, [short, long], batch_size=1).measure(learner)
    assert together.per_example[0] == pytest.approx(alone.kl, rel=1e-5)
    assert together.kl == pytest.approx(apart.kl, rel=1e-5)
    assert together.positions == apart.positions


def test_long_lines_are_cut_to_the_objectives_max_length(causal):
    long = ProbeLine("word " * 200, "reply " * 200)
    result = Probe(causal.objective, [long]).measure(causal)
    assert result.positions == causal.objective.max_length - 1


def test_a_prompt_only_line_opens_the_chat_templates_assistant_turn(tiny_causal_parts):
    make, tokenizer = tiny_causal_parts
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}user: {{ m['content'] }} [SEP]{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    objective = SFTObjective(tokenizer, max_length=48, chat_template=True)
    learner = Learner(make(0), objective)
    prompt = "What is the capital of Portugal?"
    result = Probe(objective, [ProbeLine(prompt)]).measure(learner)
    framed = tokenizer(f"user: {prompt} [SEP]assistant:", add_special_tokens=False)["input_ids"]
    # Every position of the framed prompt, the last one predicting the reply's first token.
    assert result.positions == len(framed)


def test_the_lora_baseline_is_the_live_adapter(tiny_causal_parts):
    make, tokenizer = tiny_causal_parts
    objective = SFTObjective(tokenizer, max_length=32)
    learner = Learner(make(0), objective, StepConfig(lr=5e-2, trainable="lora", lora_r=2))
    probe = Probe(objective, LINES)
    assert probe.measure(learner).kl == 0.0  # LoRA's B starts at 0: both adapters are no-ops
    batch = objective.collate(CORRECTIONS)
    for _ in range(3):
        learner.step(batch)
    assert probe.measure(learner).kl > 0.0
    assert learner.candidate.active_adapter == "candidate"  # measuring switched it back


# --- reward models


def test_reward_kl_is_the_bernoulli_kl_of_p_good_and_drift_the_mean_reward_change(reward):
    _perturb(reward.candidate, scale=0.2)
    result = Probe(reward.objective, LINES[::2]).measure(reward)
    examples = [Example(line.prompt, line.response, target=1.0) for line in LINES[::2]]
    batch = reward.objective.collate(examples)
    with torch.no_grad():
        r_c = reward.objective.model_values(reward.candidate, batch).double()
        r_l = reward.objective.model_values(reward.baseline, batch).double()
    kl = kl_divergence(Bernoulli(probs=torch.sigmoid(r_c)), Bernoulli(probs=torch.sigmoid(r_l)))
    assert list(result.per_example) == pytest.approx(kl.tolist(), rel=1e-6)
    assert result.kl == pytest.approx(float(kl.mean()), rel=1e-6)
    assert result.score_drift == pytest.approx(float((r_c - r_l).abs().mean()), rel=1e-6)
    assert result.kl > 0 and result.positions == 2


def test_bernoulli_kl_stays_finite_for_large_rewards():
    kl = bernoulli_kl(torch.tensor([60.0, -60.0]), torch.tensor([-60.0, 60.0]))
    assert torch.isfinite(kl).all() and kl.tolist() == pytest.approx([60.0, 60.0], rel=1e-3)


# --- probe files


def _write(tmp_path, *lines: str):
    path = tmp_path / "probe.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_probe_file_is_read_once_blank_lines_skipped_extra_keys_ignored(tmp_path, causal):
    path = _write(
        tmp_path,
        json.dumps({"prompt": "Hi?", "response": "Hello."}),
        "",
        json.dumps({"prompt": "Why?", "event_id": "e1", "feedback": {"type": "thumb"}}),
    )
    assert read_probe_file(path, needs_response=False) == [
        ProbeLine("Hi?", "Hello."),
        ProbeLine("Why?"),
    ]
    assert len(Probe.from_file(path, causal.objective)) == 2


def test_only_the_first_max_examples_lines_are_used_and_a_log_says_so(tmp_path, caplog):
    path = _write(tmp_path, *(json.dumps({"prompt": f"q{i}"}) for i in range(5)))
    with caplog.at_level(logging.WARNING, logger="learner.probe"):
        lines = read_probe_file(path, needs_response=False, max_examples=3)
    assert [line.prompt for line in lines] == ["q0", "q1", "q2"]
    assert "only the first 3 probe lines are used, 2 more ignored" in caplog.text


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "holds no probe lines; write one"),
        ('{"prompt": "ok"}\n{"prompt": oops}\n', "line 2 is not JSON"),
        ('["prompt"]\n', "line 1 is a JSON list, expected an object"),
        ('{"response": "r"}\n', "line 1: 'prompt' must be a non-empty string, got nothing"),
        ('{"prompt": "  "}\n', "line 1: 'prompt' must be a non-empty string"),
        ('{"prompt": "p", "response": 3}\n', "line 1: 'response' must be a string when given"),
    ],
)
def test_an_invalid_probe_file_names_the_line_and_what_to_do(tmp_path, content, message):
    path = tmp_path / "probe.jsonl"
    path.write_text(content)
    with pytest.raises(ProbeError, match=message):
        read_probe_file(path, needs_response=False)


def test_a_reward_probe_needs_a_response_on_every_line(tmp_path, objective):
    path = _write(tmp_path, json.dumps({"prompt": "a", "response": "b"}), '{"prompt": "c"}')
    with pytest.raises(ProbeError, match="line 2 has no 'response': a reward model scores"):
        Probe.from_file(path, objective)


def test_a_missing_or_binary_file_and_an_objective_without_a_probe_are_refused(tmp_path):
    with pytest.raises(ProbeError, match="does not exist; pass a JSONL file .* or unset probe"):
        read_probe_file(tmp_path / "nope.jsonl", needs_response=False)
    binary = tmp_path / "probe.jsonl"
    binary.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(ProbeError, match="is not UTF-8 text"):
        read_probe_file(binary, needs_response=False)
    with pytest.raises(ProbeError, match="and reward models, not the 'null' objective; unset"):
        Probe(NullObjective(), LINES)


def test_the_wiring_turns_a_bad_probe_file_into_a_config_error(tmp_path, causal):
    from streaming.cli.wiring import load_probe
    from streaming.config import load_config

    assert load_probe(load_config(environ={}), causal) is None
    config = load_config(overrides={"probe_file": str(tmp_path / "nope.jsonl")}, environ={})
    with pytest.raises(ConfigError, match="probe_file: probe file .* does not exist"):
        load_probe(config, causal)


def test_the_config_keys_are_validated():
    from streaming.config import flat_default, load_config

    assert flat_default("probe_file") is None and flat_default("probe_every_steps") == 50
    assert math.isinf(flat_default("max_probe_kl"))
    with pytest.raises(ConfigError, match="probe_every_steps"):
        load_config(overrides={"probe_every_steps": 0}, environ={})
    with pytest.raises(ConfigError, match="max_probe_kl"):
        load_config(overrides={"max_probe_kl": 0}, environ={})
    with pytest.raises(ValueError, match="max_probe_kl must be a number > 0"):
        GateConfig(max_probe_kl=-1.0)


# --- the gate check


def _decide(kl, **config) -> GateDecision:
    gate = Gate(GateConfig(min_events=100, drift_quiet_events=0, holdout_required=False, **config))
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.3, size=2000)
    gate.observe(base, base - 0.2 + rng.normal(0, 0.1, size=2000))  # clearly better
    return gate.decide(param_distance=0.1, probe_kl=kl)


def test_the_gate_check_is_off_inconclusive_passes_or_fails():
    off = _decide(5.0, max_probe_kl=0.1).check("probe_kl")
    assert off.passed is True and off.detail == "switched off (no probe_file configured)"
    waiting = _decide(None, probe_configured=True).check("probe_kl")
    assert waiting.state == "inconclusive" and "not measured since the last promotion" in (
        waiting.detail
    )
    assert _decide(math.nan, probe_configured=True).check("probe_kl").state == "inconclusive"
    fine = _decide(0.05, probe_configured=True, max_probe_kl=0.1)
    assert fine.action == "promote"
    check = fine.check("probe_kl")
    assert (check.passed, check.value, check.threshold) == (True, 0.05, 0.1)
    assert "0.05 nats, cap 0.1" in check.detail
    worse = _decide(0.2, probe_configured=True, max_probe_kl=0.1)
    assert worse.check("probe_kl").passed is False and worse.reason == "hold: probe_kl failed"
    assert _decide(0.2, probe_configured=True).check("probe_kl").passed is True  # inf: no cap
    with pytest.raises(ValueError, match="cannot be -0.5"):
        _decide(-0.5, probe_configured=True)


# --- the governor


def _govern(tiny_parts, objective, probe_lines, every: int, max_kl: float):
    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
    gate = GateConfig(
        min_events=300, drift_quiet_events=0, holdout_required=False, max_probe_kl=max_kl
    )
    metrics = Metrics()
    probe = Probe(objective, probe_lines)
    governor = Governor(
        learner,
        None,
        None,
        metrics,
        GovernanceSettings(gate=gate, publish=False, probe_every_steps=every),
        probe=probe,
    )
    measured_at: list[int] = []
    original = probe.measure

    def spy(learner):
        measured_at.append(governor.steps)
        return original(learner)

    probe.measure = spy
    decisions: list[tuple[int, GateDecision]] = []
    governor.on_decision = lambda _events, d: (
        decisions.append((governor.steps, d)) if isinstance(d, GateDecision) else None
    )
    source = MemorySource(list(SimulatedFeedback(seed=1).payloads(700)))
    Pipeline(
        source, MemorySink(), learner, metrics, PipelineSettings(batch_size=16), governor=governor
    ).run()
    return governor, metrics, measured_at, decisions


PROBE = [ProbeLine("How do I cook rice?", "Rinse it, then simmer it covered."), *LINES[::2]]


def test_the_governor_measures_every_n_steps_and_resets_after_a_promotion(tiny_parts, objective):
    governor, metrics, measured_at, decisions = _govern(tiny_parts, objective, PROBE, 3, math.inf)
    assert measured_at == list(range(3, governor.steps + 1, 3))
    promoted = [step for step, d in decisions if d.action == "promote"]
    assert promoted, "a learnable stream should be promoted within 700 events"
    by_step = dict(decisions)
    for step in promoted:
        after = by_step.get(step + 1)
        if after is not None and (step + 1) % 3:
            assert after.check("probe_kl").state == "inconclusive"
    for step, d in decisions:
        if step % 3 == 0:
            check = d.check("probe_kl")
            assert check.passed is True and check.value is not None and check.value >= 0
    text = metrics.render().decode()
    assert "feedstep_probe_duration_seconds " in text
    if governor.probe_result is not None:
        assert f"feedstep_probe_kl {governor.probe_result.kl!r}" in text


def test_a_max_probe_kl_below_the_measured_kl_blocks_the_promotion(tiny_parts, objective):
    governor, metrics, _, decisions = _govern(tiny_parts, objective, PROBE, 2, 1e-12)
    assert not [e for e in governor.history if e.kind == "promote"]
    blocked = [d for _, d in decisions if d.reason == "hold: probe_kl failed"]
    assert blocked, [d.reason for _, d in decisions][-5:]
    # Every other check passed: the probe alone held the candidate back.
    last = blocked[-1]
    assert [c.name for c in last.checks if c.passed is not True] == ["probe_kl"]
    assert governor.probe_result is not None and governor.probe_result.kl > 1e-12
    text = metrics.render().decode()
    assert f"feedstep_probe_kl {governor.probe_result.kl!r}" in text
    assert 'feedstep_gate_check_state{check="probe_kl",state="fail"} 1.0' in text
    assert governor.probe_result.score_drift is not None and governor.probe_result.score_drift > 0


def test_a_promotion_forgets_the_measurement_until_the_next_one(tiny_parts, objective):
    learner = Learner(tiny_parts[0](0), objective)
    metrics = Metrics()
    settings = GovernanceSettings(gate=GateConfig(holdout_required=False), publish=False)
    governor = Governor(learner, None, None, metrics, settings, probe=Probe(objective, PROBE))
    _perturb(learner.candidate, scale=0.2)
    governor._measure_probe()
    assert governor.probe_result is not None and governor.probe_result.kl > 0
    assert "feedstep_probe_kl NaN" not in metrics.render().decode()
    governor._promote(governor.gate.decide(param_distance=0.0), objective.tokenizer)
    assert governor.probe_result is None
    assert governor.gate.decide(param_distance=0.0).check("probe_kl").state == "inconclusive"
    text = metrics.render().decode()
    assert "feedstep_probe_kl NaN" in text and "feedstep_probe_score_drift NaN" in text
    governor._measure_probe()  # the promoted candidate is the live model
    assert governor.probe_result.kl == 0.0


def test_without_a_probe_the_check_is_off_and_the_gauge_nan(tiny_parts, objective):
    learner = Learner(tiny_parts[0](0), objective)
    metrics = Metrics()
    governor = Governor(learner, None, None, metrics, GovernanceSettings(publish=False))
    assert governor.gate.config.probe_configured is False
    assert "feedstep_probe_kl NaN" in metrics.render().decode()
