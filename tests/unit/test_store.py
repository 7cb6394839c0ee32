import hashlib
import json
import multiprocessing
import queue
import time
from datetime import datetime

import pytest
import torch

from learner.base import Example
from learner.models import ModelSpec, build_reward_model, load_reward_model
from learner.store import (
    CorruptVersion,
    ModelStore,
    NothingToRollBack,
    StoreError,
    VersionNotFound,
)

PAIRS = [
    ("How long do I boil an egg?", "About nine minutes."),
    ("Reverse a list?", "Use reversed(items), or items[::-1] for a copy."),
    ("Jet lag?", "Shift your sleep early."),
]


@pytest.fixture()
def store(tmp_path):
    return ModelStore(tmp_path / "store")


def _publish(store, tiny_parts, seed=0, **kw):
    make, tokenizer = tiny_parts
    fields = {"objective": "reward", "metrics": {"loss": 0.5}, "reason": f"seed {seed}"}
    fields.update(kw)
    return store.publish(make(seed), tokenizer, **fields)


def _rewards_via_objective(model, objective):
    batch = objective.collate([Example(p, r, target=1.0) for p, r in PAIRS])
    with torch.no_grad():
        return objective.forward(model.eval(), batch).score


def test_round_trip_through_plain_transformers_gives_identical_rewards(
    store, tiny_parts, objective
):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    make, tokenizer = tiny_parts
    model = make(7)
    expected = _rewards_via_objective(model, objective)
    info = store.publish(model, tokenizer, objective="reward", metrics={}, reason="round trip")

    # What a chat service without feedstep does: the files and reward_model.json, nothing else.
    spec = json.loads((info.path / "reward_model.json").read_text())
    assert spec["pooling"] == "response"
    encoder = AutoModel.from_pretrained(info.path / spec["encoder"]).eval()
    tok = AutoTokenizer.from_pretrained(info.path / spec["tokenizer"])
    head = load_file(str(info.path / spec["head"]["file"]))
    enc = tok([p for p, _ in PAIRS], [r for _, r in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**enc).last_hidden_state
    # The mean over the response segment: the second sequence of the pair encoding.
    mask = (enc["attention_mask"] * enc["token_type_ids"]).unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    rewards = pooled @ head["weight"].T + head["bias"]
    torch.testing.assert_close(rewards.squeeze(-1), expected, rtol=0, atol=1e-6)

    loaded, loaded_tok = load_reward_model(info.path)
    assert torch.equal(_rewards_via_objective(loaded, objective), expected)
    again, _ = build_reward_model(ModelSpec(str(info.path)))
    assert torch.equal(_rewards_via_objective(again, objective), expected)
    assert loaded_tok("hi")["input_ids"] == tokenizer("hi")["input_ids"]


def test_manifest_describes_every_file(store, tiny_parts):
    first = _publish(store, tiny_parts, seed=0)
    info = _publish(
        store, tiny_parts, seed=1, metrics={"loss": 0.41, "n": 800}, parent=first.version
    )
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["version"] == info.version == 2
    assert manifest["parent"] == 1
    assert manifest["kind"] == "full" and manifest["model_type"] == "reward_model"
    assert manifest["objective"] == "reward"
    assert manifest["metrics"] == {"loss": 0.41, "n": 800}
    assert manifest["reason"] == "seed 1"
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    on_disk = sorted(
        p.relative_to(info.path).as_posix() for p in info.path.rglob("*") if p.is_file()
    )
    listed = [f["path"] for f in manifest["files"]]
    assert listed == [p for p in on_disk if p != "manifest.json"]
    for entry in manifest["files"]:
        data = (info.path / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    assert {"encoder/model.safetensors", "head.safetensors", "reward_model.json"} <= set(listed)
    assert not [p for p in listed if p.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    assert [v.version for v in store.versions()] == [1, 2]


def test_publish_leaves_live_alone_and_promote_switches_it(store, tiny_parts):
    assert store.live() is None
    one = _publish(store, tiny_parts, seed=0)
    two = _publish(store, tiny_parts, seed=1)
    assert store.live() is None and not (store.root / "LIVE").exists()
    switch = store.promote(one.version, reason="first", actor="gate")
    assert (switch.action, switch.from_version, switch.to_version) == ("promote", None, 1)
    assert (store.root / "LIVE").read_text() == "1\n"
    store.promote(two.version, reason="better", actor="alice", manual=True)
    assert store.live().version == 2
    assert (store.root / "LIVE").read_text() == "2\n"
    assert not list(store.root.glob(".LIVE*"))  # the temp file was renamed, not left behind
    assert not list((store.root / "staging").iterdir())


def test_history_is_append_only_and_complete(store, tiny_parts):
    for seed in range(3):
        _publish(store, tiny_parts, seed=seed)
    snapshots = []
    steps = [("promote", 1), ("promote", 2), ("manual", 3), ("rollback", None), ("promote", 3)]
    for action, version in steps:
        if action == "rollback":
            store.rollback(reason="worse", actor="watch")
        else:
            store.promote(version, reason=action, actor="t", manual=action == "manual")
        snapshots.append((store.root / "history.jsonl").read_bytes())
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        assert after.startswith(before) and len(after.splitlines()) == len(before.splitlines()) + 1
    history = store.history()
    assert [s.seq for s in history] == [1, 2, 3, 4, 5]
    assert [s.action for s in history] == ["promote", "promote", "manual", "rollback", "promote"]
    assert [(s.from_version, s.to_version) for s in history] == [
        (None, 1),
        (1, 2),
        (2, 3),
        (3, 2),
        (2, 3),
    ]
    for line in snapshots[-1].decode().splitlines():
        record = json.loads(line)
        assert set(record) == {"seq", "action", "from", "to", "at", "reason", "actor"}


def test_rollback_goes_to_the_previous_version_and_nests(store, tiny_parts):
    for seed in range(3):
        store.promote(_publish(store, tiny_parts, seed=seed).version, reason="up", actor="gate")
    assert store.live().version == 3
    back = store.rollback(reason="error rate up", actor="watch")
    assert (back.action, back.from_version, back.to_version) == ("rollback", 3, 2)
    assert store.rollback(reason="still bad", actor="watch").to_version == 1
    assert store.live().version == 1
    with pytest.raises(NothingToRollBack, match="no earlier version was live"):
        store.rollback(reason="again", actor="watch")
    assert store.live().version == 1
    assert len(store.history()) == 5  # the refused rollback left no trace


def test_rollback_with_nothing_live_errors_clearly(store, tiny_parts):
    _publish(store, tiny_parts)
    with pytest.raises(NothingToRollBack, match="no LIVE version"):
        store.rollback(reason="x", actor="y")
    store.promote(1, reason="first", actor="gate")
    with pytest.raises(NothingToRollBack, match="nothing to roll back to: version 1 is LIVE"):
        store.rollback(reason="x", actor="y")


def test_bad_requests_are_clear_errors(store, tiny_parts):
    _publish(store, tiny_parts)
    with pytest.raises(VersionNotFound, match=r"version 9 does not exist .*versions: 1"):
        store.promote(9, reason="x", actor="y")
    with pytest.raises(VersionNotFound):
        _publish(store, tiny_parts, parent=5)
    store.promote(1, reason="x", actor="y")
    with pytest.raises(StoreError, match="already LIVE"):
        store.promote(1, reason="x", actor="y")
    with pytest.raises(StoreError, match="finite"):
        _publish(store, tiny_parts, metrics={"loss": float("nan")})
    with pytest.raises(StoreError, match="reason"):
        store.promote(1, reason=" ", actor="y")
    with pytest.raises(StoreError, match="no model store"):
        ModelStore(store.root / "missing", create=False)
    assert [v.version for v in store.versions()] == [1]
    assert not list((store.root / "staging").iterdir())


def test_verify_detects_a_flipped_byte_and_promote_refuses_it(store, tiny_parts):
    info = _publish(store, tiny_parts)
    _publish(store, tiny_parts, seed=1)
    assert store.verify(1).ok
    weights = info.path / "encoder" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    report = store.verify(1)
    assert not report.ok
    assert len(report.problems) == 1 and "encoder/model.safetensors" in report.problems[0]
    assert "sha256" in report.problems[0]
    assert store.verify(2).ok
    with pytest.raises(CorruptVersion, match="encoder/model.safetensors"):
        store.promote(1, reason="x", actor="y")
    assert store.live() is None
    (info.path / "extra.txt").write_text("x")
    (info.path / "head.safetensors").unlink()
    problems = " | ".join(store.verify(1).problems)
    assert "extra.txt: not in the manifest" in problems and "head.safetensors: missing" in problems


def test_rollback_refuses_a_corrupt_target(store, tiny_parts):
    for seed in range(2):
        store.promote(_publish(store, tiny_parts, seed=seed).version, reason="up", actor="gate")
    (store.path(1) / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptVersion, match="cannot roll back to version 1"):
        store.rollback(reason="x", actor="y")
    assert store.live().version == 2


def test_a_switch_interrupted_after_the_history_is_completed(store, tiny_parts):
    for seed in range(2):
        _publish(store, tiny_parts, seed=seed)
    store.promote(1, reason="first", actor="gate")
    # A crash between the history append and the LIVE rename: history says 2, LIVE says 1.
    from learner.store import Switch

    store._append_history(Switch(2, "promote", 1, 2, "2025-01-01T00:00:00Z", "r", "gate"))
    with (store.root / "history.jsonl").open("ab") as fh:
        fh.write(b'{"seq": 3, "action": "prom')  # and a torn line from a later crash
    assert store.live().version == 1
    assert len(store.history()) == 2
    switch = store.rollback(reason="undo", actor="ops")
    assert (switch.seq, switch.from_version, switch.to_version) == (3, 2, 1)
    lines = (store.root / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]


def test_version_numbers_are_never_reused(store, tiny_parts):
    import shutil

    for seed in range(2):
        store.promote(_publish(store, tiny_parts, seed=seed).version, reason="up", actor="gate")
    store.rollback(reason="bad", actor="ops")
    shutil.rmtree(store.path(2))  # an operator deletes the bad version by hand
    assert _publish(store, tiny_parts, seed=3).version == 3


def test_hugging_face_models_are_stored_with_save_pretrained(store, tiny_parts):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_parts[1]
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=32, n_embd=16, n_layer=1)
    config.n_head = 2
    lm = GPT2LMHeadModel(config).eval()
    info = store.publish(lm, tokenizer, objective="sft", metrics={}, reason="tiny lm")
    assert info.model_type == "pretrained" and store.verify(info.version).ok
    loaded = AutoModelForCausalLM.from_pretrained(info.path / "model").eval()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, lm(ids).logits)


def _publish_and_promote(root, index, barrier, results):
    import learner.store

    torch.set_num_threads(1)
    real_now = learner.store._now

    def slow_now():  # widen the race window: _now runs inside both critical sections
        time.sleep(0.2)
        return real_now()

    learner.store._now = slow_now
    model, tokenizer = build_reward_model(ModelSpec("tiny", seed=index))
    store = ModelStore(root)
    barrier.wait(timeout=120)  # everyone publishes and promotes at the same moment
    info = store.publish(model, tokenizer, objective="reward", metrics={}, reason=f"w{index}")
    store.promote(info.version, reason=f"worker {index}", actor=f"worker-{index}")
    results.put((index, info.version))


def test_concurrent_publishers_get_distinct_versions_and_a_consistent_history(tmp_path):
    n = 3
    root = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_publish_and_promote, args=(root, i, barrier, results)) for i in range(n)
    ]
    for p in procs:
        p.start()
    got = []
    deadline = time.monotonic() + 180
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(results.get(timeout=0.5))
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not failed, f"a worker failed with exit code {failed}"
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(got) == n
    versions = sorted(v for _, v in got)
    assert versions == list(range(1, n + 1))
    store = ModelStore(root, create=False)
    history = store.history()
    assert len(history) == n
    assert [s.seq for s in history] == list(range(1, n + 1))
    assert history[0].from_version is None
    for before, after in zip(history, history[1:], strict=False):
        assert after.from_version == before.to_version  # switches were serialized
    assert sorted(s.to_version for s in history) == versions
    assert store.live_version() == history[-1].to_version
    assert all(store.verify(v).ok for v in versions)
    assert {v.reason for v in store.versions()} == {f"w{i}" for i in range(n)}
