"""LoRA: two named adapters over one base; promotion, rollback, the store's kind ``lora``."""

from __future__ import annotations

import json

import pytest
import torch

from learner.base import Example
from learner.lora import CANDIDATE, LIVE, Adapter, tensor_digest
from learner.models import TINY_CAUSAL, ModelSpec
from learner.step import Learner, StepConfig
from learner.store import ModelStore, StoreError, check_fits, read_state
from monitors.decision import RollbackDecision
from monitors.metrics import Metrics
from streaming.promotion.governor import GovernanceSettings, Governor
from streaming.testing import MemorySink

LORA = StepConfig(trainable="lora", lr=1e-2, lora_r=4, l2sp_weight=0.1)
BASE = {"name": "tiny", "seed": 0}


def _lora(tiny_parts, objective, cfg: StepConfig = LORA) -> Learner:
    return Learner(tiny_parts[0](0), objective, cfg, base=BASE)


def _values(learner: Learner, batch) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        objective = learner.objective
        return (
            objective.model_values(learner.baseline, batch),
            objective.model_values(learner.candidate, batch),
        )


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def _base_weights(learner: Learner) -> dict[str, torch.Tensor]:
    inner = learner.candidate.get_base_model()
    adapters = (f".{LIVE}.", f".{CANDIDATE}.")
    return {n: p for n, p in inner.named_parameters() if not any(a in n for a in adapters)}


def test_two_adapters_share_one_base_and_only_the_candidate_trains(tiny_parts, objective, examples):
    learner = _lora(tiny_parts, objective)
    names = [n for n, _ in learner.candidate.named_parameters()]
    assert any(f".{LIVE}." in n for n in names) and any(f".{CANDIDATE}." in n for n in names)
    assert all(f".{CANDIDATE}." in n for n in learner.param_names)
    batch = objective.collate(examples)
    base, cand = _values(learner, batch)
    assert torch.equal(base, cand)  # both adapters start equal
    live_before = [a.clone() for a in learner.anchors]
    for _ in range(3):
        learner.step(batch)
    base_after, cand_after = _values(learner, batch)
    assert torch.equal(base_after, base)  # the live adapter did not move
    assert not torch.allclose(cand_after, cand, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(learner.anchors, live_before, strict=True))
    # after a baseline forward the candidate adapter is active again and still trains
    assert learner.candidate.active_adapters == [CANDIDATE]
    assert all(p.requires_grad for p in learner.params)


def test_promotion_copies_the_candidate_adapter_into_the_live_one(tiny_parts, objective, examples):
    learner = _lora(tiny_parts, objective)
    batch = objective.collate(examples)
    base_ptrs = _storages(_base_weights(learner).values())
    base_values = {n: p.clone() for n, p in _base_weights(learner).items()}
    for _ in range(3):
        learner.step(batch)
    moments = len(learner.optimizer.state)
    assert learner.param_distance() > 0
    learner.rebase()
    base, cand = _values(learner, batch)
    assert torch.equal(base, cand)  # the live model is now the promoted candidate
    assert learner.param_distance() == 0.0  # the L2-SP anchor is the live adapter
    assert len(learner.optimizer.state) == moments  # moments kept, as for full fine-tunes
    assert _storages(_base_weights(learner).values()) == base_ptrs  # no second base copy
    for name, value in _base_weights(learner).items():
        assert torch.equal(value, base_values[name]), name
    result = learner.step(batch)  # the next step is paired against the promoted adapter
    assert torch.equal(result.baseline.score, result.candidate.score)
    assert learner.param_distance() > 0


