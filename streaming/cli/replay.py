"""``feedstep replay``: the real pipeline over a file or a topic range, dry, with a report."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from streaming.cli.progress import Progress
from streaming.cli.record import range_options
from streaming.cli.wiring import (
    build_governor,
    build_learner,
    install_signals,
    starting_model,
)

log = logging.getLogger("feedstep")


def cmd_replay(args: argparse.Namespace) -> int:
    """The real pipeline over a file or a topic range, publishing off, with a report."""
    import dataclasses

    from monitors.metrics import Metrics
    from streaming.config import load_config
    from streaming.replay.report import (
        DiscardSink,
        ReplayRecorder,
        build_report,
        open_replay_source,
        write_report,
    )
    from streaming.runtime.pipeline import Pipeline, PipelineSettings

    overrides = {
        key: getattr(args, key)
        for key in (
            "bootstrap_servers",
            "model",
            "batch_size",
            "device",
            "lr",
            "seed",
            "store",
            "gate_min_events",
            "gate_min_effect",
            "gate_alpha",
            "drift_quiet_events",
            "stop_after_events",
        )
    }
    overrides["publish"] = False  # a replay is a dry run, whatever the config file says
    config = load_config(args.config, overrides)
    model_name, live = starting_model(config) if args.store else (config.learner.model, None)
    # The source first: a wrong SOURCE or range fails before minutes of model loading.
    replay = open_replay_source(args.source, config, **range_options(args))
    try:
        learner = build_learner(config, model_name, live)
        metrics = Metrics()
        governor = build_governor(config, learner, None, metrics)
        recorder = ReplayRecorder()
        recorder.attach(governor)
        dead_letters = DiscardSink()
        progress = Progress(replay.total, "replayed")
        settings = dataclasses.replace(
            PipelineSettings.from_config(config),
            max_wait_ms=1e9,  # batches close by count only: a replay reads as fast as it can
            stop_when_idle_s=config.run.stop_when_idle_s or 60.0,  # a topic range that stalls ends
        )
        pipeline: Pipeline

        def on_progress(s: Any) -> None:
            recorder.observe(pipeline)
            promotions = sum(1 for e in governor.history if e.kind == "promote")
            progress.show(
                s.consumed,
                f"steps={s.steps} promotions={promotions} preq_acc baseline="
                f"{s.baseline_accuracy:.3f} candidate={s.candidate_accuracy:.3f}",
            )

        pipeline = Pipeline(
            replay.source,
            dead_letters,
            learner,
            metrics,
            settings,
            on_progress=on_progress,
            governor=governor,
        )
        previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        install_signals(pipeline)
        try:
            summary = pipeline.run()
        finally:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
        # complete: the whole source was read and every event is accounted for (a stop request
        # gives up batches not started by its deadline, so it is never complete)
        complete = replay.source.at_end() and not summary.stopped and summary.accounted
    finally:
        replay.source.close()
    progress.show(summary.consumed, "done", force=True)
    progress.close()
    report = build_report(
        config=config,
        source=replay,
        summary=summary,
        pipeline=pipeline,
        governor=governor,
        recorder=recorder,
        dead_letters=dead_letters,
    )
    report["complete"] = complete
    if not complete:
        log.warning(
            "the replay is not complete (%s); the report covers part",
            "stopped by a signal"
            if summary.stopped
            else "stopped before the end of its source"
            if not replay.source.at_end()
            else f"accepted={summary.accepted} trained={summary.trained_examples}",
        )
    files = write_report(report, args.report)
    s = report["summary"]
    print(
        f"replayed events={s['events']} accepted={s['accepted']} "
        f"dead_lettered={s['dead_lettered']} steps={s['steps']} "
        f"gate_decisions={s['gate_decisions']} promotions={s['promotions']} "
        f"rollbacks={s['rollbacks']} drift_alarms={s['drift_alarms']} "
        f"prequential_accuracy baseline={summary.baseline_accuracy:.3f} "
        f"candidate={summary.candidate_accuracy:.3f} report={files[0]}"
    )
    return 0
