"""What the model state accounts for: applied offset ranges per partition, and segments.

feedstep's model state must be a function of exactly the events it trained on. The pipeline
groups consumed records into **segments**: everything read since the previous segment closed, up
to a watermark. A segment closes when a micro-batch is dispatched (its records are the batch's
events plus the rejects and duplicates read in between) or when the loop is idle with nothing in
flight and no item waiting (rejects, duplicates and events that added no item, such as thumbs
a ``dpo`` pair miner holds). A segment is **applied** once its step is done (or at once,
when it has no step); only then do its offsets move the checkpointed and committed positions.

:class:`Ledger` is the compact, cumulative record of applied segments that every checkpoint
carries: per partition, the half-open offset ranges applied so far (adjacent ranges merge, so an
uninterrupted history is one range per partition), counters, an order-independent digest of the
event ids trained on, the count and digest of the mined preference pairs trained
(:func:`pair_digest`), and any **overlap** (a range applied twice) or **gap** (a range skipped).
A fault test reads the ledger of the final checkpoint and checks that the union of ranges is the
whole topic, that nothing overlapped, that the digest equals the digest of every valid event,
and, with mining on, that the pair digest equals the digest of every pair the stream holds.

Offsets follow Kafka's convention: ``end`` is the next offset to read.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import crc32c

from streaming.base import Record, TopicPartition

log = logging.getLogger(__name__)

_MASK = (1 << 64) - 1


DIGEST_KIND = "crc32c+crc32"
"""How :func:`event_digest` hashes an id; a ledger records it next to its digest."""


def id_hash(event_id: str) -> int:
    """One id's term of :func:`event_digest`: CRC-32C of its UTF-8 bytes ‖ their CRC-32.

    Example:
        >>> event_digest(["a", "b"]) == (id_hash("a") + id_hash("b")) % 2**64
        True
    """
    data = event_id.encode("utf-8", "surrogatepass")
    return (crc32c.crc32c(data) << 32) | zlib.crc32(data)


def event_digest(event_ids: Iterable[str]) -> int:
    """Order-independent 64-bit digest of event ids: the sum of their hashes, mod 2**64.

    An id's hash is the CRC-32C of its UTF-8 bytes in the high 32 bits and their CRC-32 (the
    zlib polynomial) in the low 32: two different polynomials, both computed in C (about a
    third of a blake2b call each). Training on an event twice or missing one changes the
    digest, so a test can compare the ledger's digest with the digest of the events it
    produced. It is a check against accidents, not against someone choosing ids to collide.

    Example:
        >>> event_digest(["a", "b"]) == event_digest(["b", "a"])
        True
        >>> event_digest(["a", "a"]) == event_digest(["a"])
        False
    """
    data = [event_id.encode("utf-8", "surrogatepass") for event_id in event_ids]
    # sum((c << 32) | i) == (sum(c) << 32) + sum(i), as every i < 2**32: two sums in C
    total = (sum(map(crc32c.crc32c, data)) << 32) + sum(map(zlib.crc32, data))
    return total & _MASK  # the sum's residue: the same as reducing after every addition


def pair_id(chosen_id: str, rejected_id: str) -> str:
    """A mined pair's identity: its halves' event ids, chosen then rejected, in one string.

    The chosen id's length comes first, so two different pairs never give the same string.

    Example:
        >>> pair_id("e1", "e2"), pair_id("e2", "e1") == pair_id("e1", "e2")
        ('2:e1e2', False)
    """
    return f"{len(chosen_id)}:{chosen_id}{rejected_id}"


def pair_digest(pairs: Iterable[tuple[str, str]]) -> int:
    """Order-independent digest of mined pairs, each ``(chosen id, rejected id)``.

    It is :func:`event_digest` of their :func:`pair_id` strings.

    Example:
        >>> pair_digest([("a", "b"), ("c", "d")]) == pair_digest([("c", "d"), ("a", "b")])
        True
        >>> pair_digest([("a", "b")]) == pair_digest([("b", "a")])
        False
    """
    return event_digest(pair_id(chosen, rejected) for chosen, rejected in pairs)


def tp_key(tp: TopicPartition) -> str:
    """``"topic:partition"``, the ledger's JSON key for a topic-partition."""
    return f"{tp[0]}:{tp[1]}"


