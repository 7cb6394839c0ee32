"""Building the parts a verb runs from the configuration: learner, governor, settings, signals."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from streaming.config import FeedstepConfig
from streaming.errors import ConfigError, FeedstepError

log = logging.getLogger("feedstep")


def build_learner(
    config: FeedstepConfig, model_name: str | None = None, live: Any = None, lockstep: Any = None
) -> Any:
    """The learner of the ``learner`` and ``step`` sections (``model_name``: another model).

    ``lockstep`` (:class:`learner.distributed.Lockstep`): the ranks it trains with, or None.

    ``live`` is the store's LIVE version (:class:`learner.store.VersionInfo`) the learner
    starts from, when :func:`starting_model` found one: a ``lora`` version's adapter is loaded
    into both adapters over ``model_name``, its base.
    """
    from learner.models import ModelSpec, build_causal_lm, build_reward_model, select_device
    from learner.objectives import CAUSAL_LM, OBJECTIVES
    from learner.step import Learner, StepConfig
    from learner.store import StoreError, check_fits, read_state

    device = select_device(config.learner.device)
    spec = ModelSpec(model_name or config.learner.model, seed=config.learner.seed)
    options: dict[str, Any] = {"max_length": config.learner.max_length}
    if config.learner.objective in CAUSAL_LM:
        model, tokenizer = build_causal_lm(spec)
        if config.learner.objective in ("kto", "dpo"):
            options["beta"] = config.learner.beta
        if config.learner.objective == "kto":
            options["desirable_weight"] = config.learner.kto_desirable_weight
            options["undesirable_weight"] = config.learner.kto_undesirable_weight
    else:
        model, tokenizer = build_reward_model(spec)
        options["reference"] = config.learner.reward_reference
        options["reference_decay"] = config.learner.reward_reference_decay
        options["center"] = config.learner.reward_center
    learner = Learner(
        model,
        OBJECTIVES[config.learner.objective](tokenizer, **options),  # type: ignore[call-arg]
        StepConfig(**config.step.model_dump()),
        device=device,
        base={"name": spec.name, "seed": spec.seed},
        lockstep=lockstep,
    )
    if live is not None and live.kind == "lora":
        try:
            check_fits(live, config.step.trainable, learner.base)
        except StoreError as exc:
            raise FeedstepError(f"cannot start from LIVE: {exc}") from None
        learner.reset_to(read_state(live))
    log.info(
        "model=%s objective=%s device=%s trainable=%s parameters: %d trainable of %d",
        model_name or config.learner.model,
        config.learner.objective,
        device,
        config.step.trainable,
        learner.trainable_parameters,
        learner.total_parameters,
    )
    return learner


def starting_model(config: FeedstepConfig) -> tuple[str, Any]:
    """The model ``run`` starts from: the store's LIVE version when there is one, else --model.

    Returns the model name for :class:`learner.models.ModelSpec` (for a ``lora`` version, its
    base's) and the LIVE version's :class:`learner.store.VersionInfo` (or None); pass both to
    :func:`build_learner`. A LIVE version whose files fail their checksums is an error, never
    silently replaced, and so is one the configured learner cannot load.
    """
    from learner.store import ModelStore

    root = Path(config.promotion.store)
    if not root.is_dir():
        log.info(
            "model store %s does not exist yet; starting from --model %s",
            root,
            config.learner.model,
        )
        return config.learner.model, None
    store = ModelStore(root, create=False)
    live = store.live()
    if live is None:
        log.info(
            "model store %s has no LIVE version; starting from --model %s",
            root,
            config.learner.model,
        )
        return config.learner.model, None
    want = "reward_model" if config.learner.objective == "reward" else "pretrained"
    if live.model_type != want:
        raise FeedstepError(
            f"LIVE version {live.version} of {str(root)!r} is a {live.model_type!r} model, but the "
            f"{config.learner.objective!r} objective trains a {want!r} model; point --store "
            "elsewhere"
        )
    if (live.kind == "lora") != (config.step.trainable == "lora"):
        raise FeedstepError(
            f"LIVE version {live.version} of {str(root)!r} is of kind {live.kind!r} but "
            f"step.trainable is {config.step.trainable!r}; set step.trainable = "
            f"{'lora' if live.kind == 'lora' else 'full, head or bias'} (a store keeps one kind) "
            "or point --store elsewhere"
        )
    report = store.verify(live.version)
    if not report.ok:
        raise FeedstepError(
            f"LIVE version {live.version} of {str(root)!r} fails its checksums "
            f"({'; '.join(report.problems[:3])}); run `feedstep rollback` or "
            "`feedstep promote --version N` to make a sound version live"
        )
    log.info(
        "starting from LIVE version %d of model store %s (%s, published %s); --model %s not used",
        live.version,
        root,
        live.kind,
        live.created_at,
        config.learner.model,
    )
    if live.kind == "lora":
        return str((live.base or {}).get("name")), live
    return str(live.path), live


def build_governor(config: FeedstepConfig, learner: Any, sink: Any, metrics: Any) -> Any:
    """Drift monitors, the gate and the rollback watch, publishing to the store and Kafka."""
    from learner.store import ModelStore
    from monitors.gate import GateConfig
    from monitors.promql import PromQLCheck
    from monitors.rollback import RollbackConfig
    from streaming.promotion.governor import GovernanceSettings, Governor, load_holdout
    from streaming.promotion.notify import Notifier

    promotion = config.promotion
    gate = GateConfig(
        **config.gate.model_dump(exclude={"promql_checks"}),
        holdout_required=promotion.holdout_file is not None,
        promql=tuple(PromQLCheck(**check) for check in config.gate.promql_checks),
    )
    settings = GovernanceSettings(
        gate=gate,
        rollback=RollbackConfig(**config.rollback.model_dump()),
        **promotion.model_dump(exclude={"store", "holdout_file", "probe_file", *_NOTIFY_KEYS}),
    )
    holdout = (
        load_holdout(config.promotion.holdout_file, learner.objective)
        if config.promotion.holdout_file
        else None
    )
    probe = load_probe(config, learner)
    store = ModelStore(config.promotion.store) if config.promotion.publish else None
    governor = Governor(
        learner,
        store,
        sink if config.promotion.publish else None,
        metrics,
        settings,
        holdout=holdout,
        objective=config.learner.objective,
        notifier=Notifier(notify_settings(config), metrics),
        probe=probe,
    )
    had_live = governor.live_version is not None
    governor.ensure_initial_version(learner.objective.tokenizer)  # announces (hot-loads) v1
    if had_live:
        governor.hot_load_live()  # vLLM may have restarted, or LIVE moved while we were down
    log.info(
        "gate: min_events=%d alpha=%s min_effect=%s holdout=%s; publishing=%s to %s and %s",
        gate.min_events,
        gate.alpha,
        gate.min_effect,
        config.promotion.holdout_file or "none",
        config.promotion.publish,
        config.promotion.store,
        config.promotion.updates_topic,
    )
    if probe is None:
        log.info("gate: probe_kl check off (no probe_file)")
    else:
        log.info(
            "gate: probe_kl on %d probes of %s, measured every %d steps, max_probe_kl=%s",
            len(probe),
            promotion.probe_file,
            promotion.probe_every_steps,
            config.gate.max_probe_kl,
        )
    if governor.notifier.targets:
        log.info(
            "switches are also announced to %s, from a thread of their own (retried with backoff "
            "up to %s s)",
            " and ".join(governor.notifier.targets),
            config.promotion.notify_backoff_max_s,
        )
    return governor


def load_probe(config: FeedstepConfig, learner: Any) -> Any:
    """The probe set of ``probe_file``, tokenized for the learner (None when unset).

    Raises:
        ConfigError: the file is missing, empty or invalid, or the objective has no probe.
    """
    from learner.probe import Probe, ProbeError

    path = config.promotion.probe_file
    if path is None:
        return None
    try:
        return Probe.from_file(path, learner.objective)
    except ProbeError as exc:
        raise ConfigError(f"probe_file: {exc}") from None


_NOTIFY_KEYS = (
    "vllm_url",
    "vllm_adapter_name",
    "vllm_api_key",
    "notify_timeout_s",
    "notify_backoff_max_s",
)
"""The ``promotion`` keys of :func:`notify_settings`, not of the governor's own settings."""


def notify_settings(config: FeedstepConfig) -> Any:
    """The webhook and vLLM targets of the ``promotion`` section; none in a dry run."""
    from streaming.promotion.notify import NotifySettings

    p = config.promotion
    if not p.publish:  # nothing switches, so nothing is announced
        return NotifySettings()
    return NotifySettings(
        webhook_url=p.webhook_url,
        vllm_url=p.vllm_url,
        vllm_adapter_name=p.vllm_adapter_name,
        vllm_api_key=p.vllm_api_key.get_secret_value() if p.vllm_api_key else None,
        timeout_s=p.notify_timeout_s,
        backoff_max_s=p.notify_backoff_max_s,
    )


def serve_metrics(metrics: Any, health: Any, port: int, host: str) -> Any:
    """Start the HTTP server of /metrics, /healthz and /readyz."""
    from monitors.server import MetricsServer

    server = MetricsServer(metrics.render, health, port=port, host=host).start()
    log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", host, server.port)
    return server


def install_signals(
    pipeline: Any, doing: str = "finishing the step in flight, committing, leaving"
) -> None:
    """SIGTERM and SIGINT ask the pipeline (or anything with ``stop()``) to stop.

    ``doing`` is what the log line says happens next (the pipeline finishes the step,
    checkpoints and commits; a follower finishes a load in progress).
    """

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: %s", signum, doing)
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
