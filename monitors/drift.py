"""Drift detection on a model's per-event error and loss streams, around River's detectors.

A :class:`DriftMonitor` watches one named stream (``candidate_error``, ``baseline_loss``...)
with one River detector picked by name:

========================  =================================================================
``adwin`` (default)       ADWIN, adaptive window; checks after every value (``clock=1``).
``page_hinkley``          Page-Hinkley CUSUM, both directions, no forgetting.
``kswin``                 KSWIN, windowed Kolmogorov-Smirnov. About 1 ms per value (SciPy);
                          meant for real-valued streams at modest rates.
``ddm``                   DDM, error streams only (expects 1 = error).
``fhddm``                 FHDDM, error streams only (expects 1 = *correct*).
========================  =================================================================

Conventions live in one place, :data:`DETECTORS` and :meth:`DriftMonitor._convert`: callers
always pass feedstep's own convention (``error``: 1.0 = the model was wrong, 0.0 = right;
``loss``: the per-event loss; ``value``: any real number), and the monitor converts for the
detector. FHDDM is fed ``1 - error`` because River's implementation raises an alarm when the
mean of its input *drops* (it tracks accuracy). Losses are squashed with
``loss / (1 + |loss|)`` before detection: the map is monotone, so a rise in loss is a rise in
the detector's input, and bounded, which keeps ADWIN's and Page-Hinkley's bounds honest on
heavy-tailed log-losses (raw log-losses make ADWIN raise several false alarms per 100,000
events). Non-finite values (a model did not score the event) are skipped and counted.

Every alarm becomes a :class:`DriftAlarm` (detector, stream, index, direction; no user text),
is logged, counted in ``feedstep_drift_alarms_total{detector,stream}`` when a
:class:`~monitors.metrics.Metrics` is given, and passed to the optional ``on_alarm`` callback
(the sidecar uses it for the learner's learning-rate boost and the gate).

Checkpoints (no pickle): River's ADWIN keeps its state in Rust and offers no JSON form, so the
monitor keeps the detector's inputs since its last reset (at most ``replay_limit`` of them) and
:meth:`DriftMonitor.load_state_dict` rebuilds the detector by replaying them silently. Every
River detector starts afresh after an alarm, so when no more than ``replay_limit`` values have
arrived since the last alarm the rebuilt detector is *identical* to the saved one; otherwise it
has seen only the newest ``replay_limit`` values (ADWIN then holds a shorter reference window
and may be slightly slower to notice small changes; the snapshot says ``"truncated": true``).
KSWIN is the exception: replaying it costs 1 ms per value, so its window and random state are
stored instead.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from river import drift as river_drift
from river.drift import binary as river_binary

from monitors.alarms import AlarmCallback, Direction, DriftAlarm, check_stream_name, emit_alarm
from monitors.base import Monitor

if TYPE_CHECKING:
    from monitors.metrics import Metrics

StreamKind = Literal["error", "loss", "value"]


class DriftDetector(Protocol):
    """What the monitor needs from a River detector (River's binary and real-valued bases)."""

    @property
    def drift_detected(self) -> bool:
        """True right after the update that detected a drift."""

    def update(self, x: Any) -> Any:
        """Feed one value."""


_STATE_FORMAT = 1


_FLIP: dict[Direction, Direction] = {
    "increase": "decrease",
    "decrease": "increase",
    "change": "change",
}


def _change_point_direction(values: Iterable[float]) -> Direction:
    """Direction of the most likely mean shift in ``values`` (CUSUM change-point estimate).

    The split k maximizing the standardized CUSUM ``|S_k| / sqrt(k (n - k) / n)``, with
    ``S_k = sum(x[:k] - mean(x))``, is where the mean most plausibly changed (the weighting
    finds changes near the end of the buffer too); the sign of ``S_k`` says whether the
    values before the split were higher or lower than after.
    """
    x = np.fromiter(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return "change"
    s = np.cumsum(x - x.mean())[:-1]
    k = np.arange(1, n)
    score = np.abs(s) / np.sqrt(k * (n - k) / n)
    best = int(score.argmax())
    if abs(s[best]) <= 1e-12 * n:
        return "change"
    return "decrease" if s[best] > 0 else "increase"


def _adwin_direction(det: DriftDetector, buffer: deque[float]) -> Direction:
    # ADWIN's own window after a cut still holds part of the old regime, so the split is
    # estimated from the inputs since its last reset instead.
    return _change_point_direction(buffer)


def _page_hinkley_direction(det: DriftDetector, buffer: deque[float]) -> Direction:
    up = det._sum_increase - det._min_increase > det.threshold  # type: ignore[attr-defined]
    return "increase" if up else "decrease"


def _kswin_direction(det: DriftDetector, buffer: deque[float]) -> Direction:
    window = list(buffer)[-int(det.window_size) :]  # type: ignore[attr-defined]
    return _change_point_direction(window)


def _increase(det: DriftDetector, buffer: deque[float]) -> Direction:
    return "increase"


def _decrease(det: DriftDetector, buffer: deque[float]) -> Direction:
    return "decrease"


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """How to build and feed one River detector.

    Attributes:
        name: the name used in config and as the ``detector`` metric label.
        factory: the River class.
        feeds: what the detector expects: ``value`` (any real), ``error`` (1 = error) or
            ``correct`` (1 = correct). Only ``value`` detectors accept loss/value streams.
        defaults: feedstep's parameter defaults (overridable per monitor).
        direction: reads the alarm's direction, in the detector's input terms.
    """

    name: str
    factory: Callable[..., DriftDetector]
    feeds: Literal["value", "error", "correct"]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    direction: Callable[[DriftDetector, deque[float]], Direction] = _adwin_direction


DETECTORS: dict[str, DetectorSpec] = {
    # clock=1 checks after every value: River's default of 32 waits up to 31 values longer.
    "adwin": DetectorSpec("adwin", river_drift.ADWIN, "value", {"clock": 1}, _adwin_direction),
    # River's defaults (forgetting factor 0.9999, threshold 50) raise ~5 false alarms per
    # 100,000 events on a 20% error stream. Without forgetting and with these: no false alarm
    # in 1.44 million simulated events, and a 0.2 -> 0.4 jump caught after 78-246 events.
    # Tuned for inputs in [0, 1] (error flags, squashed losses).
    "page_hinkley": DetectorSpec(
        "page_hinkley",
        river_drift.PageHinkley,
        "value",
        {"alpha": 1.0, "delta": 0.05, "threshold": 25.0},
        _page_hinkley_direction,
    ),
    # River's default window (100, 30) cannot see moderate shifts; alpha=0.005 would fire
    # every few thousand events on a continuous stream.
    "kswin": DetectorSpec(
        "kswin",
        river_drift.KSWIN,
        "value",
        {"alpha": 1e-5, "window_size": 600, "stat_size": 200, "seed": 0},
        _kswin_direction,
    ),
    "ddm": DetectorSpec("ddm", river_binary.DDM, "error", {}, _increase),
    "fhddm": DetectorSpec("fhddm", river_binary.FHDDM, "correct", {}, _decrease),
}


class DriftMonitor(Monitor):
    """A River drift detector on one named per-event stream.

    Args:
        stream: stream name, e.g. ``candidate_error`` (a metric label: lowercase, short).
        kind: ``error`` (values in [0, 1], 1 = wrong), ``loss`` (per-event loss) or ``value``.
        detector: a key of :data:`DETECTORS`.
        params: detector parameters overriding feedstep's defaults (JSON values only).
        on_alarm: called with each :class:`DriftAlarm`.
        metrics: counts alarms in ``feedstep_drift_alarms_total`` when given.
        replay_limit: most detector inputs kept for rebuilding the detector from a checkpoint.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(7)
        >>> errors = np.concatenate([rng.random(5000) < 0.2, rng.random(1000) < 0.6])
        >>> m = DriftMonitor("candidate_error", kind="error")
        >>> [(a.index >= 5000, a.direction) for a in m.update_many(errors)]
        [(True, 'increase')]
    """

    def __init__(
        self,
        stream: str,
        *,
        kind: StreamKind = "error",
        detector: str = "adwin",
        params: Mapping[str, Any] | None = None,
        on_alarm: AlarmCallback | None = None,
        metrics: Metrics | None = None,
        replay_limit: int = 10_000,
    ) -> None:
        self.stream = check_stream_name(stream)
        if kind not in ("error", "loss", "value"):
            raise ValueError(f"kind must be 'error', 'loss' or 'value', got {kind!r}")
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; choose one of {sorted(DETECTORS)}")
        self.spec = DETECTORS[detector]
        if self.spec.feeds != "value" and kind != "error":
            raise ValueError(
                f"detector {detector!r} takes 0/1 error flags; stream {stream!r} has kind "
                f"{kind!r}; use adwin, page_hinkley or kswin for losses and values"
            )
        if replay_limit < 1:
            raise ValueError(f"replay_limit must be >= 1, got {replay_limit}")
        self.kind: StreamKind = kind
        self.detector_name = detector
        self.params = self._merge_params(params or {})
        self.on_alarm = on_alarm
        self.metrics = metrics
        self.replay_limit = replay_limit
        self._detector = self.spec.factory(**self.params)
        self._replay: deque[float] = deque(maxlen=replay_limit)
        self._since_reset = 0
        self._seen = 0
        self._skipped = 0
        self._alarms = 0
        self._last_alarm: DriftAlarm | None = None
        self._drift_detected = False

    def _merge_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        accepted = set(inspect.signature(self.spec.factory).parameters)
        for key, value in params.items():
            if key not in accepted:
                raise ValueError(
                    f"unknown parameter {key!r} for detector {self.spec.name!r}; "
                    f"accepted: {sorted(accepted)}"
                )
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ValueError(
                    f"detector parameter {key!r} must be a JSON scalar, got {type(value).__name__}"
                )
        return {**self.spec.defaults, **params}

    def _convert(self, value: float) -> float | None:
        """Convert from feedstep's convention to the detector's input; None: skip the value."""
        if not math.isfinite(value):
            return None
        if self.kind == "loss":
            return value / (1.0 + abs(value))
        if self.kind == "error":
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"stream {self.stream!r} is an error stream: values are 0 (right) .. "
                    f"1 (wrong), got {value}"
                )
            if self.spec.feeds != "value" and value not in (0.0, 1.0):
                raise ValueError(
                    f"detector {self.spec.name!r} needs 0/1 error flags, got {value} on "
                    f"stream {self.stream!r}"
                )
            return 1.0 - value if self.spec.feeds == "correct" else value
        return value

    def update(self, value: float) -> None:
        """Feed one value in feedstep's convention; NaN/inf are skipped."""
        self._drift_detected = False
        x = self._convert(float(value))
        if x is None:
            self._skipped += 1
            return
        if self._detector.drift_detected:  # River resets at this update: so do we
            self._replay.clear()
            self._since_reset = 0
        self._detector.update(x)
        self._replay.append(x)
        self._since_reset += 1
        index = self._seen
        self._seen += 1
        if self._detector.drift_detected:
            direction = self.spec.direction(self._detector, self._replay)
            if self.spec.feeds == "correct":  # fed 1 - error: flip back to the error's terms
                direction = _FLIP[direction]
            alarm = DriftAlarm(self.spec.name, self.stream, index, direction)
            self._alarms += 1
            self._last_alarm = alarm
            self._drift_detected = True
            emit_alarm(alarm, self.metrics, self.on_alarm)

    def update_many(self, values: Iterable[float]) -> list[DriftAlarm]:
        """Feed values in order; returns the alarms they raised."""
        before = self._alarms
        alarms: list[DriftAlarm] = []
        for v in np.asarray(values, dtype=np.float64).ravel().tolist():
            self.update(v)
            if self._alarms != before:
                before = self._alarms
                assert self._last_alarm is not None
                alarms.append(self._last_alarm)
        return alarms

    @property
    def drift_detected(self) -> bool:
        """True right after the update that raised an alarm."""
        return self._drift_detected

    @property
    def seen(self) -> int:
        """Finite values fed so far."""
        return self._seen

    @property
    def skipped(self) -> int:
        """Non-finite values skipped so far."""
        return self._skipped

    @property
    def alarms(self) -> int:
        """Alarms raised so far."""
        return self._alarms

    @property
    def last_alarm(self) -> DriftAlarm | None:
        """The most recent alarm, if any."""
        return self._last_alarm

    @property
    def events_since_alarm(self) -> int | None:
        """Finite values fed after the last alarm; None if there has been none."""
        if self._last_alarm is None:
            return None
        return self._seen - self._last_alarm.index - 1

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state; see the module docstring for what is exact."""
        # After an alarm every River detector starts afresh at its next value, so a detector
        # with an alarm pending is saved as a fresh one.
        pending_reset = bool(self._detector.drift_detected)
        replay = [] if pending_reset else list(self._replay)
        state: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "detector": self.detector_name,
            "stream": self.stream,
            "kind": self.kind,
            "params": dict(self.params),
            "seen": self._seen,
            "skipped": self._skipped,
            "alarms": self._alarms,
            "last_alarm": self._last_alarm.to_dict() if self._last_alarm else None,
            "since_reset": 0 if pending_reset else self._since_reset,
            # KSWIN is restored from its internals, so only the other detectors can be cut short.
            "truncated": not pending_reset
            and self.detector_name != "kswin"
            and self._since_reset > len(replay),
            "replay": replay,
        }
        if self.detector_name == "kswin" and not pending_reset:
            det = self._detector
            version, internal, gauss = det._rng.getstate()  # type: ignore[attr-defined]
            state["kswin"] = {
                "window": list(det.window),  # type: ignore[attr-defined]
                "n": det.n,  # type: ignore[attr-defined]
                "p_value": float(det.p_value),  # type: ignore[attr-defined]
                "rng": [version, list(internal), gauss],
            }
            state["replay"] = replay[-int(self.params["window_size"]) :]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into this monitor (same detector and stream).

        The detector is rebuilt by replaying the saved inputs; replayed values raise no
        alarms, callbacks or metrics (they were reported before the checkpoint).
        """
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"drift monitor state must be a dict with format={_STATE_FORMAT}")
        for key, mine in (
            ("detector", self.detector_name),
            ("stream", self.stream),
            ("kind", self.kind),
            ("params", self.params),
        ):
            if state.get(key) != mine:
                raise ValueError(
                    f"checkpointed drift monitor has {key}={state.get(key)!r}, this one "
                    f"{mine!r}; build the monitor with the checkpoint's settings"
                )
        replay = [float(v) for v in state["replay"]]
        if not all(math.isfinite(v) for v in replay):
            raise ValueError("checkpointed drift monitor replay holds non-finite values")
        det = self.spec.factory(**self.params)
        if "kswin" in state:
            ks = state["kswin"]
            version, internal, gauss = ks["rng"]
            det._rng.setstate((version, tuple(internal), gauss))  # type: ignore[attr-defined]
            det.window = deque(ks["window"], maxlen=det.window_size)  # type: ignore[attr-defined]
            det.n = int(ks["n"])  # type: ignore[attr-defined]
            det.p_value = float(ks["p_value"])  # type: ignore[attr-defined]
        else:
            for x in replay:  # River resets by itself if a truncated replay raises an alarm
                det.update(x)
        self._detector = det
        self._replay = deque(replay, maxlen=self.replay_limit)
        self._since_reset = int(state["since_reset"])
        self._seen = int(state["seen"])
        self._skipped = int(state["skipped"])
        self._alarms = int(state["alarms"])
        last = state["last_alarm"]
        self._last_alarm = DriftAlarm.from_dict(last) if last is not None else None
        self._drift_detected = False
