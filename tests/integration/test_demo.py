"""The main job runs end to end: `feedstep demo` on the bundled MiniLM with a small N."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_end_to_end_with_the_bundled_model():
    proc = subprocess.run(
        [sys.executable, "-m", "streaming.cli", "demo", "--events", "96", "--batch-size", "16"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout.splitlines()[-2]
    fields = dict(re.findall(r"(\w+)=([\d.]+)", summary))
    assert fields["events"] == "98"  # 96 simulated + one malformed + one redelivered
    assert fields["dead_lettered"] == "1" and fields["duplicates"] == "1"
    assert int(fields["steps"]) == 6 and fields["trained"] == "96"
    assert 0.0 <= float(fields["baseline"]) <= 1.0 and 0.0 <= float(fields["candidate"]) <= 1.0
    assert "demo events" in proc.stderr  # progress was shown
