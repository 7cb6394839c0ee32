"""Prequential (test-then-train) evaluation over a sliding window of events.

Every event is scored by the baseline and by the candidate *before* the candidate trains on
it, so each model's per-event loss and correctness form an honest out-of-sample stream. These
classes keep windowed means of those streams and the paired difference between the models.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from monitors.base import Monitor


class WindowedMean(Monitor):
    """Mean of the last ``window`` finite values; NaNs (undefined values) are ignored.

    Example:
        >>> m = WindowedMean(window=3)
        >>> for x in (1.0, float("nan"), 2.0, 3.0, 4.0):
        ...     m.update(x)
        >>> m.value, m.count
        (3.0, 3)
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 events, got {window}")
        self.window = window
        self._values: deque[float] = deque(maxlen=window)  # appending past it drops the oldest
        self._sum = 0.0
        self._updates = 0

    def update(self, value: float) -> None:
        """Add one value; NaN counts as 'no value' and is skipped."""
        if math.isnan(value):
            return
        if len(self._values) == self.window:
            self._sum -= self._values[0]  # the append below drops it
        self._values.append(value)
        self._sum += value
        self._updates += 1
        if self._updates % 4096 == 0:  # re-sum now and then so float error cannot build up
            self._sum = math.fsum(self._values)

    def update_many(self, values: Iterable[float]) -> None:
        """Add several values in order (the same result as :meth:`update` on each, faster)."""
        kept = [v for v in values if v == v]  # NaN != NaN: skipped, as in update()
        if not kept:
            return
        window = self._values
        drop = len(window) + len(kept) - self.window  # the oldest values the extend pushes out
        if drop >= len(window):  # the whole window goes, and maybe some of kept
            window.extend(kept)
            self._sum = math.fsum(window)
        else:
            if drop > 0:
                self._sum -= sum(itertools.islice(window, drop))
            window.extend(kept)
            self._sum += sum(kept)
        before = self._updates
        self._updates += len(kept)
        if self._updates // 4096 != before // 4096:
            self._sum = math.fsum(window)

    @property
    def count(self) -> int:
        """Values currently in the window."""
        return len(self._values)

    @property
    def value(self) -> float:
        """The windowed mean, NaN while the window is empty (no data is not a number)."""
        return self._sum / len(self._values) if self._values else math.nan


@dataclass(frozen=True, slots=True)
class PrequentialSnapshot:
    """Windowed prequential figures for both models at one moment."""

    events: int
    baseline_loss: float
    candidate_loss: float
    baseline_accuracy: float
    candidate_accuracy: float
    mean_loss_difference: float
    """Windowed mean of (baseline loss - candidate loss); > 0 means the candidate is better."""


class PairedPrequential:
    """Windowed prequential loss and accuracy for the baseline and the candidate.

    Example:
        >>> p = PairedPrequential(window=100)
        >>> p.update([0.7, 0.6], [0.5, 0.4], [0.0, 1.0], [1.0, 1.0])
        >>> round(p.snapshot().mean_loss_difference, 3)
        0.2
    """

    def __init__(self, window: int = 1000) -> None:
        self.baseline_loss = WindowedMean(window)
        self.candidate_loss = WindowedMean(window)
        self.baseline_accuracy = WindowedMean(window)
        self.candidate_accuracy = WindowedMean(window)
        self.difference = WindowedMean(window)
        self.events = 0

    def update(
        self,
        baseline_loss: Iterable[float],
        candidate_loss: Iterable[float],
        baseline_correct: Iterable[float],
        candidate_correct: Iterable[float],
    ) -> None:
        """Feed one batch of paired per-event values (all sequences the same length)."""
        bl, cl = list(baseline_loss), list(candidate_loss)
        bc, cc = list(baseline_correct), list(candidate_correct)
        if not len(bl) == len(cl) == len(bc) == len(cc):
            raise ValueError(
                f"paired prequential values need equal lengths, got {len(bl)}, {len(cl)}, "
                f"{len(bc)}, {len(cc)} (baseline loss, candidate loss, baseline/candidate correct)"
            )
        self.baseline_loss.update_many(bl)
        self.candidate_loss.update_many(cl)
        self.baseline_accuracy.update_many(bc)
        self.candidate_accuracy.update_many(cc)
        self.difference.update_many([b - c for b, c in zip(bl, cl, strict=True)])
        self.events += len(bl)

    def snapshot(self) -> PrequentialSnapshot:
        """Current windowed figures."""
        return PrequentialSnapshot(
            events=self.events,
            baseline_loss=self.baseline_loss.value,
            candidate_loss=self.candidate_loss.value,
            baseline_accuracy=self.baseline_accuracy.value,
            candidate_accuracy=self.candidate_accuracy.value,
            mean_loss_difference=self.difference.value,
        )
