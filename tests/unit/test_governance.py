"""The governor over in-memory fakes: promotion publishes, announces and rebases; dry runs don't."""

from __future__ import annotations

import json

import torch

from learner.step import Learner, StepConfig
from learner.store import ModelStore
from monitors.gate import GateConfig
from monitors.metrics import Metrics
from streaming.promotion.governor import GovernanceSettings, Governor
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource
from streaming.testing.simulate import SimulatedFeedback

GATE = GateConfig(min_events=300, drift_quiet_events=0, holdout_required=False)


def _run(tiny_parts, objective, store, publish: bool):
    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
    sink, metrics = MemorySink(), Metrics()
    governor = Governor(
        learner,
        store,
        sink if publish else None,
        metrics,
        GovernanceSettings(gate=GATE, publish=publish),
    )
    governor.ensure_initial_version(objective.tokenizer)
    rebased_at: list[float] = []
    original = learner.rebase

    def spy_rebase():
        original()
        rebased_at.append(learner.param_distance())

    learner.rebase = spy_rebase
    source = MemorySource(list(SimulatedFeedback(seed=1).payloads(700)))
    Pipeline(
        source, MemorySink(), learner, metrics, PipelineSettings(batch_size=16), governor=governor
    ).run()
    return governor, sink, metrics, rebased_at


def test_promotion_publishes_switches_announces_and_rebases(tiny_parts, objective, tmp_path):
    store = ModelStore(tmp_path / "store")
    governor, sink, metrics, rebased_at = _run(tiny_parts, objective, store, publish=True)
    promotions = [e for e in governor.history if e.kind == "promote"]
    assert promotions, "a learnable stream should be promoted within 700 events"
    assert rebased_at and all(d == 0.0 for d in rebased_at)
    versions = store.versions()
    assert len(versions) == 1 + len(promotions)
    assert store.live_version() == versions[-1].version == governor.live_version
    messages = [json.loads(m.value) for m in sink.by_topic("feedstep.model-updates")]
    assert [m["version"] for m in messages] == [v.version for v in versions]
    assert messages[-1]["parent"] == versions[-2].version
    text = metrics.render().decode()
    assert f'feedstep_promotions_total{{reason="gate"}} {float(len(promotions))}' in text
    assert 'feedstep_gate_check_state{check="sequential_test",state="pass"}' in text


def test_dry_run_decides_but_writes_nothing(tiny_parts, objective, tmp_path):
    governor, sink, _, rebased_at = _run(tiny_parts, objective, None, publish=False)
    assert [e.kind for e in governor.history if e.kind == "promote"]
    assert sink.messages == []
    assert not (tmp_path / "store").exists()


def test_rollback_restores_the_previous_version_in_both_models(tiny_parts, objective, tmp_path):
    store = ModelStore(tmp_path / "store")
    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
    sink = MemorySink()
    governor = Governor(learner, store, sink, Metrics(), GovernanceSettings(gate=GATE))
    governor.ensure_initial_version(objective.tokenizer)
    first = {k: v.clone() for k, v in learner.candidate.state_dict().items()}
    # Pretend a promoted version 2 turned out worse: publish different weights and switch.
    with torch.no_grad():
        for p in learner.candidate.parameters():
            p.add_(0.01)
    v2 = store.publish(
        learner.candidate,
        objective.tokenizer,
        objective="reward",
        metrics={},
        reason="test",
        parent=1,
    )
    store.promote(v2.version, "test", "pytest")
    learner.rebase()
    governor.live_version = v2.version
    from monitors.decision import RollbackDecision

    decision = RollbackDecision(
        action="rollback",
        cause="degraded",
        version="2",
        previous_version="1",
        events=500,
        test_statistic=9.0,
        checks=(),
        decided_at="2026-11-28T00:00:00Z",
    )
    governor._rollback(decision)
    assert store.live_version() == 1 and governor.live_version == 1
    for name, value in learner.baseline.state_dict().items():
        assert torch.allclose(value, first[name]), name
        assert torch.allclose(learner.candidate.state_dict()[name], first[name]), name
    assert json.loads(sink.by_topic("feedstep.model-updates")[-1].value)["action"] == "rollback"


def test_a_promotion_is_checkpointed_at_once(tiny_parts, objective, tmp_path):
    from learner.checkpoint import CheckpointManager

    store = ModelStore(tmp_path / "store")
    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
    governor = Governor(learner, store, MemorySink(), Metrics(), GovernanceSettings(gate=GATE))
    governor.ensure_initial_version(objective.tokenizer)
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=50)
    settings = PipelineSettings(
        batch_size=16, checkpoint_every_steps=10_000, checkpoint_every_s=3600.0
    )
    source = MemorySource(list(SimulatedFeedback(seed=1).payloads(700)))
    Pipeline(
        source, MemorySink(), learner, Metrics(), settings, governor=governor, checkpoints=ckpt
    ).run()
    promotions = [e for e in governor.history if e.kind == "promote"]
    assert promotions
    saved = [json.loads((p / "extra.json").read_text())["governor"] for p in ckpt.checkpoints()]
    # No step-count or timed checkpoint could happen: every one but the final one was taken at
    # the first consistent moment after a switch (at most the batches in flight later), with
    # the new LIVE version in it.
    switches = [e for e in governor.history if e.kind in ("promote", "rollback")]
    in_flight = (2 * settings.queue_batches + 2) * settings.batch_size
    assert len(saved) >= len(switches)
    for switch in switches:
        after = [g for g in saved if g["live_version"] == switch.detail["to"]]
        assert after, f"no checkpoint with version {switch.detail['to']} live"
        assert switch.index <= after[0]["events"] <= switch.index + in_flight


def test_rollback_of_a_causal_lm_loads_its_pretrained_folder(tiny_causal_parts, tmp_path):
    from learner.objectives import SFTObjective
    from monitors.decision import RollbackDecision

    make, tokenizer = tiny_causal_parts
    objective = SFTObjective(tokenizer, max_length=32)
    store = ModelStore(tmp_path / "store")
    learner = Learner(make(0), objective, StepConfig(lr=1e-2))
    governor = Governor(
        learner, store, MemorySink(), Metrics(), GovernanceSettings(gate=GATE), objective="sft"
    )
    governor.ensure_initial_version(tokenizer)
    first = {k: v.clone() for k, v in learner.candidate.state_dict().items()}
    with torch.no_grad():
        for p in learner.candidate.parameters():
            p.add_(0.01)
    v2 = store.publish(learner.candidate, tokenizer, objective="sft", metrics={}, reason="t")
    store.promote(v2.version, "test", "pytest")
    learner.rebase()
    governor.live_version = v2.version
    decision = RollbackDecision("rollback", "degraded", "2", "1", 500, 9.0, (), 0.0)
    governor._rollback(decision)
    assert store.live_version() == 1 and store.version(1).model_type == "pretrained"
    for name, value in learner.candidate.state_dict().items():
        assert torch.equal(value, first[name]), name
        assert torch.equal(learner.baseline.state_dict()[name], first[name]), name
