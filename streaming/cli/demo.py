"""``feedstep demo``: the whole pipeline on the built-in simulated stream."""

from __future__ import annotations

import argparse
import logging

from streaming.cli.progress import Progress
from streaming.cli.wiring import (
    build_learner,
    install_signals,
    pipeline_settings,
    serve_metrics,
    summary_line,
)

log = logging.getLogger("feedstep")


# -- verbs ------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole pipeline on the built-in simulated stream; no broker, no download."""
    from monitors.metrics import Metrics
    from monitors.server import HealthState
    from streaming.config import load_config
    from streaming.runtime.pipeline import Pipeline
    from streaming.testing import MemorySink, MemorySource
    from streaming.testing.simulate import SimulatedFeedback

    config = load_config(
        args.config,
        {
            "model": args.model,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "device": args.device,
            "max_length": 64,
            "topic": "demo-feedback",
        },
    )
    gen = SimulatedFeedback(seed=config.seed, noise=args.noise)
    payloads: list[bytes] = list(gen.payloads(args.events))
    # A few records a real stream also has: a malformed payload and a redelivered event.
    if args.events >= 20:
        payloads.insert(len(payloads) // 3, b'{"event_id": "broken", "ts": "not a time"}')
        payloads.insert(2 * len(payloads) // 3, payloads[5])
    source = MemorySource(payloads, topic=config.topic)
    dead_letters = MemorySink()
    learner = build_learner(config)
    metrics, health = Metrics(), HealthState()
    server = None
    if args.metrics_port is not None:
        server = serve_metrics(metrics, health, args.metrics_port, "127.0.0.1")
    progress = Progress(len(payloads), "demo events")
    pipeline = Pipeline(
        source,
        dead_letters,
        learner,
        metrics,
        pipeline_settings(config),
        health,
        on_progress=lambda s: progress.show(
            s.consumed,
            f"steps={s.steps} preq_acc baseline={s.baseline_accuracy:.3f} "
            f"candidate={s.candidate_accuracy:.3f}",
        ),
    )
    install_signals(pipeline)
    summary = pipeline.run()
    progress.close()
    if server is not None:
        server.stop()
    last = pipeline.prequential.snapshot()
    print(summary_line(summary))
    print(
        f"last {min(last.events, config.prequential_window)} events: prequential accuracy "
        f"baseline={last.baseline_accuracy:.3f} candidate={last.candidate_accuracy:.3f}; "
        f"loss baseline={last.baseline_loss:.3f} candidate={last.candidate_loss:.3f}"
    )
    return 0
