"""Interfaces of the streaming side: records, sources that can snapshot/seek, sinks.

A :class:`Source` yields raw :class:`Record` values (bytes, not yet decoded) and knows its
position per topic-partition. Positions are always "the next offset to read", the same
convention Kafka uses for committed offsets, so a position can be stored in a checkpoint and
handed back to :meth:`Source.seek` or :meth:`Source.commit` unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

TopicPartition = tuple[str, int]
"""A ``(topic, partition)`` pair; plain tuples keep the learner and monitors free of Kafka types."""


@dataclass(frozen=True, slots=True)
class Record:
    """One raw message as it came off a source (immutable).

    Example:
        >>> Record(topic="feedback", partition=0, offset=7, key=None, value=b"{}").next_offset
        8
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> TopicPartition:
        """The record's ``(topic, partition)``."""
        return (self.topic, self.partition)

    @property
    def next_offset(self) -> int:
        """The offset to commit once this record has been applied."""
        return self.offset + 1


class Source(abc.ABC):
    """A stream of raw records with a position that can be snapshotted and restored."""

    @abc.abstractmethod
    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Return up to ``max_records`` records, waiting at most ``timeout_s`` for the first."""

    @abc.abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Durably record ``offsets`` (next offset to read per partition) as consumed."""

    def commit_nowait(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Start committing ``offsets`` and return; :meth:`commit_result` tells how it ended.

        At most one such commit is outstanding: a second call first waits for the answer to
        the first (and raises its error). :meth:`commit` settles an outstanding one first, too.
        This default commits synchronously, so its errors are raised here.
        """
        self.commit(offsets)

    def commit_result(self, wait: bool = False) -> bool:
        """Whether the last :meth:`commit_nowait` is done.

        True once it succeeded (or when none is outstanding); False while it is still under
        way (only when ``wait`` is False).

        Raises:
            FeedstepError: the commit failed, with the error :meth:`commit` would have raised.
        """
        return True

    @abc.abstractmethod
    def position(self) -> dict[TopicPartition, int]:
        """Next offset to read for every assigned partition."""

    @abc.abstractmethod
    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Continue reading each partition from the given next offset."""

    def lag(self) -> dict[TopicPartition, int]:
        """Messages between the position and the end of each partition (empty if unknown)."""
        return {}

    def committed(self) -> dict[TopicPartition, int]:
        """The last committed offsets known to this source (empty if none)."""
        return {}

    @property
    def finite(self) -> bool:
        """True for sources with a known end (files, in-memory lists)."""
        return False

    def at_end(self) -> bool:
        """True when a finite source has nothing more to give."""
        return False

    def pause(self) -> None:  # noqa: B027 - optional hook
        """Stop returning records from :meth:`poll` (backpressure) while staying a member.

        :meth:`poll` must still be called while paused: for a Kafka consumer it keeps the
        group membership alive and runs rebalance callbacks.
        """

    def resume(self) -> None:  # noqa: B027 - optional hook
        """Undo :meth:`pause`."""

    def read_back(self, tp: TopicPartition, count: int) -> list[bytes | None]:
        """Raw values of up to ``count`` records before where ``tp`` started; [] if unknown."""
        return []

    def has_assignment(self) -> bool:
        """False while a group member waits for partitions (joining, rebalancing)."""
        return True

    def connected(self) -> bool:
        """False while the source knows it cannot reach its backend (a broker outage)."""
        return True

    def set_rebalance_hooks(  # noqa: B027 - optional hook
        self,
        on_revoke: Callable[[list[TopicPartition]], None] | None,
        on_assign: Callable[[list[TopicPartition]], None] | None,
    ) -> None:
        """Register callbacks run inside :meth:`poll` when partitions are revoked or assigned.

        Sources without a consumer group never call them.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (leave the consumer group, close files)."""


class Sink(abc.ABC):
    """Somewhere raw messages can be written: the dead-letter topic, the model-updates topic."""

    @abc.abstractmethod
    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue one message for ``topic``."""

    @abc.abstractmethod
    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every queued message is acknowledged, or raise."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""
