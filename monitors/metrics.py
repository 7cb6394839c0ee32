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

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

EVENT_OUTCOMES = ("accepted", "rejected", "duplicate")
MODELS = ("baseline", "candidate")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
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
        self.events = Counter(
            "feedstep_events", "Feedback records consumed, by outcome.", ["outcome"], registry=r
        )
        self.dead_letter = Counter(
            "feedstep_dead_letter",
            "Records sent to the dead-letter topic, by rejection reason.",
            ["reason"],
            registry=r,
        )
        self.truncated = Counter(
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
        self.batch_size = Histogram(
            "feedstep_batch_size_events",
            "Examples per micro-batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "feedstep_step_duration_seconds",
            "Wall time of one step: both models' scoring, the update and the guard.",
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.feedback_to_update = Histogram(
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
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome=outcome)
        for model in MODELS:
            self.prequential_loss.labels(model=model).set(math.nan)
            self.prequential_accuracy.labels(model=model).set(math.nan)
        self.loss_difference.set(math.nan)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
