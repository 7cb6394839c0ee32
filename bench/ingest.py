"""Ingest throughput: feedstep's consume → decode → validate → de-duplicate → batch path against
a bare kafka-python consumer that only polls, over the same real-broker topic, in the same run.

    python3 bench/ingest.py [--events 200000] [--partitions 4] [--repeats 5] [--topic T]

The topic is filled once with small simulated feedback events (``SimulatedFeedback``, seed 0) and
reused by later runs when it already holds exactly ``--events`` records. Each repeat runs both
sides, alternating which goes first, each with a fresh consumer group reading the whole topic
from the start:

* ``bare``: a ``KafkaConsumer`` subscribed to the topic, polling until every record is counted;
* ``feedstep``: :class:`streaming.runtime.pipeline.Pipeline` over the source ``feedstep run`` uses
  (:class:`streaming.kafka.source.KafkaSource`, kafka-python's consumer in this process) with
  :class:`streaming.testing.memory.NullLearner` (one no-op "step" per micro-batch) and real
  metrics, stopping when it has consumed every record. Offsets are committed to the broker
  every ``--commit-every-steps`` steps (default 100, ``feedstep run``'s checkpoint cadence),
  through a checkpoint manager that writes nothing (the checkpoint's own cost is the
  learner's, not ingest's); ``--commit-every-steps 0`` runs without checkpoints, so the
  pipeline commits synchronously after every step, as ``checkpoint_every_steps = 0`` does.

Both sides run the same kafka-python, which checks the CRC-32C of every record batch it reads:
in C when the ``crc32c`` package is installed (a feedstep dependency), otherwise in a Python
loop that costs about three quarters of the bare loop's CPU. The header says which one ran.

Time runs from the end of the first poll that returned records (so joining the group and the
first fetch's round trip, the same for both, are left out; they are printed as ``join_s``) to
the moment the side has handled the last record (for feedstep: ``run()`` returned, i.e. the
last batch stepped and its offsets committed). Each row also shows the CPU seconds the side's
process used. The last line is
``ratio=<feedstep / bare>`` of the medians of events/s; single runs on a shared 2-core machine
swing by about ±10%, hence five repeats by default.

``--profile FILE`` also runs the feedstep side once more under cProfile (the training thread
is not profiled; it only counts batches) and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import gc
import logging
import os
import pstats
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402
from kafka.structs import TopicPartition  # noqa: E402

from monitors.metrics import Metrics  # noqa: E402
from streaming.base import Record, Source  # noqa: E402
from streaming.config import load_config  # noqa: E402
from streaming.kafka import KafkaSource, warn_if_slow_crc  # noqa: E402
from streaming.runtime.pipeline import Pipeline, PipelineSettings  # noqa: E402
from streaming.testing import MemorySink, NullCheckpoints, NullLearner  # noqa: E402
from streaming.testing.simulate import SimulatedFeedback  # noqa: E402


@dataclass
class Run:
    side: str
    events: int
    join_s: float
    seconds: float
    cpu_s: float = 0.0  # this process's CPU over the run

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int] | None:
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = probe.partitions_for_topic(topic)
        if not parts:
            return None
        ends = probe.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        probe.close()


def ensure_topic(bootstrap: str, topic: str, partitions: int, events: int) -> None:
    """Create and fill ``topic`` unless it already holds exactly ``events`` records."""
    ends = _end_offsets(bootstrap, topic)
    if ends is not None:
        have = sum(ends.values())
        if have == events and len(ends) == partitions:
            print(f"reusing {topic}: {events} events in {partitions} partitions")
            return
        sys.exit(
            f"topic {topic} exists with {have} events in {len(ends)} partitions, not {events} in "
            f"{partitions}; pass another --topic or delete it (--delete-topic)"
        )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    started = time.perf_counter()
    gen = SimulatedFeedback(seed=0, start=datetime(2026, 1, 1, tzinfo=timezone.utc), spacing_s=1)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024
    )
    size = 0
    for i, payload in enumerate(gen.payloads(events)):
        size += len(payload)
        producer.send(topic, value=payload, partition=i % partitions)
    producer.flush()
    producer.close()
    elapsed = time.perf_counter() - started
    print(
        f"filled {topic}: {events} events, {partitions} partitions, "
        f"mean {size / events:.0f} B/event, {elapsed:.1f} s"
    )


def delete_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.delete_topics([topic])
    admin.close()
    print(f"deleted {topic}")


def run_bare(bootstrap: str, topic: str, events: int, max_poll_records: int) -> Run:
    """A fresh group, subscribe, poll until every record has been counted."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
    )
    # This process carries torch and the rest of feedstep: ~10^6 objects that a bare consumer
    # process would not have, and that every full collection would walk (~0.17 s each). Frozen
    # for the loop, as Pipeline.run freezes them for feedstep's side (PipelineSettings.gc_freeze).
    gc.freeze()
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        first = None
        count = 0
        while count < events:
            batches = consumer.poll(timeout_ms=500, max_records=max_poll_records)
            for records in batches.values():
                count += len(records)
            if first is None and count:
                first = time.perf_counter()
        done = time.perf_counter()
        cpu = time.process_time() - cpu
    finally:
        gc.unfreeze()
        consumer.close(autocommit=False)
    assert first is not None
    return Run("bare", count, first - started, done - first, cpu)


