"""The drift gauges of a server, read from its drift monitor at scrape time (docs/metrics.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pyserve.drift.monitor import DriftMonitor


class DriftCollector(Collector):
    """The drift gauges, read from the monitor at scrape time (docs/metrics.md)."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def collect(self):  # type: ignore[override]
        labels = ["model", "version", "tensor", "feature"]
        score = GaugeMetricFamily("pyserve_drift_score", "Drift score of a feature in its last tested window: a "
                                  "p-value (ks, chisquare) or a distance (wasserstein, jensenshannon, psi).",
                                  labels=labels)
        detected = GaugeMetricFamily("pyserve_drift_detected", "1 when the feature drifted in its last tested "
                                     "window, else 0.", labels=labels)
        model_detected = GaugeMetricFamily("pyserve_drift_model_detected", "1 when some feature of the model "
                                           "version drifted in its last tested window, else 0.",
                                           labels=["model", "version"])
        rows = GaugeMetricFamily("pyserve_drift_window_rows", "Rows of the last tested window.",
                                 labels=["model", "version"])
        updated = GaugeMetricFamily("pyserve_drift_last_update_timestamp_seconds", "When the last window was "
                                    "tested (Unix seconds).", labels=["model", "version"])
        windows = CounterMetricFamily("pyserve_drift_windows", "Windows tested since the version was first seen.",
                                      labels=["model", "version"])
        for v in self._monitor.versions():
            if not v.windows:
                continue
            for r in v.results:
                key = [r.model, r.version, r.tensor, r.feature]
                score.add_metric(key, r.score)
                detected.add_metric(key, 1.0 if r.drifted else 0.0)
            mv = [v.model, v.version]
            model_detected.add_metric(mv, 1.0 if any(r.drifted for r in v.results) else 0.0)
            rows.add_metric(mv, v.last_rows)
            updated.add_metric(mv, v.last_update)
            windows.add_metric(mv, v.windows)
        yield from (score, detected, model_detected, rows, updated, windows)

