"""Every Prometheus metric feedstep exports, declared once, in this module.

Names start with ``feedstep_`` and carry their unit (``_seconds``, ``_bytes``, ``_total``).
Labels are bounded: outcomes, reasons and model roles are fixed vocabularies; ``topic`` and
``partition`` are bounded by the topics the sidecar is configured to read. No user text, event
id or tenant ever becomes a label.

Each :class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry`, so tests and
several pipelines in one process never collide.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

if TYPE_CHECKING:
    from monitors.decision import GateDecision, RollbackDecision

EVENT_OUTCOMES = ("accepted", "rejected", "duplicate")
MODELS = ("baseline", "candidate")
CHECK_STATES = ("pass", "fail", "inconclusive")
GATE_CHECKS = (
    "min_events",
    "sequential_test",
    "holdout",
    "drift_quiet",
    "param_distance",
    "probe_kl",
)
"""The gate's built-in checks; PromQL checks add ``promql_<name>`` (names come from config)."""
PROMOTION_REASONS = ("gate", "manual")
ROLLBACK_REASONS = ("degradation", "drift", "manual")
SKIP_REASONS = ("non_finite_loss", "non_finite_gradient")
"""Why the learner's guard skips a step; created at 0 so rate() sees the first skip."""
EVICTION_REASONS = ("window", "capacity", "rebalance")
"""Why the pair miner drops an unpaired event; created at 0 like the skip reasons."""
SCORE_STATUSES = (200, 400, 405, 409, 411, 413, 500, 503)
"""Status codes ``POST /v1/score`` answers with (the ``status`` label; any other is ``other``)."""
SWITCH_TRIGGERS = ("start", "poll", "update")
"""What made a follower switch versions: its first load, a read of LIVE, a model-updates message."""
LOAD_FAILURES = ("missing", "unsupported", "corrupt", "error")
"""Why a follower refused a LIVE version: not in the store (yet), a kind or model type it does not
serve, files that fail their sha256, or a load or check that failed."""
NOTIFY_TARGETS = ("webhook", "vllm")
"""Where the governor's notifications go: ``webhook_url`` and vLLM's ``/v1/load_lora_adapter``."""
NOTIFY_OUTCOMES = ("ok", "error", "superseded", "dropped")
"""``ok`` / ``error``: one delivery attempt (an error is retried); ``superseded``: a notification
replaced by a newer one for the same target before it was delivered; ``dropped``: given up at
shutdown."""
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _PerRecordCounter(Counter):
    """A labelled Counter that remembers its children: ``labels(...)`` once per event is cheap.

    prometheus_client validates and stringifies the label values on every ``labels`` call;
    the counters touched once per record (events, dead letters, truncations) look their child
    up in a dict keyed by the call's own arguments instead. Label vocabularies are bounded, so
    the cache is too; ``remove`` and ``clear`` empty it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children: dict[tuple[Any, ...], _PerRecordCounter] = {}

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> _PerRecordCounter:
        """The child for these label values (cached after the first call)."""
        key = (*labelvalues, *labelkwargs.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = super().labels(*labelvalues, **labelkwargs)
        return child

    def remove(self, *labelvalues: Any) -> None:
        """Remove a child and forget every cached one."""
        self._children.clear()
        super().remove(*labelvalues)

    def clear(self) -> None:
        """Remove every child and forget the cached ones."""
        self._children.clear()
        super().clear()


class _BatchHistogram(Histogram):
    """A Histogram that also takes a batch of observations at once (:meth:`observe_many`).

    ``observe`` takes two locks per value (the sum and one bucket); a micro-batch observes one
    latency per event, so :meth:`observe_many` counts the batch's buckets first and then
    takes one lock per bucket touched, plus two for the sum.
    """

    def observe_many(self, amounts: Iterable[float]) -> None:
        """Observe each of ``amounts``: the same bucket counts and sum as ``observe`` on each.

        The sum is read, added to in order and written back, so it is bit-for-bit the sum that
        observing one value at a time gives; another thread observing into the same series
        meanwhile could lose its update (feedstep observes each series from one thread).

        Example:
            >>> h = _BatchHistogram("h", "help", buckets=(1, 2), registry=None)
            >>> h.observe_many([0.5, 1.5, 9.0, 1.0])
            >>> [(s.labels["le"], s.value) for s in h.collect()[0].samples[:3]]
            [('1.0', 2.0), ('2.0', 3.0), ('+Inf', 4.0)]
        """
        self._raise_if_not_observable()
        bounds = self._upper_bounds
        counts = [0] * len(bounds)
        total = self._sum.get()
        seen = False
        for amount in amounts:
            seen = True
            total += amount
            if amount == amount:  # NaN falls in no bucket, as with observe()
                counts[bisect_left(bounds, amount)] += 1
        if not seen:
            return
        self._sum.set(total)
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class _Serving:
    """The metrics of ``POST /v1/score`` and of the LIVE version, shared by trainer and follower.

    Both kinds of process serve the same endpoint, so they export it under the same names;
    each declares everything else it exports in its own class below.
    """

    registry: CollectorRegistry

    def _declare_serving(self) -> None:
        r = self.registry
        self.live_version = Info(
            "feedstep_live_version",
            "The model version serving as LIVE, and its parent.",
            registry=r,
        )
        self.score_requests = Counter(
            "feedstep_score_requests",
            "POST /v1/score requests answered, by HTTP status code.",
            ["status"],
            registry=r,
        )
        self.score_duration = Histogram(
            "feedstep_score_duration_seconds",
            "Wall time of one POST /v1/score request: read, validate, tokenize, score, answer.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )

    def observe_score(self, status: int, seconds: float) -> None:
        """Count one ``/v1/score`` request by its status and observe how long it took.

        Example:
            >>> m = Metrics()
            >>> m.observe_score(200, 0.01)
            >>> b'feedstep_score_requests_total{status="200"} 1.0' in m.render()
            True
        """
        label = str(status) if status in SCORE_STATUSES else "other"
        self.score_requests.labels(status=label).inc()
        self.score_duration.observe(seconds)

    def set_live_version(self, version: str, previous: str | None = None) -> None:
        """Set the LIVE version info metric (one series; its labels change on a switch)."""
        self.live_version.info({"version": version, "previous": previous or ""})

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class Metrics(_Serving):
    """The metric set of one feedstep process.

    Example:
        >>> m = Metrics()
        >>> m.events.labels(outcome="accepted").inc(3)
        >>> b"feedstep_events_total" in m.render()
        True
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = _PerRecordCounter(
            "feedstep_events", "Feedback records consumed, by outcome.", ["outcome"], registry=r
        )
        self.dead_letter = _PerRecordCounter(
            "feedstep_dead_letter",
            "Records sent to the dead-letter topic, by rejection reason.",
            ["reason"],
            registry=r,
        )
        self.truncated = _PerRecordCounter(
            "feedstep_truncated_fields",
            "Text fields cut to the configured limit, by field.",
            ["field"],
            registry=r,
        )
        self.steps = Counter("feedstep_steps", "Gradient steps applied.", registry=r)
        self.skipped_steps = Counter(
            "feedstep_skipped_steps",
            "Steps skipped by the guard (weights unchanged), by reason.",
            ["reason"],
            registry=r,
        )
        self.batch_size = _BatchHistogram(
            "feedstep_batch_size_events",
            "Examples per micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.step_duration = _BatchHistogram(
            "feedstep_step_duration_seconds",
            "Wall time of one step: both models' scoring, the update and the guard.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.feedback_to_update = _BatchHistogram(
            "feedstep_feedback_to_update_seconds",
            "Time from an event's ts to the step that trained on it.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prequential_loss = Gauge(
            "feedstep_prequential_loss",
            "Windowed mean per-event loss, scored before training (test-then-train).",
            ["model"],
            registry=r,
        )
        self.prequential_accuracy = Gauge(
            "feedstep_prequential_accuracy_ratio",
            "Windowed share of events each model got right, scored before training.",
            ["model"],
            registry=r,
        )
        self.loss_difference = Gauge(
            "feedstep_paired_loss_difference",
            "Windowed mean of baseline loss minus candidate loss (> 0: candidate better).",
            registry=r,
        )
        self.task_loss = Gauge(
            "feedstep_task_loss", "Weighted mean task loss of the last step.", registry=r
        )
        self.regularizer_loss = Gauge(
            "feedstep_regularizer_loss", "L2-SP penalty at the last step.", registry=r
        )
        self.grad_norm = Gauge(
            "feedstep_grad_norm", "Gradient norm before clipping at the last step.", registry=r
        )
        self.param_distance = Gauge(
            "feedstep_param_distance",
            "L2 distance between candidate and baseline trainable weights.",
            registry=r,
        )
        self.learning_rate = Gauge(
            "feedstep_learning_rate", "Learning rate of the last step.", registry=r
        )
        self.consumer_lag = Gauge(
            "feedstep_consumer_lag_messages",
            "Messages between the consumer position and the end of each partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.last_step_timestamp = Gauge(
            "feedstep_last_step_timestamp_seconds",
            "Unix time of the last applied step.",
            registry=r,
        )
        self.ready = Gauge(
            "feedstep_ready", "1 when the sidecar is connected and stepping.", registry=r
        )
        self.broker_connected = Gauge(
            "feedstep_broker_connected",
            "1 while the consumer has a live connection to the Kafka cluster.",
            registry=r,
        )
        self.consumer_paused = Gauge(
            "feedstep_consumer_paused",
            "1 while consumption is paused because training is behind (backpressure).",
            registry=r,
        )
        self.commit_failures = Counter(
            "feedstep_commit_failures",
            "Offset commits (or dead-letter flushes before them) that failed and will be retried.",
            registry=r,
        )
        self.rebalances = Counter(
            "feedstep_rebalances",
            "Consumer-group rebalance callbacks, by event (revoked, assigned).",
            ["event"],
            registry=r,
        )
        self.checkpoints = Counter(
            "feedstep_checkpoints", "Checkpoints written (each one then commits).", registry=r
        )
        self.mining_pairs = Counter(
            "feedstep_mining_pairs",
            "Preference pairs mined from thumbs and ratings on the same prompt.",
            registry=r,
        )
        self.mining_pending = Gauge(
            "feedstep_mining_pending_events",
            "Unpaired thumbs and ratings the pair miner remembers, over all partitions.",
            registry=r,
        )
        self.mining_evictions = Counter(
            "feedstep_mining_evictions",
            "Unpaired events the pair miner dropped, by reason (window: too old to pair, "
            "capacity: pushed out by newer ones, rebalance: the partition moved to another "
            "member).",
            ["reason"],
            registry=r,
        )
        self.lockstep_world = Gauge(
            "feedstep_lockstep_world_size",
            "Ranks training this model in lockstep (feedstep run --distributed; 0 alone).",
            registry=r,
        )
        self.allreduce_seconds = Counter(
            "feedstep_allreduce_seconds",
            "Seconds this rank spent in gradient all-reduces (lockstep).",
            registry=r,
        )
        self.allreduce_bytes = Counter(
            "feedstep_allreduce_bytes",
            "Bytes of gradient this rank all-reduced (lockstep).",
            registry=r,
        )
        self.device_memory = Gauge(
            "feedstep_device_memory_bytes",
            "Memory allocated on the training device (0 on the CPU).",
            registry=r,
        )
        self.parameters = Gauge(
            "feedstep_parameters",
            "Scalar weights of the candidate, trainable or total.",
            ["kind"],
            registry=r,
        )
        self.model_info = Info(
            "feedstep_model", "The model, objective and device in use.", registry=r
        )
        self.drift_alarms = Counter(
            "feedstep_drift_alarms",
            "Drift alarms, by detector and stream (e.g. adwin, candidate_error).",
            ["detector", "stream"],
            registry=r,
        )
        self.gate_events = Gauge(
            "feedstep_gate_paired_events",
            "Paired events (both models scored, finite losses) since the last promotion.",
            registry=r,
        )
        self.gate_difference = Gauge(
            "feedstep_gate_paired_difference_mean",
            "Mean of baseline loss minus candidate loss since the last promotion.",
            registry=r,
        )
        self.gate_statistic = Gauge(
            "feedstep_gate_test_statistic",
            "Log likelihood ratio of the gate's mixture SPRT (promotes at log(1/alpha)).",
            registry=r,
        )
        self.gate_check = Gauge(
            "feedstep_gate_check",
            "Value each gate check measured at the last decision (NaN: no data).",
            ["check"],
            registry=r,
        )
        self.gate_check_threshold = Gauge(
            "feedstep_gate_check_threshold",
            "Threshold each gate check compares its value with.",
            ["check"],
            registry=r,
        )
        self.gate_check_state = Gauge(
            "feedstep_gate_check_state",
            "1 for the state (pass, fail, inconclusive) of each gate check at the last decision.",
            ["check", "state"],
            registry=r,
        )
        self.gate_decisions = Counter(
            "feedstep_gate_decisions",
            "Gate decisions taken, by action (promote, hold).",
            ["action"],
            registry=r,
        )
        self.promotions = Counter(
            "feedstep_promotions",
            "Versions promoted to LIVE, by reason (gate, manual).",
            ["reason"],
            registry=r,
        )
        self.rollbacks = Counter(
            "feedstep_rollbacks",
            "LIVE rolled back to the previous version, by reason (degradation, drift, manual).",
            ["reason"],
            registry=r,
        )
        self.rollback_statistic = Gauge(
            "feedstep_rollback_test_statistic",
            "Log likelihood ratio of the rollback watch's degradation test (NaN: not watching).",
            registry=r,
        )
        self.probe_kl = Gauge(
            "feedstep_probe_kl",
            "KL(candidate || live) over the probe set at its last measurement, in nats: per token "
            "(causal LMs) or of P(good) per line (reward models). NaN: no probe_file, or not "
            "measured since the last promotion or rollback.",
            registry=r,
        )
        self.probe_score_drift = Gauge(
            "feedstep_probe_score_drift",
            "Mean |reward candidate - reward live| over the probe set at its last measurement "
            "(reward models; NaN otherwise or when not measured).",
            registry=r,
        )
        self.probe_duration = Gauge(
            "feedstep_probe_duration_seconds",
            "Wall time of the last probe measurement: both models' forwards over the probe set.",
            registry=r,
        )
        self.notifications = Counter(
            "feedstep_notifications",
            "Notification delivery attempts (ok, error) and notifications given up (superseded, "
            "dropped), by target (webhook, vllm).",
            ["target", "outcome"],
            registry=r,
        )
        self.notifications_pending = Gauge(
            "feedstep_notifications_pending",
            "Notifications waiting for delivery or a retry, by target (webhook, vllm).",
            ["target"],
            registry=r,
        )
        self._declare_serving()
        for target in NOTIFY_TARGETS:
            self.notifications_pending.labels(target=target).set(0)
            for outcome in NOTIFY_OUTCOMES:
                self.notifications.labels(target=target, outcome=outcome)
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome=outcome)
        for model in MODELS:
            self.prequential_loss.labels(model=model).set(math.nan)
            self.prequential_accuracy.labels(model=model).set(math.nan)
        self.loss_difference.set(math.nan)
        for action in ("promote", "hold"):
            self.gate_decisions.labels(action=action)
        for reason in PROMOTION_REASONS:
            self.promotions.labels(reason=reason)
        for reason in ROLLBACK_REASONS:
            self.rollbacks.labels(reason=reason)
        for reason in SKIP_REASONS:
            self.skipped_steps.labels(reason=reason)
        for reason in EVICTION_REASONS:
            self.mining_evictions.labels(reason=reason)
        for check in GATE_CHECKS:
            self.gate_check.labels(check=check).set(math.nan)
        self.gate_events.set(0)
        self.gate_difference.set(math.nan)
        self.gate_statistic.set(math.nan)
        self.rollback_statistic.set(math.nan)
        self.record_probe(None)
        self.probe_duration.set(math.nan)

    def record_probe(
        self, kl: float | None, score_drift: float | None = None, seconds: float | None = None
    ) -> None:
        """Export a probe measurement; ``kl=None`` (not measured) sets both values to NaN.

        ``seconds`` is kept from the last measurement when None (a reset measures nothing).

        Example:
            >>> m = Metrics()
            >>> m.record_probe(0.02, seconds=0.5)
            >>> b"feedstep_probe_kl 0.02" in m.render()
            True
        """
        self.probe_kl.set(_or_nan(kl))
        self.probe_score_drift.set(_or_nan(score_drift if kl is not None else None))
        if seconds is not None:
            self.probe_duration.set(seconds)

    def record_gate(self, decision: GateDecision) -> None:
        """Export a gate decision: each check's value, threshold and state, and the test."""
        self.gate_decisions.labels(action=decision.action).inc()
        self.gate_events.set(decision.events)
        self.gate_difference.set(decision.mean_difference)
        self.gate_statistic.set(decision.test_statistic)
        for check in decision.checks:
            self.gate_check.labels(check=check.name).set(_or_nan(check.value))
            self.gate_check_threshold.labels(check=check.name).set(_or_nan(check.threshold))
            for state in CHECK_STATES:
                self.gate_check_state.labels(check=check.name, state=state).set(
                    1.0 if check.state == state else 0.0
                )

    def record_rollback_watch(self, decision: RollbackDecision) -> None:
        """Export the rollback watch's test statistic (counting rollbacks is the caller's)."""
        self.rollback_statistic.set(decision.test_statistic)


