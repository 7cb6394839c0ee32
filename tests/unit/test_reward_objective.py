import math

import pytest
import torch

from learner.base import Example


def test_losses_are_per_example_and_finite(tiny_parts, objective, examples):
    model = tiny_parts[0](0).eval()
    batch = objective.collate(examples)
    out = objective.forward(model, batch)
    assert out.loss.shape == (len(examples),)
    assert torch.isfinite(out.loss).all()
    # rating 3 (target .5) has no defined correctness; everything else does
    assert math.isnan(float(out.correct[4]))
    assert not torch.isnan(out.correct[[0, 1, 2, 3, 5]]).any()


def test_pairwise_loss_is_bradley_terry(tiny_parts, objective):
    model = tiny_parts[0](0).eval()
    pair = Example("q", "good answer", rejected="bad answer")
    out = objective.forward(model, objective.collate([pair]))
    singles = objective.forward(
        model,
        objective.collate(
            [Example("q", "good answer", target=1.0), Example("q", "bad answer", target=1.0)]
        ),
    )
    margin = singles.score[0] - singles.score[1]
    assert torch.allclose(out.score[0], margin, atol=1e-5)
    assert torch.allclose(out.loss[0], -torch.nn.functional.logsigmoid(margin), atol=1e-5)


def test_padding_does_not_change_an_example(tiny_parts, objective, examples):
    model = tiny_parts[0](0).eval()
    alone = objective.forward(model, objective.collate([examples[0]]))
    long = Example("x " * 40, "y " * 40, target=1.0)
    padded = objective.forward(model, objective.collate([examples[0], long]))
    assert torch.allclose(alone.loss[0], padded.loss[0], atol=1e-5)


def test_truncation_keeps_prompt_end_and_response_start(tiny_parts, objective):
    tok = tiny_parts[1]
    prompt = " ".join(f"p{i}" for i in range(200)) + " lastprompt"
    response = "firstresponse " + " ".join(f"r{i}" for i in range(200))
    batch = objective.collate([Example(prompt, response, target=1.0)])
    ids = batch.tensors["input_ids"][0].tolist()
    assert len(ids) == objective.max_length
    text = tok.decode(ids)
    assert "lastprompt" in text and "firstresponse" in text


def test_response_pooling_is_the_mean_over_the_response_segment(tiny_parts, objective):
    model = tiny_parts[0](0).eval()
    assert model.pooling == "response"  # the encoders' default
    batch = objective.collate([Example("a long prompt " * 6, "short reply", target=1.0)])
    t = batch.tensors
    with torch.no_grad():
        got = objective.model_values(model, batch)
        hidden = model.encoder(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            token_type_ids=t["token_type_ids"],
        ).last_hidden_state
    reply = (t["attention_mask"] * t["token_type_ids"]).bool()[0]
    assert 0 < int(reply.sum()) < int(t["attention_mask"].sum())  # the prompt is left out
    expected = model.head(hidden[0, reply].mean(0)).squeeze(-1)
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-6)
    # every token pooled: another reward for the same weights
    whole = type(model)(model.encoder, model.head.in_features, "mean")
    whole.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        assert not torch.allclose(objective.model_values(whole.eval(), batch), got)


def test_response_pooling_without_token_types_says_what_it_needs(tiny_parts):
    model, tokenizer = tiny_parts[0](0).eval(), tiny_parts[1]
    enc = tokenizer(["a prompt"], ["a reply"], return_tensors="pt")
    with torch.no_grad():
        model(**enc)  # the pair encoding types the reply 1
        with pytest.raises(ValueError, match="token_type_ids"):
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
