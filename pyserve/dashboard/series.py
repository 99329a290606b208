"""Figures over time from snapshots of the core's cumulative statistics: rates, percentiles, batch sizes.

A :class:`Snapshot` holds, for each loaded model version, the core's counters and histograms at one
instant (what ``GET /metrics`` would have said then) and the errors answered so far by kind. Two
consecutive snapshots give one *interval*: counters and histogram buckets are differenced (a counter
that went down was reset by a reload of the version, and counts from 0 again, as Prometheus's
``rate()`` takes it), and the interval's rates and percentiles come from those differences. The
figures of a whole window are the sums of its intervals.

Percentiles follow Prometheus's ``histogram_quantile`` (prometheus/promql/quantile.go): find the
bucket holding the rank ``q * count`` and interpolate linearly within it, the lowest bucket starting
at 0; a rank in the +Inf bucket gives the highest finite bound. So a percentile is as coarse as the
core's buckets (10, 25, 50, 100, 250, 500 µs, 1 ms, ...: docs/metrics.md): it is an estimate inside
the right bucket, the same figure a Grafana panel over ``GET /metrics`` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pyserve.metrics import OUTCOMES  # (core stats key, outcome): each request ends in exactly one

HISTOGRAMS = ("request_us", "queue_us", "compute_us", "batch_size")
QUANTILES = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative histogram as the core keeps it: ``counts`` per bucket (int64, not cumulative,
    ``len(bounds) + 1`` entries, the last the +Inf bucket), ``bounds`` ascending upper bounds."""

    bounds: tuple[float, ...]
    counts: np.ndarray
    sum: float
    count: int


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    """One model version at one instant: cumulative counters (requests by outcome in the order of
    :data:`OUTCOMES`, samples, batches), gauges (queue depth, in flight), the four histograms of
    :data:`HISTOGRAMS` (µs, and samples for ``batch_size``) and errors answered by kind."""

    requests: tuple[int, ...]
    samples: int
    batches: int
    queue_depth: int
    in_flight: int
    histograms: dict[str, Histogram]
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The statistics of every loaded version at one instant: ``time_s`` (wall clock, Unix seconds,
    for display) and ``monotonic_s`` (for intervals); ``versions`` keyed by (model, version). The
    errors of a model's calls refused before a version was chosen (an unknown or unavailable version,
    a body the transport refused) are under (model, ""), with no counters of the core."""

    time_s: float
    monotonic_s: float
    versions: dict[tuple[str, str], VersionSnapshot]


def version_snapshot(stats: dict, errors: dict[str, int] | None = None,
                     bounds_cache: dict[tuple, tuple[float, ...]] | None = None) -> VersionSnapshot:
    """A :class:`VersionSnapshot` from what ``ModelRunner.stats()`` returns (the core's dict).

    ``bounds_cache`` shares one tuple of bounds between snapshots (the core's bounds are fixed)."""
    histograms = {}
    for key in HISTOGRAMS:
        h = stats[key]
        bounds = tuple(h["upper_bounds"])
        if bounds_cache is not None:
            bounds = bounds_cache.setdefault(bounds, bounds)
        histograms[key] = Histogram(bounds, np.asarray(h["counts"], np.int64), float(h["sum"]), int(h["count"]))
    return VersionSnapshot(tuple(int(stats[k]) for k, _ in OUTCOMES), int(stats["samples_inferred"]),
                           int(stats["batches_executed"]), int(stats["queue_depth"]), int(stats["in_flight"]),
                           histograms, dict(errors or {}))


def unrouted(errors: dict[str, int]) -> VersionSnapshot:
    """The entry (model, "") of a snapshot: errors by kind of calls that reached no version."""
    return VersionSnapshot((0,) * len(OUTCOMES), 0, 0, 0, 0, {}, dict(errors))


def histogram_quantile(q: float, bounds: Sequence[float], counts: np.ndarray) -> float | None:
    """The ``q``-quantile (0 <= q <= 1) of observations counted per bucket, as Prometheus's
    ``histogram_quantile`` estimates it; None when ``counts`` holds no observation.

    ``bounds``: ascending upper bounds; ``counts``: per bucket (not cumulative), ``len(bounds) + 1``
    entries, the last one the +Inf bucket."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1]) if len(cumulative) else 0
    if total <= 0:
        return None
    rank = q * total
    i = int(np.searchsorted(cumulative, rank, side="left"))
    if i >= len(bounds):  # in the +Inf bucket: the highest finite bound is all that is known
        return float(bounds[-1])
    lower = 0.0 if i == 0 else float(bounds[i - 1])
    below = 0 if i == 0 else int(cumulative[i - 1])
    in_bucket = int(counts[i])
    if in_bucket == 0:
        return float(bounds[i])
    return lower + (float(bounds[i]) - lower) * (rank - below) / in_bucket


@dataclass(frozen=True, slots=True)
class HistogramColumns:
    """One histogram's differences over ``n`` intervals: ``counts`` (n, buckets), ``sum`` and
    ``count`` (n,), the bucket ``bounds``."""

    bounds: tuple[float, ...]
    counts: np.ndarray
    sum: np.ndarray
    count: np.ndarray


@dataclass(frozen=True, slots=True)
class Intervals:
    """What one model version did between consecutive snapshots, as columns of ``n`` intervals
    (oldest first): ``end_s`` (wall time of the later snapshot), ``duration_s``, ``requests``
    (n, len(OUTCOMES)), ``samples``, ``batches``, the gauges ``queue_depth`` and ``in_flight`` at the
    interval's end, ``histograms`` by key, ``errors`` by kind (n,)."""

    end_s: np.ndarray
    duration_s: np.ndarray
    requests: np.ndarray
    samples: np.ndarray
    batches: np.ndarray
    queue_depth: np.ndarray
    in_flight: np.ndarray
    histograms: dict[str, HistogramColumns]
    errors: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.end_s)

    def select(self, rows: np.ndarray | slice) -> Intervals:
        """The intervals at ``rows`` (an index array, a boolean mask or a slice)."""
        return Intervals(self.end_s[rows], self.duration_s[rows], self.requests[rows], self.samples[rows],
                         self.batches[rows], self.queue_depth[rows], self.in_flight[rows],
                         {k: HistogramColumns(h.bounds, h.counts[rows], h.sum[rows], h.count[rows])
                          for k, h in self.histograms.items()},
                         {k: v[rows] for k, v in self.errors.items()})


def _differences(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Row ``t`` minus row ``t - 1`` for t >= 1 (rows of absent snapshots are zeros); a row that went
    down anywhere (a reset: the version was reloaded) counts from 0, so it is its own value."""
    prev = values[:-1] * present[:-1].reshape((-1,) + (1,) * (values.ndim - 1))
    out = values[1:] - prev
    reset = out < 0
    if values.ndim > 1:
        reset = reset.any(axis=tuple(range(1, values.ndim)), keepdims=True)
    return np.where(reset, values[1:], out)


def intervals(snapshots: Sequence[Snapshot], key: tuple[str, str]) -> Intervals:
    """The intervals of version ``key`` between consecutive ``snapshots`` (oldest first) that end in a
    snapshot holding it. Counters and histogram buckets are differenced; a counter that went down was
    reset by a reload and counts from 0 again (as Prometheus's ``rate()`` takes it), and a version
    absent from the earlier snapshot was loaded in between, so it counts from 0 too."""
    versions = [s.versions.get(key) for s in snapshots]
    present = np.array([v is not None for v in versions])
    mono = np.array([s.monotonic_s for s in snapshots], np.float64)
    keep = present[1:].copy()
    keep &= (mono[1:] - mono[:-1]) > 0 if len(mono) > 1 else keep
    zero = VersionSnapshot((0,) * len(OUTCOMES), 0, 0, 0, 0, {}, {})
    rows = [v if v is not None else zero for v in versions]
    counters = np.array([(*v.requests, v.samples, v.batches) for v in rows], np.int64).reshape(len(rows), -1)
    diffs = _differences(counters, present)[keep] if len(rows) > 1 else counters[:0]
    end_rows = np.flatnonzero(keep) + 1
    histograms: dict[str, HistogramColumns] = {}
    template = next((v for v in versions if v is not None), None)
    for name, h in (template.histograms.items() if template is not None else ()):
        empty = np.zeros_like(h.counts)
        counts = np.array([v.histograms[name].counts if name in v.histograms and
                           v.histograms[name].bounds == h.bounds else empty for v in rows], np.int64)
        sums = np.array([v.histograms[name].sum if name in v.histograms else 0.0 for v in rows], np.float64)
        # A histogram reset shows in its buckets; its sum and count follow the buckets' decision.
        both = np.concatenate([counts, sums[:, None]], axis=1)
        d = _differences(both, present)[keep]
        d_counts = d[:, :-1].astype(np.int64)
        histograms[name] = HistogramColumns(h.bounds, d_counts, d[:, -1], d_counts.sum(axis=1))
    kinds = sorted({k for v in versions if v is not None for k in v.errors})
    errors = {}
    for kind in kinds:
        col = np.array([v.errors.get(kind, 0) for v in rows], np.int64)
        errors[kind] = _differences(col, present)[keep] if len(rows) > 1 else col[:0]
    return Intervals(
        end_s=np.array([snapshots[i].time_s for i in end_rows], np.float64),
        duration_s=(mono[1:] - mono[:-1])[keep] if len(mono) > 1 else mono[:0],
        requests=diffs[:, :len(OUTCOMES)], samples=diffs[:, len(OUTCOMES)], batches=diffs[:, len(OUTCOMES) + 1],
        queue_depth=np.array([rows[i].queue_depth for i in end_rows], np.int64),
        in_flight=np.array([rows[i].in_flight for i in end_rows], np.int64),
        histograms=histograms, errors=errors)


def quantile_columns(q: float, bounds: Sequence[float], counts: np.ndarray) -> np.ndarray:
    """:func:`histogram_quantile` of each row of ``counts`` (n, buckets) at once; NaN for a row with
    no observation."""
    n = counts.shape[0]
    if n == 0:
        return np.zeros(0)
    upper = np.asarray(bounds, np.float64)
    cumulative = np.cumsum(counts, axis=1)
    total = cumulative[:, -1]
    rank = q * total
    i = np.argmax(cumulative >= rank[:, None], axis=1)
    in_inf = i >= len(upper)
    i_b = np.minimum(i, len(upper) - 1)
    lower = np.where(i_b == 0, 0.0, upper[np.maximum(i_b - 1, 0)])
    below = np.where(i_b == 0, 0, cumulative[np.arange(n), np.maximum(i_b - 1, 0)])
    in_bucket = counts[np.arange(n), i_b]
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(in_bucket > 0, lower + (upper[i_b] - lower) * (rank - below) / in_bucket, upper[i_b])
    value = np.where(in_inf, upper[-1], value)
    return np.where(total > 0, value, np.nan)


def _column(values: np.ndarray) -> list:
    """A column as a JSON list: NaN (nothing measured) as None."""
    return [None if v != v else v for v in values.tolist()]


def _total_histogram(h: HistogramColumns | None) -> Histogram | None:
    if h is None:
        return None
    return Histogram(h.bounds, h.counts.sum(axis=0), float(h.sum.sum()), int(h.count.sum()))


def _quantiles(h: Histogram | None, scale: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q, name in QUANTILES:
        v = histogram_quantile(q, h.bounds, h.counts) if h is not None else None
        out[name] = None if v is None else v * scale
    return out


def _mean(h: Histogram | None, scale: float) -> float | None:
    return h.sum / h.count * scale if h is not None and h.count else None


def batch_size_label(lower: float, upper: float | None) -> str:
    """The samples a batch-size bucket holds, in words: ``1``, ``3-4``, ``> 4096``."""
    lo = int(lower) + 1
    if upper is None:
        return f"> {int(lower)}"
    return str(int(upper)) if lo >= int(upper) else f"{lo}-{int(upper)}"


def batch_sizes(h: Histogram | None) -> list[dict]:
    """The batches per batch-size bucket, ``[{"label", "le", "batches"}]`` (``le``: the bucket's upper
    bound, None for the last), from the smallest bucket to the largest that holds a batch."""
    if h is None or not h.count:
        return []
    nonzero = np.flatnonzero(h.counts)
    last = int(nonzero[-1]) if len(nonzero) else -1
    out = []
    for i in range(last + 1):
        upper = h.bounds[i] if i < len(h.bounds) else None
        lower = 0.0 if i == 0 else h.bounds[i - 1]
        out.append({"label": batch_size_label(lower, upper), "le": upper, "batches": int(h.counts[i])})
    return out


def summary(items: Intervals, latest: VersionSnapshot | None) -> dict:
    """The figures of a window of intervals of one version: requests by outcome, throughput
    (successful requests/s) and samples/s over the window and in its last interval, request latency
    and queue time percentiles (ms), mean compute time per batch (ms), batches and the mean batch size
    (failed batches included), the batch-size distribution, errors by kind; and the gauges of the
    ``latest`` snapshot (None: not loaded now)."""
    window_s = float(items.duration_s.sum())
    requests = items.requests.sum(axis=0).tolist() if len(items) else [0] * len(OUTCOMES)
    histograms = {k: _total_histogram(items.histograms.get(k)) if len(items) else None for k in HISTOGRAMS}
    errors = {k: int(v.sum()) for k, v in items.errors.items() if v.sum()}
    last = len(items) - 1
    return {
        "window_s": round(window_s, 3),
        "requests": {name: int(n) for (_, name), n in zip(OUTCOMES, requests)},
        "throughput_rps": requests[0] / window_s if window_s else None,
        "throughput_now_rps": float(items.requests[last, 0] / items.duration_s[last]) if last >= 0 else None,
        "samples_ps": float(items.samples.sum()) / window_s if window_s else None,
        "latency_ms": _quantiles(histograms["request_us"], 1e-3),
        "queue_ms": {**_quantiles(histograms["queue_us"], 1e-3), "mean": _mean(histograms["queue_us"], 1e-3)},
        "compute_ms": {"mean": _mean(histograms["compute_us"], 1e-3)},
        "batches": int(items.batches.sum()),
        # From the batch-size histogram, which counts failed batches too (samples_inferred does not).
        "batch_size_mean": _mean(histograms["batch_size"], 1.0),
        "batch_sizes": batch_sizes(histograms["batch_size"]),
        "queue_depth": latest.queue_depth if latest is not None else None,
        "in_flight": latest.in_flight if latest is not None else None,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
    }


def series(items: Intervals) -> dict:
    """The figures of each interval as columns for charts: ``time`` (Unix s, the interval's end),
    ``throughput_rps``, ``samples_ps``, ``requests_ps`` by outcome, ``latency_ms`` and ``queue_ms``
    percentiles, ``queue_depth``, ``in_flight``, ``batch_size_mean`` and ``errors_ps`` by kind.
    A figure with nothing to measure in an interval (no request ended) is None."""
    dt = items.duration_s
    out: dict = {
        "time": np.round(items.end_s, 3).tolist(),
        "throughput_rps": (items.requests[:, 0] / dt).tolist(),
        "samples_ps": (items.samples / dt).tolist(),
        "requests_ps": {name: (items.requests[:, j] / dt).tolist() for j, (_, name) in enumerate(OUTCOMES)},
        "latency_ms": {},
        "queue_ms": {},
        "queue_depth": items.queue_depth.tolist(),
        "in_flight": items.in_flight.tolist(),
        "batch_size_mean": [None] * len(items),
        "errors_ps": {k: (v / dt).tolist() for k, v in sorted(items.errors.items()) if v.any()},
    }
    for target, key in (("latency_ms", "request_us"), ("queue_ms", "queue_us")):
        h = items.histograms.get(key)
        for q, name in QUANTILES:
            out[target][name] = _column(quantile_columns(q, h.bounds, h.counts) * 1e-3) if h is not None \
                else [None] * len(items)
    h = items.histograms.get("batch_size")
    if h is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            out["batch_size_mean"] = _column(np.where(h.count > 0, h.sum / np.maximum(h.count, 1), np.nan))
    return out


def minutes(items: Intervals, width_s: float = 60.0) -> list[dict]:
    """The intervals grouped by the minute (``width_s``) they end in, newest first: ``start`` (Unix s),
    ``requests`` by outcome, ``throughput_rps``, ``latency_ms`` and ``queue_ms`` percentiles (and the
    mean queue time), ``batch_size_mean`` and ``errors`` by kind: the history as a table for pages
    without scripts."""
    if not len(items):
        return []
    slots = np.floor(items.end_s / width_s)
    starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])  # the intervals are in time order

    def sums(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts, axis=0)

    duration, requests = sums(items.duration_s), sums(items.requests)
    grouped = {k: HistogramColumns(h.bounds, sums(h.counts), sums(h.sum), sums(h.count))
               for k, h in items.histograms.items()}
    errors = {k: sums(v) for k, v in items.errors.items()}
    columns: dict[str, dict[str, list]] = {}
    for target, key in (("latency_ms", "request_us"), ("queue_ms", "queue_us")):
        h = grouped.get(key)
        columns[target] = {name: _column(quantile_columns(q, h.bounds, h.counts) * 1e-3) if h is not None
                           else [None] * len(starts) for q, name in QUANTILES}
    with np.errstate(divide="ignore", invalid="ignore"):
        queue = grouped.get("queue_us")
        queue_mean = _column(np.where(queue.count > 0, queue.sum / np.maximum(queue.count, 1) * 1e-3, np.nan)) \
            if queue is not None else [None] * len(starts)
        sizes = grouped.get("batch_size")
        size_mean = _column(np.where(sizes.count > 0, sizes.sum / np.maximum(sizes.count, 1), np.nan)) \
            if sizes is not None else [None] * len(starts)
    rows = []
    for g in range(len(starts) - 1, -1, -1):
        rows.append({
            "start": float(slots[starts[g]] * width_s),
            "requests": {name: int(n) for (_, name), n in zip(OUTCOMES, requests[g])},
            "throughput_rps": float(requests[g, 0] / duration[g]) if duration[g] else None,
            "latency_ms": {name: columns["latency_ms"][name][g] for _, name in QUANTILES},
            "queue_ms": {**{name: columns["queue_ms"][name][g] for _, name in QUANTILES}, "mean": queue_mean[g]},
            "batch_size_mean": size_mean[g],
            "errors": {k: int(v[g]) for k, v in sorted(errors.items(), key=lambda kv: -kv[1][g]) if v[g]},
        })
    return rows
