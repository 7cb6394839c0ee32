"""``feedstep demo``: the whole pipeline on the built-in simulated stream, promotion included.

The demo runs the simulated stream through the real pipeline, the real governor (drift
monitors, the promotion gate, the rollback watch) and a real model store in a new temporary
directory, kept after the run so that ``feedstep status --store DIR`` can show it. A few
settings differ from ``feedstep run``'s defaults so that a promotion fits in a short stream
(:data:`DEMO_DEFAULTS`); the demo prints them first. Flags, the config file and ``FEEDSTEP_*``
variables still win over them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from typing import Any

from streaming.cli.progress import Progress
from streaming.cli.wiring import (
    build_governor,
    build_learner,
    install_signals,
    serve_metrics,
    starting_model,
    summary_line,
)

log = logging.getLogger("feedstep")

DEMO_DEFAULTS: dict[str, Any] = {
    "gate_min_events": 300,
    "drift_quiet_events": 200,
    "lr": 5e-5,
    "max_length": 64,
}
"""Where the demo departs from ``feedstep run``'s defaults, unless flags or config set them.

``run`` waits for 2,000 paired events and 1,000 events without a drift alarm on the
candidate's errors before it promotes; a demo of 2,500 events would show one promotion at
most, near its end. The larger step and the shorter texts make the learning visible within the
demo's few steps (and keep it near two minutes on two CPU cores).
"""

LLM_DEMO_DEFAULTS: dict[str, Any] = {
    "gate_min_events": 64,
    "drift_quiet_events": 0,
    "lr": 2e-3,
    "max_length": 64,
    "batch_size": 4,
}
"""The demo's departures for the causal-LM objectives (``kto``, ``dpo``, ``sft``).

