"""The promotion gate: may the candidate replace the LIVE baseline now?

The gate is fed the paired per-event losses of every scored micro-batch
(:meth:`Gate.observe`) and the drift alarms of the candidate's error stream
(:meth:`Gate.note_alarm`). After any batch, :meth:`Gate.decide` runs the checks below and
returns a :class:`~monitors.decision.GateDecision`. It promotes only when ALL checks pass;
a check without data is inconclusive, and inconclusive is never a pass.

1. ``min_events``: at least ``min_events`` paired events since the last promotion.
2. ``sequential_test``: a one-sided mixture SPRT (:mod:`monitors.sequential`) on
   d = baseline loss - candidate loss rejects H0: mean(d) <= ``min_effect`` at level
   ``alpha``. It is always valid, so checking after every batch keeps the false-promotion
   rate at or below about ``alpha``. The test must reject at the time of the decision,
   not just at some earlier look, so stale evidence from an earlier regime cannot promote.
3. ``holdout``: on the fixed holdout set the caller scores every few steps, the candidate's
   mean loss is at most ``holdout_tolerance`` above the baseline's (missing: inconclusive).
4. ``drift_quiet``: no drift alarm on the candidate's error stream within the last
   ``drift_quiet_events`` events (inconclusive until that many events have been watched).
5. ``param_distance``: the candidate's distance from the baseline's weights, supplied by the
   caller, is under ``max_param_distance`` (missing: inconclusive).
6. ``probe_kl``: the caller's latest KL(candidate ‖ live) over its probe set is at most
   ``max_probe_kl``. Without a probe set (``probe_configured`` False) the check is off and says
   so; with one, no measurement since the last promotion is inconclusive.
7. ``promql_<name>``: each configured PromQL check (:mod:`monitors.promql`). Queries are
   sent only when checks 1-6 all pass, so a Prometheus server is not queried every batch;
   until then they are reported inconclusive ("not queried").

Non-finite losses (a model did not score the event, or overflowed) are never evidence: the
pair is dropped and counted. The gate does not promote anything itself: the caller switches
LIVE and then calls :meth:`Gate.reset`, which restarts the evidence from the new baseline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from monitors.alarms import DriftAlarm
from monitors.decision import Check, GateDecision
from monitors.promql import PromQLCheck, PromQLClient
from monitors.sequential import MixtureSPRT, SequentialResult

_STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class HoldoutResult:
    """Mean losses of both models on the fixed holdout set, as scored by the caller.

    Attributes:
        baseline_loss: the baseline's mean holdout loss.
        candidate_loss: the candidate's mean holdout loss.
        step: the training step at which the holdout was scored (for the record only).
    """

    baseline_loss: float
    candidate_loss: float
    step: int | None = None


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Settings of the promotion gate, validated on creation.

    Attributes:
        min_events: paired events needed since the last promotion (>= 1).
        min_effect: how much lower (in loss units) the candidate's mean per-event loss must be
            for H0 to be rejected; 0 asks for "any improvement" (>= 0).
        alpha: level of the sequential test: the false-promotion rate bound (0 < alpha < 1).
        holdout_tolerance: how much higher the candidate's holdout loss may be (>= 0).
        holdout_required: False switches the holdout check off (no holdout set exists); when
            True a missing holdout result is inconclusive.
        drift_quiet_events: events without a candidate-error drift alarm needed (>= 0; 0
            switches the check off).
        max_param_distance: cap on the caller's parameter distance (> 0; inf: no cap, but a
            distance must still be supplied).
        max_probe_kl: cap on the caller's probe KL(candidate ‖ live), in nats (> 0; inf: no
            cap, but with a probe set a measurement must still be supplied).
        probe_configured: True when the caller measures a probe set (the governor sets it from
            whether it has one); False switches the ``probe_kl`` check off.
        promql: PromQL checks; they need ``prometheus_url``.
        prometheus_url: the Prometheus server, e.g. ``http://127.0.0.1:9090``.
        promql_timeout_s: timeout of each PromQL query.
        mixture_scale: prior scale of the sequential test's mixture, in standard deviations
            of d (see :class:`~monitors.sequential.MixtureSPRT`).

    Example:
        >>> GateConfig(min_events=500, min_effect=0.01).alpha
        0.05
        >>> GateConfig(alpha=1.5)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be in (0, 1) (the false-promotion rate bound), got 1.5
    """

    min_events: int = 2000
    min_effect: float = 0.0
    alpha: float = 0.05
    holdout_tolerance: float = 0.0
    holdout_required: bool = True
    drift_quiet_events: int = 1000
    max_param_distance: float = math.inf
    max_probe_kl: float = math.inf
    probe_configured: bool = False
    promql: tuple[PromQLCheck, ...] = ()
    prometheus_url: str | None = None
    promql_timeout_s: float = 5.0
    mixture_scale: float = 0.1

    def __post_init__(self) -> None:
        _int_at_least("min_events", self.min_events, 1)
        _int_at_least("drift_quiet_events", self.drift_quiet_events, 0)
        _number("min_effect", self.min_effect, low=0.0)
        _number("holdout_tolerance", self.holdout_tolerance, low=0.0)
        _number("alpha", self.alpha)
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(
                f"alpha must be in (0, 1) (the false-promotion rate bound), got {self.alpha}"
            )
        for cap in ("max_param_distance", "max_probe_kl"):
            value = getattr(self, cap)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{cap} must be a number > 0 (inf for no cap), got {value!r}")
        _number("promql_timeout_s", self.promql_timeout_s, low=0.0, strict=True)
        _number("mixture_scale", self.mixture_scale, low=0.0, strict=True)
        if not isinstance(self.promql, tuple) or not all(
            isinstance(c, PromQLCheck) for c in self.promql
        ):
            raise ValueError("promql must be a tuple of PromQLCheck (use PromQLCheck(...))")
        names = [c.name for c in self.promql]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"PromQL check names must be unique; repeated: {dupes}")
        if self.promql and not self.prometheus_url:
            raise ValueError(
                f"{len(self.promql)} PromQL check(s) configured but prometheus_url is "
                f"{self.prometheus_url!r}; set prometheus_url or remove the promql checks"
            )
        if self.prometheus_url is not None:
            PromQLClient(self.prometheus_url, self.promql_timeout_s)  # validates the URL

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GateConfig:
        """Build from plain config values; ``promql`` is a list of {name, query, condition}.

        Unknown keys are an error that names them.

        Example:
            >>> cfg = GateConfig.from_mapping({"prometheus_url": "http://p:9090",
            ...     "promql": [{"name": "errors", "query": "sum(up)", "condition": "> 0"}]})
            >>> cfg.promql[0].check_name
            'promql_errors'
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown gate setting(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        checks = []
        for i, item in enumerate(values.pop("promql", ()) or ()):
            if not isinstance(item, Mapping) or set(item) != {"name", "query", "condition"}:
                raise ValueError(
                    f"promql[{i}] must have exactly the keys name, query, condition; got {item!r}"
                )
            checks.append(PromQLCheck(item["name"], item["query"], item["condition"]))
        return cls(**values, promql=tuple(checks))


class Gate:
    """Decides when the candidate may replace the baseline.

    Args:
        config: the gate's settings.
        promql_client: client for the PromQL checks (default: one for
            ``config.prometheus_url``); tests pass a fake.
        clock: returns Unix time for the decision record.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> gate = Gate(GateConfig(min_events=100, drift_quiet_events=0))
        >>> base = rng.gamma(2.0, 0.3, size=3000)
        >>> gate.observe(base, base - 0.2 + rng.normal(0, 0.1, size=3000))
        >>> decision = gate.decide(holdout=HoldoutResult(0.6, 0.5), param_distance=0.3)
        >>> decision.action, decision.reason
        ('promote', 'all checks passed')
        >>> gate.reset()  # after the caller switched LIVE to the candidate
    """

    def __init__(
        self,
        config: GateConfig,
        *,
        promql_client: PromQLClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        if promql_client is None and config.prometheus_url is not None:
            promql_client = PromQLClient(config.prometheus_url, config.promql_timeout_s)
        self._promql = promql_client
        self._test = MixtureSPRT(
            null_mean=config.min_effect,
            alpha=config.alpha,
            mixture_scale=config.mixture_scale,
        )
        self._watched = 0  # rows observed over the gate's life (not reset on promotion)
        self._alarm_at: int | None = None  # value of _watched when the last alarm was noted
        self._last_alarm: DriftAlarm | None = None

    # ------------------------------------------------------------------ evidence

    def observe(self, baseline_loss: ArrayLike, candidate_loss: ArrayLike) -> None:
        """Add one micro-batch of paired per-event losses (same events, same order).

        Pairs where either loss is not finite are dropped (counted in the test's
        ``skipped``): an event scored by one model only is no paired evidence.
        """
        b = np.asarray(baseline_loss, dtype=np.float64).ravel()
        c = np.asarray(candidate_loss, dtype=np.float64).ravel()
        if b.shape != c.shape:
            raise ValueError(
                f"paired losses must have one value per event for both models; got "
                f"{b.size} baseline and {c.size} candidate losses"
            )
        self._test.update(b - c)  # NaN or inf on either side gives a non-finite difference
        self._watched += int(b.size)

    def note_alarm(self, alarm: DriftAlarm) -> None:
        """Record a drift alarm on the candidate's error stream (call it as alarms arrive)."""
        self._alarm_at = self._watched
        self._last_alarm = alarm

    def reset(self) -> None:
        """Restart the evidence after a promotion (the candidate is the new baseline).

        Drift memory is kept: an alarm is about the candidate's error stream, not the pair.
        """
        self._test.reset()

    @property
    def events(self) -> int:
        """Paired events with finite losses since the last promotion."""
        return self._test.n

    # ------------------------------------------------------------------ decision

    def decide(
        self,
        *,
        holdout: HoldoutResult | None = None,
        param_distance: float | None = None,
        probe_kl: float | None = None,
    ) -> GateDecision:
        """Run every check and return the decision (it changes no state).

        Args:
            holdout: the latest holdout scores, or None when none is available yet.
            param_distance: the candidate's distance from the baseline weights, or None.
            probe_kl: the latest KL(candidate ‖ live) over the probe set since the last
                promotion, or None when it has not been measured since.
        """
        cfg = self.config
        result = self._test.result()
        checks = [
            self._check_min_events(),
            self._check_test(result),
            self._check_holdout(holdout),
            self._check_drift(),
            self._check_param_distance(param_distance),
            self._check_probe_kl(probe_kl),
        ]
        ready = all(c.passed is True for c in checks)
        for pq in cfg.promql:
            if not ready:
                checks.append(
                    Check(pq.check_name, None, None, pq.threshold, "not queried: other checks")
                )
            elif self._promql is None:
                checks.append(
                    Check(pq.check_name, None, None, pq.threshold, "no Prometheus client")
                )
            else:
                checks.append(self._promql.evaluate(pq))
        promote = all(c.passed is True for c in checks)
        return GateDecision(
            action="promote" if promote else "hold",
            checks=tuple(checks),
            events=result.n,
            mean_difference=result.mean,
            test_statistic=result.log_lr,
            decided_at=float(self._clock()),
        )

    def _check_min_events(self) -> Check:
        n, need = self._test.n, self.config.min_events
        detail = f"{n} paired events since the last promotion, {need} needed"
        return Check("min_events", n >= need, float(n), float(need), detail)

    def _check_test(self, r: SequentialResult) -> Check:
        if r.rejected is None:
            detail = (
                f"{r.n} paired events with finite losses ({r.skipped} pairs dropped); "
                f"the test needs {self._test.min_samples} before it can decide"
            )
            return Check("sequential_test", None, None, r.log_threshold, detail)
        detail = (
            f"mean(baseline - candidate) = {r.mean:.4g} (sd {r.std:.3g}, n {r.n}) against "
            f"min_effect {r.null_mean:g}: log LR {r.log_lr:.3f} vs {r.log_threshold:.3f} "
            f"(always-valid p {r.p_value:.3g}, alpha {self.config.alpha:g})"
        )
        return Check("sequential_test", r.rejected, r.log_lr, r.log_threshold, detail)

    def _check_holdout(self, holdout: HoldoutResult | None) -> Check:
        tol = self.config.holdout_tolerance
        if holdout is None and not self.config.holdout_required:
            return Check("holdout", True, None, tol, "switched off (no holdout set configured)")
        if holdout is None:
            return Check("holdout", None, None, tol, "no holdout result yet")
        b, c = float(holdout.baseline_loss), float(holdout.candidate_loss)
        if not (math.isfinite(b) and math.isfinite(c)):
            return Check("holdout", None, None, tol, f"holdout losses not finite ({b}, {c})")
        worse = c - b
        at = f" at step {holdout.step}" if holdout.step is not None else ""
        detail = f"holdout loss{at}: candidate {c:.4g}, baseline {b:.4g} (tolerance {tol:g})"
        return Check("holdout", worse <= tol, worse, tol, detail)

    def _check_drift(self) -> Check:
        quiet = self.config.drift_quiet_events
        if quiet == 0:
            return Check("drift_quiet", True, None, 0.0, "switched off (drift_quiet_events=0)")
        if self._alarm_at is None:
            watched = self._watched
            if watched < quiet:
                detail = f"only {watched} events watched, {quiet} needed to call it quiet"
                return Check("drift_quiet", None, float(watched), float(quiet), detail)
            detail = f"no drift alarm on the candidate's error stream in {watched} events"
            return Check("drift_quiet", True, float(watched), float(quiet), detail)
        since = self._watched - self._alarm_at
        alarm = self._last_alarm
        assert alarm is not None
        detail = (
            f"last alarm ({alarm.detector} on {alarm.stream}, {alarm.direction}) "
            f"{since} events ago, {quiet} quiet events needed"
        )
        return Check("drift_quiet", since >= quiet, float(since), float(quiet), detail)

    def _check_param_distance(self, distance: float | None) -> Check:
        cap = self.config.max_param_distance
        if distance is None or math.isnan(distance):
            return Check("param_distance", None, None, cap, "no parameter distance supplied")
        if distance < 0:
            raise ValueError(f"param_distance is a distance, it cannot be {distance}")
        detail = f"parameter distance {distance:.4g}, cap {cap:g}"
        return Check("param_distance", bool(distance < cap), float(distance), cap, detail)

    def _check_probe_kl(self, kl: float | None) -> Check:
        cap = self.config.max_probe_kl
        if not self.config.probe_configured:
            return Check("probe_kl", True, None, cap, "switched off (no probe_file configured)")
        if kl is None or math.isnan(kl):
            return Check("probe_kl", None, None, cap, "probe not measured since the last promotion")
        if kl < 0:
            raise ValueError(f"probe_kl is a KL divergence, it cannot be {kl}")
        detail = f"KL(candidate || live) on the probe set {kl:.4g} nats, cap {cap:g}"
        return Check("probe_kl", bool(kl <= cap), float(kl), cap, detail)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: the test's sufficient statistics and the drift memory."""
        return {
            "format": _STATE_FORMAT,
            "test": self._test.state_dict(),
            "watched": self._watched,
            "alarm_at": self._alarm_at,
            "last_alarm": self._last_alarm.to_dict() if self._last_alarm else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the test settings must match the config)."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"gate state must be a dict with format={_STATE_FORMAT}")
        self._test.load_state_dict(dict(state["test"]))
        watched, alarm_at = state["watched"], state["alarm_at"]
        if not (isinstance(watched, int) and watched >= 0):
            raise ValueError(f"bad gate state: watched={watched!r}")
        if alarm_at is not None and not (isinstance(alarm_at, int) and 0 <= alarm_at <= watched):
            raise ValueError(f"bad gate state: alarm_at={alarm_at!r} (watched {watched})")
        last = state["last_alarm"]
        self._watched = watched
        self._alarm_at = alarm_at
        self._last_alarm = DriftAlarm.from_dict(last) if last is not None else None


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: object, low: float | None = None, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
