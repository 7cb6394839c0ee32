"""``feedstep replay``: the real pipeline over recorded feedback, as a dry run, with a report.

"What would have happened with this config last week?" A replay runs the same
:class:`~streaming.runtime.pipeline.Pipeline`, learner, monitors and
:class:`~streaming.promotion.governor.Governor`
as ``feedstep run`` over a file or a fixed topic range, with publishing off: nothing goes to the
model store, the model-updates topic or the dead-letter topic, no checkpoint is written and no
offset is committed. Promotions still rebase the candidate in memory, so what follows a
promotion is what would have followed it.

:class:`ReplayRecorder` collects the series (through ``Pipeline(on_progress=...)`` and
:attr:`Governor.on_decision`) and :func:`write_report` writes ``report.json`` and the plots.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitors.decision import GateDecision, RollbackDecision
from streaming.base import Sink, Source
from streaming.config import FeedstepConfig
from streaming.errors import FeedstepError
from streaming.promotion.governor import Governor
from streaming.runtime.pipeline import Pipeline, RunSummary
from streaming.sources.files import JsonlFileSource
from streaming.sources.recording import RecordingFileSource, count_records, file_format

__all__ = [
    "REPORT_FORMAT",
    "DiscardSink",
    "ReplayRecorder",
    "ReplaySource",
    "open_replay_source",
    "write_report",
]

REPORT_FORMAT = 1
KAFKA_PREFIX = "kafka:"


@dataclass(slots=True)
class ReplaySource:
    """The source of a replay and what to say about it in the report."""

    source: Source
    description: dict[str, Any]
    total: int | None


def open_replay_source(
    spec: str,
    config: FeedstepConfig,
    *,
    from_offset: int | None = None,
    from_time_ms: int | None = None,
    to_time_ms: int | None = None,
    partitions: Sequence[int] | None = None,
) -> ReplaySource:
    """Open ``kafka:TOPIC`` (a :class:`~streaming.kafka.topicrange.TopicRangeSource`) or a file.

    A file is a recording written by ``feedstep record`` or a plain events file (one event JSON
    per line); the first non-blank line tells which. Range options only apply to topics.
    """
    if spec.startswith(KAFKA_PREFIX):
        topic = spec[len(KAFKA_PREFIX) :]
        if not topic:
            raise FeedstepError("SOURCE 'kafka:' names no topic; pass kafka:TOPIC or a file")
        from streaming.kafka.topicrange import TopicRangeSource

        source = TopicRangeSource(
            config.kafka,
            topic,
            partitions=partitions,
            from_offset=from_offset,
            from_time_ms=from_time_ms,
            to_time_ms=to_time_ms,
        )
        description = {
            "kind": "kafka",
            "topic": topic,
            "bootstrap_servers": config.kafka.bootstrap_servers,
            "ranges": [
                {"partition": r.partition, "start_offset": r.start, "end_offset": r.end}
                for r in source.ranges
            ],
        }
        return ReplaySource(source, description, source.total)
    if any(x is not None for x in (from_offset, from_time_ms, to_time_ms, partitions)):
        raise FeedstepError(
            "--from-offset, --from-time, --to-time and --partitions select a topic range; "
            f"they do not apply to the file {spec!r} (use SOURCE kafka:TOPIC)"
        )
    path = Path(spec)
    if not path.is_file():
        raise FeedstepError(
            f"SOURCE {spec!r} is neither kafka:TOPIC nor an existing file; pass a JSONL file of "
            "events, a recording from `feedstep record`, or kafka:TOPIC"
        )
    kind = file_format(path)
    file_source: Source
    if kind == "recording":
        file_source = RecordingFileSource(path)
        total = count_records(path)
    else:
        events = JsonlFileSource(path)
        file_source, total = events, events.line_count()
    return ReplaySource(file_source, {"kind": kind, "path": str(path.resolve())}, total)


class DiscardSink(Sink):
    """A dead-letter sink for dry runs: counts rejects by reason, writes nothing anywhere."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Count the message under its ``feedstep.reason`` header."""
        reason = next((v for k, v in headers if k == "feedstep.reason"), b"unknown")
        self.reasons[reason.decode("utf-8", "replace")] += 1

    def flush(self, timeout_s: float = 30.0) -> None:
        """Nothing to flush."""