def parse_tp_key(key: str) -> TopicPartition:
    """Inverse of :func:`tp_key` (topic names may contain ``:``; the partition is last)."""
    topic, _, partition = key.rpartition(":")
    return (topic, int(partition))


@dataclass(slots=True)
class Segment:
    """Records read since the previous segment closed, up to ``end`` (next offset per partition)."""

    start: dict[TopicPartition, int] = field(default_factory=dict)
    end: dict[TopicPartition, int] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)
    digest: int = 0
    """Sum of :func:`id_hash` of ``event_ids`` (not reduced mod 2**64)."""
    rejected: int = 0
    duplicates: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)
    """The mined pairs its batch trains: ``(chosen event id, rejected event id)`` each."""

    @property
    def empty(self) -> bool:
        """True when no record was read into it."""
        return not self.start

    def read(self, tp: TopicPartition, offset: int) -> None:
        """Account for the record at ``offset`` of ``tp``."""
        if tp not in self.start:
            self.start[tp] = offset
        self.end[tp] = offset + 1

    def read_all(self, records: Iterable[Record]) -> None:
        """Account for ``records`` in order: the same as :meth:`read` on each, in one call."""
        start, end = self.start, self.end
        topic: str | None = None
        partition = offset = -1
        for record in records:  # sources hand out runs of one partition: act when a run ends
            if record.partition != partition or record.topic != topic:
                if topic is not None:
                    end[(topic, partition)] = offset + 1
                topic, partition = record.topic, record.partition
                start.setdefault((topic, partition), record.offset)
            offset = record.offset
        if topic is not None:
            end[(topic, partition)] = offset + 1

    def ranges(self) -> dict[TopicPartition, tuple[int, int]]:
        """``{tp: (first offset read, next offset)}``."""
        return {tp: (self.start[tp], self.end[tp]) for tp in self.start}


@dataclass(frozen=True, slots=True)
class Violation:
    """A range applied twice (``overlap``) or skipped (``gap``)."""

    kind: str
    partition: str
    start: int
    end: int

    def to_json(self) -> list[Any]:
        """``[kind, "topic:partition", start, end]``."""
        return [self.kind, self.partition, self.start, self.end]


