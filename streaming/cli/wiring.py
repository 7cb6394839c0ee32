"""Building the parts a verb runs from the configuration: learner, governor, settings, signals."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

from streaming.errors import FeedstepError

log = logging.getLogger("feedstep")


def setup_logging(verbose: bool) -> None:
    """Log to stderr, INFO (DEBUG with ``--verbose``); never user text."""
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


def build_learner(config: Any, model_name: str | None = None) -> Any:
    """The learner the configuration asks for, from ``model_name`` (default: ``config.model``)."""
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


def starting_model(config: Any) -> tuple[str, int | None]:
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


def build_governor(config: Any, learner: Any, sink: Any, metrics: Any) -> Any:
    """Drift monitors, the gate and the rollback watch, publishing to the store and Kafka."""
    from learner.store import ModelStore
    from monitors.gate import GateConfig
    from monitors.promql import PromQLCheck
    from monitors.rollback import RollbackConfig
    from streaming.promotion.governor import GovernanceSettings, Governor, load_holdout

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


def pipeline_settings(config: Any) -> Any:
    """The run loop's settings from the configuration."""
    from streaming.events import DecodeLimits
    from streaming.runtime.pipeline import PipelineSettings

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


def serve_metrics(metrics: Any, health: Any, port: int, host: str) -> Any:
    """Start the HTTP server of /metrics, /healthz and /readyz."""
    from monitors.server import MetricsServer

    server = MetricsServer(metrics.render, health, port=port, host=host).start()
    log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", host, server.port)
    return server


def install_signals(pipeline: Any) -> None:
    """SIGTERM and SIGINT ask the pipeline to stop (finish the step, checkpoint, commit)."""

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the step in flight, committing, leaving", signum)
        pipeline.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def summary_line(summary: Any) -> str:
    """The closing line of ``demo`` and ``run``."""
    return (
        f"events={summary.consumed} accepted={summary.accepted} dead_lettered={summary.rejected} "
        f"duplicates={summary.duplicates} trained={summary.trained_examples} steps={summary.steps} "
        f"skipped_steps={summary.skipped_steps} "
        f"prequential_accuracy baseline={summary.baseline_accuracy:.3f} "
        f"candidate={summary.candidate_accuracy:.3f} elapsed_s={summary.elapsed_s:.1f}"
    )
