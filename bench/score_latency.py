"""``POST /v1/score`` latency on the sidecar, idle and while the learner trains.

Builds the learner ``feedstep run`` builds (``--model``, the ``reward`` objective), serves
``/v1/score`` on a real HTTP port the way ``run`` does (``attach_scorer``), and sends requests
of one prompt and ``--responses`` replies of ``--tokens`` tokens each, one at a time, from one
client: first with nothing else running, then while the real pipeline trains on a simulated
stream in the same process. A request holds the learner lock for one forward, so while training
it also waits for the step in flight: that wait is what the second figure shows.

    python3 bench/score_latency.py                          # MiniLM, 8 responses of 256 tokens
    python3 bench/score_latency.py --model tiny --requests 20 --tokens 32   # smoke

Last line: ``p99_training_ms=<p99 latency while training>``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitors.metrics import Metrics  # noqa: E402
from monitors.server import HealthState, MetricsServer  # noqa: E402
from streaming.cli.wiring import build_learner  # noqa: E402
from streaming.config import load_config  # noqa: E402
from streaming.promotion.governor import GovernanceSettings, Governor  # noqa: E402
from streaming.runtime.pipeline import Pipeline, PipelineSettings  # noqa: E402
from streaming.serve import attach_scorer  # noqa: E402
from streaming.testing import MemorySink, MemorySource  # noqa: E402
from streaming.testing.simulate import SimulatedFeedback  # noqa: E402

PROMPT = "How long should I boil an egg so that the yolk stays soft?"
WORDS = (
    "simmer the egg gently for about six minutes then move it to a bowl of cold water so "
    "that it stops cooking and peels easily while the yolk stays soft and bright"
).split()


def replies(tokenizer: object, n: int, tokens: int) -> list[str]:
    """``n`` different replies of exactly ``tokens`` tokens each (without special tokens)."""
    out = []
    for i in range(n):
        words = (WORDS[i:] + WORDS[:i]) * (tokens // len(WORDS) + 2)
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:tokens]  # type: ignore[operator]
        out.append(tokenizer.decode(ids))  # type: ignore[attr-defined]
    return out


def measure(port: int, body: bytes, requests: int) -> list[float]:
    """Latency in ms of ``requests`` sequential requests on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        conn.request("POST", "/v1/score", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        times.append((time.perf_counter() - started) * 1e3)
        if response.status != 200:
            raise SystemExit(f"/v1/score answered {response.status}: {payload[:200]!r}")
    conn.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def line(name: str, times: list[float], extra: str = "") -> str:
    return (
        f"{name}: requests={len(times)} p50_ms={statistics.median(times):.1f} "
        f"p99_ms={percentile(times, 0.99):.1f} max_ms={max(times):.1f}{extra}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--responses", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per reply")
    ap.add_argument("--requests", type=int, default=200, help="requests per phase")
    ap.add_argument("--batch-size", type=int, default=16, help="training micro-batch")
    ap.add_argument("--train-events", type=int, default=20_000, help="simulated stream length")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    config = load_config(
        overrides={
            "model": args.model,
            "device": args.device,
            "max_length": args.tokens + 32,  # room for the prompt: replies are never cut
            "batch_size": args.batch_size,
            "score_max_responses": max(args.responses, 1),
            "publish": False,
        },
        environ={},
    )
    learner = build_learner(config)
    metrics = Metrics()
    governor = Governor(learner, None, None, metrics, GovernanceSettings(publish=False))
    server = MetricsServer(metrics.render, HealthState(), port=0, host="127.0.0.1").start()
    attach_scorer(server, config, learner, governor, metrics)
    texts = replies(learner.objective.tokenizer, args.responses, args.tokens)
    body = json.dumps({"prompt": PROMPT, "responses": texts}).encode()
    try:
        measure(server.port, body, 3)  # warm-up: first-call allocations
        idle = measure(server.port, body, args.requests)
        print(line("idle", idle), flush=True)

        events = list(SimulatedFeedback(seed=0).payloads(args.train_events))
        pipe = Pipeline(
            MemorySource(events, topic="bench"),
            MemorySink(),
            learner,
            metrics,
            PipelineSettings(batch_size=args.batch_size, log_every_s=1e9, shutdown_timeout_s=1.0),
            governor=governor,
        )
        trainer = threading.Thread(target=pipe.run, name="pipeline", daemon=True)
        trainer.start()
        while learner.steps < 2:  # training is under way
            time.sleep(0.05)
        before, started = learner.steps, time.perf_counter()
        busy = measure(server.port, body, args.requests)
        steps = learner.steps - before
        step_s = (time.perf_counter() - started) / max(1, steps)
        if not trainer.is_alive():
            raise SystemExit("the stream ran out while measuring; raise --train-events")
        pipe.stop()
        trainer.join(timeout=120)
    finally:
        server.stop()
    print(line("training", busy, f" steps_meanwhile={steps} s_per_step={step_s:.2f}"))
    print(f"p99_training_ms={percentile(busy, 0.99):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
