"""Micro-benchmark: the per-event cost of decoding feedback events and turning them into examples.

    python3 bench/decode.py [--events 50000] [--repeats 3]

The payloads are ``--events`` simulated feedback events (``SimulatedFeedback``, seed 0, about
360 bytes of JSON each), made once and held in memory. Each repeat times, one after another,
a plain loop over all of them through

* ``decode_event``: :func:`streaming.events.decode.decode_event`, the pipeline's decoder, on the
  payloads as they are (every one valid);
* ``decode_event+extra``: the same payloads with one unknown top-level field added
  (``"client":"ios"``), which the decoder keeps in ``extra``;
* ``to_example``: :func:`streaming.events.examples.to_example` on the decoded events;
* ``json.loads``: the stdlib parser alone, into dicts (the decoder's parser), as a floor.

Each row prints the median over the repeats, in microseconds per event (the minimum too). The
last line is ``decode_event_us=<median µs per event of decode_event>``.
Numbers on a machine shared with other work swing by 10-20% between runs; compare medians from
runs made close together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.events import FeedbackEvent, decode_event, to_example  # noqa: E402
from streaming.testing.simulate import SimulatedFeedback  # noqa: E402


def per_event_us(work: Callable[[], object], n: int) -> float:
    """Run ``work`` (a loop over ``n`` items) once; microseconds per item."""
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) / n * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="simulated payloads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    args = parser.parse_args(argv)
    n = args.events

    payloads = list(SimulatedFeedback(seed=0).payloads(n))
    with_extra = [p[:-1] + b',"client":"ios"}' for p in payloads]
    events = [decode_event(p) for p in payloads]
    if not all(isinstance(e, FeedbackEvent) for e in events):
        raise SystemExit("a simulated payload was rejected; the benchmark expects valid events")
    if not all(isinstance(decode_event(p), FeedbackEvent) for p in with_extra):
        raise SystemExit("a payload with an unknown field was rejected")

    rows: dict[str, Callable[[], object]] = {
        "decode_event": lambda: [decode_event(p) for p in payloads],
        "decode_event+extra": lambda: [decode_event(p) for p in with_extra],
        "to_example": lambda: [to_example(e) for e in events],  # type: ignore[arg-type]
        "json.loads": lambda: [json.loads(p) for p in payloads],
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, work in rows.items():
            times[name].append(per_event_us(work, n))

    mean_bytes = sum(map(len, payloads)) / n
    print(f"events={n} repeats={args.repeats} mean_payload_bytes={mean_bytes:.0f}")
    print(f"{'row':<20} {'median_us':>10} {'min_us':>8}")
    for name, values in times.items():
        print(f"{name:<20} {statistics.median(values):>10.2f} {min(values):>8.2f}")
    print(f"decode_event_us={statistics.median(times['decode_event']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
