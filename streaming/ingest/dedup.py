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
from collections.abc import Iterable, Sequence, Set

_CHUNK = 2048
"""Ids per sealed chunk of the first-seen order (see :class:`Deduplicator`)."""


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

    __slots__ = ("_window", "_seen", "_sealed", "_tail", "_head")

    def __init__(self, window: int = 100_000) -> None:
        if type(window) is not int or window < 1:
            raise ValueError(
                f"Deduplicator window must be an int >= 1, got {window!r}; it is the number "
                "of recent event ids to remember"
            )
        self._window = window
        # A set for membership, and the first-seen order in chunks: ``_sealed`` holds full
        # chunks as tuples (never changed again), ``_tail`` the newest ids, and ``_head`` how
        # many ids at the front of the oldest chunk (the tail when nothing is sealed) are
        # already forgotten. Adding and forgetting the oldest stay O(1) per event, and a
        # checkpoint's snapshot (:meth:`snapshot_chunks`) shares the sealed tuples instead of
        # copying 100,000 references every time.
        self._seen: set[str] = set()
        self._sealed: deque[tuple[str, ...]] = deque()
        self._tail: list[str] = []
        self._head = 0

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
        tail = self._tail
        tail.append(event_id)
        if len(tail) >= _CHUNK:
            self._sealed.append(tuple(tail))
            self._tail = []
        if len(seen) > self._window:
            sealed = self._sealed
            front = sealed[0] if sealed else self._tail
            seen.discard(front[self._head])
            self._head += 1
            if sealed and self._head == len(front):
                sealed.popleft()
                self._head = 0
        return False

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def __repr__(self) -> str:
        return f"Deduplicator(window={self._window}, remembered={len(self._seen)})"

    def forget(self, event_ids: Iterable[str]) -> None:
        """Forget ``event_ids``, e.g. those of a batch given up before it was applied.

        Their events will be read again and must not count as duplicates then. Ids among the
        newest (the usual case) are taken out where they are; otherwise the order is rebuilt.
        """
        remaining = {i for i in event_ids if i in self._seen}
        if not remaining:
            return
        self._seen -= remaining
        tail = self._tail
        low = 0 if self._sealed else self._head  # tail[:low] are forgotten already
        at = len(tail)
        while remaining and at > low:  # the newest occurrence of an id is its live one
            at -= 1
            if tail[at] in remaining:
                remaining.discard(tail[at])
                del tail[at]
        if remaining:  # older than the tail: rebuild once
            ids = [i for chunk in self._chunks() for i in chunk if i not in remaining]
            self._load(ids)

    def _chunks(self) -> list[Sequence[str]]:
        """The remembered ids in first-seen order, as chunks (the oldest one sliced)."""
        sealed, tail, head = self._sealed, self._tail, self._head
        chunks: list[Sequence[str]] = list(sealed)
        chunks.append(tail[head:] if not sealed else list(tail))
        if sealed and head:
            chunks[0] = chunks[0][head:]
        return chunks

    def _load(self, ids: Iterable[str]) -> None:
        self._seen = set()
        self._sealed = deque()
        self._tail = []
        self._head = 0
        for event_id in ids:
            self.check_and_add(event_id)

    def snapshot(self, exclude: Set[str] = frozenset()) -> list[str]:
        """The remembered ids, oldest first, as one list; see :meth:`snapshot_chunks`."""
        return [i for chunk in self.snapshot_chunks(exclude) for i in chunk]

    def snapshot_chunks(self, exclude: Set[str] = frozenset()) -> list[Sequence[str]]:
        """The remembered ids, oldest first, in chunks, for a checkpoint; see :meth:`restore`.

        Full chunks are shared with the deduplicator (tuples: they never change), so a
        snapshot of 100,000 ids costs a few dozen references and a copy of the newest ids.

        Args:
            exclude: Ids to leave out (e.g. those of events read but not yet applied). They
                are usually among the newest, so only the chunks holding them are filtered.
        """
        chunks = self._chunks()
        left = len(self._seen.intersection(exclude)) if exclude else 0
        at = len(chunks)
        while left:  # walk back from the newest until every excluded id is passed
            at -= 1
            chunk = chunks[at]
            kept = [i for i in chunk if i not in exclude]
            left -= len(chunk) - len(kept)
            chunks[at] = kept
        return chunks

    @classmethod
    def restore(
        cls, ids: Iterable[str] | Iterable[Sequence[str]], window: int = 100_000
    ) -> Deduplicator:
        """Rebuild a deduplicator from :meth:`snapshot` or :meth:`snapshot_chunks` output.

        Args:
            ids: Remembered ids, oldest first: one flat list, or a list of chunks. If there
                are more than ``window``, only the newest ``window`` are kept; repeated ids
                keep their first position.
            window: The window of the new deduplicator (>= 1).

        Returns:
            A deduplicator that flags exactly the ids a live one with the same history would.

        Example:
            >>> Deduplicator.restore(["a", "b", "c"], window=2).snapshot()
            ['b', 'c']
            >>> Deduplicator.restore([["a", "b"], ["c"]], window=2).snapshot()
            ['b', 'c']
        """
        dedup = cls(window)
        items = list(ids)
        if items and not isinstance(items[0], str):
            dedup._load(i for chunk in items for i in chunk)  # type: ignore[union-attr]
        else:
            dedup._load(items)  # type: ignore[arg-type]
        return dedup
