"""Preference pairs mined from unpaired feedback: two replies to one prompt, opposite signals.

Chat services mostly collect thumbs, and a thumb alone says little: "good" is relative. But a
user who regenerates a reply and rates the two differently has compared them. The
:class:`PairMiner` remembers recent thumbs and ratings and, when an event arrives whose reply
answers the same prompt as a remembered one with an opposite signal, returns a preference
example (the better reply chosen) for the pairwise loss.

Two events are on the same prompt when

* they share ``conversation_id`` and the prompt text (compared by a 128-bit digest), or
* one's ``regenerated_from`` names the other's ``response_id`` (or both name the same one):
  optional fields of the event, kept by the decoder as extra fields.

Their signals are opposite when their ratings differ by at least ``min_rating_gap``, a thumb
counting as rating 5 (up) or 1 (down); two identical replies never pair. The halves must lie
within ``window_events`` accepted events and ``window_s`` seconds (by their ``ts``) of each
other. Each event is in at most one pair: the newest fitting partner is taken, and both leave
the buffer. Everything is per Kafka partition (key the chat service's messages by conversation,
so both halves land on one partition): which pairs form depends only on each partition's order
of events, never on how partitions interleave, so re-reading the same records from a
checkpoint re-mines exactly the same pairs. Memory is bounded: at most ``max_pending`` unpaired
events per partition, the oldest evicted first; evictions are counted by reason (``window``:
too old to pair, ``capacity``: pushed out).

What trains is the mode's choice (:data:`MODES`). With ``add`` every event trains its own
pointwise example when it arrives and the pair trains besides. With ``replace`` the pair trains
*instead of* both pointwise examples: a pairable event (a thumb or rating the miner buffers, or
the one that completes a pair) is scored when it arrives but does not train then
(:attr:`Fed.held`); its pointwise example waits in the buffer with it. When its partner comes,
the pair replaces both; when it leaves the buffer unpaired (either eviction), its pointwise
example is handed back (:attr:`Fed.released`) to train in the micro-batch being formed, so
nothing is dropped. So no label of a pair trains before the pair is scored, and the second
half is scored before anything of the first half's label reached the model. The held examples
are part of the buffer, and so of every snapshot: a restart from a checkpoint releases (or
pairs) each of them exactly once.

An objective with no pointwise loss (``dpo``, which trains on pairs only) feeds its thumbs
with ``pointwise=False``: they are buffered without an example (nothing is held back, so
nothing is released), and one that leaves the buffer unpaired teaches nothing; it is counted
as an eviction like any other.

Example:
    >>> from streaming.events import decode_event
    >>> def event(i, value, reply):
    ...     return decode_event(('{"event_id": "e%d", "ts": "2026-01-01T00:00:0%dZ", '
    ...         '"prompt": "hi", "response": "%s", "conversation_id": "c1", '
    ...         '"feedback": {"type": "thumb", "value": %d}}' % (i, i, reply, value)).encode())
    >>> miner = PairMiner(MiningSettings(mode="replace"))
    >>> fed = miner.feed(("feedback", 0), event(1, -1, "go away"))
    >>> fed.pair, fed.held, miner.pending  # it waits, its own thumb held back
    (None, True, 1)
    >>> pair = miner.feed(("feedback", 0), event(2, 1, "hello!")).pair
    >>> pair.response, pair.rejected, miner.pending
    ('hello!', 'go away', 0)
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from learner.base import Example
from streaming.base import TopicPartition
from streaming.events import FeedbackEvent, to_example

MODES = ("off", "add", "replace")
"""``ingest.mining``: ``off``; ``add``: the pair trains besides both events' pointwise examples,
which train when they arrive; ``replace``: the pair trains instead of both pointwise examples,
a pairable event's example waiting in the buffer and training only if the event leaves it
unpaired."""
_FORMAT = 2  # 2: entries carry the held-back example, then (optional) the event id; 1 is read
_MAX_LINK_CHARS = 200  # like event_id: a longer link is no id, it is ignored

Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MiningSettings:
    """How pairs are mined (the ``ingest.mining*`` settings).

    Example:
        >>> MiningSettings(mode="replace", window_events=1000).window_s
        3600.0
    """

    mode: str = "off"
    window_events: int = 10_000
    window_s: float = 3600.0
    min_rating_gap: int = 2
    max_pending: int = 10_000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mining mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.window_events < 1 or not self.window_s > 0 or self.max_pending < 1:
            raise ValueError(
                "mining window_events and max_pending must be >= 1 and window_s > 0, got "
                f"{self.window_events}, {self.max_pending} and {self.window_s}"
            )
        if not 1 <= self.min_rating_gap <= 4:
            raise ValueError(f"mining min_rating_gap must lie in 1..4, got {self.min_rating_gap}")


@dataclass(frozen=True, slots=True)
class Fed:
    """What one fed event gives the micro-batch being formed.

    Attributes:
        pair: The preference example the event completed, or None.
        held: The event's own pointwise example must not train now (``replace``, a pairable
            event): it waits in the buffer, or the pair replaces it. It is still scored.
        released: Pointwise examples held back earlier whose events left the buffer unpaired
            (evicted, oldest first), to train now.
        pair_ids: The event ids of its halves, chosen then rejected (the ledger's
            :func:`~streaming.ingest.offsets.pair_id`); a half remembered in a state saved
            without ids has ``""``. None without a pair.

    Example:
        >>> Fed().held, Fed().released
        (False, ())
    """

    pair: Example | None = None
    held: bool = False
    released: tuple[Example, ...] = ()
    pair_ids: tuple[str, str] | None = None


_NOTHING = Fed()


@dataclass(frozen=True, slots=True)
class _Pending:
    """One unpaired event: what a later pair needs of it, and where it is indexed."""

    seq: int  # its place among the partition's accepted events
    ts: float
    rating: int
    response: str
    weight: float
    keys: tuple[Key, ...]
    held: Example | None = None  # its pointwise example, not trained yet (replace)
    event_id: str = ""  # "" when loaded from a state saved without ids


class _Buffer:
    """The unpaired events of one partition, in arrival order, indexed by prompt key."""

    __slots__ = ("seq", "entries", "index")

    def __init__(self) -> None:
        self.seq = 0  # accepted events of the partition fed so far
        self.entries: dict[int, _Pending] = {}  # by seq; dicts keep insertion (= seq) order
        self.index: dict[Key, tuple[int, ...]] = {}  # tuples: a shallow copy is a snapshot

    def copy(self) -> _Buffer:
        out = _Buffer()
        out.seq, out.entries, out.index = self.seq, dict(self.entries), dict(self.index)
        return out

    def add(self, entry: _Pending) -> None:
        self.entries[entry.seq] = entry
        for key in entry.keys:
            self.index[key] = (*self.index.get(key, ()), entry.seq)

    def remove(self, entry: _Pending) -> None:
        del self.entries[entry.seq]
        for key in entry.keys:
            rest = tuple(s for s in self.index[key] if s != entry.seq)
            if rest:
                self.index[key] = rest
            else:
                del self.index[key]

    def oldest(self) -> _Pending | None:
        return next(iter(self.entries.values()), None)


@dataclass(frozen=True, slots=True)
class MinerState:
    """A snapshot of a miner's buffers: taken with :meth:`PairMiner.snapshot`, never changed.

    The ingestor keeps one per closed batch, so the checkpoint can hold the buffers exactly as
    the applied events left them (:meth:`to_json`, :meth:`from_json`).
    """

    buffers: dict[TopicPartition, _Buffer]

    @property
    def held(self) -> int:
        """Remembered events whose pointwise example is held back (not trained yet)."""
        return sum(e.held is not None for b in self.buffers.values() for e in b.entries.values())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: per partition its event count and unpaired events, oldest first.

        An event's held-back example is saved as ``[prompt, target]`` (its response and weight
        are the event's), or null when it trained on arrival; its event id comes last (a
        state saved without it still loads, and an older feedstep ignores it).
        """
        return {
            "format": _FORMAT,
            "partitions": [
                [
                    topic,
                    partition,
                    buf.seq,
                    [
                        [
                            e.seq,
                            e.ts,
                            e.rating,
                            e.response,
                            e.weight,
                            [list(k) for k in e.keys],
                            None if e.held is None else [e.held.prompt, e.held.target],
                            e.event_id,
                        ]
                        for e in buf.entries.values()
                    ],
                ]
                for (topic, partition), buf in sorted(self.buffers.items())
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> MinerState:
        """Rebuild :meth:`to_json` output; raises ``ValueError`` saying what is wrong."""
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        if found not in (1, _FORMAT):
            raise ValueError(
                f"mining state must be a dict with format {_FORMAT}, found {found!r}; it was "
                "written by another version of feedstep - move the checkpoint directory away"
            )
        buffers: dict[TopicPartition, _Buffer] = {}
        try:
            for topic, partition, seq, entries in data["partitions"]:
                buf = _Buffer()
                buf.seq = int(seq)
                for e_seq, ts, rating, response, weight, keys, *rest in entries:
                    held = rest[0] if found == _FORMAT and rest else None  # format 1: none
                    event_id = str(rest[1]) if found == _FORMAT and len(rest) > 1 else ""
                    buf.add(
                        _Pending(
                            int(e_seq),
                            float(ts),
                            int(rating),
                            str(response),
                            float(weight),
                            tuple(tuple(str(part) for part in k) for k in keys),
                            None
                            if held is None
                            else Example(
                                str(held[0]), str(response), float(held[1]), weight=float(weight)
                            ),
                            event_id,
                        )
                    )
                buffers[(str(topic), int(partition))] = buf
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable mining state ({exc})") from exc
        return cls(buffers)


class PairMiner:
    """Pairs thumbs and ratings on the same prompt with opposite signals; bounded, per partition.

    Args:
        settings: Windows, rating gap and the bound on unpaired events per partition.

    Attributes:
        mined: Pairs returned so far.
        evicted: Unpaired events dropped, by reason (``window``, ``capacity``, ``rebalance``).
    """

    def __init__(self, settings: MiningSettings) -> None:
        self.settings = settings
        self._hold = settings.mode == "replace"
        self._buffers: dict[TopicPartition, _Buffer] = {}
        self._released: list[Example] = []  # held examples evicted, not handed out yet
        self.mined = 0
        self.evicted = {"window": 0, "capacity": 0, "rebalance": 0}

    @property
    def pending(self) -> int:
        """Unpaired events remembered, over all partitions."""
        return sum(len(buf.entries) for buf in self._buffers.values())

    def feed(
        self,
        where: TopicPartition,
        event: FeedbackEvent,
        example: Example | None = None,
        pointwise: bool = True,
    ) -> Fed:
        """Take one accepted event of partition ``where``: what the batch being formed gets.

        Every accepted event must be fed, in its partition's order (events that cannot pair
        still count toward ``window_events``). :attr:`Fed.pair` is a preference example of the
        completing event's prompt, the better-rated reply chosen, weighted by the smaller of
        the two weights; without one, the event is remembered if it can pair later. With
        ``replace``, ``example`` (the event's pointwise example; ``to_example(event)`` if not
        given) is held back with a remembered event (:class:`Fed`); with ``pointwise=False``
        (the objective cannot train it, e.g. ``dpo``) none is: the event trains in its pair or
        not at all.
        """
        buf = self._buffers.get(where)
        if buf is None:
            buf = self._buffers[where] = _Buffer()
        buf.seq += 1
        ts = event.ts_epoch_s
        self._expire(buf, ts)
        rating = _rating(event)
        keys = _keys(event) if rating is not None else ()
        if rating is None or not keys:
            return self._fed(None, held=False)
        partner = self._partner(buf, keys, rating, ts, event.response)
        if partner is None:
            held = None
            if self._hold and pointwise:
                held = example if example is not None else to_example(event)
            buf.add(
                _Pending(
                    buf.seq, ts, rating, event.response, event.weight, keys, held, event.event_id
                )
            )
            if len(buf.entries) > self.settings.max_pending:
                self._evict(buf, buf.oldest(), "capacity")  # type: ignore[arg-type]
            return self._fed(None, held=self._hold)
        buf.remove(partner)
        if partner.held is not None and not self._hold:
            # Held back under replace (a checkpoint of another mode): it has not trained yet.
            self._released.append(partner.held)
        self.mined += 1
        better, worse = (event.response, partner.response)
        ids = (event.event_id, partner.event_id)
        if partner.rating > rating:
            better, worse = worse, better
            ids = (partner.event_id, event.event_id)
        pair = Example(
            event.prompt, better, rejected=worse, weight=min(event.weight, partner.weight)
        )
        return self._fed(pair, held=self._hold, pair_ids=ids)

    def can_pair(self, event: FeedbackEvent) -> bool:
        """Whether :meth:`feed` remembers (or pairs) ``event``: a thumb or rating with a key.

        A key is a ``conversation_id`` (with the prompt) or a ``response_id`` /
        ``regenerated_from`` link; other events pass through the miner untouched.

        Example:
            >>> from datetime import datetime, timezone
            >>> from streaming.events import Feedback
            >>> thumb = FeedbackEvent("e1", datetime(2026, 1, 1, tzinfo=timezone.utc), "hi",
            ...                       "hello", Feedback("thumb", value=1), conversation_id="c1")
            >>> miner = PairMiner(MiningSettings(mode="replace"))
            >>> miner.can_pair(thumb), miner.can_pair(FeedbackEvent(
            ...     "e2", thumb.ts, "hi", "hello", thumb.feedback))  # no key: cannot pair
            (True, False)
        """
        return _rating(event) is not None and bool(_keys(event))

    def _fed(
        self, pair: Example | None, held: bool, pair_ids: tuple[str, str] | None = None
    ) -> Fed:
        if pair is None and not held and not self._released:
            return _NOTHING
        released, self._released = tuple(self._released), []
        return Fed(pair, held, released, pair_ids)

    def _evict(self, buf: _Buffer, entry: _Pending, reason: str) -> None:
        buf.remove(entry)
        self.evicted[reason] += 1
        if entry.held is not None:
            self._released.append(entry.held)

    def _partner(
        self, buf: _Buffer, keys: tuple[Key, ...], rating: int, ts: float, response: str
    ) -> _Pending | None:
        s = self.settings
        best: _Pending | None = None
        for seq in _seqs(buf, keys):
            e = buf.entries[seq]
            if (
                buf.seq - e.seq <= s.window_events
                and abs(ts - e.ts) <= s.window_s
                and abs(rating - e.rating) >= s.min_rating_gap
                and e.response != response
                and (best is None or e.seq > best.seq)
            ):
                best = e
        return best

    def _expire(self, buf: _Buffer, ts: float) -> None:
        """Drop the oldest events while they are out of the window (the rest stay lazily)."""
        s = self.settings
        while (e := buf.oldest()) is not None and (
            buf.seq - e.seq > s.window_events or ts - e.ts > s.window_s
        ):
            self._evict(buf, e, "window")

    def keep(self, owned: Collection[TopicPartition]) -> list[tuple[Example, float]]:
        """Forget the buffers of every partition not in ``owned`` (a rebalance moved them).

        Their unpaired events cannot pair here any more: a partner is read by the partition's
        new owner. Each counts as an eviction with reason ``rebalance``. Returns the held
        examples among them (``replace``) with their events' ``ts``, oldest first per
        partition: the caller trains them now, as with any eviction.
        """
        released: list[tuple[Example, float]] = []
        for tp in [tp for tp in self._buffers if tp not in owned]:
            buf = self._buffers.pop(tp)
            for e in sorted(buf.entries.values(), key=lambda e: e.seq):
                self.evicted["rebalance"] += 1
                if e.held is not None:
                    released.append((e.held, e.ts))
        return released

    # -- state ----------------------------------------------------------------------------------
    def snapshot(self) -> MinerState:
        """The buffers as they are now (a copy: later feeds do not change it)."""
        return MinerState({tp: buf.copy() for tp, buf in self._buffers.items()})

    def load(self, state: MinerState) -> None:
        """Make the buffers those of ``state`` (copied; ``state`` stays as it is).

        A state larger than ``max_pending`` (saved with a larger bound) keeps its newest; the
        held examples of the others come out with the next :meth:`feed` (capacity evictions).
        """
        self._buffers = {tp: buf.copy() for tp, buf in state.buffers.items()}
        self._released = []
        for buf in self._buffers.values():
            while len(buf.entries) > self.settings.max_pending:
                self._evict(buf, buf.oldest(), "capacity")  # type: ignore[arg-type]


def _rating(event: FeedbackEvent) -> int | None:
    """The event's signal on the 1..5 scale (a thumb is 5 or 1); None for other feedback."""
    fb = event.feedback
    if fb.type == "thumb":
        return 5 if fb.value == 1 else 1
    if fb.type == "rating" and fb.value is not None:
        return int(fb.value)
    return None


def _link(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if 0 < len(text) <= _MAX_LINK_CHARS else None


def _keys(event: FeedbackEvent) -> tuple[Key, ...]:
    """The keys under which an event finds, and is found by, replies to the same prompt."""
    keys: list[Key] = []
    if event.conversation_id:
        digest = hashlib.blake2b(event.prompt.encode(), digest_size=16).hexdigest()
        keys.append(("c", event.conversation_id, digest))
    for name in ("response_id", "regenerated_from"):
        link = _link(event.extra.get(name))
        if link is not None and ("g", link) not in keys:
            keys.append(("g", link))
    return tuple(keys)


def _seqs(buf: _Buffer, keys: tuple[Key, ...]) -> Iterator[int]:
    seen: set[int] = set()
    for key in keys:
        for seq in buf.index.get(key, ()):
            if seq not in seen:
                seen.add(seq)
                yield seq