def test_rollback_loads_an_adapter_into_both_and_refuses_a_foreign_one(
    tiny_parts, objective, examples
):
    learner = _lora(tiny_parts, objective)
    batch = objective.collate(examples)
    start = learner.publishable("baseline").state
    reference, _ = _values(learner, batch)
    for _ in range(3):
        learner.step(batch)
    learner.rebase()
    learner.step(batch)
    learner.reset_to(start)
    base, cand = _values(learner, batch)
    assert torch.equal(base, reference) and torch.equal(cand, reference)
    assert learner.optimizer.state == {} and learner.param_distance() == 0.0
    learner.step(batch)
    before = _values(learner, batch)
    broken = dict(start)
    broken.pop(next(iter(broken)))
    with pytest.raises(ValueError, match="missing"):
        learner.reset_to(broken)
    other = Learner(tiny_parts[0](0), objective, StepConfig(trainable="lora", lora_r=2))
    with pytest.raises(ValueError, match="other shapes"):
        learner.reset_to(other.publishable().state)
    after = _values(learner, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # nothing loaded


def test_the_base_digest_names_the_weights(tiny_parts, objective):
    learner = _lora(tiny_parts, objective)
    assert learner.base is not None
    assert learner.base["name"] == "tiny" and learner.base["seed"] == 0
    assert learner.base["sha256"] == tensor_digest(tiny_parts[0](0))
    assert tensor_digest(tiny_parts[0](1)) != learner.base["sha256"]
    assert Learner(tiny_parts[0](0), objective).base is None  # full fine-tunes have no base


def test_a_lora_version_is_peft_files_that_peft_loads(tiny_parts, objective, examples, tmp_path):
    from peft import PeftModel

    learner = _lora(tiny_parts, objective)
    batch = objective.collate(examples)
    for _ in range(3):
        learner.step(batch)
    store = ModelStore(tmp_path / "store")
    adapter = learner.publishable("candidate")
    assert isinstance(adapter, Adapter) and adapter.model_type == "reward_model"
    info = store.publish(adapter, objective.tokenizer, objective="reward", metrics={}, reason="t")
    assert info.kind == "lora" and info.model_type == "reward_model"
    assert info.base == learner.base
    files = {f.path for f in info.files}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files
    assert any(name.startswith("tokenizer/") for name in files)
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert sum(f.bytes for f in info.files if f.path.startswith("adapter/")) < 100_000
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["kind"] == "lora" and manifest["base"]["sha256"] == learner.base["sha256"]
    assert store.verify(info.version).ok

    base = tiny_parts[0](0)
    assert tensor_digest(base) == info.base["sha256"]  # a reader checks its base like this
    loaded = PeftModel.from_pretrained(base, str(info.path / "adapter")).eval()
    with torch.no_grad():
        want = objective.model_values(learner.candidate, batch)
        got = objective.model_values(loaded, batch)
    assert torch.allclose(got, want, atol=1e-6)
    state = read_state(info)
    assert state.keys() == adapter.state.keys()


def test_check_fits_compares_kind_and_base(tiny_parts, objective, tmp_path):
    store = ModelStore(tmp_path / "store")
    lora = _lora(tiny_parts, objective)
    info = store.publish(
        lora.publishable(), objective.tokenizer, objective="reward", metrics={}, reason="t"
    )
    check_fits(info, "lora", lora.base)
    other = Learner(tiny_parts[0](1), objective, LORA, base={"name": "tiny", "seed": 1})
    with pytest.raises(StoreError, match="learner.seed = 0"):
        check_fits(info, "lora", other.base)
    with pytest.raises(StoreError, match="trainable='full'"):
        check_fits(info, "full", None)
    full = store.publish(
        tiny_parts[0](0), objective.tokenizer, objective="reward", metrics={}, reason="t"
    )
    with pytest.raises(StoreError, match="set step.trainable = full, head or bias"):
        check_fits(full, "lora", lora.base)


def _rollback_decision() -> RollbackDecision:
    return RollbackDecision(
        action="rollback",
        cause="degraded",
        version="2",
        previous_version="1",
        events=500,
        test_statistic=9.0,
        checks=(),
        decided_at=0.0,
    )


def test_governor_publishes_promotes_and_rolls_back_adapters(
    tiny_parts, objective, examples, tmp_path
):
    from monitors.decision import GateDecision

    store = ModelStore(tmp_path / "store")
    learner = _lora(tiny_parts, objective)
    sink = MemorySink()
    governor = Governor(learner, store, sink, Metrics(), GovernanceSettings())
    governor.ensure_initial_version(objective.tokenizer)
    assert store.live().kind == "lora"
    batch = objective.collate(examples)
    first, _ = _values(learner, batch)
    for _ in range(3):
        learner.step(batch)
    _, trained = _values(learner, batch)
    decision = GateDecision("promote", (), 500, -0.1, 5.0, 0.0)
    governor._promote(decision, objective.tokenizer)
    assert store.live_version() == 2 and store.live().kind == "lora"
    base, cand = _values(learner, batch)
    assert torch.equal(base, trained) and torch.equal(cand, trained)
    governor._rollback(_rollback_decision())
    assert store.live_version() == 1 and governor.live_version == 1
    base, cand = _values(learner, batch)
    assert torch.equal(base, first) and torch.equal(cand, first)
    actions = [json.loads(m.value)["action"] for m in sink.by_topic("feedstep.model-updates")]
    assert actions == ["promote", "promote", "rollback"]


def test_run_starts_from_a_lora_live_version(tiny_parts, objective, examples, tmp_path):
    from streaming.cli.wiring import build_learner, starting_model
    from streaming.config import load_config
    from streaming.errors import FeedstepError

    store = ModelStore(tmp_path / "store")
    learner = _lora(tiny_parts, objective, StepConfig(trainable="lora", lr=1e-2))
    batch = objective.collate(examples)
    for _ in range(3):
        learner.step(batch)
    info = store.publish(
        learner.publishable(), objective.tokenizer, objective="reward", metrics={}, reason="t"
    )
    store.promote(info.version, "test", "pytest")
    overrides = {"store": str(store.root), "model": "minilm", "device": "cpu"}
    config = load_config(overrides={**overrides, "trainable": "lora"}, environ={})
    short = config.learner.model_copy(update={"max_length": 48})
    config = config.model_copy(update={"learner": short})
    name, live = starting_model(config)
    assert name == "tiny" and live.kind == "lora"  # the base comes from the manifest
    started = build_learner(config, name, live)
    _, want = _values(learner, batch)
    base, cand = _values(started, batch)
    assert torch.allclose(base, want, atol=1e-6) and torch.allclose(cand, want, atol=1e-6)

    seeded = config.model_copy(update={"learner": config.learner.model_copy(update={"seed": 3})})
    with pytest.raises(FeedstepError, match="learner.seed = 0"):
        build_learner(seeded, name, live)
    full = load_config(overrides=overrides, environ={})
    with pytest.raises(FeedstepError, match="set step.trainable = lora"):
        starting_model(full)


def test_a_causal_lm_adapter_has_the_layout_vllm_loads(tiny_causal_parts, tmp_path):
    from peft import PeftModel

    from learner.objectives import KTOObjective

    make, tokenizer = tiny_causal_parts
    objective = KTOObjective(tokenizer, max_length=32)
    learner = Learner(make(0), objective, LORA, base={"name": TINY_CAUSAL, "seed": 0})
    batch = objective.collate(
        [
            Example("Boil an egg?", "Nine minutes.", target=1.0),
            Example("Boil an egg?", "Go away.", target=0.0),
            Example("Jet lag?", "Sleep early.", target=1.0),
            Example("Lisbon?", "No idea.", target=0.0),
        ]
    )
    for _ in range(2):
        learner.step(batch)
    store = ModelStore(tmp_path / "store")
    info = store.publish(learner.publishable(), tokenizer, objective="kto", metrics={}, reason="t")
    assert info.kind == "lora" and info.model_type == "pretrained"
    config = json.loads((info.path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert not config.get("modules_to_save")  # vLLM serves plain LoRA weights
    state = read_state(info)
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in state), list(state)[:3]
    assert all(k.startswith("base_model.model.model.layers.") for k in state)
    loaded = PeftModel.from_pretrained(make(0), str(info.path / "adapter")).eval()
    with torch.no_grad():
        want = objective.model_values(learner.candidate, batch)
        got = objective.model_values(loaded, batch)
    assert torch.allclose(got, want, atol=1e-5)
    assert ModelSpec(TINY_CAUSAL).name == info.base["name"]
