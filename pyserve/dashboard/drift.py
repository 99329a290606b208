"""What the dashboard reads of a drift monitor: a duck-typed :class:`DriftMonitor` (``app.drift``).

The dashboard needs only ``snapshot()``, a list of per-feature results with the fields of
:class:`FeatureDriftLike` (the drift module's ``FeatureDrift``); any object of that shape works, so the
dashboard does not import the drift module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

FIELDS = ("model", "version", "tensor", "feature", "kind", "method", "score", "threshold", "drifted",
          "window_rows", "updated")


class FeatureDriftLike(Protocol):
    """One feature's latest drift result: ``kind`` (numerical, categorical, ...), ``method`` (the test
    or distance used, e.g. ``ks``, ``wasserstein``, ``psi``), ``score`` compared with ``threshold``,
    ``drifted``, ``window_rows`` (rows of live traffic compared), ``updated`` (Unix s)."""

    model: str
    version: str
    tensor: str
    feature: str
    kind: str
    method: str
    score: float
    threshold: float
    drifted: bool
    window_rows: int
    updated: float


@runtime_checkable
class DriftMonitor(Protocol):
    """A drift monitor as the dashboard uses it."""

    def snapshot(self) -> Sequence[FeatureDriftLike]:
        """The latest result of every feature monitored."""
        ...


def rows(results: Sequence[FeatureDriftLike]) -> list[dict]:
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
