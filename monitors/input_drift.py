"""Input drift: has the traffic itself changed, whatever the models make of it?

Cheap features of each event are compared, window by window, with a reference window taken
from the same stream:

- ``input_prompt_length`` and ``input_response_length`` (characters or tokens; any unit, used
  consistently): two-sample Kolmogorov-Smirnov test (:class:`TwoSampleKS`);
- ``input_feedback_mix``, the share of thumbs, ratings, corrections and preferences:
  chi-square test of homogeneity (:class:`CategoricalShift`);
- ``input_embedding_<i>``: a few fixed random projections of the encoder's pooled embedding,
  each with its own KS test. The projection matrix comes from a seeded generator and the
  embedding size, so a restarted process projects identically.

Each test freezes the first ``reference_size`` values as its reference, then tests every
following block of ``window_size`` values against it (non-overlapping blocks, so the test
count per stream is events / window_size). An alarm is raised when the p-value is at most
``alpha``; the test then starts afresh, taking the next ``reference_size`` values as the new
reference, so one shift raises one alarm. With the defaults (500, 500, alpha 1e-4) and seven
streams, a stationary stream of 100,000 events runs about 1,400 tests: about 0.14 false alarms
are expected. A shift is reported at most ``window_size`` events after it is complete.

State is plain JSON (the reference and the current partial window), see ``state_dict``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from monitors.alarms import AlarmCallback, DriftAlarm, check_stream_name, emit_alarm
from monitors.base import Monitor

if TYPE_CHECKING:
    from monitors.metrics import Metrics

FEEDBACK_TYPES = ("thumb", "rating", "correction", "preference")
_STATE_FORMAT = 1


# --- statistics


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance ``sup |F_a - F_b|`` (ties handled exactly)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a KS distance ``d`` between samples of n and m.

    Uses the Kolmogorov distribution with Stephens' small-sample correction; with ties
    (integer lengths) the test is conservative.

    Example:
        >>> ks_pvalue(0.0, 500, 500)
        1.0
        >>> ks_pvalue(0.2, 500, 500) < 1e-8
        True
    """
    ne = n * m / (n + m)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += term if k % 2 else -term
        if term < 1e-16:
            break
    return min(1.0, max(0.0, 2.0 * total))


def chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution with integer ``df`` (closed form).

    Example:
        >>> round(chi2_sf(3.841458820694124, 1), 6)
        0.05
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if x <= 0:
        return 1.0
    half = x / 2.0
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for j in range(1, df // 2):
            term *= half / j
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(2.0 * x / math.pi) * math.exp(-half)
    for j in range(1, (df - 1) // 2 + 1):
        total += term
        term *= x / (2 * j + 1)
    return min(1.0, total)


def chi2_homogeneity(reference: Mapping[str, int], window: Mapping[str, int]) -> float:
    """p-value that two samples of categories share one distribution (chi-square test).

    Categories whose expected count would be below 5 in either sample are pooled first, so
    rare feedback types do not inflate the statistic.

    Example:
        >>> chi2_homogeneity({"thumb": 400, "rating": 100}, {"thumb": 395, "rating": 105}) > 0.5
        True
    """
    n_ref, n_win = sum(reference.values()), sum(window.values())
    if n_ref == 0 or n_win == 0:
        return 1.0
    total = n_ref + n_win
    rows: list[tuple[int, int]] = []
    pooled = [0, 0]
    for cat in sorted(set(reference) | set(window)):
        r, w = reference.get(cat, 0), window.get(cat, 0)
        share = (r + w) / total
        if share * min(n_ref, n_win) < 5:
            pooled[0] += r
            pooled[1] += w
        else:
            rows.append((r, w))
    if sum(pooled):
        rows.append((pooled[0], pooled[1]))
    if len(rows) < 2:
        return 1.0
    stat = 0.0
    for r, w in rows:
        share = (r + w) / total
        for observed, n in ((r, n_ref), (w, n_win)):
            expected = share * n
            stat += (observed - expected) ** 2 / expected
    return chi2_sf(stat, len(rows) - 1)


# --- monitors


class _WindowedTwoSample:
    """Shared machinery: a frozen reference, consecutive test blocks, re-reference on alarm."""

    detector = ""

    def __init__(self, stream: str, reference_size: int, window_size: int, alpha: float):
        self.stream = check_stream_name(stream)
        if reference_size < 20 or window_size < 20:
            raise ValueError(
                f"reference_size and window_size must be >= 20 for a two-sample test, got "
                f"{reference_size} and {window_size}"
            )
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.reference_size = reference_size
        self.window_size = window_size
        self.alpha = alpha
        self._reference: list[Any] = []
        self._window: list[Any] = []
        self._seen = 0
        self._alarms = 0
        self._last_alarm: DriftAlarm | None = None
        self._last_p = math.nan
        self._drift_detected = False

    def _test(self) -> tuple[float, str]:
        raise NotImplementedError

    def _add(self, value: Any) -> DriftAlarm | None:
        self._drift_detected = False
        index = self._seen
        self._seen += 1
        if len(self._reference) < self.reference_size:
            self._reference.append(value)
            return None
        self._window.append(value)
        if len(self._window) < self.window_size:
            return None
        p, direction = self._test()
        self._last_p = p
        self._window = []
        if p > self.alpha:
            return None
        alarm = DriftAlarm(self.detector, self.stream, index, direction)  # type: ignore[arg-type]
        self._reference = []  # the new regime becomes the next reference
        self._alarms += 1
        self._last_alarm = alarm
        self._drift_detected = True
        return alarm

    @property
    def drift_detected(self) -> bool:
        """True right after the value that completed a drifting window."""
        return self._drift_detected

    @property
    def alarms(self) -> int:
        """Alarms raised so far."""
        return self._alarms

    @property
    def last_alarm(self) -> DriftAlarm | None:
        """The most recent alarm, if any."""
        return self._last_alarm

    @property
    def last_p_value(self) -> float:
        """p-value of the last completed window (NaN before the first)."""
        return self._last_p

    @property
    def seen(self) -> int:
        """Values fed so far."""
        return self._seen

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state (the reference and the partial window)."""
        return {
            "format": _STATE_FORMAT,
            "detector": self.detector,
            "stream": self.stream,
            "settings": [self.reference_size, self.window_size, self.alpha],
            "reference": list(self._reference),
            "window": list(self._window),
            "seen": self._seen,
            "alarms": self._alarms,
            "last_alarm": self._last_alarm.to_dict() if self._last_alarm else None,
            "last_p": None if math.isnan(self._last_p) else self._last_p,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same detector, stream and settings)."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"input drift state must be a dict with format={_STATE_FORMAT}")
        mine = {
            "detector": self.detector,
            "stream": self.stream,
            "settings": [self.reference_size, self.window_size, self.alpha],
        }
        for key, value in mine.items():
            if state.get(key) != value:
                raise ValueError(
                    f"checkpointed input drift test has {key}={state.get(key)!r}, this one "
                    f"{value!r}; build it with the checkpoint's settings"
                )
        reference, window = list(state["reference"]), list(state["window"])
        if len(reference) > self.reference_size or len(window) >= self.window_size:
            raise ValueError("checkpointed input drift windows are longer than configured")
        if len(window) and len(reference) < self.reference_size:
            raise ValueError("checkpointed input drift test has a window before its reference")
        self._reference = [self._load_value(v) for v in reference]
        self._window = [self._load_value(v) for v in window]
        self._seen = int(state["seen"])
        self._alarms = int(state["alarms"])
        last = state["last_alarm"]
        self._last_alarm = DriftAlarm.from_dict(last) if last is not None else None
        self._last_p = math.nan if state["last_p"] is None else float(state["last_p"])
        self._drift_detected = False

    def _load_value(self, value: Any) -> Any:
        raise NotImplementedError


class TwoSampleKS(_WindowedTwoSample, Monitor):
    """KS test of each block of ``window_size`` values against a reference block.

    Args:
        stream: stream name (a metric label).
        reference_size: values in the reference.
        window_size: values in each tested block.
        alpha: p-value at or below which a block raises an alarm.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(3)
        >>> ks = TwoSampleKS("input_prompt_length")
        >>> alarms = ks.update_many(np.concatenate([rng.poisson(80, 3000), rng.poisson(95, 1000)]))
        >>> [(a.index, a.direction) for a in alarms]
        [(3499, 'increase')]
    """

    detector = "ks"

    def __init__(
        self,
        stream: str,
        reference_size: int = 500,
        window_size: int = 500,
        alpha: float = 1e-4,
    ) -> None:
        super().__init__(stream, reference_size, window_size, alpha)

    def update(self, value: float) -> None:
        """Feed one value (NaN/inf are skipped and not counted)."""
        self.observe(value)

    def observe(self, value: float) -> DriftAlarm | None:
        """Feed one value; returns the alarm it raised, if any."""
        v = float(value)
        if not math.isfinite(v):
            self._drift_detected = False
            return None
        return self._add(v)

    def update_many(self, values: ArrayLike) -> list[DriftAlarm]:
        """Feed values in order; returns the alarms raised."""
        alarms = []
        for v in np.asarray(values, dtype=np.float64).ravel().tolist():
            alarm = self.observe(v)
            if alarm is not None:
                alarms.append(alarm)
        return alarms

    def _test(self) -> tuple[float, str]:
        ref = np.asarray(self._reference)
        win = np.asarray(self._window)
        p = ks_pvalue(ks_statistic(ref, win), ref.size, win.size)
        diff = float(np.median(win) - np.median(ref)) or float(win.mean() - ref.mean())
        direction = "increase" if diff > 0 else "decrease" if diff < 0 else "change"
        return p, direction

    def _load_value(self, value: Any) -> float:
        v = float(value)
        if not math.isfinite(v):
            raise ValueError("checkpointed KS window holds a non-finite value")
        return v


class CategoricalShift(_WindowedTwoSample):
    """Chi-square test of each block's category mix against a reference block.

    Takes category names, not floats, so it is not a :class:`~monitors.base.Monitor`.
    Alarms have direction ``change``.

    Example:
        >>> shift = CategoricalShift("input_feedback_mix")
        >>> mix = ["thumb"] * 3 + ["rating"]
        >>> alarms = [shift.observe(mix[i % 4]) for i in range(1000)]
        >>> alarms += [shift.observe("preference") for _ in range(500)]
        >>> [a.index for a in alarms if a]
        [1499]
    """

    detector = "chi2"

    def __init__(
        self,
        stream: str,
        reference_size: int = 500,
        window_size: int = 500,
        alpha: float = 1e-4,
    ) -> None:
        super().__init__(stream, reference_size, window_size, alpha)

    def observe(self, category: str) -> DriftAlarm | None:
        """Feed one category; returns the alarm it raised, if any."""
        if not isinstance(category, str):
            raise ValueError(f"categories are strings, got {category!r}")
        return self._add(category)

    def _test(self) -> tuple[float, str]:
        return chi2_homogeneity(Counter(self._reference), Counter(self._window)), "change"

    def _load_value(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"checkpointed category is not a string: {value!r}")
        return value


# --- input features


@dataclass(frozen=True, slots=True)
class InputFeatures:
    """The cheap, text-free features of one event that input drift watches.

    Attributes:
        prompt_length: length of the prompt (characters or tokens, consistently).
        response_length: length of the response, same unit.
        feedback_type: ``thumb``, ``rating``, ``correction`` or ``preference`` (other
            strings are counted as ``other``).
        embedding: the encoder's pooled embedding (a list or 1-D array), or None.
    """

    prompt_length: float
    response_length: float
    feedback_type: str
    embedding: Sequence[float] | np.ndarray | None = None


class InputDriftMonitor:
    """Input drift on prompt/response length, feedback mix and embedding projections.

    Args:
        reference_size: values in each test's reference block.
        window_size: values in each tested block.
        alpha: per-test p-value threshold.
        projections: random projections of the embedding to watch (0: none).
        seed: seed of the projection matrix.
        on_alarm: called with each :class:`~monitors.drift.DriftAlarm`.
        metrics: counts alarms in ``feedstep_drift_alarms_total`` when given.

    Example:
        >>> m = InputDriftMonitor(projections=2)
        >>> m.update(InputFeatures(42, 180, "thumb", [0.1, -0.3, 0.2]))
        []
        >>> sorted(m.streams)[:2]
        ['input_embedding_0', 'input_embedding_1']
    """

    def __init__(
        self,
        *,
        reference_size: int = 500,
        window_size: int = 500,
        alpha: float = 1e-4,
        projections: int = 4,
        seed: int = 0,
        on_alarm: AlarmCallback | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not 0 <= projections <= 16:
            raise ValueError(
                f"projections must be in 0..16 (each is a metric label), got {projections}"
            )
        self.seed = seed
        self.on_alarm = on_alarm
        self.metrics = metrics
        sizes = (reference_size, window_size, alpha)
        self.prompt_length = TwoSampleKS("input_prompt_length", *sizes)
        self.response_length = TwoSampleKS("input_response_length", *sizes)
        self.feedback_mix = CategoricalShift("input_feedback_mix", *sizes)
        self.embedding = [TwoSampleKS(f"input_embedding_{i}", *sizes) for i in range(projections)]
        self._projection: np.ndarray | None = None

    @property
    def streams(self) -> dict[str, _WindowedTwoSample]:
        """Every test, by stream name."""
        tests: list[_WindowedTwoSample] = [
            self.prompt_length,
            self.response_length,
            self.feedback_mix,
            *self.embedding,
        ]
        return {t.stream: t for t in tests}

    def _project(self, embedding: Sequence[float] | np.ndarray) -> np.ndarray:
        e = np.asarray(embedding, dtype=np.float64).ravel()
        if self._projection is None:
            self._projection = projection_matrix(self.seed, len(self.embedding), e.size)
        if e.size != self._projection.shape[1]:
            raise ValueError(
                f"embedding has {e.size} values, earlier ones had {self._projection.shape[1]}; "
                "input drift needs one encoder's embeddings"
            )
        return self._projection @ e

    def update(self, features: InputFeatures) -> list[DriftAlarm]:
        """Feed one event's features; returns (and reports) the alarms raised."""
        alarms = [
            self.prompt_length.observe(features.prompt_length),
            self.response_length.observe(features.response_length),
            self.feedback_mix.observe(
                features.feedback_type if features.feedback_type in FEEDBACK_TYPES else "other"
            ),
        ]
        if self.embedding and features.embedding is not None:
            projected = self._project(features.embedding)
            if np.all(np.isfinite(projected)):
                alarms += [
                    t.observe(v) for t, v in zip(self.embedding, projected.tolist(), strict=True)
                ]
        raised = [a for a in alarms if a is not None]
        for alarm in raised:
            emit_alarm(alarm, self.metrics, self.on_alarm)
        return raised

    def update_many(self, events: Iterable[InputFeatures]) -> list[DriftAlarm]:
        """Feed several events in order; returns the alarms raised."""
        out: list[DriftAlarm] = []
        for f in events:
            out += self.update(f)
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state of every test (the projection is rebuilt from the seed)."""
        dim = None if self._projection is None else int(self._projection.shape[1])
        return {
            "format": _STATE_FORMAT,
            "seed": self.seed,
            "projections": len(self.embedding),
            "embedding_dim": dim,
            "tests": {name: t.state_dict() for name, t in self.streams.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same seed and number of projections)."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"input drift state must be a dict with format={_STATE_FORMAT}")
        if state.get("seed") != self.seed or state.get("projections") != len(self.embedding):
            raise ValueError(
                f"checkpointed input drift monitor has seed={state.get('seed')!r}, "
                f"projections={state.get('projections')!r}; this one seed={self.seed}, "
                f"projections={len(self.embedding)}"
            )
        tests = state["tests"]
        if set(tests) != set(self.streams):
            raise ValueError(f"checkpointed input drift streams {sorted(tests)} differ")
        for name, test in self.streams.items():
            test.load_state_dict(tests[name])
        dim = state["embedding_dim"]
        self._projection = (
            None if dim is None else projection_matrix(self.seed, len(self.embedding), int(dim))
        )


def projection_matrix(seed: int, projections: int, dim: int) -> np.ndarray:
    """The fixed random projection: ``projections x dim`` Gaussian entries over ``sqrt(dim)``.

    Example:
        >>> bool((projection_matrix(0, 2, 8) == projection_matrix(0, 2, 8)).all())
        True
    """
    rng = np.random.default_rng([seed, dim])
    return rng.standard_normal((projections, dim)) / math.sqrt(dim)
