"""Contract tests: the same checks over every objective (River's estimator_checks style)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from learner.base import Example, Objective
from learner.objectives import CAUSAL_LM, OBJECTIVES
from learner.step import Learner, StepConfig

NAMES = sorted(OBJECTIVES)
CAUSAL = sorted(CAUSAL_LM)

EXAMPLES = {
    "reward": [
        Example("How long do I boil an egg?", "About nine minutes.", target=1.0),
        Example("How long do I boil an egg?", "Go away.", target=0.0),
        Example("Reverse a list?", "Use reversed(items).", target=0.75),
        Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea."),
        Example("Jet lag?", "Shift your sleep early.", rejected="Whatever.", weight=0.5),
    ],
    "kto": [
        Example("How long do I boil an egg?", "About nine minutes.", target=1.0),
        Example("How long do I boil an egg?", "Go away.", target=0.0),
        Example("Reverse a list?", "Use reversed(items).", target=0.75),
        Example("Pack for Lisbon?", "No idea, figure it out.", target=0.0, weight=2.0),
        Example("Jet lag?", "Shift your sleep a day early.", target=1.0),
    ],
    "dpo": [
        Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea."),
        Example("Jet lag?", "Shift your sleep early.", rejected="Whatever.", weight=0.5),
        Example("Boil an egg?", "Nine minutes, then cold water.", rejected="Ask someone else."),
    ],
    "sft": [
        Example("Pack for Lisbon?", "Light layers and good shoes.", rejected="No idea."),
        Example("Capital of France?", "Paris.", rejected="Lyon."),
        Example("Reverse a list?", "Use reversed(items).", target=1.0),
    ],
}
LONG = {
    "reward": Example("tell me " * 20, "a long answer " * 15, target=1.0),
    "kto": Example("tell me " * 20, "a long answer " * 15, target=0.0),
    "dpo": Example("tell me " * 20, "a long answer " * 15, rejected="short"),
    "sft": Example("tell me " * 20, "a long answer " * 15, rejected="short"),
}


@pytest.fixture()
def parts(request, tiny_parts, tiny_causal_parts):
    """(objective factory, model factory) for the objective named by the test's parameter."""
    name = request.param
    make_model, tokenizer = tiny_causal_parts if name in CAUSAL_LM else tiny_parts

    def make_objective(**kwargs) -> Objective:
        return OBJECTIVES[name](tokenizer, max_length=64, **kwargs)

    def make(seed: int = 0) -> nn.Module:
        return make_model(seed).eval()

    return name, make_objective, make


@pytest.mark.parametrize("parts", NAMES, indirect=True)
def test_losses_are_finite_and_per_example(parts):
    name, make_objective, make = parts
    objective = make_objective()
    batch = objective.collate(EXAMPLES[name])
    out = objective.forward(make(0), batch, make(1))
    n = len(EXAMPLES[name])
    assert batch.size == n
    for field in (out.loss, out.score, out.correct):
        assert field.shape == (n,)
    assert torch.isfinite(out.loss).all() and torch.isfinite(out.score).all()
    defined = out.correct[~torch.isnan(out.correct)]
    assert ((defined == 0) | (defined == 1)).all()


@pytest.mark.parametrize("parts", NAMES, indirect=True)
def test_extra_padding_columns_do_not_change_losses(parts):
    name, make_objective, make = parts
    model, reference = make(0), make(1)
    tight = make_objective().collate(EXAMPLES[name])
    wide = make_objective(pad_to_multiple_of=64).collate(EXAMPLES[name])
    assert wide.tensors["input_ids"].shape[1] == 64 > tight.tensors["input_ids"].shape[1]
    a = make_objective().forward(model, tight, reference)
    b = make_objective().forward(model, wide, reference)
    assert torch.allclose(a.loss, b.loss, atol=1e-5), (a.loss, b.loss)


@pytest.mark.parametrize("parts", NAMES, indirect=True)
def test_a_longer_example_in_the_batch_does_not_change_the_others(parts):
    name, make_objective, make = parts
    objective = make_objective()
    model, reference = make(0), make(1)
    examples = EXAMPLES[name]
    alone = objective.forward(model, objective.collate(examples), reference)
    padded = objective.forward(model, objective.collate([*examples, LONG[name]]), reference)
    n = len(examples)
    assert torch.allclose(alone.score, padded.score[:n], atol=1e-5)
    if name == "kto":
        # KTO's reference point z0 is a statistic of the whole batch, so a new example may
        # move every loss; per-example quantities (the implicit rewards) must not move.
        return
    assert torch.allclose(alone.loss, padded.loss[:n], atol=1e-5)


@pytest.mark.parametrize("parts", CAUSAL, indirect=True)
def test_left_and_right_padding_give_the_same_losses(parts):
    name, make_objective, make = parts
    model, reference = make(0), make(1)
    examples = [*EXAMPLES[name], LONG[name]]
    right = make_objective(padding_side="right")
    left = make_objective(padding_side="left")
    r = right.forward(model, right.collate(examples), reference)
    l_ = left.forward(model, left.collate(examples), reference)
    assert not torch.equal(
        right.collate(examples).tensors["input_ids"], left.collate(examples).tensors["input_ids"]
    )
    assert torch.allclose(r.loss, l_.loss, atol=1e-5), (r.loss, l_.loss)
    assert torch.allclose(r.score, l_.score, atol=1e-5)


