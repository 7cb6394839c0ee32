"""The recording format of ``feedstep record``, time parsing, and pacing for ``feedstep produce``.

A recording is JSONL: one Kafka record per line, as it was on the topic::

    {"topic": "feedback", "partition": 2, "offset": 17, "timestamp_ms": 1764324000000,
     "key": "c42", "headers": [{"key": "h", "value": "v"}], "value": "{...}"}

Raw bytes are stored losslessly: ``value`` (and ``key``, and each header's ``value``) is the
text when the bytes are valid UTF-8, otherwise the field is named ``value_b64`` (``key_b64``)
and holds the bytes in base64. ``null`` is a record without a value (or without a key). A
malformed record therefore round-trips byte for byte.

A plain events file (one event JSON per line, what ``feedstep produce`` always read) is told
apart from a recording by its first non-blank line: a recording's lines are objects with
``partition``, ``offset`` and ``value`` or ``value_b64``.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import heapq
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from streaming.base import Record, Source, TopicPartition
from streaming.errors import FeedstepError

__all__ = [
    "Pacer",
    "RecordingFileSource",
    "count_records",
    "decode_recorded",
    "encode_record",
    "file_format",
    "is_recorded",
    "parse_time_ms",
    "read_recording",
    "time_ordered",
]

_GZIP_MAGIC = b"\x1f\x8b"
FileFormat = Literal["recording", "events"]


# -- bytes <-> JSON ---------------------------------------------------------------------------
def _put_bytes(out: dict[str, Any], name: str, data: bytes | None) -> None:
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[f"{name}_b64"] = base64.b64encode(data).decode("ascii")


def _get_bytes(obj: Mapping[str, Any], name: str, where: str) -> bytes | None:
    if f"{name}_b64" in obj:
        text = obj[f"{name}_b64"]
        if not isinstance(text, str):
            raise FeedstepError(f"{where}: {name}_b64 must be a base64 string, got {text!r:.40}")
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise FeedstepError(f"{where}: {name}_b64 is not valid base64 ({exc})") from exc
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FeedstepError(
            f"{where}: {name} must be a string (or {name}_b64), got {type(value).__name__}"
        )
    return value.encode("utf-8")


def encode_record(record: Record) -> str:
    """One recording line (no newline) for ``record``: lossless for any bytes.

    Example:
        >>> line = encode_record(Record("t", 0, 5, None, bytes([255]), timestamp_ms=7))
        >>> line[-20:]
        '"value_b64": "/w=="}'
    """
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
    }
    _put_bytes(out, "key", record.key)
    headers = []
    for name, data in record.headers:
        header: dict[str, Any] = {"key": name}
        _put_bytes(header, "value", data)
        headers.append(header)
    out["headers"] = headers
    _put_bytes(out, "value", record.value)
    return json.dumps(out)


def is_recorded(obj: object) -> bool:
    """True when a parsed JSON line is a recording line rather than a feedback event."""
    return (
        isinstance(obj, dict)
        and "partition" in obj
        and "offset" in obj
        and ("value" in obj or "value_b64" in obj)
    )


def decode_recorded(line: bytes | str, where: str = "recording") -> Record:
    """Parse one recording line back into the :class:`~streaming.base.Record` it came from.

    Raises:
        FeedstepError: the line is not a recording line (the message names ``where``).
    """
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise FeedstepError(
            f"{where}: not JSON ({exc}); a recording holds one JSON object per line as "
            "written by `feedstep record`"
        ) from exc
    if not is_recorded(obj):
        raise FeedstepError(
            f"{where}: expected a recorded message with partition, offset and value (or "
            "value_b64), as written by `feedstep record`"
        )
    partition, offset, ts = obj["partition"], obj["offset"], obj.get("timestamp_ms")
    for name, number in (("partition", partition), ("offset", offset)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise FeedstepError(f"{where}: {name} must be an integer >= 0, got {number!r}")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise FeedstepError(f"{where}: timestamp_ms must be an integer or null, got {ts!r}")
    headers = []
    for header in obj.get("headers") or ():
        if not isinstance(header, dict) or not isinstance(header.get("key"), str):
            raise FeedstepError(f"{where}: each header must be {{key, value}}, got {header!r:.60}")
        headers.append((header["key"], _get_bytes(header, "value", where) or b""))
    topic = obj.get("topic")
    return Record(
        topic=topic if isinstance(topic, str) else "recording",
        partition=partition,
        offset=offset,
        key=_get_bytes(obj, "key", where),
        value=_get_bytes(obj, "value", where),
        timestamp_ms=ts,
        headers=tuple(headers),
    )


# -- files ------------------------------------------------------------------------------------
def _open(path: Path) -> io.BufferedIOBase:
    if not path.is_file():
        raise FeedstepError(
            f"no such file {str(path)!r}; pass a JSONL file of events or a recording written "
            "by `feedstep record`"
        )
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if is_gzip else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its ending) for every non-blank line."""
    with _open(path) as fh:
        for number, line in enumerate(fh, start=1):
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                yield number, raw


