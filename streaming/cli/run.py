"""``feedstep run``: the sidecar against Kafka."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from streaming.cli.wiring import (
    build_governor,
    build_learner,
    install_signals,
    serve_metrics,
    starting_model,
    summary_line,
)

log = logging.getLogger("feedstep")


def cmd_run(args: argparse.Namespace) -> int:
    """The sidecar against Kafka."""
    from monitors.metrics import Metrics
    from monitors.server import HealthState
    from streaming.config import load_config
    from streaming.kafka import KafkaSink, KafkaSource
    from streaming.runtime.pipeline import Pipeline, PipelineSettings
    from streaming.serve import attach_scorer

    overrides = {
        key: getattr(args, key)
        for key in (
            "bootstrap_servers",
            "topic",
            "group_id",
            "model",
            "batch_size",
            "max_wait_ms",
            "metrics_port",
            "stop_after_events",
            "stop_when_idle_s",
            "device",
            "lr",
            "seed",
            "store",
        )
    }
    config = load_config(args.config, overrides)
    model_name, live = starting_model(config)  # a broken store fails before any I/O
    live_version = live.version if live is not None else None
    lockstep = _join(config) if args.distributed else None
    leader = lockstep is None or lockstep.leader
    port = config.metrics.port
    if lockstep is not None and port:  # ranks on one machine: one port each
        port += int(os.environ.get("LOCAL_RANK", "0"))
    metrics, health = Metrics(), HealthState()
    health.set_ready(False, "loading model")
    server = serve_metrics(metrics, health, port, config.metrics.host)
    try:
        learner = build_learner(config, model_name, live, lockstep)
        metrics.parameters.labels(kind="trainable").set(learner.trainable_parameters)
        metrics.parameters.labels(kind="total").set(learner.total_parameters)
        metrics.model_info.info(
            {
                "model": config.learner.model if live_version is None else "store",
                "version": "" if live_version is None else str(live_version),
                "objective": config.learner.objective,
                "device": str(learner.device),
            }
        )
        health.set_ready(False, "connecting to Kafka")
        share = None
        if lockstep is not None:
            from learner.distributed import partitions_of

            rank, world = lockstep.rank, lockstep.world

            def share(partitions: list[int]) -> list[int]:
                return partitions_of(rank, world, partitions)

        source = KafkaSource(config.kafka, share=share)
        sink = KafkaSink(config.kafka)
        log.info(
            "consuming %s as group %s from %s; rejects go to %s",
            config.kafka.topic,
            config.kafka.group_id,
            config.kafka.bootstrap_servers,
            config.kafka.dlq_topic,
        )
        # In lockstep only rank 0 decides, publishes, announces and serves /v1/score.
        governor = build_governor(config, learner, sink, metrics) if leader else None
        if governor is not None:
            attach_scorer(server, config, learner, governor, metrics)
        checkpoints = None
        if config.checkpoints.every_steps > 0:
            from learner.checkpoint import CheckpointManager

            directory = config.checkpoints.dir or str(Path(config.promotion.store) / "checkpoints")
            checkpoints = CheckpointManager(directory, keep=config.checkpoints.keep)
        pipeline = Pipeline(
            source,
            sink,
            learner,
            metrics,
            PipelineSettings.from_config(config),
            health,
            governor=governor,
            checkpoints=checkpoints,
        )
        pipeline.restore()
        install_signals(pipeline)
        try:
            summary = pipeline.run()
        finally:
            if governor is not None:
                governor.close(config.promotion.notify_timeout_s)  # webhook/vLLM still waiting
            sink.close()
            source.close()
        print(summary_line(summary))
    finally:
        server.stop()
    if summary.commit_pending:
        print(
            "feedstep: error: offsets could not be committed before exit (broker unreachable); "
            "the last checkpoint covers them, restart with the same --store",
            file=sys.stderr,
        )
        return 1
    return 0


def _join(config: Any) -> Any:
    """Join torchrun's group (``--distributed``): gloo on CPUs, NCCL on GPUs."""
    from learner.distributed import Lockstep
    from learner.models import select_device

    lockstep = Lockstep.from_env(device=select_device(config.learner.device))
    log.info("rank %d of %d (lockstep)", lockstep.rank, lockstep.world)
    return lockstep
