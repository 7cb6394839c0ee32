"""Every script in bench/ runs, small, and ends with its result line.

Benchmarks print numbers and are never timed assertions; these tests only keep them from
rotting: each script runs as a subprocess at a size of seconds (tiny models, a few iterations,
a few thousand events), must exit 0, and its last line must be ``<name>=<finite number>``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
HH_RLHF = ROOT / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def run_bench(script: str, *args: str, timeout_s: float = 120) -> str:
    """Run ``bench/<script>`` with this interpreter; its stdout, after checking it exited 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, (
        f"bench/{script} exited {proc.returncode}\n"
        f"--- stdout (tail)\n{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def result(stdout: str, name: str) -> float:
    """The number on the last line, which must read ``<name>=<number>``; finite."""
    lines = stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    match = re.fullmatch(rf"{re.escape(name)}=(\S+)", last)
    assert match, f"expected a last line {name}=<number>, got {last!r}"
    value = float(match.group(1))
    assert math.isfinite(value), last
    return value


def test_decode_prints_the_decoder_cost_per_event():
    out = run_bench("decode.py", "--events", "500", "--repeats", "1")
    assert result(out, "decode_event_us") > 0
    for row in ("decode_event", "decode_event+extra", "to_example", "json.loads"):
        assert re.search(rf"^{re.escape(row)}\s", out, re.MULTILINE), row


def test_pipeline_only_prints_events_per_second_and_profiles_each_stage():
    out = run_bench("pipeline_only.py", "--events", "2000", "--repeats", "1", "--profile")
    assert result(out, "events_per_s") > 0
    for thread in ("ingest", "feedstep-tokenize", "feedstep-train"):
        assert f"--- {thread} thread" in out, thread


def test_step_prints_the_ratio_of_the_full_to_the_bare_step(tmp_path):
    table = tmp_path / "step.json"
    out = run_bench(
        "step.py",
        "--models", "tiny,tiny-causal",
        "--batch-size", "4",
        "--pairs", "1",
        "--seq-len", "16",
        "--warmup", "1",
        "--iters", "2",
        "--threads", "1",
        "--no-memory",
        "--json", str(table),
    )  # fmt: skip
    rows = json.loads(table.read_text())
    assert [r["model"] for r in rows] == ["tiny", "tiny-causal"]
    assert result(out, "ratio") == pytest.approx(rows[0]["ratio"], abs=5e-4)
    for row in rows:
        for variant in ("bare", "full", "full-nobase"):
            assert row["median_s"][variant] > 0, (row["model"], variant)
        assert row["ratio"] > 0 and row["ratio_nobase"] > 0


def test_step_measures_peak_memory_per_parameter_in_child_processes():
    out = run_bench(
        "step.py",
        "--models", "tiny",
        "--batch-size", "2",
        "--seq-len", "16",
        "--warmup", "0",
        "--iters", "1",
        "--threads", "1",
    )  # fmt: skip
    assert result(out, "ratio") > 0
    header, row = (line for line in out.splitlines() if line.startswith(("model ", "tiny ")))
    assert "mem B/param bare" in header
    bare, full = (float(v) for v in row.split()[-2:])
    assert bare > 0 and full > 0


def test_hh_rlhf_prints_the_pairwise_accuracy_of_a_short_pass():
    if not HH_RLHF.is_file():
        pytest.fail(f"the HH-RLHF test split is expected at {HH_RLHF.resolve()} (../shared/data)")
    out = run_bench(
        "hh_rlhf.py",
        "--data", str(HH_RLHF),
        "--model", "tiny",
        "--device", "cpu",
        "--limit", "16",
        "--pairs-per-step", "4",
        "--max-length", "32",
        "--threads", "1",
    )  # fmt: skip
    assert 0.0 <= result(out, "pairwise_accuracy") <= 1.0
    assert "pairs=16 steps=4" in out


def test_thumbs_prints_pairwise_accuracy_for_every_configuration():
    if not HH_RLHF.is_file():
        pytest.fail(f"the HH-RLHF test split is expected at {HH_RLHF.resolve()} (../shared/data)")
    out = run_bench(
        "thumbs.py",
        "--data", str(HH_RLHF),
        "--model", "tiny",
        "--device", "cpu",
        "--limit", "16",
        "--batch-size", "4",
        "--max-length", "32",
        "--max-gap", "8",
        "--gate-min-events", "8",
        "--threads", "1",
        "--center", "0.1",
        "--ema-decay", "0.9",
    )  # fmt: skip
    assert 0.0 <= result(out, "pairwise") <= 1.0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:9]}
    assert list(rows) == [
        "plain", "live", "mean", "mining", "both", "replace", "replace_ref", "shuffled"
    ]  # fmt: skip
    assert rows["plain"][6] == "0" and int(rows["mining"][6]) > 0  # pairs mined
    assert int(rows["replace"][6]) > 0 and rows["shuffled"][2] == "replace"  # the control's
    assert rows["shuffled"][8] == "0"  # the control: no promotion
    assert "pairs=16 events=32" in out
    drift = [line for line in out.splitlines() if "standardized by the 512" in line]
    assert len(drift) == 8 and all(0.0 <= float(line.split()[-1]) <= 1.0 for line in drift)


