"""The ``feedstep`` command line.

Verbs: ``demo``, ``run`` and ``produce`` run and feed the sidecar; ``record`` dumps a topic range
to JSONL and ``replay`` runs the pipeline over a recording as a dry run with a report;
``status``, ``promote`` and ``rollback`` read and switch the model store (:mod:`learner.store`).

Every long job shows progress on stderr. User text never reaches the logs. Errors print one line,
``feedstep: error: ...``, on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import getpass
import gzip
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from learner.store import StoreError
from streaming.errors import FeedstepError

log = logging.getLogger("feedstep")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


class Progress:
    """A one-line progress report on stderr (rewritten in place on a terminal)."""

    def __init__(self, total: int | None, label: str, every_s: float = 1.0) -> None:
        self.total = total
        self.label = label
        self.every_s = every_s
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def show(self, done: int, extra: str = "", force: bool = False) -> None:
        """Print ``done`` (of total) at most once per ``every_s`` unless forced."""
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        of = f"/{self.total}" if self.total else ""
        pct = f" {100 * done / self.total:5.1f}%" if self.total else ""
        line = f"{self.label}: {done}{of}{pct} {extra}"
        if self._tty:
            sys.stderr.write("\r\x1b[2K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """End the in-place line."""
        if self._tty:
            sys.stderr.write("\n")


def _build_learner(config: Any, model_name: str | None = None) -> Any:
    from learner.models import ModelSpec, build_causal_lm, build_reward_model, select_device
    from learner.objectives import CAUSAL_LM, OBJECTIVES
    from learner.step import Learner, StepConfig

    device = select_device(config.device)
    spec = ModelSpec(model_name or config.model, seed=config.seed)
    options: dict[str, Any] = {"max_length": config.max_length}
    if config.objective in CAUSAL_LM:
        model, tokenizer = build_causal_lm(spec)
        if config.objective in ("kto", "dpo"):
            options["beta"] = config.beta
        if config.objective == "kto":
            options["desirable_weight"] = config.kto_desirable_weight
            options["undesirable_weight"] = config.kto_undesirable_weight
    else:
        model, tokenizer = build_reward_model(spec)
    learner = Learner(
        model,
        OBJECTIVES[config.objective](tokenizer, **options),  # type: ignore[call-arg]
        StepConfig(
            lr=config.lr,
            weight_decay=config.weight_decay,
            l2sp_weight=config.l2sp_weight,
            ewc_weight=config.ewc_weight,
            ewc_decay=config.ewc_decay,
            max_grad_norm=config.max_grad_norm,
            max_update_norm=config.max_update_norm,
            warmup_steps=config.warmup_steps,
            cosine_decay_steps=config.cosine_decay_steps,
            min_lr=config.min_lr,
            trainable=config.trainable,
            lora_r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_target_modules=tuple(config.lora_target_modules or ()),
            compile=config.compile,
        ),
        device=device,
    )
    log.info(
        "model=%s objective=%s device=%s trainable=%s parameters: %d trainable of %d",
        model_name or config.model,
        config.objective,
        device,
        config.trainable,
        learner.trainable_parameters,
        learner.total_parameters,
    )
    return learner


def _starting_model(config: Any) -> tuple[str, int | None]:
    """The model ``run`` starts from: the store's LIVE version when there is one, else --model.

    Returns the model name for :class:`learner.models.ModelSpec` and the live version (or None).
    A LIVE version whose files fail their checksums is an error, never silently replaced.
    """
    from learner.store import ModelStore

    root = Path(config.store)
    if not root.is_dir():
        log.info("model store %s does not exist yet; starting from --model %s", root, config.model)
        return config.model, None
    store = ModelStore(root, create=False)
    live = store.live()
    if live is None:
        log.info("model store %s has no LIVE version; starting from --model %s", root, config.model)
        return config.model, None
    want = "reward_model" if config.objective == "reward" else "pretrained"
    if live.model_type != want:
        raise FeedstepError(
            f"LIVE version {live.version} of {str(root)!r} is a {live.model_type!r} model, but the "
            f"{config.objective!r} objective trains a {want!r} model; point --store elsewhere"
        )
    report = store.verify(live.version)
    if not report.ok:
        raise FeedstepError(
            f"LIVE version {live.version} of {str(root)!r} fails its checksums "
            f"({'; '.join(report.problems[:3])}); run `feedstep rollback` or "
            "`feedstep promote --version N` to make a sound version live"
        )
    log.info(
        "starting from LIVE version %d of model store %s (published %s); --model %s not used",
        live.version,
        root,
        live.created_at,
        config.model,
    )
    return str(live.path), live.version


def _build_governor(config: Any, learner: Any, sink: Any, metrics: Any) -> Any:
    """Drift monitors, the gate and the rollback watch, publishing to the store and Kafka."""
    from learner.store import ModelStore
    from monitors.gate import GateConfig
    from monitors.promql import PromQLCheck
    from monitors.rollback import RollbackConfig
    from streaming.governance import GovernanceSettings, Governor, load_holdout

    gate = GateConfig(
        min_events=config.gate_min_events,
        min_effect=config.gate_min_effect,
        alpha=config.gate_alpha,
        holdout_tolerance=config.holdout_tolerance,
        holdout_required=config.holdout_file is not None,
        drift_quiet_events=config.drift_quiet_events,
        max_param_distance=config.max_param_distance,
        promql=tuple(PromQLCheck(**check) for check in config.promql_checks),
        prometheus_url=config.prometheus_url,
    )
    settings = GovernanceSettings(
        gate=gate,
        rollback=RollbackConfig(
            alpha=config.rollback_alpha, watch_events=config.rollback_watch_events
        ),
        drift_detector=config.drift_detector,
        updates_topic=config.updates_topic,
        publish=config.publish,
        webhook_url=config.webhook_url,
        holdout_every_steps=config.holdout_every_steps,
    )
    holdout = load_holdout(config.holdout_file, learner.objective) if config.holdout_file else None
    store = ModelStore(config.store) if config.publish else None
    governor = Governor(
        learner,
        store,
        sink if config.publish else None,
        metrics,
        settings,
        holdout=holdout,
        objective=config.objective,
    )
    governor.ensure_initial_version(learner.objective.tokenizer)
    log.info(
        "gate: min_events=%d alpha=%s min_effect=%s holdout=%s; publishing=%s to %s and %s",
        gate.min_events,
        gate.alpha,
        gate.min_effect,
        config.holdout_file or "none",
        config.publish,
        config.store,
        config.updates_topic,
    )
    return governor


def _pipeline_settings(config: Any) -> Any:
    from streaming.events import DecodeLimits
    from streaming.pipeline import PipelineSettings

    return PipelineSettings(
        batch_size=config.batch_size,
        max_wait_ms=config.max_wait_ms,
        dead_letter_topic=config.dlq_topic,
        dedup_window=config.dedup_window,
        dedup_prime_records=config.dedup_prime_records,
        limits=DecodeLimits(
            max_text_chars=config.max_text_chars, max_event_bytes=config.max_event_bytes
        ),
        prequential_window=config.prequential_window,
        stop_after_events=config.stop_after_events,
        stop_when_idle_s=config.stop_when_idle_s,
        log_every_s=config.log_every_s,
        checkpoint_every_steps=max(1, config.checkpoint_every_steps),
        checkpoint_every_s=config.checkpoint_every_s,
        shutdown_timeout_s=config.shutdown_timeout_s,
    )


def _serve_metrics(metrics: Any, health: Any, port: int, host: str) -> Any:
    from monitors.server import MetricsServer

    server = MetricsServer(metrics.render, health, port=port, host=host).start()
    log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", host, server.port)
    return server


def _install_signals(pipeline: Any) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the step in flight, committing, leaving", signum)
        pipeline.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _summary_line(summary: Any) -> str:
    return (
        f"events={summary.consumed} accepted={summary.accepted} dead_lettered={summary.rejected} "
        f"duplicates={summary.duplicates} trained={summary.trained_examples} steps={summary.steps} "
        f"skipped_steps={summary.skipped_steps} "
        f"prequential_accuracy baseline={summary.baseline_accuracy:.3f} "
        f"candidate={summary.candidate_accuracy:.3f} elapsed_s={summary.elapsed_s:.1f}"
    )


# -- verbs ------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole pipeline on the built-in simulated stream; no broker, no download."""
    from monitors.metrics import Metrics
    from monitors.server import HealthState
    from streaming.config import load_config
    from streaming.pipeline import Pipeline
    from streaming.simulate import SimulatedFeedback
    from streaming.testing import MemorySink, MemorySource

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
    learner = _build_learner(config)
    metrics, health = Metrics(), HealthState()
    server = None
    if args.metrics_port is not None:
        server = _serve_metrics(metrics, health, args.metrics_port, "127.0.0.1")
    progress = Progress(len(payloads), "demo events")
    pipeline = Pipeline(
        source,
        dead_letters,
        learner,
        metrics,
        _pipeline_settings(config),
        health,
        on_progress=lambda s: progress.show(
            s.consumed,
            f"steps={s.steps} preq_acc baseline={s.baseline_accuracy:.3f} "
            f"candidate={s.candidate_accuracy:.3f}",
        ),
    )
    _install_signals(pipeline)
    summary = pipeline.run()
    progress.close()
    if server is not None:
        server.stop()
    last = pipeline.prequential.snapshot()
    print(_summary_line(summary))
    print(
        f"last {min(last.events, config.prequential_window)} events: prequential accuracy "
        f"baseline={last.baseline_accuracy:.3f} candidate={last.candidate_accuracy:.3f}; "
        f"loss baseline={last.baseline_loss:.3f} candidate={last.candidate_loss:.3f}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The sidecar against Kafka."""
    from monitors.metrics import Metrics
    from monitors.server import HealthState
    from streaming.config import load_config
    from streaming.kafka import KafkaSink, KafkaSource
    from streaming.pipeline import Pipeline

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
    model_name, live_version = _starting_model(config)  # a broken store fails before any I/O
    metrics, health = Metrics(), HealthState()
    health.set_ready(False, "loading model")
    server = _serve_metrics(metrics, health, config.metrics_port, config.metrics_host)
    try:
        learner = _build_learner(config, model_name)
        metrics.parameters.labels(kind="trainable").set(learner.trainable_parameters)
        metrics.parameters.labels(kind="total").set(learner.total_parameters)
        metrics.model_info.info(
            {
                "model": config.model if live_version is None else "store",
                "version": "" if live_version is None else str(live_version),
                "objective": config.objective,
                "device": str(learner.device),
            }
        )
        health.set_ready(False, "connecting to Kafka")
        source = KafkaSource(config)
        sink = KafkaSink(config)
        log.info(
            "consuming %s as group %s from %s; rejects go to %s",
            config.topic,
            config.group_id,
            config.bootstrap_servers,
            config.dlq_topic,
        )
        governor = _build_governor(config, learner, sink, metrics)
        checkpoints = None
        if config.checkpoint_every_steps > 0:
            from learner.checkpoint import CheckpointManager

            directory = config.checkpoint_dir or str(Path(config.store) / "checkpoints")
            checkpoints = CheckpointManager(directory, keep=config.checkpoint_keep)
        pipeline = Pipeline(
            source,
            sink,
            learner,
            metrics,
            _pipeline_settings(config),
            health,
            governor=governor,
            checkpoints=checkpoints,
        )
        pipeline.restore()
        _install_signals(pipeline)
        try:
            summary = pipeline.run()
        finally:
            sink.close()
            source.close()
        print(_summary_line(summary))
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


def _plain_messages(
    path: Path, key_field: str | None
) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]], int | None]]:
    """(key, value, headers, timestamp) of each line of a plain events file, in file order."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for line in fh:
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            key = None
            if key_field:
                try:
                    obj = json.loads(raw)
                    value = obj.get(key_field) if isinstance(obj, dict) else None
                    key = str(value).encode() if value is not None else None
                except ValueError:  # sent as it is: the sidecar dead-letters it
                    key = None
            yield key, raw, [], None


def cmd_produce(args: argparse.Namespace) -> int:
    """Write events or a recording to a topic, keyed, in order per key, optionally paced."""
    from streaming.config import load_config
    from streaming.kafka import KafkaSink
    from streaming.recording import Pacer, file_format, read_recording, time_ordered

    config = load_config(args.config, {"bootstrap_servers": args.bootstrap_servers})
    path = Path(args.file)
    if not path.is_file():
        raise FeedstepError(
            f"no such file {str(path)!r}; pass a JSONL file of events or a recording from "
            "`feedstep record`"
        )
    pacer = Pacer(rate=args.rate, speed=args.speed)
    recording = file_format(path) == "recording"
    if args.speed is not None and not recording:
        raise FeedstepError(
            f"--speed replays the gaps between recorded timestamps, but {str(path)!r} holds "
            "plain events without them; record the topic with `feedstep record`, or pace with "
            "--rate EVENTS_PER_S"
        )
    messages: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int | None]]
    if recording:
        records: Iterable[Any] = read_recording(path)
        if args.speed is not None:
            records = time_ordered(records)
        messages = ((r.key, r.value, list(r.headers), r.timestamp_ms) for r in records)
    else:
        messages = _plain_messages(path, args.key_field)
    sink = KafkaSink(config, ordered=True)
    progress = Progress(None, f"produced to {args.topic}")
    sent = 0
    try:
        for key, value, headers, timestamp_ms in messages:
            pacer.wait(timestamp_ms)
            # A recorded tombstone (no value) is sent as one: kafka-python accepts None.
            sink.send(args.topic, cast(bytes, value), key=key, headers=headers)
            sent += 1
            if sent % 1000 == 0:
                sink.flush()  # bounds the delivery futures held, and surfaces errors early
            progress.show(sent)
    finally:
        sink.close()
    progress.show(sent, "done", force=True)
    progress.close()
    mode = (
        f" rate={args.rate:g}/s" if args.rate else (f" speed={args.speed:g}x" if args.speed else "")
    )
    print(
        f"produced={sent} topic={args.topic} format={'recording' if recording else 'events'}{mode}"
    )
    return 0


def _partitions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        parts = []
    if not parts or any(p < 0 for p in parts):
        raise FeedstepError(
            f"--partitions {text!r} must be a comma-separated list of partition numbers, e.g. 0,2"
        )
    return parts


def _range_options(args: argparse.Namespace) -> dict[str, Any]:
    from streaming.recording import parse_time_ms

    return {
        "partitions": _partitions(args.partitions),
        "from_offset": args.from_offset,
        "from_time_ms": parse_time_ms(args.from_time, "from-time") if args.from_time else None,
        "to_time_ms": parse_time_ms(args.to_time, "to-time") if args.to_time else None,
    }


def cmd_record(args: argparse.Namespace) -> int:
    """Dump a range of a topic to JSONL (assign mode: no group, nothing committed)."""
    from streaming.config import load_config
    from streaming.errors import SourceError
    from streaming.recording import encode_record
    from streaming.topicrange import TopicRangeSource

    config = load_config(args.config, {"bootstrap_servers": args.bootstrap_servers})
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FeedstepError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    source = TopicRangeSource(config, args.topic, **_range_options(args))
    tmp = out.with_name(f".{out.name}.part")
    progress = Progress(source.total or None, f"recorded from {args.topic}")
    written = 0
    done = False
    try:
        opener = gzip.open if out.suffix == ".gz" else open
        with opener(tmp, "wb") as fh:
            last = time.monotonic()
            while not source.at_end():
                records = source.poll(1.0)
                now = time.monotonic()
                if records:
                    last = now
                elif now - last > args.idle_timeout_s:
                    raise SourceError(
                        f"no records from {args.topic} for {args.idle_timeout_s:g} s before the "
                        f"end offsets taken at start ({source.lag()} left); is the broker up? "
                        "Rerun, or raise --idle-timeout-s"
                    )
                for record in records:
                    fh.write(encode_record(record).encode("utf-8") + b"\n")
                written += len(records)
                progress.show(written)
        tmp.replace(out)
        done = True
    finally:
        source.close()
        if not done:
            tmp.unlink(missing_ok=True)
    progress.show(written, "done", force=True)
    progress.close()
    parts = ",".join(str(p) for p in source.partitions)
    print(f"recorded={written} topic={args.topic} partitions={parts} out={out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """The real pipeline over a file or a topic range, publishing off, with a report."""
    import dataclasses

    from monitors.metrics import Metrics
    from streaming.config import load_config
    from streaming.pipeline import Pipeline
    from streaming.replay import (
        DiscardSink,
        ReplayRecorder,
        build_report,
        open_replay_source,
        write_report,
    )

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
    model_name = _starting_model(config)[0] if args.store else config.model
    # The source first: a wrong SOURCE or range fails before minutes of model loading.
    replay = open_replay_source(args.source, config, **_range_options(args))
    try:
        learner = _build_learner(config, model_name)
        metrics = Metrics()
        governor = _build_governor(config, learner, None, metrics)
        recorder = ReplayRecorder()
        recorder.attach(governor)
        dead_letters = DiscardSink()
        progress = Progress(replay.total, "replayed")
        settings = dataclasses.replace(
            _pipeline_settings(config),
            max_wait_ms=1e9,  # batches close by count only: a replay reads as fast as it can
            stop_when_idle_s=config.stop_when_idle_s or 60.0,  # a topic range that stalls ends
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
        _install_signals(pipeline)
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


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = os.environ.get("HOSTNAME", "unknown")
    return f"cli:{user}"


def _open_store(args: argparse.Namespace) -> Any:
    from learner.store import ModelStore
    from streaming.config import load_config

    root = args.store or load_config(args.config).store
    return ModelStore(root, create=False)


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in sorted(metrics.items()):
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts) or "-"


def _fmt_switch(s: Any) -> str:
    origin = "none" if s.from_version is None else str(s.from_version)
    return (
        f"  #{s.seq:<3} {s.at}  {s.action:<8} {origin:>4} -> {s.to_version:<4} "
        f"by {s.actor}: {s.reason}"
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Print the LIVE version, every version, and the last switches of a model store."""
    store = _open_store(args)
    live = store.live_version()
    versions = store.versions()
    history = store.history()
    reports = {v.version: store.verify(v.version) for v in versions} if args.verify else {}
    shown = history[len(history) - args.history :] if args.history > 0 else []
    if args.json:
        print(
            json.dumps(
                {
                    "store": str(store.root),
                    "live": live,
                    "versions": [
                        {
                            "version": v.version,
                            "parent": v.parent,
                            "created_at": v.created_at,
                            "kind": v.kind,
                            "model_type": v.model_type,
                            "objective": v.objective,
                            "metrics": v.metrics,
                            "reason": v.reason,
                            "path": str(v.path),
                            **(
                                {"problems": list(reports[v.version].problems)}
                                if v.version in reports
                                else {}
                            ),
                        }
                        for v in versions
                    ],
                    "history": [s.to_json() for s in shown],
                },
                indent=2,
            )
        )
    else:
        print(f"store {store.root}")
        if live is None:
            print("LIVE: none (make a version live with `feedstep promote --version N`)")
        else:
            print(f"LIVE: version {live}")
        if history and history[-1].to_version != live:
            print(
                f"warning: the last recorded switch (#{history[-1].seq}) went to version "
                f"{history[-1].to_version} but LIVE is {live}: a switch was interrupted; the next "
                "promote or rollback completes it"
            )
        print(f"versions: {len(versions) or 'none'}")
        if versions:
            check = "  check  " if args.verify else "  "
            print(
                f"    {'version':>7}  {'parent':>6}  {'created_at':<24}  {'objective':<9}"
                f"{check}metrics / reason"
            )
        for v in reversed(versions):
            mark = "*" if v.version == live else " "
            parent = "-" if v.parent is None else str(v.parent)
            state = ""
            if args.verify:
                state = "  ok     " if reports[v.version].ok else "  CORRUPT"
            print(
                f"  {mark} {v.version:>7}  {parent:>6}  {v.created_at:<24}  {v.objective:<9}"
                f"{state or '  '}{_fmt_metrics(v.metrics)} / {v.reason}"
            )
            for problem in reports[v.version].problems if args.verify else ():
                print(f"              {problem}")
        print(f"last switches: {len(shown)} of {len(history)}")
        for s in shown:
            print(_fmt_switch(s))
    return 1 if any(not r.ok for r in reports.values()) else 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Make a version live by hand (recorded as ``manual`` in the store's history)."""
    store = _open_store(args)
    switch = store.promote(args.version, reason=args.reason, actor=_actor(args), manual=True)
    print("LIVE:", _fmt_switch(switch).strip())
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Put back the version that was live before the last promotion."""
    store = _open_store(args)
    switch = store.rollback(reason=args.reason, actor=_actor(args))
    print("LIVE:", _fmt_switch(switch).strip())
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="feedstep",
        description="Online-learning sidecar: Kafka feedback in, one regularized step per "
        "micro-batch, Prometheus metrics out.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True)

    demo = sub.add_parser("demo", help="run the pipeline on a built-in simulated stream")
    demo.add_argument("--events", type=int, default=1000, help="simulated events (default 1000)")
    demo.add_argument("--metrics-port", type=int, default=None, help="serve /metrics while running")
    demo.add_argument("--model", default=None, help="minilm (default), tiny, or a local folder")
    demo.add_argument("--batch-size", type=int, default=None)
    demo.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5)")
    demo.add_argument("--noise", type=float, default=0.1, help="share of flipped labels")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    demo.add_argument("--config", default=None, help="TOML or YAML config file")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the sidecar against a Kafka topic")
    run.add_argument("--config", default=None, help="TOML or YAML config file ($FEEDSTEP_CONFIG)")
    run.add_argument("--bootstrap-servers", default=None, help="host:port[,host:port]")
    run.add_argument("--topic", default=None, help="feedback topic (default 'feedback')")
    run.add_argument("--group-id", default=None, help="consumer group (default 'feedstep')")
    run.add_argument("--model", default=None, help="minilm (default), tiny, or a local folder")
    run.add_argument("--batch-size", type=int, default=None, help="events per step (default 16)")
    run.add_argument("--max-wait-ms", type=int, default=None, help="close a partial batch after")
    run.add_argument("--metrics-port", type=int, default=None, help="default 9108; 0 = any free")
    run.add_argument("--stop-after-events", type=int, default=None, help="end after N records")
    run.add_argument("--stop-when-idle-s", type=float, default=None, help="end after S idle secs")
    run.add_argument("--device", default=None)
    run.add_argument("--lr", type=float, default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument(
        "--store",
        default=None,
        help="model store; its LIVE version is the starting model "
        "when there is one (default ./feedstep-store)",
    )
    run.set_defaults(func=cmd_run)

    produce = sub.add_parser(
        "produce", help="write events or a recording (JSONL) to a topic, keyed, paced"
    )
    produce.add_argument(
        "file", help="JSONL: one event per line, or a recording from `feedstep record` (.gz ok)"
    )
    produce.add_argument("--topic", required=True)
    produce.add_argument("--bootstrap-servers", default=None)
    produce.add_argument(
        "--key-field",
        default="conversation_id",
        help="event field used as key for plain events (a recording keeps its keys)",
    )
    pace = produce.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="events per second (fixed pace)")
    pace.add_argument(
        "--speed",
        type=float,
        default=None,
        help="replay a recording's timestamp gaps divided by FACTOR (2 = twice as fast)",
    )
    produce.add_argument("--config", default=None)
    produce.set_defaults(func=cmd_produce)

    def range_flags(p: argparse.ArgumentParser) -> None:
        start = p.add_mutually_exclusive_group()
        start.add_argument(
            "--from-offset", type=int, default=None, help="start offset in every partition"
        )
        start.add_argument(
            "--from-time", default=None, help="start at this time (RFC 3339 or epoch ms)"
        )
        p.add_argument(
            "--to-time",
            default=None,
            help="stop before the first record at or after this time (default: the end offsets "
            "at start)",
        )
        p.add_argument("--partitions", default=None, help="e.g. 0,2 (default: all)")
        p.add_argument("--bootstrap-servers", default=None)
        p.add_argument("--config", default=None)

    record = sub.add_parser("record", help="dump a topic range to JSONL (no group, no commits)")
    record.add_argument("--topic", required=True)
    record.add_argument("--out", required=True, help="FILE.jsonl (.gz compresses)")
    record.add_argument(
        "--idle-timeout-s", type=float, default=60.0, help="fail after this long without records"
    )
    range_flags(record)
    record.set_defaults(func=cmd_record)

    replay = sub.add_parser(
        "replay", help="dry-run the learner, monitors and gate over a recording; write a report"
    )
    replay.add_argument(
        "source", help="a JSONL file (events or a recording), or kafka:TOPIC for a topic range"
    )
    replay.add_argument("--report", required=True, help="folder for report.json and the plots")
    range_flags(replay)
    replay.add_argument("--model", default=None, help="minilm (default), tiny, or a local folder")
    replay.add_argument(
        "--store",
        default=None,
        help="start from this model store's LIVE version (read only; default: --model)",
    )
    replay.add_argument("--batch-size", type=int, default=None)
    replay.add_argument("--lr", type=float, default=None)
    replay.add_argument("--seed", type=int, default=None)
    replay.add_argument("--device", default=None)
    replay.add_argument("--gate-min-events", type=int, default=None)
    replay.add_argument("--gate-min-effect", type=float, default=None)
    replay.add_argument("--gate-alpha", type=float, default=None)
    replay.add_argument("--drift-quiet-events", type=int, default=None)
    replay.add_argument("--stop-after-events", type=int, default=None, help="replay N at most")
    replay.set_defaults(func=cmd_replay)

    store_help = "model store directory (default: the config's store, ./feedstep-store)"
    status = sub.add_parser("status", help="show the model store: LIVE, versions, switches")
    status.add_argument("--store", default=None, help=store_help)
    status.add_argument("--config", default=None)
    status.add_argument("--history", type=int, default=10, help="switches to show (default 10)")
    status.add_argument(
        "--verify", action="store_true", help="check every version's sha256 (exit 1 if corrupt)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)

    promote = sub.add_parser(
        "promote", help="make a version LIVE by hand (recorded as 'manual' in the history)"
    )
    promote.add_argument("--version", type=int, required=True, help="the version to make LIVE")
    promote.add_argument("--store", default=None, help=store_help)
    promote.add_argument("--config", default=None)
    promote.add_argument("--reason", default="promoted by hand", help="why, for the audit trail")
    promote.add_argument("--actor", default=None, help="who (default cli:<user name>)")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser(
        "rollback", help="put back the version that was LIVE before the last promotion"
    )
    rollback.add_argument("--store", default=None, help=store_help)
    rollback.add_argument("--config", default=None)
    rollback.add_argument("--reason", default="rolled back by hand", help="why, for the audit")
    rollback.add_argument("--actor", default=None, help="who (default cli:<user name>)")
    rollback.set_defaults(func=cmd_rollback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``feedstep`` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except (FeedstepError, StoreError, ValueError, FileNotFoundError) as exc:
        print(f"feedstep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