@dataclass(slots=True)
class _Point:
    index: int
    baseline_loss: float
    candidate_loss: float
    baseline_accuracy: float
    candidate_accuracy: float


@dataclass(slots=True)
class ReplayRecorder:
    """Collects a replay's series and decisions from the pipeline and the governor.

    Example:
        >>> recorder = ReplayRecorder()
        >>> recorder.attach(governor)  # doctest: +SKIP
        >>> Pipeline(..., on_progress=recorder.progress_hook(pipeline))  # doctest: +SKIP
    """

    points: list[_Point] = field(default_factory=list)
    gate: list[dict[str, Any]] = field(default_factory=list)
    statistic: list[tuple[int, float, float]] = field(default_factory=list)
    rollback_decisions: list[dict[str, Any]] = field(default_factory=list)
    _steps: int = 0

    def attach(self, governor: Governor) -> None:
        """Receive every decision the governor makes."""
        governor.on_decision = self.on_decision

    def on_decision(self, index: int, decision: GateDecision | RollbackDecision) -> None:
        """Keep a gate decision (with its checks) or a rollback watch decision."""
        if isinstance(decision, GateDecision):
            self._steps += 1
            record = decision.to_dict()
            self.gate.append({"event_index": index, "decision": self._steps, **record})
            check = next((c for c in decision.checks if c.name == "sequential_test"), None)
            threshold = check.threshold if check is not None else None
            self.statistic.append(
                (
                    index,
                    decision.test_statistic,
                    math.nan if threshold is None else threshold,
                )
            )
        elif decision.action == "rollback" or decision.version is not None:
            self.rollback_decisions.append({"event_index": index, **decision.to_dict()})

    def observe(self, pipeline: Pipeline) -> None:
        """Take the windowed prequential figures after a step."""
        snap = pipeline.prequential.snapshot()
        index = pipeline.governor.events if pipeline.governor is not None else snap.events
        self.points.append(
            _Point(
                index,
                snap.baseline_loss,
                snap.candidate_loss,
                snap.baseline_accuracy,
                snap.candidate_accuracy,
            )
        )


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _history(governor: Governor, kind: str) -> list[dict[str, Any]]:
    """The governor's events of one kind, each with the event index it happened at."""
    out = []
    for e in governor.history:
        if e.kind != kind:
            continue
        detail = dict(e.detail)
        if kind == "drift":  # the alarm's own index counts its stream's values
            detail["stream_index"] = detail.pop("index", None)
        out.append({"event_index": e.index, **detail})
    return out


