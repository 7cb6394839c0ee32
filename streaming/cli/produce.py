"""``feedstep produce``: a plain events file or a recording to a topic, in file order."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from streaming.cli.progress import Progress
from streaming.errors import FeedstepError

log = logging.getLogger("feedstep")


def _plain_messages(
    path: Path, key_field: str | None
) -> Iterator[tuple[bytes | None, bytes, list[tuple[str, bytes]], int | None]]:
    """(key, value, headers, timestamp) of each line of a plain events file, in file order."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for line in fh:
            raw = line.rstrip(b"\r\n")
            if not raw.strip():
                continue
            key = None
            if key_field:
                try:
                    obj = json.loads(raw)
                    value = obj.get(key_field) if isinstance(obj, dict) else None
                    key = str(value).encode() if value is not None else None
                except ValueError:  # sent as it is: the sidecar dead-letters it
                    key = None
            yield key, raw, [], None


def cmd_produce(args: argparse.Namespace) -> int:
    """Write events or a recording to a topic, keyed, in order per key, optionally paced."""
    from streaming.config import load_config
    from streaming.kafka import KafkaSink
    from streaming.sources.recording import Pacer, file_format, read_recording, time_ordered

    config = load_config(args.config, {"bootstrap_servers": args.bootstrap_servers})
    path = Path(args.file)
    if not path.is_file():
        raise FeedstepError(
            f"no such file {str(path)!r}; pass a JSONL file of events or a recording from "
            "`feedstep record`"
        )
    pacer = Pacer(rate=args.rate, speed=args.speed)
    recording = file_format(path) == "recording"
    if args.speed is not None and not recording:
        raise FeedstepError(
            f"--speed replays the gaps between recorded timestamps, but {str(path)!r} holds "
            "plain events without them; record the topic with `feedstep record`, or pace with "
            "--rate EVENTS_PER_S"
        )
    messages: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int | None]]
    if recording:
        records: Iterable[Any] = read_recording(path)
        if args.speed is not None:
            records = time_ordered(records)
        messages = ((r.key, r.value, list(r.headers), r.timestamp_ms) for r in records)
    else:
        messages = _plain_messages(path, args.key_field)
    sink = KafkaSink(config.kafka, ordered=True)
    progress = Progress(None, f"produced to {args.topic}")
    sent = 0
    try:
        for key, value, headers, timestamp_ms in messages:
            pacer.wait(timestamp_ms)
            # A recorded tombstone (no value) is sent as one: kafka-python accepts None.
            sink.send(args.topic, cast(bytes, value), key=key, headers=headers)
            sent += 1
            if sent % 1000 == 0:
                sink.flush()  # bounds the delivery futures held, and surfaces errors early
            progress.show(sent)
    finally:
        sink.close()
    progress.show(sent, "done", force=True)
    progress.close()
    mode = (
        f" rate={args.rate:g}/s" if args.rate else (f" speed={args.speed:g}x" if args.speed else "")
    )
    print(
        f"produced={sent} topic={args.topic} format={'recording' if recording else 'events'}{mode}"
    )
    return 0
