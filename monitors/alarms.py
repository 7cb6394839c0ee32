"""Drift alarms: the small value every detector reports, and how an alarm is announced.

Kept apart from :mod:`monitors.drift` so the gate and the rollback watch can take alarms
without importing River.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from monitors.metrics import Metrics

logger = logging.getLogger("feedstep.monitors.drift")

Direction = Literal["increase", "decrease", "change"]
AlarmCallback = Callable[["DriftAlarm"], None]

_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    """One drift alarm: safe to log and to count (no user text).

    Attributes:
        detector: detector name (``adwin``, ``ks``...), a bounded metric label.
        stream: stream name (``candidate_error``...), a bounded metric label.
        index: 0-based position of the value that raised it, counting the stream's finite
            values since the monitor was created.
        direction: whether the stream's level went up, down, or just changed shape, in the
            stream's own terms (for an error stream, ``increase`` means more errors).

    Example:
        >>> DriftAlarm("adwin", "candidate_error", 1042, "increase").to_dict()["index"]
        1042
    """

    detector: str
    stream: str
    index: int
    direction: Direction

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for a log line or a decision record)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftAlarm:
        """Inverse of :meth:`to_dict`, validating types."""
        detector, stream, index, direction = (
            data.get("detector"),
            data.get("stream"),
            data.get("index"),
            data.get("direction"),
        )
        if not (isinstance(detector, str) and isinstance(stream, str)):
            raise ValueError(f"bad alarm record {dict(data)!r}: detector and stream are strings")
        if not (isinstance(index, int) and index >= 0):
            raise ValueError(f"bad alarm record {dict(data)!r}: index is an integer >= 0")
        if direction not in ("increase", "decrease", "change"):
            raise ValueError(f"bad alarm record {dict(data)!r}: unknown direction")
        return cls(detector, stream, index, direction)


def emit_alarm(
    alarm: DriftAlarm, metrics: Metrics | None = None, on_alarm: AlarmCallback | None = None
) -> None:
    """Log an alarm, count it, and hand it to the callback (exceptions in it propagate)."""
    logger.warning(
        "drift alarm: detector=%s stream=%s index=%d direction=%s",
        alarm.detector,
        alarm.stream,
        alarm.index,
        alarm.direction,
    )
    if metrics is not None:
        metrics.drift_alarms.labels(detector=alarm.detector, stream=alarm.stream).inc()
    if on_alarm is not None:
        on_alarm(alarm)


def check_stream_name(stream: str) -> str:
    """Validate a stream name (it becomes a metric label, so it must be short and plain)."""
    if not isinstance(stream, str) or not _STREAM_NAME.match(stream):
        raise ValueError(
            f"stream name must match {_STREAM_NAME.pattern} (it is a metric label), got {stream!r}"
        )
    return stream
