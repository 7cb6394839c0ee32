"""`feedstep replay` over files: the real pipeline as a dry run, a JSON report and PNG plots."""

from __future__ import annotations

import json
import struct

import pytest

from streaming import cli
from streaming.base import Record
from streaming.sources.recording import encode_record
from streaming.testing.simulate import SimulatedFeedback

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR" and data.rstrip().endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", data[16:24])
    return len(data), width, height


def _replay(capsys, *argv):
    code = cli.main(["replay", *argv])
    out, err = capsys.readouterr()
    return code, out, err


GATE_FLAGS = [
    "--model",
    "tiny",
    "--batch-size",
    "16",
    "--lr",
    "1e-3",
    "--seed",
    "0",
    "--gate-min-events",
    "100",
    "--drift-quiet-events",
    "0",
]


@pytest.fixture()
def events_file(tmp_path):
    payloads = list(SimulatedFeedback(seed=3).payloads(400))
    payloads.insert(100, b"{not json")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(payloads) + b"\n")
    return path


def test_replay_file_writes_report_and_plots_and_publishes_nothing(
    events_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the default store (./feedstep-store) would land here
    report_dir = tmp_path / "report"
    code, out, err = _replay(capsys, str(events_file), "--report", str(report_dir), *GATE_FLAGS)
    assert code == 0, err

    report = json.loads((report_dir / "report.json").read_text())
    assert report["dry_run"] is True and report["complete"] is True
    assert report["config"]["publish"] is False and report["config"]["model"] == "tiny"
    assert report["config"]["max_param_distance"] == "inf"
    assert report["source"] == {"kind": "events", "path": str(events_file.resolve())}
    s = report["summary"]
    assert (s["events"], s["accepted"], s["dead_lettered"], s["trained"]) == (401, 400, 1, 400)
    assert s["dead_letter_reasons"] == {"bad_json": 1}
    assert s["steps"] == 25 and s["gate_decisions"] == 25  # one decision after every step

    decisions = report["gate_decisions"]
    assert [d["event_index"] for d in decisions] == [16 * (i + 1) for i in range(25)]
    for d in decisions:
        names = [c["name"] for c in d["checks"]]
        assert names == [
            "min_events",
            "sequential_test",
            "holdout",
            "drift_quiet",
            "param_distance",
            "probe_kl",
        ]
        assert d["action"] in ("promote", "hold")
        assert {c["state"] for c in d["checks"]} <= {"pass", "fail", "inconclusive"}
    promoted = [d["event_index"] for d in decisions if d["action"] == "promote"]
    # Seeded: the learnable stream is promoted (the exact index is pinned by the seed).
    assert promoted, "a learnable stream should be promoted within 400 events"
    assert [p["event_index"] for p in report["promotions"]] == promoted
    first = report["promotions"][0]
    assert first["to"] == 1 and first["from"] is None and first["action"] == "promote"
    assert all(c["state"] == "pass" for c in first["checks"])
    assert s["promotions"] == len(promoted) and s["rollbacks"] == len(report["rollbacks"])

    series = report["series"]
    indices = [d["event_index"] for d in decisions]
    assert series["event_index"] == series["gate_event_index"] == indices
    assert len(series["baseline_loss"]) == len(series["candidate_loss"]) == 25
    assert series["gate_log_lr"][-1] == decisions[-1]["test_statistic"]
    assert all(t == pytest.approx(2.9957, abs=1e-3) for t in series["gate_log_threshold"])
    last = report["prequential"]["last_window"]
    assert last["events"] == 400 and last["candidate_loss"] < last["baseline_loss"]
    whole = report["prequential"]["whole_run"]
    assert whole["candidate_accuracy"] > whole["baseline_accuracy"]

    assert report["plots"] == ["prequential_loss.png", "gate_statistic.png"]
    for name in report["plots"]:
        size, width, height = _png_size(report_dir / name)
        assert size > 10_000 and width >= 600 and height >= 300

    # Dry run: no model store, no checkpoints, nothing else written next to the report.
    assert not (tmp_path / "feedstep-store").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "report"]
    assert sorted(p.name for p in report_dir.iterdir()) == [
        "gate_statistic.png",
        "prequential_loss.png",
        "report.json",
    ]
    closing = out.strip().splitlines()[-1]
    assert closing.startswith("replayed events=401 accepted=400 dead_lettered=1 steps=25")
    assert f"promotions={len(promoted)}" in closing
    assert closing.endswith(f"report={report_dir / 'report.json'}")
    assert "replayed: 401/401" in err  # progress


def test_replay_of_a_recording_keeps_origins_and_dead_letters_bad_bytes(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    payloads = list(SimulatedFeedback(seed=5).payloads(64))
    records = [
        Record("feedback", i % 2, i // 2, b"k", p, 1_000 * i) for i, p in enumerate(payloads)
    ]
    records.insert(10, Record("feedback", 0, 99, None, b"\xff\xfe not utf-8", 5, ()))
    path = tmp_path / "rec.jsonl"
    path.write_text("".join(encode_record(r) + "\n" for r in records))
    code, out, err = _replay(capsys, str(path), "--report", str(tmp_path / "r"), *GATE_FLAGS)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["source"]["kind"] == "recording"
    assert report["summary"]["events"] == 65
    assert report["summary"]["dead_letter_reasons"] == {"bad_encoding": 1}
    assert report["summary"]["steps"] == 4
    assert not (tmp_path / "feedstep-store").exists()


def test_replay_errors(tmp_path, capsys, events_file):
    code, _, err = _replay(capsys, str(tmp_path / "nope.jsonl"), "--report", str(tmp_path))
    assert code == 2 and "is neither kafka:TOPIC nor an existing file" in err
    code, _, err = _replay(
        capsys, str(events_file), "--report", str(tmp_path / "r"), "--from-offset", "5"
    )
    assert code == 2 and "select a topic range; they do not apply to the file" in err
    assert not (tmp_path / "r").exists()
