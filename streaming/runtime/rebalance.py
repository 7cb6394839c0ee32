"""Consumer-group rebalances: settle before partitions go, prime the window of those that come.

On revoke: close the open batch, finish every step in flight, checkpoint, commit, then forget
the revoked partitions. On assign: partitions taken over from another member get their recent
event ids read back into the de-duplication window, so a redelivery across the handover is
still caught, and the pair miner forgets the partitions this member no longer owns (the thumbs
it held back for them train pointwise with the next batch). The source runs both hooks inside
``poll`` (kafka-python's listener runs them in a worker thread while the client keeps
heartbeating).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from monitors.metrics import Metrics
from streaming.base import Source, TopicPartition
from streaming.ingest.ingestor import Ingestor
from streaming.runtime.checkpoints import CheckpointTracker
from streaming.runtime.commits import fmt_offsets

log = logging.getLogger("streaming.runtime.pipeline")


class RebalanceHandler:
    """The source's rebalance hooks for one run.

    Args:
        source: Reads back the recent values of a partition taken over.
        tracker: Checkpoints and commits on revoke; knows which partitions were applied here.
        ingestor: Its de-duplication window is primed on assign.
        metrics: Rebalances are counted by event.
        settle: Closes the open batch and finishes every step in flight (the pipeline's).
        running: Whether the run is still going (a revoke while closing needs nothing).
        prime_records: Values read back per partition taken over (0: none).
    """

    def __init__(
        self,
        source: Source,
        tracker: CheckpointTracker,
        ingestor: Ingestor,
        metrics: Metrics,
        settle: Callable[[], None],
        running: Callable[[], bool],
        prime_records: int,
    ) -> None:
        self.source = source
        self.tracker = tracker
        self.ingestor = ingestor
        self.metrics = metrics
        self.settle = settle
        self.running = running
        self.prime_records = prime_records
        self._owned_before: set[TopicPartition] = set()  # partitions held before the rebalance
        self.assigned_at = 0.0  # monotonic time of the last assignment (the idle clock restarts)

    def on_revoke(self, revoked: list[TopicPartition]) -> None:
        """Finish the step in flight, checkpoint, commit, then let the partitions go."""
        if not self.running():
            return  # the source is closing after the run: everything is settled already
        self.metrics.rebalances.labels(event="revoked").inc()
        self.settle()
        self.tracker.settle()
        due = self.tracker.commits.due
        if due is not None:
            log.error(
                "could not commit %s before the rebalance; the checkpoint covers them and the "
                "next owner may read some events again",
                fmt_offsets(due),
            )
        self._owned_before = set(self.tracker.offsets)  # read and applied here: in our window
        self.tracker.release(revoked)

    def on_assign(self, assigned: list[TopicPartition]) -> None:
        """Prime the de-duplication window of partitions taken over from another member.

        ``assigned`` is the member's whole new assignment (kafka-python's eager protocol
        revokes every partition, then assigns): the pair miner keeps the buffers of these
        and releases what it held of the others (:meth:`Ingestor.keep_mining`).
        """
        self.metrics.rebalances.labels(event="assigned").inc()
        self.ingestor.keep_mining(set(assigned))
        want = self.prime_records
        for tp in assigned:
            if want <= 0 or tp in self.tracker.offsets or tp in self._owned_before:
                continue  # our own checkpoint or window already covers it
            ids = [i for i in map(_event_id, self.source.read_back(tp, want)) if i is not None]
            for event_id in ids:
                self.ingestor.dedup.check_and_add(event_id)
            if ids:
                log.info(
                    "%s:%d: de-duplication window primed with %d event ids read back",
                    tp[0],
                    tp[1],
                    len(ids),
                )
        self._owned_before = set()
        self.assigned_at = time.monotonic()


def _event_id(value: bytes | None) -> str | None:
    """The ``event_id`` of a raw event, or None when it has none (any malformed input)."""
    if not value:
        return None
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError):
        return None
    event_id = obj.get("event_id") if isinstance(obj, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None
