"""The progress of a batch job: a bar redrawn in place on a terminal, plain lines otherwise.

``12,345/100,000 rows [#####.....] 12% 8,130 rows/s, 11s left`` (rate since the start; time left =
what remains / that rate). CSV and JSON Lines inputs count their progress in bytes read, as their
number of rows is unknown until the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """Reports ``position`` out of ``total`` (``unit``: "rows" or "bytes") and the rows done.

    ``stream``: where (stderr by default); ``tty``: redraw one line (default: whether the stream is a
    terminal); ``interval_s``: seconds between plain lines (a terminal's bar is redrawn at most
    10 times a second). ``enabled`` False: nothing is printed."""

    def __init__(self, total: int, unit: str, stream: TextIO | None = None, tty: bool | None = None,
                 interval_s: float = 10.0, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = 0.1 if self.tty else interval_s
        self.enabled = enabled
        self.start_s = time.monotonic()
        self._last_s = self.start_s

    def restart(self) -> None:
        """Counts the rate from now (the job's start, once the model is loaded)."""
        self.start_s = self._last_s = time.monotonic()

    def line(self, position: int, rows: int, now_s: float) -> str:
        """The progress text at ``position`` (in ``unit``) with ``rows`` rows done, at ``now_s``."""
        elapsed = max(now_s - self.start_s, 1e-9)
        fraction = min(position / self.total, 1.0)
        rate = rows / elapsed
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else float("inf")
        left_text = f"{left:.0f}s left" if left != float("inf") else "? left"
        if self.unit == "rows":
            done = f"{position:,}/{self.total:,} rows"
        else:
            done = f"{rows:,} rows, {fraction:.0%} of the bytes"
        bar = "#" * round(fraction * BAR_WIDTH)
        return f"{done} [{bar:.<{BAR_WIDTH}}] {fraction:4.0%} {rate:,.0f} rows/s, {left_text}"

    def update(self, position: int, rows: int, final: bool = False) -> None:
        """Prints the progress if enough time passed since the last (always when ``final``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last_s < self.interval_s:
            return
        self._last_s = now
        text = self.line(position, rows, now)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write("pyserve batch: " + text + "\n")
        self.stream.flush()
