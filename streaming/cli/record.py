"""``feedstep record``: a range of a topic to JSONL, byte for byte."""

from __future__ import annotations

import argparse
import gzip
import logging
import time
from pathlib import Path
from typing import Any

from streaming.cli.progress import Progress
from streaming.errors import FeedstepError

log = logging.getLogger("feedstep")


def parse_partitions(text: str | None) -> list[int] | None:
    """``--partitions 0,2`` as a list of partition numbers (None: every partition)."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        parts = []
    if not parts or any(p < 0 for p in parts):
        raise FeedstepError(
            f"--partitions {text!r} must be a comma-separated list of partition numbers, e.g. 0,2"
        )
    return parts


def range_options(args: argparse.Namespace) -> dict[str, Any]:
    """The topic-range flags shared by ``record`` and ``replay``, as keyword arguments."""
    from streaming.sources.recording import parse_time_ms

    return {
        "partitions": parse_partitions(args.partitions),
        "from_offset": args.from_offset,
        "from_time_ms": parse_time_ms(args.from_time, "from-time") if args.from_time else None,
        "to_time_ms": parse_time_ms(args.to_time, "to-time") if args.to_time else None,
    }


def cmd_record(args: argparse.Namespace) -> int:
    """Dump a range of a topic to JSONL (assign mode: no group, nothing committed)."""
    from streaming.config import load_config
    from streaming.errors import SourceError
    from streaming.kafka.topicrange import TopicRangeSource
    from streaming.sources.recording import encode_record

    config = load_config(args.config, {"bootstrap_servers": args.bootstrap_servers})
    out = Path(args.out)
    if not out.parent.is_dir():
        raise FeedstepError(f"--out {str(out)!r}: folder {str(out.parent)!r} does not exist")
    source = TopicRangeSource(config.kafka, args.topic, **range_options(args))
    tmp = out.with_name(f".{out.name}.part")
    progress = Progress(source.total or None, f"recorded from {args.topic}")
    written = 0
    done = False
    try:
        opener = gzip.open if out.suffix == ".gz" else open
        with opener(tmp, "wb") as fh:
            last = time.monotonic()
            while not source.at_end():
                records = source.poll(1.0)
                now = time.monotonic()
                if records:
                    last = now
                elif now - last > args.idle_timeout_s:
                    raise SourceError(
                        f"no records from {args.topic} for {args.idle_timeout_s:g} s before the "
                        f"end offsets taken at start ({source.lag()} left); is the broker up? "
                        "Rerun, or raise --idle-timeout-s"
                    )
                for record in records:
                    fh.write(encode_record(record).encode("utf-8") + b"\n")
                written += len(records)
                progress.show(written)
        tmp.replace(out)
        done = True
    finally:
        source.close()
        if not done:
            tmp.unlink(missing_ok=True)
    progress.show(written, "done", force=True)
    progress.close()
    parts = ",".join(str(p) for p in source.partitions)
    print(f"recorded={written} topic={args.topic} partitions={parts} out={out}")
    return 0