class _Clocked(Source):
    """Delegates to a source and notes when the first poll that returned records ended."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.first: float | None = None

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        records = self.inner.poll(timeout_s, max_records)
        if self.first is None and records:
            self.first = time.perf_counter()
        return records

    def commit(self, offsets):  # type: ignore[no-untyped-def]
        self.inner.commit(offsets)

    def commit_nowait(self, offsets):  # type: ignore[no-untyped-def]
        self.inner.commit_nowait(offsets)

    def commit_result(self, wait: bool = False) -> bool:
        return self.inner.commit_result(wait)

    def position(self):  # type: ignore[no-untyped-def]
        return self.inner.position()

    def seek(self, offsets):  # type: ignore[no-untyped-def]
        self.inner.seek(offsets)

    def lag(self):  # type: ignore[no-untyped-def]
        return self.inner.lag()

    def committed(self):  # type: ignore[no-untyped-def]
        return self.inner.committed()

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    def connected(self) -> bool:
        return self.inner.connected()

    def has_assignment(self) -> bool:
        return self.inner.has_assignment()

    def read_back(self, tp, count):  # type: ignore[no-untyped-def]
        return self.inner.read_back(tp, count)

    def set_rebalance_hooks(self, on_revoke, on_assign):  # type: ignore[no-untyped-def]
        self.inner.set_rebalance_hooks(on_revoke, on_assign)


def run_feedstep(
    bootstrap: str,
    topic: str,
    events: int,
    batch_size: int,
    max_poll_records: int,
    commit_every_steps: int,
    queue_batches: int | None = None,
    profile: cProfile.Profile | None = None,
) -> Run:
    """The real Pipeline over a KafkaSource (fresh group) with a no-op learner."""
    config = load_config(
        overrides={
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "group_id": f"bench-feedstep-{uuid.uuid4().hex[:8]}",
            "max_poll_records": max_poll_records,
        },
        environ={},
    )
    source = _Clocked(KafkaSource(config.kafka))
    settings = PipelineSettings(
        batch_size=batch_size,
        max_wait_ms=1000,
        dead_letter_topic=f"{topic}.dlq",
        stop_after_events=events,
        log_every_s=3600,
        checkpoint_every_steps=max(1, commit_every_steps),
    )
    if queue_batches is not None:
        settings = dataclasses.replace(settings, queue_batches=queue_batches)
    learner = NullLearner()
    checkpoints = NullCheckpoints() if commit_every_steps > 0 else None
    pipe = Pipeline(
        source,
        MemorySink(),
        learner,  # type: ignore[arg-type]
        Metrics(),
        settings,
        checkpoints=checkpoints,  # type: ignore[arg-type]
    )
    try:
        cpu = time.process_time()
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        summary = pipe.run()
        if profile is not None:
            profile.disable()
        done = time.perf_counter()
        cpu = time.process_time() - cpu
    finally:
        source.inner.close()
    assert source.first is not None
    if summary.accepted != events or learner.examples != events:
        raise SystemExit(
            f"feedstep side consumed {summary.consumed}, accepted {summary.accepted}, "
            f"trained {learner.examples} of {events}: the topic is not what the bench wrote"
        )
    return Run(
        "feedstep",
        summary.consumed,
        source.first - started,
        done - source.first,
        cpu,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument("--topic", help="default: feedstep-bench-ingest-<events>-<partitions>")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--repeats", type=int, default=5, help="median over this many runs per side"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="feedstep's micro-batch")
    parser.add_argument("--max-poll-records", type=int, default=500, help="both sides")
    parser.add_argument(
        "--commit-every-steps",
        type=int,
        default=100,
        help="feedstep commits offsets every N steps (0: after every step, no checkpoints)",
    )
    parser.add_argument(
        "--queue-batches", type=int, help="PipelineSettings.queue_batches (default: its default)"
    )
    parser.add_argument("--profile", metavar="FILE", help="cProfile one more feedstep run")
    parser.add_argument("--delete-topic", action="store_true", help="delete the topic at the end")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    topic = args.topic or f"feedstep-bench-ingest-{args.events}-{args.partitions}"
    bootstrap = args.bootstrap_servers

    ensure_topic(bootstrap, topic, args.partitions, args.events)
    crc = "C (crc32c package)" if warn_if_slow_crc() else "pure Python (crc32c missing)"
    print(f"kafka-python record CRC-32C check: {crc}; both sides use the same")
    runs: list[Run] = []
    print(
        f"{'repeat':>6} {'side':>9} {'events':>8} {'join_s':>7} {'seconds':>8} {'events/s':>9} "
        f"{'cpu_s':>6}"
    )
    feedstep = functools.partial(
        run_feedstep,
        bootstrap,
        topic,
        args.events,
        args.batch_size,
        args.max_poll_records,
        args.commit_every_steps,
        args.queue_batches,
    )
    for repeat in range(args.repeats):
        order = ("bare", "feedstep") if repeat % 2 == 0 else ("feedstep", "bare")
        for side in order:
            if side == "bare":
                run = run_bare(bootstrap, topic, args.events, args.max_poll_records)
            else:
                run = feedstep()
            runs.append(run)
            print(
                f"{repeat + 1:>6} {run.side:>9} {run.events:>8} {run.join_s:>7.2f} "
                f"{run.seconds:>8.2f} {run.rate:>9.0f} {run.cpu_s:>6.1f}",
                flush=True,
            )
    if args.profile:
        prof = cProfile.Profile()
        feedstep(profile=prof)
        prof.dump_stats(args.profile)
        print(f"\nprofile of one more feedstep run (ingest thread) written to {args.profile}:")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if args.delete_topic:
        delete_topic(bootstrap, topic)
    bare = statistics.median(r.rate for r in runs if r.side == "bare")
    feed = statistics.median(r.rate for r in runs if r.side == "feedstep")
    print(
        f"median events/s: bare {bare:.0f}, feedstep {feed:.0f} (batch {args.batch_size}, "
        f"commit every {args.commit_every_steps or 1} steps)"
    )
    print(f"ratio={feed / bare:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
