"""Progress lines on stderr for long jobs."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("feedstep")


class Progress:
    """A one-line progress report on stderr (rewritten in place on a terminal)."""

    def __init__(self, total: int | None, label: str, every_s: float = 1.0) -> None:
        self.total = total
        self.label = label
        self.every_s = every_s
        self._last = 0.0
        self._line = ""
        self._tty = sys.stderr.isatty()

    def show(self, done: int, extra: str = "", force: bool = False) -> None:
        """Print ``done`` (of total) at most once per ``every_s`` unless forced."""
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        of = f"/{self.total}" if self.total else ""
        pct = f" {100 * done / self.total:5.1f}%" if self.total else ""
        line = f"{self.label}: {done}{of}{pct} {extra}"
        if line == self._line:  # a closing call that has nothing new to say
            return
        self._last, self._line = now, line
        if self._tty:
            sys.stderr.write("\r\x1b[2K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """End the in-place line."""
        if self._tty:
            sys.stderr.write("\n")
