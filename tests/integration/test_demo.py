"""The main job tells the whole story: `feedstep demo` learns, promotes, and says so."""

from __future__ import annotations

import re
import subprocess
import sys

from learner.store import ModelStore


def demo(*flags: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streaming.cli", "demo", *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def fields_of(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=([\d.]+)", line))


def summary_of(stdout: str) -> dict[str, str]:
    (line,) = [x for x in stdout.splitlines() if x.startswith("events=")]
    return fields_of(line)


def test_demo_promotes_the_candidate_into_the_store_and_names_the_promotion(tmp_path):
    store_dir = tmp_path / "store"
    proc = demo(
        *("--model", "tiny", "--events", "400", "--batch-size", "16", "--lr", "1e-3"),
        *("--gate-min-events", "150", "--drift-quiet-events", "0", "--store", str(store_dir)),
    )
    out = proc.stdout.splitlines()
    # the settings come first, in one line, against run's defaults
    assert out[0].startswith("demo settings")
    assert "gate_min_events=150 (run: 2000; demo: 300)" in out[0] and str(store_dir) in out[0]
    summary = summary_of(proc.stdout)
    assert summary["events"] == "402"  # 400 simulated + one malformed + one redelivered
    assert summary["dead_lettered"] == "1" and summary["duplicates"] == "1"
    assert summary["trained"] == "400" and summary["steps"] == "25"

    promoted = [re.match(r"promoted version (\d+) -> (\d+) at event (\d+): ", x) for x in out]
    promotions = [tuple(map(int, m.groups())) for m in promoted if m]
    assert promotions, proc.stdout  # a demo without a promotion fails here
    assert promotions[0][:2] == (1, 2) and promotions[0][2] >= 150
    first = next(x for x in out if x.startswith("promoted version 1 -> 2"))
    assert re.search(r"lower by -?[\d.e-]+ per event .*log LR [\d.]+ >= [\d.]+", first), first

    store = ModelStore(store_dir, create=False)
    live = store.live()
    assert live is not None and live.version == promotions[-1][1] == len(store.versions())
    assert live.parent == promotions[-1][0] and live.reason == "all checks passed"
    assert live.metrics["events"] >= 150 and store.verify(live.version).ok
    assert out[-1].startswith(f"model store {store_dir}: LIVE version {live.version} (promoted)")

    # progress shows the events trained, the steps and the promotions, not only those consumed
    shown = [x for x in proc.stderr.splitlines() if x.startswith("demo events trained: ")]
    assert shown and fields_of(shown[-1])["promotions"] == str(len(promotions))
    assert shown[-1].startswith("demo events trained: 400/400 ")


def test_demo_on_the_bundled_model_says_why_it_did_not_promote(tmp_path):
    store_dir = tmp_path / "store"
    proc = demo(
        *("--events", "96", "--batch-size", "16", "--gate-min-events", "1000"),
        *("--store", str(store_dir)),
    )
    summary = summary_of(proc.stdout)
    assert summary["events"] == "98" and summary["trained"] == "96" and summary["steps"] == "6"
    assert 0.0 <= float(summary["baseline"]) <= 1.0 and 0.0 <= float(summary["candidate"]) <= 1.0
    assert not any(x.startswith("promoted version") for x in proc.stdout.splitlines())
    assert "no promotion in 96 events; the gate's last word: hold: min_events failed" in proc.stdout
    store = ModelStore(store_dir, create=False)
    assert store.live_version() == 1 and len(store.versions()) == 1  # the starting model only
    assert "demo events trained: 96/96 " in proc.stderr


def test_demo_with_a_chat_model_publishes_a_lora_adapter(tmp_path):
    from peft import PeftModel

    from learner.models import TINY_CAUSAL, ModelSpec, build_causal_lm

    store_dir = tmp_path / "store"
    proc = demo(
        *("--objective", "kto", "--model", TINY_CAUSAL, "--trainable", "lora"),
        *("--events", "200", "--store", str(store_dir)),
    )
    out = proc.stdout.splitlines()
    assert "gate_min_events=64 (run: 2000)" in out[0] and "lr=0.002 (run: 2e-05)" in out[0]
    summary = summary_of(proc.stdout)
    # a stream of thumbs: only the planted malformed record is dead-lettered, none for its type
    assert summary["dead_lettered"] == "1" and summary["trained"] == "200"
    assert summary["steps"] == "50"  # batches of 4
    assert any(x.startswith("promoted version 1 -> 2") for x in out), proc.stdout
    store = ModelStore(store_dir, create=False)
    live = store.live()
    assert live is not None and live.kind == "lora" and live.version >= 2
    assert live.base is not None and live.base["name"] == TINY_CAUSAL
    assert f"LIVE version {live.version} is a LoRA adapter over {TINY_CAUSAL}" in proc.stdout
    base, _ = build_causal_lm(ModelSpec(TINY_CAUSAL, seed=live.base["seed"]))
    loaded = PeftModel.from_pretrained(base, str(live.path / "adapter"))
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in loaded.named_parameters())
