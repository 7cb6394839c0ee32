import json

import pytest
import torch

from learner.base import Example
from learner.store import ModelStore
from streaming import cli
from streaming.cli.parser import build_parser
from streaming.cli.wiring import build_learner, starting_model
from streaming.config import load_config


@pytest.fixture()
def store(tmp_path, tiny_parts):
    """A store with versions 1..3 published and 1 then 2 promoted by the gate."""
    make, tokenizer = tiny_parts
    s = ModelStore(tmp_path / "store")
    for seed in range(3):
        s.publish(
            make(seed),
            tokenizer,
            objective="reward",
            metrics={"accuracy": 0.6 + seed / 100, "events": 800},
            reason=f"gate passed {seed}",
            parent=seed or None,
        )
    s.promote(1, reason="first", actor="gate")
    s.promote(2, reason="better", actor="gate")
    return s


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_shows_live_versions_and_switches(store, capsys):
    code, out, err = _run(capsys, "status", "--store", str(store.root))
    assert code == 0, err
    assert "LIVE: version 2" in out
    rows = [line for line in out.splitlines() if "gate passed" in line]
    assert len(rows) == 3
    assert rows[1].lstrip().startswith("* ") and " 2 " in rows[1]  # newest first, live marked
    assert "accuracy=0.61" in rows[1] and "events=800" in rows[1]
    assert store.version(2).created_at in rows[1]
    assert "last switches: 2 of 2" in out
    assert "promote     1 -> 2" in out and "by gate: better" in out


def test_status_json_and_empty_store(store, tmp_path, capsys):
    code, out, _ = _run(capsys, "status", "--store", str(store.root), "--json", "--history", "1")
    assert code == 0
    data = json.loads(out)
    assert data["live"] == 2
    assert [v["version"] for v in data["versions"]] == [1, 2, 3]
    assert data["versions"][2]["metrics"] == {"accuracy": 0.62, "events": 800}
    assert [h["to"] for h in data["history"]] == [2]
    ModelStore(tmp_path / "empty")
    code, out, _ = _run(capsys, "status", "--store", str(tmp_path / "empty"))
    assert code == 0 and "LIVE: none" in out and "versions: none" in out


def test_promote_by_hand_is_recorded_as_manual(store, capsys):
    argv = ["promote", "--version", "3", "--store", str(store.root), "--reason", "checked by ops"]
    code, out, err = _run(capsys, *argv, "--actor", "alice")
    assert code == 0, err
    assert "2 -> 3" in out
    assert (store.root / "LIVE").read_text() == "3\n"
    last = store.history()[-1]
    assert (last.action, last.from_version, last.to_version) == ("manual", 2, 3)
    assert (last.reason, last.actor) == ("checked by ops", "alice")
    code, _, _ = _run(capsys, "promote", "--version", "1", "--store", str(store.root))
    assert code == 0
    assert store.history()[-1].actor.startswith("cli:")


def test_rollback_goes_back_then_errors_clearly(store, capsys):
    code, out, err = _run(capsys, "rollback", "--store", str(store.root), "--reason", "errors up")
    assert code == 0, err
    assert "rollback" in out and "2 -> 1" in out
    assert store.live_version() == 1
    code, out, err = _run(capsys, "rollback", "--store", str(store.root))
    assert code == 2
    assert err.startswith("feedstep: error: nothing to roll back to: version 1 is LIVE")
    assert store.live_version() == 1 and len(store.history()) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "--version", "9"], "version 9 does not exist in the store"),
        (["promote", "--version", "2"], "version 2 is already LIVE"),
        (["promote", "--version", "3", "--reason", " "], "reason must be a non-empty string"),
    ],
)
def test_promote_errors_exit_2_with_a_message(store, capsys, argv, message):
    code, out, err = _run(capsys, *argv, "--store", str(store.root))
    assert code == 2
    assert message in err and err.startswith("feedstep: error:")
    assert out == ""
    assert store.live_version() == 2


def test_a_missing_store_is_an_error_not_an_empty_store(tmp_path, capsys):
    for verb in (["status"], ["rollback"], ["promote", "--version", "1"]):
        code, _, err = _run(capsys, *verb, "--store", str(tmp_path / "typo"))
        assert code == 2 and "no model store at" in err
    assert not (tmp_path / "typo").exists()


def test_store_comes_from_the_environment_when_no_flag(store, capsys, monkeypatch):
    monkeypatch.setenv("FEEDSTEP_STORE", str(store.root))
    code, out, _ = _run(capsys, "status")
    assert code == 0 and f"store {store.root}" in out


def test_status_verify_flags_a_corrupt_version(store, capsys):
    path = store.path(1) / "head.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    code, out, _ = _run(capsys, "status", "--store", str(store.root), "--verify")
    assert code == 1
    corrupt = [line for line in out.splitlines() if "CORRUPT" in line]
    assert len(corrupt) == 1 and "gate passed 0" in corrupt[0]
    assert "head.safetensors: sha256" in out
    code, _, err = _run(capsys, "promote", "--version", "1", "--store", str(store.root))
    assert code == 2 and "fail the manifest check" in err


def test_run_starts_from_the_live_version(store, tiny_parts, objective):
    config = load_config(
        overrides={"store": str(store.root), "model": "tiny", "device": "cpu"}, environ={}
    )
    assert config.promotion.store == str(store.root)
    name, live = starting_model(config)
    assert live.version == 2 and live.kind == "full" and name == str(store.path(2))
    learner = build_learner(config, name, live)
    batch = objective.collate([Example("q", "an answer", target=1.0), Example("p", "r", 0.0)])
    published = tiny_parts[0](1)  # version 2 was published from seed 1
    with torch.no_grad():
        want = objective.forward(published.eval(), batch).score
        got = objective.forward(learner.candidate, batch).score
    assert torch.equal(got, want)


def test_run_falls_back_to_the_model_flag_without_a_live_version(tmp_path, caplog):
    config = load_config(overrides={"store": str(tmp_path / "none"), "model": "tiny"}, environ={})
    with caplog.at_level("INFO", logger="feedstep"):
        assert starting_model(config) == ("tiny", None)
    assert "does not exist yet" in caplog.text
    ModelStore(tmp_path / "empty")
    config = load_config(overrides={"store": str(tmp_path / "empty"), "model": "tiny"}, environ={})
    assert starting_model(config) == ("tiny", None)
    assert load_config(environ={}).promotion.store == "./feedstep-store"


def test_run_refuses_a_corrupt_live_version_before_touching_kafka(store, capsys):
    (store.path(2) / "encoder" / "config.json").write_text("{}")
    code, _, err = _run(
        capsys,
        "run",
        "--store",
        str(store.root),
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--metrics-port",
        "0",
    )
    assert code == 2
    assert "LIVE version 2" in err and "fails its checksums" in err and "rollback" in err


def test_existing_verbs_still_parse():
    parser = build_parser()
    assert parser.parse_args(["run", "--store", "s"]).store == "s"
    assert parser.parse_args(["run"]).store is None
    assert parser.parse_args(["demo", "--events", "5"]).events == 5
    assert parser.parse_args(["produce", "f.jsonl", "--topic", "t"]).topic == "t"
