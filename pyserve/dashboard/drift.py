"""What the dashboard reads of the drift monitor (``app.drift``, :mod:`pyserve.drift`).

The dashboard needs only ``snapshot()``, a list of :class:`~pyserve.drift.window.FeatureDrift`; a
monitor that is any object with that method works (the tests give one of known results).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pyserve.drift.result import FeatureDrift

FIELDS = tuple(f.name for f in dataclasses.fields(FeatureDrift))


@runtime_checkable
class DriftMonitor(Protocol):
    """A drift monitor as the dashboard uses it."""

    def snapshot(self) -> Sequence[FeatureDrift]:
        """The latest result of every feature monitored."""
        ...


def rows(results: Sequence[FeatureDrift]) -> list[dict]:
    """The results as JSON-ready dicts with the fields of :data:`FIELDS`, in the monitor's order.
    ``score`` and ``threshold`` are floats (None when not a
    finite number, as JSON has no NaN)."""
    out = []
    for r in results:
        row = {name: getattr(r, name, None) for name in FIELDS}
        for name in ("score", "threshold"):
            try:
                value = float(row[name])
            except (TypeError, ValueError):
                value = float("nan")
            row[name] = value if value == value and abs(value) != float("inf") else None
        row["drifted"] = bool(row["drifted"])
        out.append(row)
    return out
