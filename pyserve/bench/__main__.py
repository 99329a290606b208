"""``python -m pyserve.bench``: the bench command without the pyserve CLI around it."""

from __future__ import annotations

import sys

from pyserve.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