def test_hh_rlhf_with_dpo_and_lora_stops_at_its_time_budget():
    if not HH_RLHF.is_file():
        pytest.fail(f"the HH-RLHF test split is expected at {HH_RLHF.resolve()} (../shared/data)")
    out = run_bench(
        "hh_rlhf.py",
        "--data", str(HH_RLHF),
        "--objective", "dpo",
        "--model", "tiny-causal",
        "--trainable", "lora",
        "--device", "cpu",
        "--limit", "64",
        "--pairs-per-step", "4",
        "--max-length", "32",
        "--lr", "1e-3",
        "--threads", "1",
        "--time-budget-s", "0",
    )  # fmt: skip
    assert 0.0 <= result(out, "pairwise_accuracy") <= 1.0
    assert "objective=dpo trainable=lora" in out
    steps = int(re.search(r" steps=(\d+) ", out).group(1))
    assert 1 <= steps < 16  # the budget stopped it before the 64 pairs were through


@pytest.mark.integration
def test_ingest_prints_the_ratio_to_a_bare_consumer(kafka_bootstrap):
    topic = f"feedstep-bench-smoke-{uuid.uuid4().hex[:8]}"
    out = run_bench(
        "ingest.py",
        "--bootstrap-servers", kafka_bootstrap,
        "--topic", topic,
        "--events", "2000",
        "--partitions", "2",
        "--repeats", "1",
        "--delete-topic",
    )  # fmt: skip
    assert result(out, "ratio") > 0
    assert f"deleted {topic}" in out


def test_score_latency_prints_idle_and_training_percentiles():
    out = run_bench(
        "score_latency.py",
        "--model", "tiny",
        "--device", "cpu",
        "--requests", "10",
        "--responses", "3",
        "--tokens", "24",
        "--train-events", "4000",
        "--threads", "1",
    )  # fmt: skip
    idle = re.search(r"^idle: requests=10 p50_ms=([\d.]+) p99_ms=([\d.]+)", out, re.M)
    busy = re.search(r"^training: requests=10 .* steps_meanwhile=(\d+)", out, re.M)
    assert idle and busy, out
    assert 0 < float(idle.group(1)) <= float(idle.group(2))
    assert int(busy.group(1)) >= 1  # the requests were served while steps ran
    assert result(out, "p99_training_ms") > 0


def test_lockstep_prints_events_per_second_of_one_and_two_ranks(tmp_path):
    out = run_bench(
        "lockstep.py", "--model", "tiny", "--steps", "2", "--warmup", "1", "--batch-size", "4",
        "--max-length", "32", "--out", str(tmp_path),
    )  # fmt: skip
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[12]\s", line)]
    assert [r[0] for r in rows] == ["1", "2"], out
    assert float(rows[1][3]) > 0  # two ranks all-reduce a gradient; one rank does not
    assert result(out, "events_per_s") > 0
