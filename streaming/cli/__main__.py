"""``python -m streaming.cli``: the ``feedstep`` console script."""

import sys

from streaming.cli import main

sys.exit(main())
