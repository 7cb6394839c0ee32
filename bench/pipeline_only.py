"""Per-event cost of the pipeline alone: MemorySource → Pipeline → NullLearner, no broker.

    python3 bench/pipeline_only.py [--events 100000] [--partitions 4] [--batch-size 16]
                                   [--repeats 3] [--profile]

A :class:`streaming.testing.MemorySource` is filled with ``--events`` simulated feedback events
(``SimulatedFeedback``, seed 0, the payloads ``bench/ingest.py`` writes to its topic) and read
by :class:`streaming.runtime.pipeline.Pipeline` with :class:`streaming.testing.NullLearner`, real
metrics and a checkpoint manager that writes nothing (offsets are committed every 100 steps,
``feedstep run``'s cadence). Each repeat builds a fresh source and pipeline; the time is that
of ``run()``. Printed per repeat and as the median: events/s, wall µs/event and process CPU
µs/event (all threads: the tokenize and train stages share the GIL with the ingest stage).
Runs at two ``--batch-size`` values tell the fixed cost of a step from the cost of an event.

``--profile`` runs once more under cProfile, each of the three threads with its own profiler,
and prints the top functions by own time of each. The last line is
``events_per_s=<median events/s>``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import logging
import pstats
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitors.metrics import Metrics  # noqa: E402
from streaming.runtime.pipeline import Pipeline, PipelineSettings, RunSummary  # noqa: E402
from streaming.testing import (  # noqa: E402
    MemorySink,
    MemorySource,
    NullCheckpoints,
    NullLearner,
)
from streaming.testing.simulate import SimulatedFeedback  # noqa: E402


def profile_new_threads(profiles: dict[str, cProfile.Profile]) -> None:
    """Run every thread started from now on under a profiler of its own, kept by thread name.

    The pipeline's stages are threads (``feedstep-tokenize``, ``feedstep-train``); the hook
    starts a profiler as each one begins, so no pipeline internals are touched.
    """

    def start(frame: object, event: str, arg: object) -> None:
        prof = profiles[threading.current_thread().name] = cProfile.Profile()
        prof.enable()  # replaces this hook in this thread

    threading.setprofile(start)


def _payloads(events: int) -> list[bytes]:
    gen = SimulatedFeedback(seed=0, start=datetime(2026, 1, 1, tzinfo=timezone.utc), spacing_s=1)
    return list(gen.payloads(events))


def run_once(
    payloads: list[bytes],
    partitions: int,
    batch_size: int = 16,
    profiles: dict[str, cProfile.Profile] | None = None,
    queue_batches: int | None = None,
) -> tuple[RunSummary, float, float]:
    """One run over a fresh source; returns (summary, wall seconds, process CPU seconds)."""
    events = len(payloads)
    source = MemorySource(payloads, partitions=partitions)
    settings = PipelineSettings(
        batch_size=batch_size,
        max_wait_ms=1000,
        stop_after_events=events,
        log_every_s=3600,
        checkpoint_every_steps=100,
    )
    if queue_batches is not None:
        settings = dataclasses.replace(settings, queue_batches=queue_batches)
    learner = NullLearner()
    pipe = Pipeline(
        source,
        MemorySink(),
        learner,  # type: ignore[arg-type]
        Metrics(),
        settings,
        checkpoints=NullCheckpoints(),  # type: ignore[arg-type]
    )
    if profiles is not None:
        profile_new_threads(profiles)
        main = profiles["ingest"] = cProfile.Profile()
        main.enable()
    wall, cpu = time.perf_counter(), time.process_time()
    summary = pipe.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profiles is not None:
        main.disable()
        threading.setprofile(None)
    if summary.accepted != events or learner.examples != events:
        raise SystemExit(
            f"consumed {summary.consumed}, accepted {summary.accepted}, trained "
            f"{learner.examples} of {events}: not what the bench expects"
        )
    return summary, wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16, help="events per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--queue-batches",
        type=int,
        help="PipelineSettings.queue_batches: handoffs each stage queue holds",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one more run")
    parser.add_argument("--top", type=int, default=25, help="functions shown per thread")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    payloads = _payloads(args.events)
    n = len(payloads)
    header = ("repeat", 6), ("events", 8), ("seconds", 8), ("events/s", 9), ("us/event", 9)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'cpu_us':>7}")
    walls, cpus = [], []
    for repeat in range(args.repeats):
        _, wall, cpu = run_once(
            payloads, args.partitions, args.batch_size, queue_batches=args.queue_batches
        )
        walls.append(wall)
        cpus.append(cpu)
        print(
            f"{repeat + 1:>6} {n:>8} {wall:>8.2f} {n / wall:>9.0f} {wall / n * 1e6:>9.1f} "
            f"{cpu / n * 1e6:>7.1f}",
            flush=True,
        )
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(
        f"median: {n / wall:.0f} events/s, {wall / n * 1e6:.1f} us/event wall, "
        f"{cpu / n * 1e6:.1f} us/event CPU (all threads)"
    )
    if args.profile:
        profiles: dict[str, cProfile.Profile] = {}
        run_once(payloads, args.partitions, args.batch_size, profiles, args.queue_batches)
        for name, prof in profiles.items():  # the ingest (main) thread, then the stages
            print(f"\n--- {name} thread, top {args.top} by own time")
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    print(f"events_per_s={n / wall:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
