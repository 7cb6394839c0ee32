"""A :class:`~streaming.base.Source` over a JSONL file, for replaying recorded feedback.

Each non-blank line is one event's JSON and becomes one record of topic ``file:<file name>``,
partition 0, whose offset is the line's 0-based line number. Blank lines yield no record but
still count, so offsets always match line numbers (``sed -n "$((offset + 1))p"`` finds a record).
Gzip files are recognised by their content, not their name.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from streaming.base import Record, Source, TopicPartition

__all__ = ["JsonlFileSource"]

_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path) -> io.BufferedIOBase:
    """Open ``path`` for binary reading, decompressing when it is gzip."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == _GZIP_MAGIC
    if is_gzip:
        return gzip.open(path, "rb")
    return open(path, "rb")  # the caller owns the handle and closes it


def _strip_newline(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


class JsonlFileSource(Source):
    r"""Reads a JSONL (optionally gzip) file as a finite, seekable stream of records.

    Positions are line numbers: :meth:`position` is the next line to read, so
    ``seek({tp: n})`` resumes at line ``n`` (0-based). :meth:`commit` only remembers the offsets,
    there being no broker to tell. A line's bytes, without the line ending, are the record value;
    very long lines are read whole (the decoder rejects them as ``too_large`` afterwards).

    Args:
        path: The file to read; it must exist.
        topic: Topic name of the records; ``file:<file name>`` when None.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "events.jsonl")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(b'{"event_id": "a"}\n\n{"event_id": "b"}\n')
        >>> with JsonlFileSource(path) as src:
        ...     for r in src.poll(0.0):
        ...         print(r.topic, r.offset, r.value)
        ...     print(src.position(), src.at_end())
        file:events.jsonl 0 b'{"event_id": "a"}'
        file:events.jsonl 2 b'{"event_id": "b"}'
        {('file:events.jsonl', 0): 3} True
    """

    def __init__(self, path: str | os.PathLike[str], *, topic: str | None = None) -> None:
        self._path = Path(path)
        self._topic = topic if topic is not None else f"file:{self._path.name}"
        self._tp: TopicPartition = (self._topic, 0)
        self._file: io.BufferedIOBase = _open(self._path)
        self._next_line = 0  # line number of the next line the handle will return
        self._peeked: tuple[int, bytes] | None = None  # a non-blank line read ahead
        self._position = 0
        self._committed: dict[TopicPartition, int] = {}
        self._total_lines: int | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        """The file being read."""
        return self._path

    @property
    def topic_partition(self) -> TopicPartition:
        """The one ``(topic, partition)`` this source has."""
        return self._tp

    # -- reading ----------------------------------------------------------------------------

    def _next_nonblank(self) -> tuple[int, bytes] | None:
        """The next non-blank line and its number, or None at the end of the file."""
        if self._peeked is not None:
            peeked, self._peeked = self._peeked, None
            return peeked
        while True:
            line = self._file.readline()
            if not line:
                self._position = max(self._position, self._next_line)  # trailing blank lines
                return None
            number = self._next_line
            self._next_line += 1
            value = _strip_newline(line)
            if value and not value.isspace():
                return number, value

    def poll(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Return up to ``max_records`` records from the current line; never waits."""
        if self._closed:
            raise RuntimeError(f"JsonlFileSource({str(self._path)!r}) polled after close()")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        out: list[Record] = []
        while len(out) < max_records:
            item = self._next_nonblank()
            if item is None:
                break
            number, value = item
            out.append(Record(topic=self._topic, partition=0, offset=number, key=None, value=value))
            self._position = number + 1
        return out

    def at_end(self) -> bool:
        """True when no non-blank line is left to read."""
        if self._closed:
            return True
        if self._peeked is None:
            self._peeked = self._next_nonblank()
        return self._peeked is None

    @property
    def finite(self) -> bool:
        """Always True: a file has an end."""
        return True

    # -- positions --------------------------------------------------------------------------

    def _check(self, offsets: Mapping[TopicPartition, int], verb: str) -> None:
        for tp, offset in offsets.items():
            if tp != self._tp:
                raise ValueError(f"cannot {verb} {tp}: this JsonlFileSource has only {self._tp}")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(f"cannot {verb} {tp} to {offset!r}: offsets are line numbers >= 0")

    def position(self) -> dict[TopicPartition, int]:
        """The next line number to read."""
        return {self._tp: self._position}

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Re-open the file and continue from the given line number.

        Raises:
            ValueError: The offset is for another topic-partition, negative, or past the end
                of the file (its line count is allowed: that is the end).
        """
        if self._closed:
            raise RuntimeError(f"JsonlFileSource({str(self._path)!r}) seeked after close()")
        self._check(offsets, "seek")
        if self._tp not in offsets:
            return
        target = offsets[self._tp]
        handle = _open(self._path)
        try:
            for skipped in range(target):
                if not handle.readline():
                    raise ValueError(
                        f"cannot seek {self._tp} to line {target}: {str(self._path)!r} has "
                        f"only {skipped} lines"
                    )
        except BaseException:
            handle.close()
            raise
        self._file.close()
        self._file = handle
        self._next_line = target
        self._peeked = None
        self._position = target

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Remember ``offsets``; a file has no broker to store them."""
        self._check(offsets, "commit")
        self._committed.update(offsets)

    def committed(self) -> dict[TopicPartition, int]:
        """The offsets last passed to :meth:`commit`."""
        return dict(self._committed)

    def line_count(self) -> int:
        """Lines in the file, blank ones included (read once, on first call, then cached)."""
        if self._total_lines is None:
            count = 0
            last = b"\n"
            with _open(self._path) as handle:
                while chunk := handle.read(1 << 20):
                    count += chunk.count(b"\n")
                    last = chunk[-1:]
            self._total_lines = count + (0 if last == b"\n" else 1)
        return self._total_lines

    def lag(self) -> dict[TopicPartition, int]:
        """Lines (blank ones included) between the position and the end of the file."""
        return {self._tp: max(0, self.line_count() - self._position)}

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file; idempotent."""
        if not self._closed:
            self._closed = True
            self._file.close()

    def __enter__(self) -> JsonlFileSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JsonlFileSource({str(self._path)!r}, topic={self._topic!r})"
