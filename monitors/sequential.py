"""An always-valid sequential test on a stream of real numbers: the mixture SPRT.

The question the promotion gate asks after every micro-batch is "is the mean of the paired
differences d = baseline loss - candidate loss larger than ``null_mean``?". A fixed-sample
z-test may only be looked at once; looking after every batch and stopping at the first
"significant" answer inflates false promotions (see :mod:`monitors.simulate`). The mixture
sequential probability ratio test (mSPRT; Robbins 1970, Johari et al. 2017 "Peeking at A/B
tests") can be looked at after every value: its statistic is a test martingale, so by Ville's
inequality the chance that it *ever* crosses ``1 / alpha`` under the null is at most ``alpha``.

The statistic used here is one-sided. Under a Gaussian model with standard deviation sigma, the
likelihood ratio of mean ``null_mean + delta`` against ``null_mean`` is mixed over a half-normal
prior on ``delta > 0`` with scale ``tau = mixture_scale * sigma``. With ``n`` values, sample
mean ``m`` and ``z = (m - null_mean) * sqrt(n) / sigma``, writing ``v = 1 + n * r**2``
(``r = mixture_scale``) and ``x = r * sqrt(n) * z / sqrt(v)``::

    log LR = log 2 - log(v) / 2 + x**2 / 2 + log Phi(x)

For a true mean at or below ``null_mean`` this is a non-negative supermartingale, so H0
(mean <= null_mean) is rejected when ``log LR >= log(1 / alpha)``. Sigma is unknown and is
replaced by the running sample standard deviation (the usual large-sample plug-in, as in Johari
et al.); :attr:`MixtureSPRT.min_samples` keeps the first, noisy estimates from deciding
anything. The simulations in ``tests/unit/test_sequential.py`` check the resulting error rate
on skewed, heavy-tailed log-loss differences.

Non-finite values (NaN: a model did not score the event; inf: an overflowed loss) are never
evidence: they are dropped and counted in :attr:`SequentialResult.skipped`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

_LOG2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SIGMA_FLOOR = 1e-12
_STATE_FORMAT = 1


def log_normal_cdf_plus_half_square(x: float) -> float:
    """``log Phi(x) + x**2 / 2``, accurate for very negative ``x`` too.

    The two terms nearly cancel in the far left tail, where ``Phi(x)`` underflows; there the
    asymptotic series of Mills' ratio is used instead.

    Example:
        >>> round(log_normal_cdf_plus_half_square(0.0), 6) == round(math.log(0.5), 6)
        True
    """
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0))) + 0.5 * x * x
    t = -x
    inv2 = 1.0 / (t * t)
    mills = (1.0 - inv2 * (1.0 - 3.0 * inv2 * (1.0 - 5.0 * inv2))) / t
    return math.log(mills) - _HALF_LOG_2PI


def mixture_log_lr(n: int, z: float, mixture_scale: float) -> float:
    """Log of the one-sided half-normal mixture likelihood ratio after ``n`` values.

    Args:
        n: number of values.
        z: standardized excess of the sample mean over the null mean,
            ``(mean - null_mean) * sqrt(n) / sigma``.
        mixture_scale: prior scale of the standardized effect (``tau / sigma``), > 0.

    Example:
        >>> mixture_log_lr(0, 0.0, 0.1)  # no data: the ratio is 1
        0.0
        >>> mixture_log_lr(10_000, 5.0, 0.1) > math.log(1 / 0.05)
        True
    """
    if n <= 0:
        return 0.0
    v = 1.0 + n * mixture_scale * mixture_scale
    x = mixture_scale * math.sqrt(n) * z / math.sqrt(v)
    return _LOG2 - 0.5 * math.log(v) + log_normal_cdf_plus_half_square(x)


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """Where a :class:`MixtureSPRT` stands after the values seen so far.

    Attributes:
        n: finite values used.
        mean: their mean (NaN with no values).
        std: their sample standard deviation (NaN with fewer than two values).
        null_mean: the boundary of H0 (mean <= null_mean).
        log_lr: log of the mixture likelihood ratio (the log e-value); 0 with no evidence.
        log_threshold: ``log(1 / alpha)``; H0 is rejected when ``log_lr`` reaches it.
        rejected: True when H0 is rejected now; False when there is data but not enough
            evidence; None (inconclusive) with fewer than ``min_samples`` values.
        skipped: non-finite values dropped.
    """

    n: int
    mean: float
    std: float
    null_mean: float
    log_lr: float
    log_threshold: float
    rejected: bool | None
    skipped: int

    @property
    def p_value(self) -> float:
        """Current always-valid p-value ``min(1, 1 / LR)``."""
        return 1.0 if self.log_lr <= 0.0 else math.exp(-self.log_lr)


class MixtureSPRT:
    """One-sided mixture SPRT of H0: mean <= ``null_mean`` against mean > ``null_mean``.

    Args:
        null_mean: boundary of the null hypothesis, in the units of the values.
        alpha: level; the chance of ever rejecting a true H0 is at most about ``alpha``.
        mixture_scale: prior scale of the effect beyond ``null_mean``, in standard deviations
            of the values. The test is most powerful for standardized effects near it; 0.1
            suits effects around a tenth of a standard deviation (a few thousand events).
        min_samples: values needed before the test may reject (the variance estimate must
            settle first).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> test = MixtureSPRT(null_mean=0.0, alpha=0.05)
        >>> test.update(rng.normal(0.3, 1.0, size=500))
        >>> test.result().rejected
        True
    """

    def __init__(
        self,
        *,
        null_mean: float = 0.0,
        alpha: float = 0.05,
        mixture_scale: float = 0.1,
        min_samples: int = 30,
    ) -> None:
        if not math.isfinite(null_mean):
            raise ValueError(f"null_mean must be a finite number, got {null_mean}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not (math.isfinite(mixture_scale) and mixture_scale > 0.0):
            raise ValueError(f"mixture_scale must be a positive number, got {mixture_scale}")
        if min_samples < 2:
            raise ValueError(f"min_samples must be >= 2 (a variance needs two), got {min_samples}")
        self.null_mean = float(null_mean)
        self.alpha = float(alpha)
        self.mixture_scale = float(mixture_scale)
        self.min_samples = int(min_samples)
        self.reset()

    def reset(self) -> None:
        """Forget all values (e.g. after a promotion the test restarts)."""
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean
        self._skipped = 0

    def update(self, values: ArrayLike) -> None:
        """Add a batch (or one value); non-finite values are dropped and counted.

        Batches are merged with the parallel form of Welford's update (Chan et al.), which
        stays accurate over millions of values.
        """
        x = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(x)
        self._skipped += int(x.size - np.count_nonzero(finite))
        x = x[finite]
        nb = int(x.size)
        if nb == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self._n + nb
        delta = mean_b - self._mean
        self._mean += delta * nb / n
        self._m2 += m2_b + delta * delta * self._n * nb / n
        self._n = n

    @property
    def n(self) -> int:
        """Finite values used so far."""
        return self._n

    def result(self) -> SequentialResult:
        """The test's current standing; cheap, call it after every batch."""
        n = self._n
        mean = self._mean if n else math.nan
        std = math.sqrt(self._m2 / (n - 1)) if n >= 2 else math.nan
        log_threshold = math.log(1.0 / self.alpha)
        if n < self.min_samples:
            return SequentialResult(
                n, mean, std, self.null_mean, 0.0, log_threshold, None, self._skipped
            )
        sigma = max(std, _SIGMA_FLOOR)
        z = (mean - self.null_mean) * math.sqrt(n) / sigma
        log_lr = mixture_log_lr(n, z, self.mixture_scale)
        return SequentialResult(
            n,
            mean,
            std,
            self.null_mean,
            log_lr,
            log_threshold,
            log_lr >= log_threshold,
            self._skipped,
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state (sufficient statistics and settings)."""
        return {
            "format": _STATE_FORMAT,
            "null_mean": self.null_mean,
            "alpha": self.alpha,
            "mixture_scale": self.mixture_scale,
            "min_samples": self.min_samples,
            "n": self._n,
            "mean": self._mean,
            "m2": self._m2,
            "skipped": self._skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the settings must match this instance's."""
        _check_format(state, "MixtureSPRT")
        for key in ("null_mean", "alpha", "mixture_scale", "min_samples"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"checkpointed MixtureSPRT has {key}={state.get(key)!r}, this one "
                    f"{getattr(self, key)!r}; build the test with the checkpoint's settings"
                )
        n, mean, m2, skipped = state["n"], state["mean"], state["m2"], state["skipped"]
        if not (isinstance(n, int) and n >= 0 and isinstance(skipped, int) and skipped >= 0):
            raise ValueError(f"bad MixtureSPRT counts in checkpoint: n={n!r}, skipped={skipped!r}")
        if not (math.isfinite(mean) and math.isfinite(m2) and m2 >= 0):
            raise ValueError(f"bad MixtureSPRT moments in checkpoint: mean={mean!r}, m2={m2!r}")
        self._n, self._mean, self._m2, self._skipped = n, float(mean), float(m2), skipped


def _check_format(state: dict[str, Any], what: str) -> None:
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{what} state must be a dict with format={_STATE_FORMAT}, got {found!r}")
