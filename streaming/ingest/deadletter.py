"""Dead-letter envelope: the original bytes, untouched, plus headers saying why and from where.

Keeping the value byte-for-byte means a fixed producer bug can be followed by a plain replay
of the dead-letter topic into the feedback topic.
"""

from __future__ import annotations

import time

from streaming.base import Record, Sink

REASON = "feedstep.reason"
DETAIL = "feedstep.detail"
SOURCE_TOPIC = "feedstep.source.topic"
SOURCE_PARTITION = "feedstep.source.partition"
SOURCE_OFFSET = "feedstep.source.offset"
SOURCE_TIMESTAMP = "feedstep.source.timestamp_ms"
REJECTED_AT = "feedstep.rejected_at_ms"


def dead_letter_headers(record: Record, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Headers for a dead-lettered record: reason, human detail, and its origin.

    Example:
        >>> rec = Record("feedback", 2, 41, None, b"{oops")
        >>> dict(dead_letter_headers(rec, "bad_json", "..."))["feedstep.source.offset"]
        b'41'
    """
    headers = [
        (REASON, reason.encode()),
        (DETAIL, detail.encode()),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
        (REJECTED_AT, str(int(time.time() * 1000)).encode()),
    ]
    if record.timestamp_ms is not None:
        headers.append((SOURCE_TIMESTAMP, str(record.timestamp_ms).encode()))
    # The original headers travel along, after ours, so nothing about the record is lost.
    headers.extend(record.headers)
    return headers


def send_to_dead_letter(sink: Sink, topic: str, record: Record, reason: str, detail: str) -> None:
    """Queue ``record`` on the dead-letter ``topic``; the caller flushes before committing."""
    sink.send(
        topic,
        value=record.value if record.value is not None else b"",
        key=record.key,
        headers=dead_letter_headers(record, reason, detail),
    )
