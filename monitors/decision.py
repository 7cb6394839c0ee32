"""Decision records of the promotion gate and the rollback watch: small frozen values.

A decision lists every check it made, with the value measured and the threshold used, so the
JSON record answers "why was this promoted / held / rolled back?" without rerunning anything.
Values that are not finite numbers (no data) are written as JSON ``null``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

CheckState = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True, slots=True)
class Check:
    """One check of a decision.

    Attributes:
        name: short fixed name (``min_events``, ``sequential_test``, ``promql_<name>``...).
        passed: True (pass), False (fail) or None (inconclusive: no data, or the data could not
            be read). Inconclusive never counts as a pass.
        value: what was measured (None or NaN: nothing).
        threshold: what it was compared with.
        detail: one human sentence (no user text).

    Example:
        >>> Check("min_events", True, 1200.0, 1000.0, "1200 paired events").state
        'pass'
    """

    name: str
    passed: bool | None
    value: float | None
    threshold: float | None
    detail: str

    @property
    def state(self) -> CheckState:
        """``pass``, ``fail`` or ``inconclusive``."""
        if self.passed is None:
            return "inconclusive"
        return "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None)."""
        return {
            "name": self.name,
            "state": self.state,
            "value": _finite_or_none(self.value),
            "threshold": _finite_or_none(self.threshold),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What the promotion gate decided, and why.

    Attributes:
        action: ``promote`` only when every check passed, else ``hold``.
        checks: every check, in a fixed order.
        events: paired events since the last promotion.
        mean_difference: their mean baseline loss minus candidate loss (NaN with none).
        test_statistic: log likelihood ratio of the sequential test.
        decided_at: Unix time of the decision.

    Example:
        >>> d = GateDecision("hold", (Check("min_events", False, 3.0, 10.0, "3 of 10"),),
        ...                  3, 0.1, 0.0, 0.0)
        >>> d.reason
        'hold: min_events failed'
    """

    action: Literal["promote", "hold"]
    checks: tuple[Check, ...]
    events: int
    mean_difference: float
    test_statistic: float
    decided_at: float

    @property
    def reason(self) -> str:
        """One line: ``all checks passed`` or the checks that failed or were inconclusive."""
        return _summary(self.action, self.checks, "all checks passed")

    def check(self, name: str) -> Check:
        """The check called ``name`` (KeyError if there is none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The decision record as a JSON-ready dict."""
        return {
            "kind": "gate",
            "action": self.action,
            "reason": self.reason,
            "events": self.events,
            "mean_difference": _finite_or_none(self.mean_difference),
            "test_statistic": _finite_or_none(self.test_statistic),
            "decided_at": self.decided_at,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        """The decision record as one line of strict JSON."""
        return json.dumps(self.to_dict(), allow_nan=False, sort_keys=True)


@dataclass(frozen=True, slots=True)
class RollbackDecision:
    """What the rollback watch decided about the LIVE version.

    Attributes:
        action: ``rollback`` or ``keep``.
        cause: why it rolls back (``degradation`` or ``drift``); empty when keeping.
        version: the version being watched (the one promoted last), or None when unarmed.
        previous_version: the version a rollback returns to.
        events: live events observed since the promotion.
        test_statistic: log likelihood ratio of the degradation test (NaN: not testing).
        checks: the degradation and drift checks (passed = no reason to roll back).
        decided_at: Unix time of the decision.
    """

    action: Literal["rollback", "keep"]
    cause: str
    version: str | None
    previous_version: str | None
    events: int
    test_statistic: float
    checks: tuple[Check, ...]
    decided_at: float

    @property
    def reason(self) -> str:
        """One line: the cause of a rollback, or why the version is kept."""
        if self.action == "rollback":
            return f"rollback: {self.cause}"
        return _summary("keep", self.checks, "no degradation, no drift")

    def to_dict(self) -> dict[str, Any]:
        """The decision record as a JSON-ready dict."""
        return {
            "kind": "rollback",
            "action": self.action,
            "cause": self.cause,
            "reason": self.reason,
            "version": self.version,
            "previous_version": self.previous_version,
            "events": self.events,
            "test_statistic": _finite_or_none(self.test_statistic),
            "decided_at": self.decided_at,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        """The decision record as one line of strict JSON."""
        return json.dumps(self.to_dict(), allow_nan=False, sort_keys=True)


def _summary(action: str, checks: tuple[Check, ...], ok: str) -> str:
    bad = [f"{c.name} {'failed' if c.passed is False else 'inconclusive'}" for c in checks]
    bad = [b for b, c in zip(bad, checks, strict=True) if c.passed is not True]
    return f"{action}: {', '.join(bad)}" if bad else ok


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
