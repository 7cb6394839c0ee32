"""``python -m streaming.cli``: the ``feedstep`` console script."""

import sys

from streaming.cli import main

if __name__ == "__main__":  # not when imported (the doctest walk imports every module)
    sys.exit(main())
