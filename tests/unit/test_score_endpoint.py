"""``POST /v1/score`` on the metrics port: LIVE rewards, every refusal, metrics, and a promotion
under load that never lets a response name a version other than the one that scored it."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from learner.base import Example
from learner.objectives import RewardObjective
from learner.step import Learner
from learner.store import ModelStore
from monitors.decision import GateDecision, RollbackDecision
from monitors.metrics import Metrics
from monitors.server import HealthState, MetricsServer
from streaming.config import load_config
from streaming.promotion.governor import GovernanceSettings, Governor
from streaming.serve import Scorer, attach_scorer

SECRET = "SECRET-USER-TEXT-7f3a"  # in every refused request: must never come back or be logged
PROMPT = "How long do I boil an egg?"
RESPONSES = ["About nine minutes.", "Go away.", "Nine to twelve, then cold water."]
LIMITS = {"score_max_responses": 4, "score_max_text_chars": 100, "score_max_body_bytes": 2000}


def _serve(tiny_parts, store_dir):
    learner = Learner(tiny_parts[0](0), RewardObjective(tiny_parts[1], max_length=48))
    metrics = Metrics()
    governor = Governor(learner, ModelStore(store_dir), None, metrics, GovernanceSettings())
    governor.ensure_initial_version(learner.objective.tokenizer)
    server = MetricsServer(metrics.render, HealthState(), port=0, host="127.0.0.1").start()
    attach_scorer(server, load_config(overrides=LIMITS, environ={}), learner, governor, metrics)
    return server, learner, governor, metrics


@pytest.fixture(scope="module")
def shared(tiny_parts, tmp_path_factory):
    """(server, learner, governor, metrics), LIVE version 1, for the tests that change nothing."""
    parts = _serve(tiny_parts, tmp_path_factory.mktemp("score") / "store")
    yield parts
    parts[0].stop()


@pytest.fixture()
def served(tiny_parts, tmp_path):
    """A served tiny reward model of its own, LIVE version 1."""
    parts = _serve(tiny_parts, tmp_path / "store")
    yield parts
    parts[0].stop()


def _request(port, body=None, method="POST", path="/v1/score", raw=None, headers=None):
    """(status, parsed JSON or text, headers) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        text = resp.read().decode()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return resp.status, parsed, dict(resp.getheaders())
    finally:
        conn.close()


def _baseline_rewards(learner, prompt, responses):
    batch = learner.objective.collate([Example(prompt, r, target=1.0) for r in responses])
    base, _ = learner.score(batch)
    return base.score.tolist()


def test_a_request_gets_the_live_models_rewards_and_version(shared):
    server, learner, governor, _ = shared
    status, body, _ = _request(server.port, {"prompt": PROMPT, "responses": RESPONSES})
    assert status == 200 and body["version"] == governor.live_version == 1
    assert body["rewards"] == pytest.approx(_baseline_rewards(learner, PROMPT, RESPONSES), abs=1e-5)


def test_the_batch_form_answers_each_item_in_order(shared):
    server, learner, _, _ = shared
    items = [
        {"prompt": PROMPT, "responses": RESPONSES[:2]},
        {"prompt": "Pack for Lisbon?", "responses": ["Light layers."], "tenant": "ignored"},
    ]
    status, body, _ = _request(server.port, {"items": items})
    assert status == 200 and body["version"] == 1 and len(body["results"]) == 2
    for item, result in zip(items, body["results"], strict=True):
        expected = _baseline_rewards(learner, item["prompt"], item["responses"])
        assert result["rewards"] == pytest.approx(expected, abs=1e-5)


REFUSED = [
    ([1, 2], "the body must be a JSON object, got array"),
    ({"responses": [SECRET]}, "'prompt' is missing"),
    ({"prompt": SECRET}, "'responses' is missing"),
    ({"prompt": 3, "responses": [SECRET]}, "'prompt' must be a string, got number"),
    ({"prompt": SECRET, "responses": SECRET}, "'responses' must be a non-empty array of strings"),
    ({"prompt": SECRET, "responses": []}, "got an empty array"),
    ({"prompt": SECRET, "responses": [SECRET, None]}, "'responses[1]' must be a string, got null"),
    ({"items": []}, "'items' must be a non-empty array of objects, got an empty array"),
    ({"items": [SECRET]}, "'items[0]' must be an object, got string"),
    ({"items": [{"prompt": SECRET, "responses": [1]}]}, "'items[0].responses[0]' must be a str"),
    ({"items": [], "prompt": SECRET, "responses": []}, "not both"),
    ({"prompt": SECRET, "responses": [SECRET] * 5}, "5 responses in 'responses'; the limit is 4"),
    (
        {"items": [{"prompt": SECRET, "responses": [SECRET] * 3}] * 2},
        "6 responses in the request; the limit is 4 (score_max_responses)",
    ),
    (
        {"prompt": SECRET * 5, "responses": [SECRET]},
        "'prompt' is 105 characters; the limit is 100 (score_max_text_chars)",
    ),
    (
        {"prompt": SECRET, "responses": [SECRET, SECRET * 6]},
        "'responses[1]' is 126 characters; the limit is 100",
    ),
]


