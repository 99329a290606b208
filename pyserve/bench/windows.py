"""Measurement windows: the raw samples of a window, their statistics, and the stability rule.

A request belongs to the window in which it COMPLETES; windows are back to back on the monotonic
clock. Percentiles use the nearest-rank estimator on the raw sample list: the p-th percentile of n
sorted latencies is the value at 1-based rank ceil(p/100 * n). No interpolation, no histogram.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# Pseudo statuses for failures without an HTTP status (real statuses are 100..599).
STATUS_CONNECTION_ERROR = 0
STATUS_TIMEOUT = 1
PERCENTILES = (50, 90, 95, 99)
# The stability rule compares this many consecutive windows (perf_analyzer's habit).
STABLE_WINDOWS = 3


def status_label(status: int) -> str:
    """How a status is named in reports: the HTTP code, or ``connection_error`` / ``timeout``."""
    if status == STATUS_CONNECTION_ERROR:
        return "connection_error"
    if status == STATUS_TIMEOUT:
        return "timeout"
    return str(status)


@dataclasses.dataclass
class Samples:
    """Raw per-request records (one row per completed request), as parallel numpy arrays.

    ``start_s`` is the send time relative to the start of measurement (the SCHEDULED time in open
    loop); ``latency_s`` runs from that time to the end of the reply.
    """

    start_s: np.ndarray
    latency_s: np.ndarray
    status: np.ndarray
    late: np.ndarray

    @staticmethod
    def empty() -> Samples:
        """No samples."""
        return Samples(np.empty(0), np.empty(0), np.empty(0, np.int32), np.empty(0, bool))

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        """All samples of ``parts`` in one set."""
        if not parts:
            return Samples.empty()
        return Samples(
            np.concatenate([p.start_s for p in parts]),
            np.concatenate([p.latency_s for p in parts]),
            np.concatenate([p.status for p in parts]).astype(np.int32, copy=False),
            np.concatenate([p.late for p in parts]).astype(bool, copy=False),
        )

    def __len__(self) -> int:
        return int(self.latency_s.shape[0])

    @property
    def ok(self) -> np.ndarray:
        """Mask of successful requests (HTTP 2xx)."""
        return (self.status >= 200) & (self.status < 300)


def nearest_rank(sorted_values: np.ndarray, p: float) -> float:
    """The p-th percentile by nearest rank: the value at 1-based rank ceil(p/100 * n); NaN if empty."""
    n = int(sorted_values.shape[0])
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(round(p / 100.0 * n, 9)))
    return float(sorted_values[rank - 1])


def latency_summary_ms(latency_s: np.ndarray) -> dict[str, float]:
    """p50/p90/p95/p99/max/mean in milliseconds of successful latencies (NaN when there are none)."""
    ordered = np.sort(latency_s) * 1e3
    out = {f"p{p}_ms": nearest_rank(ordered, p) for p in PERCENTILES}
    out["max_ms"] = float(ordered[-1]) if ordered.size else math.nan
    out["mean_ms"] = float(ordered.mean()) if ordered.size else math.nan
    return out


def errors_by_status(status: np.ndarray) -> dict[str, int]:
    """Counts of failed requests by status label (``500``, ``connection_error``, ...)."""
    failed = status[(status < 200) | (status >= 300)]
    codes, counts = np.unique(failed, return_counts=True)
    return {status_label(int(c)): int(n) for c, n in zip(codes, counts)}


@dataclasses.dataclass(frozen=True)
class WindowStats:
    """What the stability rule and the progress line need from one window."""

    index: int
    duration_s: float
    completed: int
    errors: int
    throughput_rps: float  # successful requests per second
    p99_ms: float  # NaN when no request succeeded


def window_stats(index: int, samples: Samples, duration_s: float) -> WindowStats:
    """Statistics of one window's samples."""
    ok = samples.ok
    n_ok = int(ok.sum())
    p99 = nearest_rank(np.sort(samples.latency_s[ok]) * 1e3, 99)
    return WindowStats(index, duration_s, len(samples), len(samples) - n_ok, n_ok / duration_s, p99)


def _within(values: Sequence[float], pct: float) -> bool:
    mean = sum(values) / len(values)
    if mean == 0:
        return all(v == 0 for v in values)
    return all(abs(v - mean) <= pct / 100.0 * mean for v in values)


def is_stable(stats: Sequence[WindowStats], pct: float) -> bool:
    """True when the last 3 windows agree: each window's throughput and p99 within ``pct``% of the
    mean of the three. When no request succeeded in any of them (p99 undefined), throughput alone
    decides."""
    if len(stats) < STABLE_WINDOWS:
        return False
    last = stats[-STABLE_WINDOWS:]
    if not _within([s.throughput_rps for s in last], pct):
        return False
    p99s = [s.p99_ms for s in last]
    if all(math.isnan(v) for v in p99s):
        return True
    if any(math.isnan(v) for v in p99s):
        return False
    return _within(p99s, pct)