def build_report(
    *,
    config: FeedstepConfig,
    source: ReplaySource,
    summary: RunSummary,
    pipeline: Pipeline,
    governor: Governor,
    recorder: ReplayRecorder,
    dead_letters: DiscardSink,
) -> dict[str, Any]:
    """The JSON report (see the README's ``feedstep replay`` section)."""
    snap = pipeline.prequential.snapshot()
    settings = {  # the password is a secret; inf (no cap) is written as the string "inf"
        key: str(value) if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in config.flat().items()
    }
    return {
        "format": REPORT_FORMAT,
        "dry_run": True,
        "source": source.description,
        "config": settings,
        "summary": {
            "events": summary.consumed,
            "accepted": summary.accepted,
            "dead_lettered": summary.rejected,
            "duplicates": summary.duplicates,
            "trained": summary.trained_examples,
            "steps": summary.steps,
            "skipped_steps": summary.skipped_steps,
            "scored": governor.events,
            "gate_decisions": len(recorder.gate),
            "promotions": sum(1 for e in governor.history if e.kind == "promote"),
            "rollbacks": sum(1 for e in governor.history if e.kind == "rollback"),
            "drift_alarms": sum(1 for e in governor.history if e.kind == "drift"),
            "dead_letter_reasons": dict(sorted(dead_letters.reasons.items())),
            "elapsed_s": round(summary.elapsed_s, 3),
        },
        "prequential": {
            "whole_run": {
                "baseline_accuracy": _num(summary.baseline_accuracy),
                "candidate_accuracy": _num(summary.candidate_accuracy),
            },
            "last_window": {
                "events": min(snap.events, config.metrics.prequential_window),
                "baseline_loss": _num(snap.baseline_loss),
                "candidate_loss": _num(snap.candidate_loss),
                "baseline_accuracy": _num(snap.baseline_accuracy),
                "candidate_accuracy": _num(snap.candidate_accuracy),
                "mean_loss_difference": _num(snap.mean_loss_difference),
            },
        },
        "promotions": _history(governor, "promote"),
        "rollbacks": _history(governor, "rollback"),
        "drift_alarms": _history(governor, "drift"),
        "gate_decisions": recorder.gate,
        "rollback_watch": recorder.rollback_decisions,
        "series": {
            "event_index": [p.index for p in recorder.points],
            "baseline_loss": [_num(p.baseline_loss) for p in recorder.points],
            "candidate_loss": [_num(p.candidate_loss) for p in recorder.points],
            "baseline_accuracy": [_num(p.baseline_accuracy) for p in recorder.points],
            "candidate_accuracy": [_num(p.candidate_accuracy) for p in recorder.points],
            "gate_event_index": [i for i, _, _ in recorder.statistic],
            "gate_log_lr": [_num(s) for _, s, _ in recorder.statistic],
            "gate_log_threshold": [_num(t) for _, _, t in recorder.statistic],
        },
    }


def write_report(report: dict[str, Any], directory: str | os.PathLike[str]) -> list[Path]:
    """Write ``report.json`` and the PNG plots into ``directory``; returns the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plot(report, out)
    report = {**report, "plots": [p.name for p in plots]}
    path = out / "report.json"
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return [path, *plots]


def _marks(ax: Any, report: dict[str, Any]) -> None:
    """Drift alarms, promotions and rollbacks as vertical lines (labelled once each)."""
    styles = (
        ("drift_alarms", "drift alarm", "tab:orange", ":"),
        ("promotions", "promotion", "tab:green", "-"),
        ("rollbacks", "rollback", "tab:red", "--"),
    )
    for key, label, color, style in styles:
        for i, item in enumerate(report[key]):
            ax.axvline(
                item["event_index"],
                color=color,
                linestyle=style,
                linewidth=1.2,
                label=label if i == 0 else None,
            )


def _plot(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache notes
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    nan = float("nan")

    def values(name: str) -> list[float]:
        return [nan if v is None else v for v in series[name]]

    written = []
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    x = series["event_index"]
    ax.plot(x, values("baseline_loss"), label="baseline", color="tab:blue")
    ax.plot(x, values("candidate_loss"), label="candidate", color="tab:purple")
    window = report["config"].get("prequential_window")
    title = f"Prequential loss (windowed over {window} events), test-then-train"
    written.append(_finish(fig, ax, report, title, "loss", out / "prequential_loss.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    gx = series["gate_event_index"]
    ax.plot(gx, values("gate_log_lr"), label="mSPRT log likelihood ratio", color="tab:blue")
    ax.plot(
        gx,
        values("gate_log_threshold"),
        label="threshold log(1/alpha)",
        color="black",
        linestyle="--",
    )
    title = "Promotion gate: sequential test statistic (promote needs all checks)"
    written.append(_finish(fig, ax, report, title, "log LR", out / "gate_statistic.png"))
    return written


def _finish(fig: Any, ax: Any, report: dict[str, Any], title: str, ylabel: str, path: Path) -> Path:
    """Mark alarms and switches, label the axes, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    _marks(ax, report)
    ax.set_title(title)
    ax.set_xlabel("event index (events scored)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
