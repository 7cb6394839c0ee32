"""The learning-rate schedule: linear warm-up, optional cosine decay to a floor, and boosts.

The rate of step ``t`` (1-based, counting applied steps only) is

* ``lr · t / warmup_steps`` during warm-up (``t ≤ warmup_steps``),
* then, with ``cosine_decay_steps > 0``, ``min_lr + (lr - min_lr) · ½(1 + cos(π·p))`` where
  ``p = min(1, (t - warmup_steps) / cosine_decay_steps)``; the rate stays at ``min_lr`` after,
* else ``lr``,

times the boost factor while a boost lasts. :meth:`LRSchedule.boost` is the hook the drift
monitors call: the next ``steps`` applied steps use ``factor ×`` the scheduled rate, then the
schedule resumes where it is. A new boost replaces the one in progress. Skipped steps (the
non-finite guard) neither advance the schedule nor use up a boost.
"""

from __future__ import annotations

import math
from typing import Any


class LRSchedule:
    """Warm-up, cosine decay and drift boosts over the count of applied steps.

    Args:
        lr: the peak rate.
        warmup_steps: linear warm-up length (0 = none).
        cosine_decay_steps: cosine decay length after warm-up (0 = constant rate).
        min_lr: the floor the cosine decays to.

    Example:
        >>> s = LRSchedule(1.0, warmup_steps=2, cosine_decay_steps=2, min_lr=0.0)
        >>> [round(s.rate(t), 3) for t in (1, 2, 3, 4, 5)]
        [0.5, 1.0, 0.5, 0.0, 0.0]
        >>> s.boost(3.0, steps=1)
        >>> s.rate(1), s.advance(), s.rate(1)
        (1.5, None, 0.5)
    """

    def __init__(
        self, lr: float, warmup_steps: int = 0, cosine_decay_steps: int = 0, min_lr: float = 0.0
    ) -> None:
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.cosine_decay_steps = cosine_decay_steps
        self.min_lr = min_lr
        self.boost_factor = 1.0
        self.boost_steps_left = 0

    def scheduled(self, step: int) -> float:
        """The rate of applied step ``step`` (1-based) before any boost."""
        if self.warmup_steps and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.cosine_decay_steps:
            progress = min(1.0, (step - self.warmup_steps) / self.cosine_decay_steps)
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        return self.lr

    def rate(self, step: int) -> float:
        """The rate applied step ``step`` will use, boost included."""
        boost = self.boost_factor if self.boost_steps_left > 0 else 1.0
        return self.scheduled(step) * boost

    def boost(self, factor: float, steps: int) -> None:
        """Multiply the rate by ``factor`` for the next ``steps`` applied steps."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"a boost factor must be a finite number > 0, got {factor}")
        if steps < 0:
            raise ValueError(f"a boost lasts >= 0 steps, got {steps}")
        self.boost_factor = float(factor)
        self.boost_steps_left = int(steps)

    def advance(self) -> None:
        """Record that one step was applied (uses up one boosted step)."""
        if self.boost_steps_left > 0:
            self.boost_steps_left -= 1
            if self.boost_steps_left == 0:
                self.boost_factor = 1.0

    def state(self) -> dict[str, Any]:
        """The mutable part, JSON-serializable (the rest comes from the config)."""
        return {"boost_factor": self.boost_factor, "boost_steps_left": self.boost_steps_left}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.boost_factor = float(state["boost_factor"])
        self.boost_steps_left = int(state["boost_steps_left"])
