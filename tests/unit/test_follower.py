"""The follower (``feedstep serve``): serves the store's LIVE version, follows promotions and
rollbacks, refuses corrupt or unsupported versions while the old one keeps serving, answers 503
before any version exists, and never fails a request across a switch."""

from __future__ import annotations

import copy
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
from learner.store import ModelStore
from monitors.metrics import FollowerMetrics
from monitors.server import HealthState, MetricsServer
from streaming.cli.parser import build_parser
from streaming.config import load_config
from streaming.promotion.governor import GovernanceSettings, Governor
from streaming.promotion.updates import decode_update
from streaming.serve import Follower, FollowSettings, ScoreLimits, Scorer
from streaming.testing import MemorySink

SECRET = "SECRET-USER-TEXT-follower-91c2"  # scored in several tests: must never be logged
PROMPT = "How long do I boil an egg?"
RESPONSES = ["About nine minutes.", "Go away.", "Nine to twelve, then cold water."]
SETTINGS = FollowSettings(poll_s=0.05, max_length=48, device="cpu")
LIMITS = ScoreLimits(max_responses=8, max_text_chars=200, max_body_bytes=4000)


class Clock:
    """A monotonic clock the test moves by hand (the retry backoff of refused versions)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def models(tiny_parts):
    """(v1, v2, tokenizer): v2 is v1 with every reward 5 higher (head bias + 5)."""
    make, tokenizer = tiny_parts
    v1 = make(3).eval()
    v2 = copy.deepcopy(v1)
    with torch.no_grad():
        v2.head.bias.add_(5.0)
    return v1, v2, tokenizer


def _expected(model, tokenizer, prompt=PROMPT, responses=RESPONSES):
    objective = RewardObjective(tokenizer, max_length=SETTINGS.max_length)
    batch = objective.collate([Example(prompt, r, target=1.0) for r in responses])
    with torch.no_grad():
        return objective.model_values(model, batch).tolist()


def _publish(store, model, tokenizer, promote=True):
    info = store.publish(model, tokenizer, objective="reward", metrics={}, reason="test")
    if promote:
        store.promote(info.version, reason="test", actor="test")
    return info.version


@pytest.fixture()
def serving(tmp_path):
    """A follower of tmp_path/store (not created) behind a real HTTP server, not started."""
    metrics, health, clock = FollowerMetrics(), HealthState(), Clock()
    root = tmp_path / "store"
    follower = Follower(root, metrics, health, SETTINGS, LIMITS, clock=clock)
    server = MetricsServer(metrics.render, health, port=0, host="127.0.0.1").start()
    server.set_score(follower, max_body_bytes=LIMITS.max_body_bytes, observe=metrics.observe_score)
    parts = SimpleNamespace(
        follower=follower, server=server, metrics=metrics, health=health, clock=clock, root=root
    )
    yield parts
    follower.stop()
    # shutdown() waits out serve_forever's 0.5 s poll: let it happen while the next test runs
    threading.Thread(target=server.stop, daemon=True).start()


def _request(port, body=None, method="POST", path="/v1/score"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data)
        resp = conn.getresponse()
        text = resp.read().decode()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text
    finally:
        conn.close()


def _score(parts, prompt=PROMPT, responses=RESPONSES):
    return _request(parts.server.port, {"prompt": prompt, "responses": responses})


def _sample(parts, name, **labels):
    return parts.metrics.registry.get_sample_value(name, labels)


def _wait_for_version(parts, version, timeout=10.0):
    deadline = time.monotonic() + timeout
    while parts.follower.version != version:
        assert time.monotonic() < deadline, f"still serving {parts.follower.version}"
        time.sleep(0.01)


def test_before_any_version_exists_it_is_not_ready_and_scoring_is_503(serving, caplog):
    caplog.set_level(logging.DEBUG)
    follower, port = serving.follower, serving.server.port
    assert follower.check("start") is False  # no store directory at all yet
    status, text = _request(port, method="GET", path="/readyz")
    assert status == 503 and text.strip() == f"no model store at {serving.root} yet"
    ModelStore(serving.root)  # the trainer created it, nothing promoted
    assert follower.check() is False
    status, text = _request(port, method="GET", path="/readyz")
    assert status == 503
    assert text.strip() == f"no LIVE version in the model store {serving.root} yet"
    status, answer = _score(serving, SECRET, [SECRET])
    assert status == 503
    assert answer["error"].startswith("no model version is served yet: no LIVE version in the")
    assert "feedstep promote --version N" in answer["error"]
    assert _sample(serving, "feedstep_score_requests_total", status="503") == 1.0
    assert SECRET not in caplog.text and follower.version is None


def test_it_serves_live_and_switches_when_a_promotion_moves_live(serving, models):
    v1, v2, tokenizer = models
    store = ModelStore(serving.root)
    _publish(store, v1, tokenizer)
    serving.follower.start()
    _wait_for_version(serving, 1)
    assert _request(serving.server.port, method="GET", path="/readyz") == (200, "ok\n")
    status, body = _score(serving)
    assert status == 200 and body["version"] == 1
    assert body["rewards"] == pytest.approx(_expected(v1, tokenizer), abs=1e-5)

    _publish(store, v2, tokenizer)  # version 2, LIVE moves: the poll of LIVE finds it
    _wait_for_version(serving, 2)
    status, body = _score(serving)
    assert status == 200 and body["version"] == 2
    assert body["rewards"] == pytest.approx([r + 5.0 for r in _expected(v1, tokenizer)], abs=1e-4)
    items = {"items": [{"prompt": PROMPT, "responses": RESPONSES[:1]}]}
    status, body = _request(serving.server.port, items)
    assert status == 200 and body["version"] == 2 and len(body["results"]) == 1
    assert _sample(serving, "feedstep_follower_switches_total", trigger="start") == 1.0
    assert _sample(serving, "feedstep_follower_switches_total", trigger="poll") == 1.0
    assert _sample(serving, "feedstep_follower_live_version") == 2.0
    assert _sample(serving, "feedstep_live_version_info", version="2", previous="1") == 1.0


def test_a_rollback_in_the_store_is_followed(serving, models):
    v1, v2, tokenizer = models
    store = ModelStore(serving.root)
    _publish(store, v1, tokenizer)
    _publish(store, v2, tokenizer)
    serving.follower.start()
    _wait_for_version(serving, 2)
    store.rollback(reason="worse", actor="test")
    _wait_for_version(serving, 1)
    status, body = _score(serving)
    assert status == 200 and body["version"] == 1
    assert body["rewards"] == pytest.approx(_expected(v1, tokenizer), abs=1e-5)
    assert _sample(serving, "feedstep_follower_switches_total", trigger="poll") == 1.0


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(serving, models, caplog):
    caplog.set_level(logging.DEBUG)
    v1, v2, tokenizer = models
    follower, store = serving.follower, ModelStore(serving.root)
    _publish(store, v1, tokenizer)
    assert follower.check("start") is True and follower.version == 1
    _publish(store, v2, tokenizer)
    head = store.path(2) / "head.safetensors"  # tampered after publish (and promote): same size
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))

    assert follower.check() is False and follower.version == 1
    failures = "feedstep_follower_load_failures_total"
    assert _sample(serving, failures, reason="corrupt") == 1.0
    assert "not switching to LIVE version 2" in caplog.text
    assert "head.safetensors: sha256" in caplog.text and "still serving version 1" in caplog.text
    assert _request(serving.server.port, method="GET", path="/readyz") == (200, "ok\n")
    status, body = _score(serving, SECRET, [SECRET])
    assert status == 200 and body["version"] == 1
    assert body["rewards"] == pytest.approx(_expected(v1, tokenizer, SECRET, [SECRET]), abs=1e-5)

    assert follower.check() is False  # within the backoff: not tried again
    assert _sample(serving, failures, reason="corrupt") == 1.0
    serving.clock.now += SETTINGS.poll_s
    assert follower.check() is False  # tried again, refused again; the backoff doubles
    assert _sample(serving, failures, reason="corrupt") == 2.0
    serving.clock.now += SETTINGS.poll_s
    assert follower.check() is False
    assert _sample(serving, failures, reason="corrupt") == 2.0
    assert follower.check("update", force=True) is False  # a model-updates message: at once
    assert _sample(serving, failures, reason="corrupt") == 3.0
    assert follower.version == 1 and _sample(serving, "feedstep_follower_live_version") == 1.0
    assert SECRET not in caplog.text


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("merged", "it is of kind 'merged'; the follower serves kinds ('full', 'lora')"),
        ("delta", "unknown kind 'delta'; this feedstep knows ('full', 'lora', 'merged')"),
    ],
)
def test_a_version_of_another_kind_is_refused_with_a_clear_error(
    serving, models, caplog, kind, message
):
    v1, v2, tokenizer = models
    follower, store = serving.follower, ModelStore(serving.root)
    _publish(store, v1, tokenizer, promote=False)
    manifest = store.path(1) / "manifest.json"
    edited = json.loads(manifest.read_text())
    edited["kind"] = kind
    manifest.write_text(json.dumps(edited))
    (serving.root / "LIVE").write_text("1\n")  # as a newer trainer would have made it LIVE

    assert follower.check("start") is False and follower.version is None
    assert message in caplog.text
    assert _sample(serving, "feedstep_follower_load_failures_total", reason="unsupported") == 1.0
    status, text = _request(serving.server.port, method="GET", path="/readyz")
    assert status == 503
    assert text.strip() == f"LIVE version 1 of {serving.root} cannot be served (unsupported)"
    status, answer = _score(serving)
    assert status == 503 and "cannot be served (unsupported)" in answer["error"]

    _publish(store, v2, tokenizer)  # a sound version becomes LIVE: served, ready
    assert follower.check() is True and follower.version == 2
    assert _request(serving.server.port, method="GET", path="/readyz") == (200, "ok\n")


def test_a_model_updates_message_makes_it_read_live_at_once(serving, models):
    v1, v2, tokenizer = models
    store = ModelStore(serving.root)
    _publish(store, v1, tokenizer)
    slow = Follower(
        serving.root,
        serving.metrics,
        HealthState(),
        FollowSettings(poll_s=60.0, max_length=48, device="cpu"),
        LIMITS,
    ).start()
    try:
        deadline = time.monotonic() + 10
        while slow.version != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _publish(store, v2, tokenizer)
        time.sleep(0.3)
        assert slow.version == 1  # a poll every 60 s has not looked yet
        message = {"action": "promote", "version": 2, "parent": 1, "sha256": "ab", "path": "x"}
        slow.notify(json.dumps(message).encode())
        deadline = time.monotonic() + 10
        while slow.version != 2:
            assert time.monotonic() < deadline, "the message did not make it read LIVE"
            time.sleep(0.01)
        slow.notify(b"not json")  # not understood: still only a reason to read LIVE
        time.sleep(0.2)
        assert slow.version == 2
    finally:
        slow.stop()
    assert _sample(serving, "feedstep_follower_switches_total", trigger="update") == 1.0
    assert _sample(serving, "feedstep_follower_update_messages_total") == 2.0


def test_requests_across_switches_never_fail_and_name_the_version_that_scored_them(serving, models):
    v1, v2, tokenizer = models
    store = ModelStore(serving.root)
    _publish(store, v1, tokenizer)
    serving.follower.start()
    _wait_for_version(serving, 1)
    expected = {1: _expected(v1, tokenizer), 2: _expected(v2, tokenizer)}
    responses: list[tuple[int, list[float]]] = []
    failures: list[object] = []
    stop = threading.Event()
    deadline = time.monotonic() + 15.0

    def load() -> None:
        for _ in range(300):  # bounded in count and in time
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                status, answer = _score(serving)
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
        _publish(store, v2, tokenizer)
        wait_for(2, 10)
        store.rollback(reason="worse", actor="test")
        wait_for(1, seen(1) + 10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert failures == []
    assert {v for v, _ in responses} == {1, 2}
    for version, rewards in responses:
        assert rewards == pytest.approx(expected[version], abs=1e-4), version
    assert seen(2) >= 10 and seen(1) >= 20  # served before, between and after the switches
    assert serving.follower.switches == 3


def test_a_switch_while_a_request_is_tokenized_tokenizes_it_again_for_the_new_version(models):
    v1, _, tokenizer = models
    old = RewardObjective(tokenizer, max_length=48)
    new = RewardObjective(tokenizer, max_length=8)  # cuts the texts: other rewards
    live = SimpleNamespace(objective=old, baseline=v1, device=torch.device("cpu"))
    collate = old.collate

    def collate_then_switch(examples):
        batch = collate(examples)
        live.objective = new  # the follower swaps versions while the request is tokenized
        return batch

    old.collate = collate_then_switch  # type: ignore[method-assign]
    status, body = Scorer(live, threading.Lock(), lambda: 7)(  # type: ignore[arg-type]
        {"prompt": PROMPT, "responses": RESPONSES}
    )
    batch = new.collate([Example(PROMPT, r, target=1.0) for r in RESPONSES])
    with torch.no_grad():
        expected = new.model_values(v1, batch).tolist()
    assert status == 200 and body["version"] == 7
    assert body["rewards"] == pytest.approx(expected, abs=1e-5)
    assert body["rewards"] != pytest.approx(_expected(v1, tokenizer), abs=1e-3)


def test_the_message_it_decodes_is_the_one_the_governor_announces(tiny_parts, tmp_path):
    make, tokenizer = tiny_parts
    from learner.step import Learner
    from monitors.metrics import Metrics

    sink = MemorySink()
    learner = Learner(make(0), RewardObjective(tokenizer, max_length=48))
    settings = GovernanceSettings(updates_topic="updates")
    governor = Governor(learner, ModelStore(tmp_path / "s"), sink, Metrics(), settings)
    governor.ensure_initial_version(tokenizer)
    (message,) = sink.by_topic("updates")
    update = decode_update(message.value)
    assert (update.action, update.version, update.parent) == ("promote", 1, None)
    assert update.path == str((tmp_path / "s" / "versions" / "1").resolve())
    for bad, reason in [
        (b"{", "must be JSON"),
        (b"[1]", "must be a JSON object, got list"),
        (b'{"action": "promote", "version": "2"}', "integer 'version' >= 1, got string"),
        (b'{"action": "promote", "version": 0}', "integer 'version' >= 1, got 0"),
        (b'{"action": "burn", "version": 2}', "'action' must be one of promote, rollback"),
        (None, "got an empty message"),
    ]:
        with pytest.raises(ValueError, match=reason):
            decode_update(bad)


def test_the_follow_settings_come_from_the_file_the_environment_and_the_flags(tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text("[follow]\npoll_s = 7.5\nupdates = false\n")
    assert load_config(cfg, environ={}).follow.poll_s == 7.5
    env = {"FEEDSTEP_FOLLOW_POLL_S": "3", "FEEDSTEP_FOLLOW_UPDATES": "true"}
    from_env = load_config(cfg, environ=env)
    assert (from_env.follow.poll_s, from_env.follow.updates) == (3.0, True)
    args = build_parser().parse_args(
        ["serve", "--store", "/s", "--follow-poll-s", "60", "--updates-topic", "u"]
    )
    assert args.func.__name__ == "cmd_serve"
    flags = {"store": args.store, "follow_poll_s": args.follow_poll_s}
    flags["updates_topic"] = args.updates_topic
    c = load_config(cfg, flags, environ=env)
    assert (c.promotion.store, c.follow.poll_s, c.promotion.updates_topic) == ("/s", 60.0, "u")
    with pytest.raises(ValueError, match="follow_poll_s"):
        load_config(overrides={"follow_poll_s": 0}, environ={})


def test_a_lora_version_is_served_merged_into_its_base(serving, models, tiny_parts):
    from learner.objectives import RewardObjective as Reward
    from learner.step import Learner, StepConfig

    _, _, tokenizer = models
    objective = Reward(tokenizer, max_length=SETTINGS.max_length)
    learner = Learner(
        tiny_parts[0](0),
        objective,
        StepConfig(trainable="lora", lr=5e-2, lora_r=4),
        base={"name": "tiny", "seed": 0},
    )
    batch = objective.collate(
        [Example(PROMPT, r, target=float(i % 2)) for i, r in enumerate(RESPONSES)]
    )
    for _ in range(3):
        learner.step(batch)
    store = ModelStore(serving.root)
    version = _publish(store, learner.publishable(), tokenizer)
    assert store.version(version).kind == "lora"
    assert serving.follower.check("start") is True and serving.follower.version == version
    status, answer = _score(serving)
    assert status == 200 and answer["version"] == version
    with torch.no_grad():
        want = _expected(learner.candidate, tokenizer)
    assert answer["rewards"] == pytest.approx(want, abs=1e-5)
    assert want != pytest.approx(_expected(tiny_parts[0](0).eval(), tokenizer), abs=1e-3)
