"""De-duplication of feedback events by ``event_id`` over a bounded window.

Kafka delivers at least once: after a crash the records since the last commit come again, and
producers retry. :class:`Deduplicator` remembers the most recent ``window`` distinct event ids
(in first-seen order) so a repeat inside that window is dropped instead of trained on twice.
Memory is bounded: when the window is full the oldest id is forgotten first. A duplicate does
not refresh its id's place in the window, so the window always covers the last ``window``
distinct ids to arrive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Set


class Deduplicator:
    """Remembers the last ``window`` distinct event ids and flags repeats.

    Args:
        window: How many distinct ids to remember (>= 1).

    Example:
        >>> d = Deduplicator(window=2)
        >>> d.check_and_add("a"), d.check_and_add("a")
        (False, True)
        >>> d.check_and_add("b"), d.check_and_add("c")  # "a" is forgotten now
        (False, False)
        >>> "a" in d, d.snapshot()
        (False, ['b', 'c'])
    """

    __slots__ = ("_window", "_seen", "_order")

    def __init__(self, window: int = 100_000) -> None:
        if type(window) is not int or window < 1:
            raise ValueError(
                f"Deduplicator window must be an int >= 1, got {window!r}; it is the number "
                "of recent event ids to remember"
            )
        self._window = window
        # A set for membership and a deque for first-seen order: both O(1) per event, and a
        # snapshot (every checkpoint) copies the deque, several times faster than walking an
        # OrderedDict of 100,000 ids.
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    @property
    def window(self) -> int:
        """How many distinct ids are remembered at most."""
        return self._window

    def check_and_add(self, event_id: str) -> bool:
        """Return True if ``event_id`` was seen within the window; otherwise remember it.

        Args:
            event_id: The event's id.

        Returns:
            True for a duplicate (nothing changes), False for a new id (now remembered, and
            the oldest id forgotten if the window was full).
        """
        seen = self._seen
        if event_id in seen:
            return True
        seen.add(event_id)
        order = self._order
        order.append(event_id)
        if len(order) > self._window:
            seen.discard(order.popleft())
        return False

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __repr__(self) -> str:
        return f"Deduplicator(window={self._window}, remembered={len(self._seen)})"

    def forget(self, event_ids: Iterable[str]) -> None:
        """Forget ``event_ids``, e.g. those of a batch given up before it was applied.

        Their events will be read again and must not count as duplicates then.
        """
        remaining = {i for i in event_ids if i in self._seen}
        if not remaining:
            return
        self._seen -= remaining
        order = self._order
        kept: list[str] = []  # popped from the right but not forgotten
        while remaining and order:
            event_id = order.pop()
            if event_id in remaining:
                remaining.discard(event_id)
            else:
                kept.append(event_id)
            if len(kept) > 4096:  # not near the newest ids: rebuild once instead
                order.extend(reversed(kept))
                kept = []
                self._order = deque(i for i in order if i not in remaining)
                break
        order.extend(reversed(kept))

    def snapshot(self, exclude: Set[str] = frozenset()) -> list[str]:
        """The remembered ids, oldest first, for a checkpoint; see :meth:`restore`.

        Args:
            exclude: Ids to leave out (e.g. those of events read but not yet applied). They
                are usually among the newest, so only the tail holding them is filtered.
        """
        ids = list(self._order)
        if not exclude:
            return ids
        left = len(self._seen.intersection(exclude))  # how many of ``ids`` to leave out
        at = len(ids)
        while left:  # walk back from the newest until every one of them is passed
            at -= 1
            if ids[at] in exclude:
                left -= 1
        ids[at:] = [i for i in ids[at:] if i not in exclude]
        return ids

    @classmethod
    def restore(cls, ids: Iterable[str], window: int = 100_000) -> Deduplicator:
        """Rebuild a deduplicator from :meth:`snapshot` output.

        Args:
            ids: Remembered ids, oldest first. If there are more than ``window``, only the
                newest ``window`` are kept; repeated ids keep their first position.
            window: The window of the new deduplicator (>= 1).

        Returns:
            A deduplicator that flags exactly the ids a live one with the same history would.

        Example:
            >>> Deduplicator.restore(["a", "b", "c"], window=2).snapshot()
            ['b', 'c']
        """
        dedup = cls(window)
        for event_id in ids:
            dedup.check_and_add(event_id)
        return dedup