@pytest.mark.parametrize(("body", "message"), REFUSED)
def test_a_malformed_or_over_limit_request_is_400_with_the_reason_and_no_user_text(
    shared, caplog, body, message
):
    caplog.set_level(logging.DEBUG)
    status, answer, _ = _request(shared[0].port, body)
    assert status == 400, answer
    assert message in answer["error"]
    assert SECRET not in json.dumps(answer) and SECRET not in caplog.text


def test_transport_refusals_say_what_is_wrong(shared, caplog):
    caplog.set_level(logging.DEBUG)
    port = shared[0].port
    status, answer, _ = _request(port, raw=b'{"prompt": "' + SECRET.encode() + b'", ')
    assert status == 400 and answer["error"].startswith("the body is not valid JSON (line 1")
    status, answer, _ = _request(port, raw=b"\xff\xfe" + SECRET.encode())
    assert status == 400 and ("UTF-8" in answer["error"] or "JSON" in answer["error"])
    big = json.dumps({"prompt": SECRET, "responses": [SECRET * 100]}).encode()
    status, answer, _ = _request(port, raw=big)
    assert status == 413
    assert answer["error"] == (
        f"request body of {len(big)} bytes; the limit is 2000 bytes (score_max_body_bytes)"
    )
    for method in ("GET", "PUT", "DELETE"):
        status, answer, headers = _request(port, method=method)
        assert (status, answer["error"], headers["Allow"]) == (405, "use POST", "POST")
    status, _, headers = _request(port, {"prompt": "x"}, path="/metrics")
    assert status == 405 and headers["Allow"] == "GET"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/v1/score")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()
    assert SECRET not in caplog.text


def test_before_a_scorer_is_attached_the_endpoint_is_503():
    server = MetricsServer(Metrics().render, HealthState(), port=0, host="127.0.0.1").start()
    try:
        status, answer, _ = _request(server.port, {"prompt": "hi", "responses": ["a"]})
        assert status == 503 and "not available yet" in answer["error"]
    finally:
        server.stop()


def test_causal_lm_objectives_are_409():
    learner = SimpleNamespace(objective=SimpleNamespace(name="sft"))
    status, answer = Scorer(learner, threading.Lock(), lambda: 1)(  # type: ignore[arg-type]
        {"prompt": "hi", "responses": ["a"]}
    )
    assert status == 409 and "'sft' objective has no scalar reward" in answer["error"]


def test_requests_are_counted_by_status_and_timed(served):
    server, _, _, metrics = served
    port = server.port
    for _ in range(2):
        _request(port, {"prompt": PROMPT, "responses": RESPONSES})
    _request(port, {"prompt": 1, "responses": []})
    _request(port, method="GET")
    _request(port, raw=b"x" * 3000)
    text = metrics.render().decode()
    assert 'feedstep_score_requests_total{status="200"} 2.0' in text
    assert 'feedstep_score_requests_total{status="400"} 1.0' in text
    assert 'feedstep_score_requests_total{status="405"} 1.0' in text
    assert 'feedstep_score_requests_total{status="413"} 1.0' in text
    assert "feedstep_score_duration_seconds_count 5.0" in text


def test_a_promotion_and_a_rollback_under_load_switch_the_served_model_atomically(served):
    server, learner, governor, _ = served
    objective = learner.objective
    body = {"prompt": PROMPT, "responses": RESPONSES}
    v1 = _baseline_rewards(learner, PROMPT, RESPONSES)
    with torch.no_grad():  # the candidate that will be promoted: every reward 5 higher
        learner.candidate.head.bias.add_(5.0)
    responses: list[tuple[int, list[float]]] = []
    failures: list[object] = []
    stop = threading.Event()
    deadline = time.monotonic() + 15.0

    def load() -> None:
        for _ in range(150):  # bounded in count and in time
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                status, answer, _ = _request(server.port, body)
            except Exception as exc:  # pragma: no cover - what the assertion reports
                failures.append(repr(exc))
                continue
            if status != 200:
                failures.append((status, answer))
            else:
                responses.append((answer["version"], answer["rewards"]))

    def seen(version: int) -> int:
        return sum(1 for v, _ in list(responses) if v == version)

    def wait_for(version: int, count: int) -> None:
        while seen(version) < count and time.monotonic() < deadline:
            time.sleep(0.005)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(1, 10)
        promote = GateDecision("promote", (), 300, 0.1, 5.0, time.time())
        governor._promote(promote, objective.tokenizer)
        assert governor.live_version == 2
        v2 = _baseline_rewards(learner, PROMPT, RESPONSES)
        wait_for(2, 10)
        rollback = RollbackDecision("rollback", "degradation", "2", "1", 50, 9.0, (), time.time())
        governor._rollback(rollback)
        assert governor.live_version == 1
        wait_for(1, seen(1) + 10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert failures == []
    assert v2 == pytest.approx([r + 5.0 for r in v1], abs=1e-4)
    expected = {1: v1, 2: v2}
    assert {v for v, _ in responses} == {1, 2}
    for version, rewards in responses:
        assert rewards == pytest.approx(expected[version], abs=1e-4), version
    assert seen(2) >= 10 and seen(1) >= 20  # served before, between and after the switches