class FollowerMetrics(_Serving):
    """The metric set of a follower (``feedstep serve``): scoring and version switches only.

    A follower trains nothing, so it exports none of the trainer's step, gate or consumer
    metrics: a dashboard or alert on those never mistakes a follower for a stalled trainer.

    Example:
        >>> m = FollowerMetrics()
        >>> m.switched(3, 2, "update")
        >>> b'feedstep_follower_switches_total{trigger="update"} 1.0' in m.render()
        True
        >>> b"feedstep_follower_live_version 3.0" in m.render()
        True
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._declare_serving()
        self.follower_version = Gauge(
            "feedstep_follower_live_version",
            "The store version this follower serves (NaN until it serves one).",
            registry=r,
        )
        self.follower_switches = Counter(
            "feedstep_follower_switches",
            "Switches to another store version, by trigger (start, poll, update).",
            ["trigger"],
            registry=r,
        )
        self.follower_load_failures = Counter(
            "feedstep_follower_load_failures",
            "LIVE versions refused (the old one kept serving), by reason (missing, unsupported, "
            "corrupt, error).",
            ["reason"],
            registry=r,
        )
        self.follower_update_messages = Counter(
            "feedstep_follower_update_messages",
            "Messages read from the model-updates topic (each makes the follower read LIVE).",
            registry=r,
        )
        self.follower_version.set(math.nan)
        for trigger in SWITCH_TRIGGERS:
            self.follower_switches.labels(trigger=trigger)
        for reason in LOAD_FAILURES:
            self.follower_load_failures.labels(reason=reason)

    def switched(self, version: int, previous: int | None, trigger: str) -> None:
        """Record a switch to ``version`` (from ``previous``), caused by ``trigger``."""
        self.follower_version.set(version)
        self.follower_switches.labels(trigger=trigger).inc()
        self.set_live_version(str(version), None if previous is None else str(previous))


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
