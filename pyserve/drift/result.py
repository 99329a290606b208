"""A feature's drift result: what the monitor reports and the dashboard shows.

Its own module, without scipy or numpy, so that the server and the dashboard import it where
drift detection is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeatureDrift:
    """The last tested window of one feature of one model version.

    ``tensor``: the input or output; ``feature``: its name in the profile (a column name, ``value``, or
    a summary statistic); ``kind``: ``numerical`` or ``categorical``; ``method``: ks, wasserstein,
    chisquare, jensenshannon or psi; ``score``: a p-value (ks, chisquare) or a distance; ``threshold``:
    what the score was compared with (for p-values the corrected cutoff); ``drifted``: the score passed it
    (p-value below, distance at or above); ``window_rows``: the rows tested; ``updated``: when, in Unix
    seconds."""

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

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object."""
        return {"model": self.model, "version": self.version, "tensor": self.tensor, "feature": self.feature,
                "kind": self.kind, "method": self.method, "score": self.score, "threshold": self.threshold,
                "drifted": self.drifted, "window_rows": self.window_rows, "updated": self.updated}
