"""The ``feedstep`` command line.

Verbs: ``demo``, ``run`` and ``produce`` run and feed the sidecar; ``serve`` is a follower that
serves the model store's LIVE version and trains nothing; ``record`` dumps a topic range to JSONL
and ``replay`` runs the pipeline over a recording as a dry run with a report; ``status``,
``promote`` and ``rollback`` read and switch the model store (:mod:`learner.store`).

One module per verb (``streaming/cli/<verb>.py``), the parser in :mod:`streaming.cli.parser`,
the wiring of the parts from the configuration in :mod:`streaming.cli.wiring`.

Every long job shows progress on stderr. User text never reaches the logs. Errors print one line,
``feedstep: error: ...``, on stderr and exit with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from learner.store import StoreError
from streaming.cli.logs import setup_logging
from streaming.cli.parser import build_parser
from streaming.errors import FeedstepError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``feedstep`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.log_format)
    try:
        return int(args.func(args))
    except (FeedstepError, StoreError, ValueError, FileNotFoundError) as exc:
        print(f"feedstep: error: {exc}", file=sys.stderr)
        return 2
