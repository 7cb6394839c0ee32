"""Micro-batching by count and by maximum wait.

A batch is released as soon as it holds ``batch_size`` items (:meth:`MicroBatcher.add`), or once
its first item has waited ``max_wait_ms`` (:meth:`MicroBatcher.due`). The batcher never starts
a timer thread: the consumer loop asks :meth:`MicroBatcher.time_left_s` for how long it may block
in ``poll`` and calls :meth:`MicroBatcher.due` after every poll.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """Collects items into batches released by size or by age of the oldest item.

    Args:
        batch_size: Release a batch when it holds this many items (>= 1).
        max_wait_ms: Release a partial batch once its first item is this old (>= 0, finite).
        clock: Monotonic clock in seconds; inject a fake one in tests.

    Example:
        >>> now = [0.0]
        >>> b = MicroBatcher(batch_size=3, max_wait_ms=100, clock=lambda: now[0])
        >>> b.add("a"), b.add("b")
        (None, None)
        >>> b.time_left_s()
        0.1
        >>> now[0] = 0.1
        >>> b.due()
        ['a', 'b']
        >>> b.add("c"), b.add("d"), b.add("e")
        (None, None, ['c', 'd', 'e'])
    """

    __slots__ = ("_batch_size", "_max_wait_ms", "_max_wait_s", "_clock", "_items", "_deadline")

    def __init__(
        self,
        batch_size: int,
        max_wait_ms: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if (
            isinstance(max_wait_ms, bool)
            or not isinstance(max_wait_ms, (int, float))
            or not math.isfinite(max_wait_ms)
            or max_wait_ms < 0
        ):
            raise ValueError(
                f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}; "
                "use 0 to release every poll's items at once"
            )
        self._batch_size = batch_size
        self._max_wait_ms = float(max_wait_ms)
        self._max_wait_s = max_wait_ms / 1000.0
        self._clock = clock
        self._items: list[T] = []
        self._deadline = 0.0  # meaningful only while items are pending

    @property
    def batch_size(self) -> int:
        """Items per full batch."""
        return self._batch_size

    @property
    def max_wait_ms(self) -> float:
        """Longest time, in milliseconds, the first item of a batch waits."""
        return self._max_wait_ms

    @property
    def pending(self) -> int:
        """Items collected but not yet released."""
        return len(self._items)

    def add(self, item: T) -> list[T] | None:
        """Add one item; return the batch if it is now full, else None.

        The wait timer of a batch starts when its first item is added.
        """
        items = self._items
        if not items:
            self._deadline = self._clock() + self._max_wait_s
        items.append(item)
        if len(items) >= self._batch_size:
            return self._take()
        return None

    def extend(self, items: list[T]) -> None:
        """Add ``items`` to the pending batch without releasing it, even past ``batch_size``.

        For items that must go with the next batch, whatever its size (examples released at a
        rebalance). The wait timer starts if nothing was pending.
        """
        if items and not self._items:
            self._deadline = self._clock() + self._max_wait_s
        self._items.extend(items)

    def due(self, now: float | None = None) -> list[T] | None:
        """Return the pending partial batch if its first item has waited ``max_wait_ms``.

        Args:
            now: The current clock reading; read from the clock when None.
        """
        if not self._items:
            return None
        if now is None:
            now = self._clock()
        if now >= self._deadline:
            return self._take()
        return None

    def time_left_s(self, now: float | None = None) -> float | None:
        """Seconds until the pending batch is due (0.0 if overdue); None when nothing pends.

        Use it as the poll timeout when it is not None (an idle timeout otherwise); check with
        ``is None``, since an overdue batch gives ``0.0``, which is falsy.
        """
        if not self._items:
            return None
        if now is None:
            now = self._clock()
        return max(0.0, self._deadline - now)

    def flush(self) -> list[T] | None:
        """Return whatever is pending (e.g. at shutdown or end of a finite source), or None."""
        if not self._items:
            return None
        return self._take()

    def _take(self) -> list[T]:
        batch = self._items
        self._items = []
        return batch

    def __repr__(self) -> str:
        return (
            f"MicroBatcher(batch_size={self._batch_size}, max_wait_ms={self._max_wait_ms:g}, "
            f"pending={len(self._items)})"
        )
