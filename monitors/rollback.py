"""Rollback watch: after a promotion, is the new LIVE version doing worse than the old one?

The watch keeps a rolling record of the LIVE model's per-event losses. At a promotion that
record (the previous version's most recent ``reference_size`` losses) is frozen as the
reference, and the new version's per-event losses are tested against it with the same mixture
SPRT the gate uses (:mod:`monitors.sequential`):

    H0: mean(new live loss) <= reference mean + max_degradation

The reference mean is itself an estimate, so the level is split: an upper confidence bound of
the reference mean at level ``alpha / 2`` (normal approximation, fixed sample), and the
sequential test at ``alpha / 2``; by the union bound a healthy promotion is rolled back with
probability at most about ``alpha``. Rejecting H0 means a significant degradation: action
``rollback``, cause ``degradation``.

A drift alarm that says the LIVE model's error stream went *up* after the promotion (passed in
with :meth:`RollbackWatch.note_alarm`) also rolls back, cause ``drift``
(``rollback_on_drift``). Alarms saying errors went down are recorded but harmless.

The comparison is between different events (before vs after the promotion), so a change in
traffic at the very moment of a promotion is indistinguishable from a worse model; the drift
cause and the decision record make that visible to the operator.

After ``watch_events`` live events without a reason to roll back, the version is settled and
the watch disarms until the next promotion.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from monitors.alarms import DriftAlarm
from monitors.decision import Check, RollbackDecision
from monitors.sequential import MixtureSPRT

_STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class RollbackConfig:
    """Settings of the rollback watch, validated on creation.

    Attributes:
        alpha: chance of rolling back a version that is not worse (split between the
            reference bound and the sequential test).
        max_degradation: how much higher (loss units) the new version's mean loss may be
            than the reference mean before it counts as degraded (>= 0).
        reference_size: most recent pre-promotion losses kept as the reference.
        min_reference: reference losses needed for the degradation test (fewer:
            inconclusive; only a drift alarm can then roll back).
        watch_events: live events after which a promotion is settled.
        mixture_scale: prior scale of the sequential test's mixture (standard deviations).
        rollback_on_drift: roll back on an upward drift alarm on the live error stream.

    Example:
        >>> RollbackConfig(alpha=0.01).reference_size
        2000
    """

    alpha: float = 0.01
    max_degradation: float = 0.0
    reference_size: int = 2000
    min_reference: int = 200
    watch_events: int = 50_000
    mixture_scale: float = 0.1
    rollback_on_drift: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0.0 < self.alpha < 1.0):
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not (
            isinstance(self.max_degradation, (int, float))
            and math.isfinite(self.max_degradation)
            and self.max_degradation >= 0
        ):
            raise ValueError(
                f"max_degradation must be a finite number >= 0, got {self.max_degradation!r}"
            )
        for name in ("reference_size", "min_reference", "watch_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        if self.min_reference > self.reference_size:
            raise ValueError(
                f"min_reference ({self.min_reference}) cannot exceed reference_size "
                f"({self.reference_size}): the test could never run"
            )
        if not (
            isinstance(self.mixture_scale, (int, float))
            and math.isfinite(self.mixture_scale)
            and self.mixture_scale > 0
        ):
            raise ValueError(f"mixture_scale must be a number > 0, got {self.mixture_scale!r}")


class RollbackWatch:
    """Watches the LIVE version after each promotion and says when to roll back.

    Feed it the LIVE model's per-event losses all the time (:meth:`observe`); call
    :meth:`promoted` right after a promotion, :meth:`note_alarm` with alarms of the LIVE
    model's error stream, and :meth:`decide` after each batch. After acting on a rollback,
    call :meth:`rolled_back`.

    Args:
        config: the watch's settings.
        clock: returns Unix time for the decision record.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> watch = RollbackWatch(RollbackConfig())
        >>> watch.observe(rng.gamma(2.0, 0.3, size=2000))        # v1 is live
        >>> watch.promoted("v2", previous_version="v1")
        >>> watch.observe(rng.gamma(2.0, 0.3, size=3000) + 0.15)  # v2 is worse
        >>> d = watch.decide()
        >>> d.action, d.cause, d.previous_version
        ('rollback', 'degradation', 'v1')
    """

    def __init__(self, config: RollbackConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._record: deque[float] = deque(maxlen=config.reference_size)
        self._reference: list[float] = []
        self._reference_mean = math.nan
        self._test: MixtureSPRT | None = None
        self._version: str | None = None
        self._previous: str | None = None
        self._events = 0
        self._skipped = 0
        self._drift_alarm: DriftAlarm | None = None

    @property
    def armed(self) -> bool:
        """True while a promoted version is being watched."""
        return self._version is not None

    def observe(self, live_losses: ArrayLike) -> None:
        """Add per-event losses of the LIVE model (non-finite values are skipped)."""
        x = np.asarray(live_losses, dtype=np.float64).ravel()
        finite = x[np.isfinite(x)]
        self._skipped += int(x.size - finite.size)
        self._record.extend(finite.tolist())
        if self._test is not None:
            self._test.update(finite)
        if self.armed:
            self._events += int(finite.size)

    def note_alarm(self, alarm: DriftAlarm) -> None:
        """Record a drift alarm on the LIVE model's error stream (ignored when unarmed)."""
        if self.armed and alarm.direction == "increase" and self._drift_alarm is None:
            self._drift_alarm = alarm

    def promoted(self, version: str, previous_version: str | None) -> None:
        """A promotion happened: freeze the previous version's record and start watching."""
        cfg = self.config
        self._reference = list(self._record)
        self._reference_mean = math.fsum(self._reference) / max(1, len(self._reference))
        self._record.clear()
        self._version, self._previous = version, previous_version
        self._events = 0
        self._drift_alarm = None
        self._test = None
        if len(self._reference) >= cfg.min_reference:
            self._test = MixtureSPRT(
                null_mean=self._null_mean(),
                alpha=cfg.alpha / 2.0,
                mixture_scale=cfg.mixture_scale,
            )

    def _null_mean(self) -> float:
        ref = np.asarray(self._reference)
        z = NormalDist().inv_cdf(1.0 - self.config.alpha / 2.0)  # one-sided, level alpha/2
        upper = float(ref.mean()) + z * float(ref.std(ddof=1)) / math.sqrt(ref.size)
        return upper + self.config.max_degradation

    def rolled_back(self) -> None:
        """LIVE is the previous version again: its frozen record becomes the live record."""
        self._record.clear()
        self._record.extend(self._reference)
        self._disarm()

    def _disarm(self) -> None:
        self._version = self._previous = None
        self._test = None
        self._drift_alarm = None
        self._events = 0

    def decide(self) -> RollbackDecision:
        """Whether to roll back now; settles (disarms) after ``watch_events`` quiet events."""
        cfg = self.config
        version, previous, events = self._version, self._previous, self._events
        checks: list[Check] = []
        statistic = math.nan
        cause = ""
        if not self.armed:
            checks.append(Check("watch", None, None, None, "no promotion being watched"))
        else:
            degradation = self._check_degradation()
            statistic = degradation.value if degradation.value is not None else math.nan
            drift = self._check_drift()
            checks = [degradation, drift]
            if degradation.passed is False:
                cause = "degradation"
            elif drift.passed is False and cfg.rollback_on_drift:
                cause = "drift"
        decision = RollbackDecision(
            action="rollback" if cause else "keep",
            cause=cause,
            version=version,
            previous_version=previous,
            events=events,
            test_statistic=statistic,
            checks=tuple(checks),
            decided_at=float(self._clock()),
        )
        if not cause and self.armed and events >= cfg.watch_events:
            self._disarm()  # settled: the record keeps growing for the next promotion
        return decision

    def _check_degradation(self) -> Check:
        if self._test is None:
            detail = (
                f"reference has {len(self._reference)} losses, {self.config.min_reference} "
                "needed for a degradation test"
            )
            return Check("degradation", None, None, None, detail)
        r = self._test.result()
        if r.rejected is None:
            detail = f"{r.n} live losses so far; the test needs {self._test.min_samples}"
            return Check("degradation", None, None, r.log_threshold, detail)
        detail = (
            f"live mean loss {r.mean:.4g} over {r.n} events vs reference mean "
            f"{self._reference_mean:.4g} "
            f"(upper bound + tolerance {r.null_mean:.4g}): log LR {r.log_lr:.3f} vs "
            f"{r.log_threshold:.3f}"
        )
        return Check("degradation", not r.rejected, r.log_lr, r.log_threshold, detail)

    def _check_drift(self) -> Check:
        alarm = self._drift_alarm
        if alarm is None:
            return Check("drift", True, 0.0, None, "no upward drift alarm since the promotion")
        detail = f"{alarm.detector} alarm on {alarm.stream} (errors went up) at {alarm.index}"
        return Check("drift", False, 1.0, None, detail)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: the record, the frozen reference and the test."""
        return {
            "format": _STATE_FORMAT,
            "record": list(self._record),
            "reference": list(self._reference),
            "test": None if self._test is None else self._test.state_dict(),
            "version": self._version,
            "previous": self._previous,
            "events": self._events,
            "skipped": self._skipped,
            "drift_alarm": None if self._drift_alarm is None else self._drift_alarm.to_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"rollback watch state must be a dict with format={_STATE_FORMAT}")
        record = [float(v) for v in state["record"]]
        reference = [float(v) for v in state["reference"]]
        if not all(math.isfinite(v) for v in record + reference):
            raise ValueError("checkpointed rollback watch holds non-finite losses")
        if len(record) > self.config.reference_size:
            raise ValueError(
                f"checkpointed record has {len(record)} losses, reference_size is "
                f"{self.config.reference_size}"
            )
        version, previous = state["version"], state["previous"]
        for name, value in (("version", version), ("previous", previous)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"checkpointed {name} must be a string or null, got {value!r}")
        self._record = deque(record, maxlen=self.config.reference_size)
        self._reference = reference
        self._reference_mean = math.fsum(reference) / max(1, len(reference))
        self._version, self._previous = version, previous
        self._test = None
        if state["test"] is not None:
            self._test = MixtureSPRT(
                null_mean=float(state["test"]["null_mean"]),
                alpha=self.config.alpha / 2.0,
                mixture_scale=self.config.mixture_scale,
            )
            self._test.load_state_dict(dict(state["test"]))
        self._events = int(state["events"])
        self._skipped = int(state["skipped"])
        alarm = state["drift_alarm"]
        self._drift_alarm = None if alarm is None else DriftAlarm.from_dict(alarm)
