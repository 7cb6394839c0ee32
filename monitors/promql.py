"""PromQL checks for the promotion gate, against a Prometheus server's HTTP API.

Each check is an instant query plus a condition, the way Argo Rollouts' and Flagger's metric
analyses work: ``PromQLCheck("error_ratio", 'rate(chat_errors_total[5m])', "< 0.05")``.
The query is sent to ``<prometheus_url>/api/v1/query`` with the standard library only.

Outcomes:

- every returned series (or the scalar) satisfies the condition: pass;
- some series does not: fail (the value reported is the one furthest on the wrong side);
- no series at all, a NaN sample, an HTTP/network/timeout error, a PromQL error, or a range
  vector / string result: **inconclusive**, with the reason in the check's detail. No data is
  never a pass.
"""

from __future__ import annotations

import json
import math
import operator
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from monitors.decision import Check

_CONDITION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def parse_condition(condition: str) -> tuple[str, float]:
    """Split ``"< 0.05"`` into ``("<", 0.05)``; ValueError with the accepted form otherwise.

    Example:
        >>> parse_condition(">= 1e3")
        ('>=', 1000.0)
    """
    m = _CONDITION.match(condition) if isinstance(condition, str) else None
    if m is None:
        raise ValueError(
            f"PromQL condition must look like '< 0.05' (one of < <= > >= == != and a "
            f"number), got {condition!r}"
        )
    return m.group(1), float(m.group(2))


@dataclass(frozen=True, slots=True)
class PromQLCheck:
    """One query and the condition its result must meet.

    Attributes:
        name: short name; the check appears as ``promql_<name>`` in decisions and metrics.
        query: a PromQL expression returning an instant vector or a scalar.
        condition: comparison and number, e.g. ``"< 0.05"``.

    Example:
        >>> PromQLCheck("p99_latency", "histogram_quantile(0.99, ...)", "< 2.5").threshold
        2.5
    """

    name: str
    query: str
    condition: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"PromQL check name must match {_NAME.pattern} (it is a metric label), "
                f"got {self.name!r}"
            )
        if not isinstance(self.query, str) or not self.query.strip():
            raise ValueError(f"PromQL check {self.name!r} needs a non-empty query")
        parse_condition(self.condition)

    @property
    def check_name(self) -> str:
        """The name used in decisions and metrics."""
        return f"promql_{self.name}"

    @property
    def op(self) -> str:
        """The comparison operator."""
        return parse_condition(self.condition)[0]

    @property
    def threshold(self) -> float:
        """The number compared with."""
        return parse_condition(self.condition)[1]

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the condition."""
        return _OPS[self.op](value, self.threshold)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The numbers an instant query returned (one per series), or why there are none."""

    values: tuple[float, ...]
    error: str | None = None


class PromQLClient:
    """Minimal client for ``/api/v1/query``.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:9090`` (http or https).
        timeout_s: per-request timeout.

    Example:
        >>> PromQLClient("http://127.0.0.1:9090").url_for("up")
        'http://127.0.0.1:9090/api/v1/query?query=up'
    """

    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"prometheus_url must be an http(s) URL, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def url_for(self, query: str) -> str:
        """The GET URL for an instant query."""
        return f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"

    def query(self, query: str) -> QueryResult:
        """Run an instant query; never raises for server, network or format problems."""
        try:
            with urllib.request.urlopen(self.url_for(query), timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            return QueryResult((), f"HTTP {exc.code} from Prometheus: {_api_error(exc.read())}")
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return QueryResult((), f"Prometheus unreachable at {self.base_url}: {reason}")
        return parse_response(body)

    def evaluate(self, check: PromQLCheck) -> Check:
        """Run ``check`` and turn the answer into a gate :class:`~monitors.decision.Check`."""
        return evaluate(check, self.query(check.query))


def parse_response(body: bytes) -> QueryResult:
    """Read an ``/api/v1/query`` JSON body into numbers, or the reason there are none."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return QueryResult((), "Prometheus answered with something that is not JSON")
    if not isinstance(doc, dict):
        return QueryResult((), "Prometheus answered with JSON that is not an object")
    if doc.get("status") != "success":
        return QueryResult((), f"query failed: {_api_error(body)}")
    data = doc.get("data")
    if not isinstance(data, dict):
        return QueryResult((), "Prometheus answer has no 'data' object")
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar":
            return QueryResult((float(result[1]),))  # type: ignore[index]
        if kind == "vector":
            return QueryResult(tuple(float(series["value"][1]) for series in result))  # type: ignore[union-attr]
    except (TypeError, ValueError, KeyError, IndexError):
        return QueryResult((), f"malformed {kind} result from Prometheus")
    return QueryResult(
        (), f"query returned a {kind!r} result; use an expression giving an instant vector"
    )


def evaluate(check: PromQLCheck, result: QueryResult) -> Check:
    """Apply ``check``'s condition to a query result (see the module docstring)."""
    name, threshold = check.check_name, check.threshold
    if result.error is not None:
        return Check(name, None, None, threshold, result.error)
    if not result.values:
        return Check(name, None, None, threshold, f"no data for {check.query!r}")
    if any(math.isnan(v) for v in result.values):
        return Check(name, None, math.nan, threshold, f"{check.query!r} returned NaN")
    failing = [v for v in result.values if not check.holds(v)]
    pool = failing or list(result.values)
    # Report the value furthest on the wrong side (or, when all pass, the closest to failing).
    value = (
        max(pool) if check.op in ("<", "<=") else min(pool) if check.op in (">", ">=") else pool[0]
    )
    series = f"{len(result.values)} series" if len(result.values) > 1 else "value"
    if failing:
        detail = f"{len(failing)} of {len(result.values)} series fail {check.condition}"
        return Check(name, False, value, threshold, f"{detail} (worst {value:g})")
    return Check(name, True, value, threshold, f"{series} meets {check.condition} ({value:g})")


def _api_error(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return f"{doc.get('errorType', 'error')}: {doc.get('error', '?')}"
    except (ValueError, AttributeError, UnicodeDecodeError):
        return "no error message"