class Ledger:
    """Applied offset ranges per partition plus counters; JSON in every checkpoint.

    ``trained`` counts every applied event, ``skipped`` those of them whose step was skipped
    (their offsets are applied all the same, so a skipped event counts in both, and in
    ``digest``). Mined pairs count the same way: ``pairs`` and ``pair_digest``
    (:func:`pair_digest`) cover every pair of an applied segment, ``pairs_skipped`` those
    whose step was skipped. A ledger written before pairs were counted loads with 0 pairs and
    counts those applied from then on.

    Example:
        >>> ledger = Ledger()
        >>> ledger.apply({("t", 0): (0, 10)}, trained_ids=["a"], rejected=9)
        >>> ledger.apply({("t", 0): (10, 20)}, trained_ids=["b"])
        >>> ledger.ranges[("t", 0)], ledger.trained, ledger.violations
        ([[0, 20]], 2, [])
        >>> ledger.apply({("t", 0): (15, 25)})
        >>> ledger.violations[0].kind
        'overlap'
    """

    __slots__ = (
        "ranges",
        "trained",
        "skipped",
        "rejected",
        "duplicates",
        "digest",
        "digest_kind",
        "violations",
        "pairs",
        "pairs_skipped",
        "pair_digest",
    )

    def __init__(self) -> None:
        self.ranges: dict[TopicPartition, list[list[int]]] = {}
        self.trained = 0
        self.skipped = 0
        self.rejected = 0
        self.duplicates = 0
        self.digest = 0
        # DIGEST_KIND, or "mixed" once a ledger written with another hash went on with this one
        self.digest_kind = DIGEST_KIND
        self.violations: list[Violation] = []
        self.pairs = 0
        self.pairs_skipped = 0
        self.pair_digest = 0

    def apply(
        self,
        ranges: Mapping[TopicPartition, tuple[int, int]],
        trained_ids: Iterable[str] = (),
        skipped: int = 0,
        rejected: int = 0,
        duplicates: int = 0,
        digest: int | None = None,
        pairs: Iterable[tuple[str, str]] = (),
        pairs_skipped: int = 0,
    ) -> None:
        """Record one applied segment: its offset ranges and what it held.

        ``digest``, when given, is the sum of the trained ids' :func:`id_hash` terms, known
        already (the ingestor sums them as it reads);
        otherwise it is computed here. ``pairs``: the mined pairs it trained, ``(chosen event
        id, rejected event id)``; ``pairs_skipped`` of them in a skipped step.
        """
        ids = trained_ids if isinstance(trained_ids, (list, tuple)) else list(trained_ids)
        self.trained += len(ids)
        if digest is None:
            digest = event_digest(ids)
        self.digest = (self.digest + digest) & _MASK
        self.skipped += skipped
        self.rejected += rejected
        self.duplicates += duplicates
        if pairs:
            pairs = pairs if isinstance(pairs, (list, tuple)) else list(pairs)
            self.pairs += len(pairs)
            self.pair_digest = (self.pair_digest + pair_digest(pairs)) & _MASK
        self.pairs_skipped += pairs_skipped
        for tp, (start, end) in ranges.items():
            if end <= start:
                continue
            runs = self.ranges.setdefault(tp, [])
            if runs and start < runs[-1][1]:
                self.violations.append(
                    Violation("overlap", tp_key(tp), start, min(end, runs[-1][1]))
                )
            if runs and start <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end])
                runs.sort()

    def covered(self, tp: TopicPartition) -> int:
        """How many offsets of ``tp`` the ranges cover."""
        return sum(b - a for a, b in self.ranges.get(tp, []))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (see :meth:`from_json`)."""
        return {
            "ranges": {tp_key(tp): runs for tp, runs in sorted(self.ranges.items())},
            "trained": self.trained,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "digest": f"{self.digest:016x}",
            "digest_kind": self.digest_kind,
            "violations": [v.to_json() for v in self.violations],
            "pairs": self.pairs,
            "pairs_skipped": self.pairs_skipped,
            "pair_digest": f"{self.pair_digest:016x}",
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Ledger:
        """Rebuild a ledger from :meth:`to_json` output (``None`` gives an empty one)."""
        ledger = cls()
        if not data:
            return ledger
        ledger.ranges = {
            parse_tp_key(k): [[int(a), int(b)] for a, b in runs]
            for k, runs in data.get("ranges", {}).items()
        }
        ledger.trained = int(data.get("trained", 0))
        ledger.skipped = int(data.get("skipped", 0))
        ledger.rejected = int(data.get("rejected", 0))
        ledger.duplicates = int(data.get("duplicates", 0))
        ledger.digest = int(str(data.get("digest", "0")), 16)
        ledger.pairs = int(data.get("pairs", 0))  # 0: a ledger from before pairs were counted
        ledger.pairs_skipped = int(data.get("pairs_skipped", 0))
        ledger.pair_digest = int(str(data.get("pair_digest", "0")), 16)
        kind = str(data.get("digest_kind", "blake2b-64"))  # ledgers before it was recorded
        if kind != DIGEST_KIND:
            ledger.digest_kind = "mixed"
            if ledger.trained:
                log.warning(
                    "the checkpoint's ledger digest was made with %s, not %s: the offsets and "
                    "counts go on as before, but its digest can no longer be compared with "
                    "event_digest() of the events trained on",
                    kind,
                    DIGEST_KIND,
                )
        ledger.violations = [
            Violation(str(kind), str(part), int(a), int(b))
            for kind, part, a, b in data.get("violations", [])
        ]
        return ledger

    @classmethod
    def union(cls, ledgers: Iterable[Ledger]) -> Ledger:
        """One ledger of several (lockstep ranks, each with its own partitions).

        Ranges and counters (pairs too) are added up, digests summed, violations kept.

        Example:
            >>> a, b = Ledger(), Ledger()
            >>> a.apply({("t", 0): (0, 5)}, trained_ids=["x"])
            >>> b.apply({("t", 1): (0, 3)}, trained_ids=["y"])
            >>> both = Ledger.union([a, b])
            >>> sorted(both.ranges), both.trained, both.digest == event_digest(["x", "y"])
            ([('t', 0), ('t', 1)], 2, True)
        """
        union = cls()
        for ledger in ledgers:
            for tp, runs in ledger.ranges.items():
                union.ranges.setdefault(tp, []).extend(runs)
            union.trained += ledger.trained
            union.skipped += ledger.skipped
            union.rejected += ledger.rejected
            union.duplicates += ledger.duplicates
            union.digest = (union.digest + ledger.digest) & _MASK
            union.violations += ledger.violations
            union.pairs += ledger.pairs
            union.pairs_skipped += ledger.pairs_skipped
            union.pair_digest = (union.pair_digest + ledger.pair_digest) & _MASK
        for runs in union.ranges.values():
            runs.sort()
        return union

    def share(self, partitions: Iterable[TopicPartition], counters: bool) -> Ledger:
        """This ledger's ranges of ``partitions`` only, with its counters and digest or none.

        What a lockstep rank resumes with: the ranges of the partitions it reads now, and the
        group's counters on rank 0 only, so the union of the ranks' ledgers stays the history.
        """
        keep = set(partitions)
        out = Ledger()
        out.ranges = {tp: [list(r) for r in runs] for tp, runs in self.ranges.items() if tp in keep}
        out.digest_kind = self.digest_kind
        if counters:
            out.trained, out.skipped = self.trained, self.skipped
            out.rejected, out.duplicates = self.rejected, self.duplicates
            out.digest, out.violations = self.digest, list(self.violations)
            out.pairs, out.pairs_skipped = self.pairs, self.pairs_skipped
            out.pair_digest = self.pair_digest
        return out


def check_ledgers(
    ledgers: Iterable[Ledger], expected_ends: Mapping[TopicPartition, int]
) -> list[str]:
    """Problems with the union of ``ledgers`` against a topic read from offset 0 to its end.

    Returns human-readable problems: overlaps recorded by a ledger, offsets applied by two
    ledgers, and offsets no ledger applied. An empty list means every offset was applied exactly
    once. (Compacted or transactional topics have legitimate gaps; this checks plain topics.)
    """
    problems: list[str] = []
    spans: dict[TopicPartition, list[tuple[int, int, int]]] = {}
    for i, ledger in enumerate(ledgers):
        problems += [
            f"ledger {i}: {v.kind} {v.partition} [{v.start}, {v.end})" for v in ledger.violations
        ]
        for tp, runs in ledger.ranges.items():
            spans.setdefault(tp, []).extend((a, b, i) for a, b in runs)
    for tp, end in sorted(expected_ends.items()):
        at = 0
        for a, b, i in sorted(spans.get(tp, [])):
            if a > at:
                problems.append(f"{tp_key(tp)}: offsets [{at}, {a}) applied by no ledger")
            elif a < at:
                problems.append(
                    f"{tp_key(tp)}: offsets [{a}, {min(at, b)}) applied twice (ledger {i})"
                )
            at = max(at, b)
        if at < end:
            problems.append(f"{tp_key(tp)}: offsets [{at}, {end}) applied by no ledger")
        elif at > end:
            problems.append(f"{tp_key(tp)}: ledger reaches {at}, past the end {end}")
    return problems