def file_format(path: str | os.PathLike[str]) -> FileFormat:
    """``recording`` when the first non-blank line is a recorded message, else ``events``."""
    for _, raw in _lines(Path(path)):
        try:
            return "recording" if is_recorded(json.loads(raw)) else "events"
        except ValueError:
            return "events"
    return "events"


def count_records(path: str | os.PathLike[str]) -> int:
    """Non-blank lines of a recording or events file (for progress totals)."""
    return sum(1 for _ in _lines(Path(path)))


def read_recording(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Every record of a recording file, in file order (``.gz`` recognised by content)."""
    p = Path(path)
    for number, raw in _lines(p):
        yield decode_recorded(raw, f"{p.name} line {number}")


class RecordingFileSource(Source):
    """A recording file as a finite :class:`~streaming.base.Source` (for ``feedstep replay``).

    Records come back with their recorded topic, partition, offset, timestamp, key and headers,
    in file order; positions are the recorded next offsets, and :meth:`seek` skips records
    below the given offset. :meth:`commit` only remembers offsets.

    Example:
        >>> src = RecordingFileSource("week.jsonl")  # doctest: +SKIP
        >>> src.poll(0.0)[0].offset  # doctest: +SKIP
        0
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._iter = read_recording(self._path)
        self._peeked: Record | None = None
        self._done = False
        self._position: dict[TopicPartition, int] = {}
        self._skip_below: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def _next(self) -> Record | None:
        if self._peeked is not None:
            peeked, self._peeked = self._peeked, None
            return peeked
        while not self._done:
            record = next(self._iter, None)
            if record is None:
                self._done = True
            elif record.offset >= self._skip_below.get(record.tp, 0):
                return record
        return None

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Up to ``max_records`` records in file order; never waits."""
        out: list[Record] = []
        while len(out) < max_records:
            record = self._next()
            if record is None:
                break
            out.append(record)
            self._position[record.tp] = record.next_offset
        return out

    def at_end(self) -> bool:
        """True when no record is left."""
        if self._peeked is None:
            self._peeked = self._next()
        return self._peeked is None

    @property
    def finite(self) -> bool:
        """Always True."""
        return True

    def position(self) -> dict[TopicPartition, int]:
        """Next recorded offset per partition seen so far."""
        return dict(self._position)

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Re-read the file, skipping each partition's records below the given offset."""
        self._skip_below.update(offsets)
        self._iter = read_recording(self._path)
        self._peeked = None
        self._done = False
        self._position.update(offsets)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Remember ``offsets``; a file has no broker to store them."""
        self._committed.update(offsets)

    def committed(self) -> dict[TopicPartition, int]:
        """The offsets last passed to :meth:`commit`."""
        return dict(self._committed)


# -- times ------------------------------------------------------------------------------------
def parse_time_ms(text: str, flag: str = "time") -> int:
    """Epoch milliseconds from ``text``: an integer (epoch ms) or an RFC 3339 time with a zone.

    Example:
        >>> parse_time_ms("2026-11-28T10:00:00Z"), parse_time_ms("1795860000000")
        (1795860000000, 1795860000000)
    """
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
        when = datetime.fromisoformat(iso.replace("t", "T", 1))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise FeedstepError(
            f"--{flag} {text!r} is neither epoch milliseconds nor an RFC 3339 time with a "
            "timezone; pass e.g. 2026-11-28T10:00:00Z or 1795860000000"
        )
    return math.floor(when.timestamp() * 1000 + 0.5)


# -- pacing -----------------------------------------------------------------------------------
class Pacer:
    """Decides when each message of a replay is due, and sleeps until then (never spins).

    Due times are kept on an absolute schedule from the first message, so sleep overshoot does
    not accumulate. With ``rate`` the i-th message is due ``i / rate`` seconds after the first;
    with ``speed`` it is due ``(timestamp_i - timestamp_0) / speed`` after the first (a
    timestamp earlier than the one before is sent at once). With neither, nothing waits.

    Args:
        rate: messages per second (> 0), or None.
        speed: replay speed factor over the recorded timestamps (> 0), or None.
        clock: monotonic seconds (tests inject a fake).
        sleep: sleeps for the given seconds (tests inject a fake).

    Example:
        >>> t = [0.0]
        >>> pacer = Pacer(rate=2.0, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
        >>> [pacer.wait() for _ in range(3)]
        [0.0, 0.5, 0.5]
    """

    def __init__(
        self,
        rate: float | None = None,
        speed: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and speed is not None:
            raise FeedstepError("--rate and --speed exclude each other; pass one of them")
        for name, value in (("rate", rate), ("speed", speed)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise FeedstepError(f"--{name} must be a number > 0, got {value}")
        self.rate = rate
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._first_ts: int | None = None
        self._count = 0

    def due_s(self, timestamp_ms: int | None = None) -> float:
        """Seconds after the first message at which the next one is due."""
        if self.rate is not None:
            return self._count / self.rate
        if self.speed is not None:
            if timestamp_ms is None:
                raise FeedstepError(
                    "--speed replays the gaps between recorded timestamps, but a message has no "
                    "timestamp; use a recording written by `feedstep record`, or --rate"
                )
            if self._first_ts is None:
                self._first_ts = timestamp_ms
            return max(0.0, (timestamp_ms - self._first_ts) / 1000.0 / self.speed)
        return 0.0

    def wait(self, timestamp_ms: int | None = None) -> float:
        """Sleep until the next message is due; returns the seconds slept."""
        due = self.due_s(timestamp_ms)
        self._count += 1
        now = self._clock()
        if self._start is None:
            self._start = now
        delay = self._start + due - now
        if delay <= 0:
            return 0.0
        self._sleep(delay)
        return delay


def time_ordered(records: Iterable[Record]) -> Iterator[Record]:
    """Records by timestamp, each key's records kept in their given order (reads them all).

    Records without a key are grouped by partition instead. A recording of several partitions
    lists them as they were polled; ``produce --speed`` replays them in time order this way
    without ever reordering one key.

    Raises:
        FeedstepError: a record has no timestamp.
    """
    groups: dict[object, list[Record]] = {}
    for record in records:
        if record.timestamp_ms is None:
            raise FeedstepError(
                f"record {record.topic}[{record.partition}]@{record.offset} has no timestamp; "
                "--speed needs a recording with timestamps (from `feedstep record`), use --rate"
            )
        group = record.key if record.key is not None else ("partition", record.partition)
        groups.setdefault(group, []).append(record)
    return heapq.merge(*groups.values(), key=lambda r: r.timestamp_ms or 0)