@pytest.mark.parametrize("parts", NAMES, indirect=True)
def test_repeated_steps_on_one_batch_lower_its_loss(parts):
    name, make_objective, make = parts
    objective = make_objective()
    learner = Learner(make(0), objective, StepConfig(lr=1e-2, l2sp_weight=0.0, weight_decay=0.0))
    batch = objective.collate(EXAMPLES[name])
    losses = [learner.step(batch).task_loss for _ in range(4)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 1e-3, losses
    assert learner.steps == 4 and learner.skipped == 0


# -- a hand-computed example -----------------------------------------------------------------
# A word-level tokenizer over a tiny vocabulary and stub models whose outputs are fixed tables,
# so the expected losses follow from a few numbers computed here, independently of collate.

WORDS = ["[PAD]", "[CLS]", "[SEP]", "hi", "egg", "boil", "nine", "minutes", "go", "away", "ok"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


class WordTokenizer:
    pad_token_id, cls_token_id, sep_token_id = 0, 1, 2
    bos_token_id = eos_token_id = None

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[VOCAB[w] for w in t.split()] for t in texts]}


class BigramLM(nn.Module):
    """Next-token logits depend only on the current token: ``table[token]``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(len(WORDS), len(WORDS), generator=gen))

    def forward(self, input_ids, attention_mask, position_ids):
        return SimpleNamespace(logits=self.table[input_ids])


class TokenSumReward(nn.Module):
    """Reward = sum of a per-token value over the attended tokens."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.value = nn.Parameter(torch.randn(len(WORDS), generator=gen) * 0.5)

    def forward(self, input_ids, attention_mask, token_type_ids):
        return (self.value[input_ids] * attention_mask).sum(-1)


def _tokens(prompt: str, response: str) -> list[int]:
    return [1, *(VOCAB[w] for w in prompt.split()), 2, *(VOCAB[w] for w in response.split()), 2]


def _response_logp(model: BigramLM, prompt: str, response: str) -> float:
    """Sum of log p(token | previous token) over the response words and the final [SEP]."""
    logp = torch.log_softmax(model.table.detach().double(), dim=-1).tolist()
    ids = _tokens(prompt, response)
    first = len(prompt.split()) + 2
    return sum(logp[ids[k - 1]][ids[k]] for k in range(first, len(ids)))


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _expected_sft(policy, _reference, examples):
    return [
        -_response_logp(policy, ex.prompt, ex.response) / (len(ex.response.split()) + 1)
        for ex in examples
    ]


def _expected_dpo(policy, reference, examples, beta=0.5):
    out = []
    for ex in examples:
        chosen = _response_logp(policy, ex.prompt, ex.response) - _response_logp(
            reference, ex.prompt, ex.response
        )
        rejected = _response_logp(policy, ex.prompt, ex.rejected) - _response_logp(
            reference, ex.prompt, ex.rejected
        )
        out.append(-_log_sigmoid(beta * (chosen - rejected)))
    return out


def _expected_kto(policy, reference, examples, beta=0.5, w_d=1.0, w_u=1.5):
    def r(prompt, response):
        return _response_logp(policy, prompt, response) - _response_logp(
            reference, prompt, response
        )

    n = len(examples)
    kl = [r(examples[i].prompt, examples[(i + 1) % n].response) for i in range(n)]
    z0 = max(0.0, sum(kl) / n)
    out = []
    for ex in examples:
        reward = r(ex.prompt, ex.response)
        if ex.target > 0.5:
            out.append(w_d - w_d / (1 + math.exp(-beta * (reward - z0))))
        else:
            out.append(w_u - w_u / (1 + math.exp(-beta * (z0 - reward))))
    return out


def _expected_reward(model, _reference, examples):
    value = model.value.detach().double().tolist()

    def reward(prompt, response):
        return sum(value[t] for t in _tokens(prompt, response))

    out = []
    for ex in examples:
        if ex.rejected is not None:
            out.append(
                -_log_sigmoid(reward(ex.prompt, ex.response) - reward(ex.prompt, ex.rejected))
            )
        else:
            s = reward(ex.prompt, ex.response)
            out.append(-(ex.target * _log_sigmoid(s) + (1 - ex.target) * _log_sigmoid(-s)))
    return out


HAND = {
    "reward": (
        {},
        [
            Example("hi", "ok", target=1.0),
            Example("boil egg", "go away", target=0.25),
            Example("boil egg", "nine minutes", rejected="go away"),
        ],
        _expected_reward,
    ),
    "sft": (
        {},
        [Example("boil egg", "nine minutes", rejected="go away"), Example("hi", "ok", target=1.0)],
        _expected_sft,
    ),
    "dpo": (
        {"beta": 0.5},
        [
            Example("boil egg", "nine minutes", rejected="go away"),
            Example("hi", "ok", rejected="go away egg"),
        ],
        _expected_dpo,
    ),
    "kto": (
        {"beta": 0.5, "desirable_weight": 1.0, "undesirable_weight": 1.5},
        [
            Example("boil egg", "nine minutes", target=1.0),
            Example("boil egg", "go away", target=0.0),
            Example("hi", "ok", target=1.0),
            Example("hi", "go away egg", target=0.0),
        ],
        _expected_kto,
    ),
}


HAND_CASES = [("reward", "right")] + [(n, side) for n in CAUSAL for side in ("right", "left")]


@pytest.mark.parametrize(("name", "padding_side"), HAND_CASES)
def test_a_hand_computed_example_matches(name, padding_side):
    kwargs, examples, expected_fn = HAND[name]
    if name in CAUSAL_LM:
        objective = OBJECTIVES[name](WordTokenizer(), padding_side=padding_side, **kwargs)
        policy, reference = BigramLM(seed=1), BigramLM(seed=2)
    else:  # the reward objective pads on the right only
        objective = OBJECTIVES[name](WordTokenizer())
        policy, reference = TokenSumReward(), None
    out = objective.forward(policy, objective.collate(examples), reference)
    expected = torch.tensor(expected_fn(policy, reference, examples), dtype=torch.float32)
    assert torch.allclose(out.loss.detach(), expected, atol=1e-5), (out.loss, expected)
