"""``python -m pyserve.plan``: the plan command without the pyserve CLI around it."""

from __future__ import annotations

import sys

from pyserve.plan.cli import main

if __name__ == "__main__":
    sys.exit(main())
