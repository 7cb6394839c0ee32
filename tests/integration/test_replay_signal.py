"""SIGTERM during `feedstep replay`: it ends within shutdown_timeout_s and says it is incomplete."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

from streaming.testing.simulate import SimulatedFeedback


def test_sigterm_ends_a_replay_in_time_and_the_report_says_incomplete(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(SimulatedFeedback(seed=4).payloads(30_000)) + b"\n")
    report_dir = tmp_path / "report"
    config = tmp_path / "replay.toml"
    config.write_text("shutdown_timeout_s = 2.0\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streaming.cli",
            "replay",
            str(events),
            "--report",
            str(report_dir),
            "--config",
            str(config),
            "--model",
            "tiny",
            "--batch-size",
            "16",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stderr is not None and proc.stdout is not None
    progress = threading.Event()
    err_lines: list[bytes] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, b""):
            err_lines.append(line)
            if line.startswith(b"replayed") or b"\rreplayed" in line:
                progress.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert progress.wait(120), b"".join(err_lines[-20:]).decode(errors="replace")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        code = proc.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert code == 0, b"".join(err_lines[-20:]).decode(errors="replace")
    # shutdown_timeout_s, one step in flight, writing the report and its plots: well within
    assert took < 2.0 + 20.0, took
    report = json.loads((report_dir / "report.json").read_text())
    s = report["summary"]
    assert report["complete"] is False
    assert 0 < s["events"] < 30_000  # it stopped mid-file
    assert s["trained"] <= s["accepted"]
    assert b"replayed events=" in out
    assert any(b"not complete (stopped by a signal)" in line for line in err_lines)