A 135M-parameter chat model takes seconds per step on a CPU, so a five-minute demo sees a few
hundred events: the gate waits for fewer of them, the drift quiet period is off (an alarm in
so short a stream would hold every promotion), and the step is the size LoRA adapters take.
"""

DEMO_EVENTS = {"reward": 2500, "kto": 160, "dpo": 160, "sft": 160}
"""Simulated events by objective, unless ``--events`` says otherwise."""

DEMO_MIX: dict[str, tuple[float, float, float, float]] = {
    "reward": (0.6, 0.15, 0.2, 0.05),
    "kto": (1.0, 0.0, 0.0, 0.0),
    "dpo": (0.0, 0.0, 0.8, 0.2),
    "sft": (0.0, 0.0, 0.5, 0.5),
}
"""The simulated stream's (thumb, rating, preference, correction) shares by objective: each
objective gets the feedback it learns from (``kto`` a stream of thumbs), none is dead-lettered
for its type."""

FLAGS = (
    "model",
    "objective",
    "trainable",
    "batch_size",
    "lr",
    "seed",
    "device",
    "gate_min_events",
    "gate_alpha",
    "drift_quiet_events",
)


# -- verbs ------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the pipeline and the promotion gate on the built-in simulated stream."""
    from monitors.decision import GateDecision
    from monitors.metrics import Metrics
    from monitors.server import HealthState
    from streaming.runtime.pipeline import Pipeline, PipelineSettings
    from streaming.serve import attach_scorer
    from streaming.testing import MemorySink, MemorySource
    from streaming.testing.simulate import SimulatedFeedback

    config = demo_config(args)
    print(settings_line(config, made_store=args.store is None), flush=True)
    objective = config.learner.objective
    events = args.events if args.events is not None else DEMO_EVENTS[objective]
    gen = SimulatedFeedback(seed=config.learner.seed, noise=args.noise, mix=DEMO_MIX[objective])
    payloads: list[bytes] = list(gen.payloads(events))
    # A few records a real stream also has: a malformed payload and a redelivered event.
    if events >= 20:
        payloads.insert(len(payloads) // 3, b'{"event_id": "broken", "ts": "not a time"}')
        payloads.insert(2 * len(payloads) // 3, payloads[5])
    source = MemorySource(payloads, topic=config.kafka.topic)
    dead_letters, updates = MemorySink(), MemorySink()
    model_name, live = starting_model(config)  # --store DIR with a LIVE version: start from it
    learner = build_learner(config, model_name, live)
    metrics, health = Metrics(), HealthState()
    governor = build_governor(config, learner, updates, metrics)
    server = None
    if args.metrics_port is not None:
        server = serve_metrics(metrics, health, args.metrics_port, "127.0.0.1")
        attach_scorer(server, config, learner, governor, metrics)
    progress = Progress(events, "demo events trained")
    last_gate: list[Any] = []  # the gate's latest decision, to say why it held

    def on_decision(_events: int, decision: Any) -> None:
        if isinstance(decision, GateDecision):
            last_gate[:] = [decision]

    governor.on_decision = on_decision

    def on_progress(s: Any) -> None:
        progress.show(s.trained_examples, progress_extra(s, governor))

    pipeline = Pipeline(
        source,
        dead_letters,
        learner,
        metrics,
        # batches close by count only, so that a seed gives the same batches and steps on
        # every machine (a close by max_wait_ms depends on the machine's speed)
        dataclasses.replace(PipelineSettings.from_config(config), max_wait_ms=1e9),
        health,
        on_progress=on_progress,
        governor=governor,
    )
    install_signals(pipeline)
    try:
        summary = pipeline.run()
    finally:
        governor.close(config.promotion.notify_timeout_s)  # webhook/vLLM still waiting
        if server is not None:
            server.stop()
    progress.show(summary.trained_examples, progress_extra(summary, governor), force=True)
    progress.close()
    last = pipeline.prequential.snapshot()
    print(summary_line(summary))
    print(
        f"last {min(last.events, config.metrics.prequential_window)} events: prequential accuracy "
        f"baseline={last.baseline_accuracy:.3f} candidate={last.candidate_accuracy:.3f}; "
        f"loss baseline={last.baseline_loss:.3f} candidate={last.candidate_loss:.3f}"
    )
    if objective in ("kto", "dpo"):
        print(
            f"the baseline has no accuracy under {objective}: the live model is the reference, "
            "its implicit reward is 0 (its loss is constant), so the gate compares losses"
        )
    for line in story_lines(governor, last_gate[0] if last_gate else None, len(updates.messages)):
        print(line)
    return 0


# -- parts ------------------------------------------------------------------------------------
def demo_config(args: argparse.Namespace) -> Any:
    """The configuration: flags > config file and env > :data:`DEMO_DEFAULTS` > run's defaults.

    Publishing is always on (the demo is about the promotion) and the store is ``--store`` or
    a new temporary directory, never the config's store: the demo does not write into a store
    that serves a chat service unless it is named on the command line.
    """
    from streaming.config import load_config

    overrides: dict[str, Any] = {key: getattr(args, key) for key in FLAGS}
    overrides.update(topic="demo-feedback", publish=True)
    first = load_config(args.config, overrides)  # a bad config fails here
    given = first.given()
    for key, value in _demo_defaults(first.learner.objective).items():
        if key not in given:
            overrides[key] = value
    overrides["store"] = args.store or tempfile.mkdtemp(prefix="feedstep-demo-")
    return load_config(args.config, overrides)


def _demo_defaults(objective: str) -> dict[str, Any]:
    from learner.objectives import CAUSAL_LM

    return LLM_DEMO_DEFAULTS if objective in CAUSAL_LM else DEMO_DEFAULTS


def settings_line(config: Any, made_store: bool) -> str:
    """One line: the settings that differ from ``feedstep run``'s defaults, and why."""
    from streaming.config import flat_default as run_default

    settings = config.flat()

    def shown(key: str, demo: Any) -> str:
        value = settings[key]
        yours = "" if value == demo else f"; demo: {demo:g}"
        return f"{key}={value:g} (run: {run_default(key):g}{yours})"

    store = "a new temporary model store" if made_store else "the model store"
    return (
        "demo settings (a smaller gate, a shorter drift quiet period, a larger step and shorter "
        "texts than `feedstep run`'s defaults, so that a promotion fits in a short stream): "
        + " ".join(
            shown(key, demo) for key, demo in _demo_defaults(config.learner.objective).items()
        )
        + f"; publishing to {store} {config.promotion.store}, kept after the demo "
        f"(run: {run_default('store')})"
    )


def progress_extra(s: Any, governor: Any) -> str:
    """The progress line's figures after the trained count."""
    promotions = sum(1 for e in governor.history if e.kind == "promote")
    return (
        f"consumed={s.consumed} steps={s.steps} promotions={promotions} "
        f"live=v{governor.live_version} preq_acc baseline={s.baseline_accuracy:.3f} "
        f"candidate={s.candidate_accuracy:.3f}"
    )


def story_lines(governor: Any, last_gate: Any, announcements: int) -> list[str]:
    """The closing lines: each promotion and rollback with its evidence, then the store."""
    lines = []
    promotions = 0
    for event in governor.history:
        d = event.detail
        if event.kind == "promote":
            promotions += 1
            test: dict[str, Any] = next(
                (c for c in d.get("checks", ()) if c["name"] == "sequential_test"), {}
            )
            lines.append(
                f"promoted version {d['from']} -> {d['to']} at event {event.index}: over "
                f"{d['events']} paired events the candidate's loss was lower by "
                f"{_num(d.get('mean_difference'))} per event (mean baseline - candidate); "
                f"sequential test log LR {_num(test.get('value'))} >= "
                f"{_num(test.get('threshold'))} (alpha {governor.gate.config.alpha:g})"
            )
        elif event.kind == "rollback":
            lines.append(
                f"rolled back version {d['from']} -> {d['to']} at event {event.index}: "
                f"{d.get('reason', '')}"
            )
    if not promotions:
        why = last_gate.reason if last_gate is not None else "no gate decision (no steps)"
        lines.append(f"no promotion in {governor.events} events; the gate's last word: {why}")
    store = governor.store
    versions = store.versions()
    live = store.live()
    origin = "the starting model" if live is not None and live.parent is None else "promoted"
    size_mb = sum(f.stat().st_size for f in store.root.rglob("*") if f.is_file()) / 1e6
    if live is not None and live.kind == "lora":
        lines.append(
            f"LIVE version {live.version} is a LoRA adapter over {(live.base or {}).get('name')}: "
            f"{live.path / 'adapter'} (PeftModel.from_pretrained or vLLM's load_lora_adapter)"
        )
    lines.append(
        f"model store {store.root}: LIVE version {live.version if live else 'none'} ({origin}) "
        f"of {len(versions)}, {announcements} model-updates messages, {size_mb:.0f} MB; "
        f"see it with: feedstep status --store {store.root}"
    )
    return lines


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"
