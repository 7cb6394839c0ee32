"""Logging for the command line: readable lines or one JSON object per line for collectors.

Log messages are feedstep's own format strings filled with counts, names and offsets; user
text (prompts, responses) never reaches them, in either format.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, ``fields``.

    ``fields`` holds what a call passed with ``extra=`` (values JSON cannot hold as strings);
    an exception adds ``exception`` with its traceback.

    Example:
        >>> record = logging.LogRecord("feedstep", logging.INFO, "", 0, "steps=%d", (3,), None)
        >>> record.created = 0.0
        >>> JsonFormatter().format(record)
        '{"time": "1970-01-01T00:00:00.000Z", "level": "INFO", "logger": "feedstep", \
"message": "steps=3", "fields": {}}'
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        when = datetime.fromtimestamp(record.created, tz=timezone.utc)
        out: dict[str, Any] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "fields": {k: v for k, v in vars(record).items() if k not in _STANDARD},
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(verbose: bool, log_format: str = "text") -> None:
    """Log to stderr at INFO (DEBUG with ``--verbose``), as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "feedstep", False)]:
        root.removeHandler(old)  # ours, from an earlier call
    if not root.handlers:  # as logging.basicConfig: a host that set up logging keeps its own
        handler.feedstep = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("kafka", "transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
