"""``python -m invprox``: the command line (``invprox``), also under ``torchrun -m invprox train ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
