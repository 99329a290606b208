"""``python -m pyserve`` is the ``pyserve`` command."""

import sys

from pyserve.cli import main

sys.exit(main())
