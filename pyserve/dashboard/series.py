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

# (core stats key, outcome): every request that reached a model's queue ends in exactly one
# (the same words as pyserve_requests_total{outcome}; pyserve.metrics.OUTCOMES).
OUTCOMES = (
    ("requests_succeeded", "success"),
    ("requests_failed", "failure"),
    ("requests_timed_out", "timeout"),
    ("requests_rejected", "rejected"),
    ("requests_cancelled", "cancelled"),
)
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


def _delta(new: int, old: int) -> int:
    """A counter's increase; a counter that went down was reset (a reload) and counts from 0."""
    return new - old if new >= old else new


def _histogram_delta(new: Histogram, old: Histogram | None) -> Histogram:
    if old is None or new.count < old.count or new.bounds != old.bounds:
        return new
    counts = new.counts - old.counts
    if (counts < 0).any():  # reset between the two and grew again past the old count
        return new
    return Histogram(new.bounds, counts, new.sum - old.sum, new.count - old.count)


@dataclass(frozen=True, slots=True)
class Interval:
    """What one model version did between two snapshots (``end_s``: the later one's wall time)."""

    end_s: float
    duration_s: float
    requests: tuple[int, ...]
    samples: int
    batches: int
    queue_depth: int
    in_flight: int
    histograms: dict[str, Histogram]
    errors: dict[str, int]


def intervals(snapshots: Sequence[Snapshot], key: tuple[str, str]) -> list[Interval]:
    """The intervals of version ``key`` between consecutive ``snapshots`` (oldest first) that end in a
    snapshot holding it; a version absent from the earlier snapshot was loaded in between, so its
    counters are taken from 0."""
    out: list[Interval] = []
    for a, b in zip(snapshots, snapshots[1:]):
        new = b.versions.get(key)
        if new is None:
            continue
        old = a.versions.get(key)
        dt = b.monotonic_s - a.monotonic_s
        if dt <= 0:
            continue
        if old is None:
            requests, samples, batches = new.requests, new.samples, new.batches
            errors = dict(new.errors)
        else:
            requests = tuple(_delta(n, o) for n, o in zip(new.requests, old.requests))
            samples, batches = _delta(new.samples, old.samples), _delta(new.batches, old.batches)
            errors = {k: _delta(v, old.errors.get(k, 0)) for k, v in new.errors.items()}
        histograms = {k: _histogram_delta(h, old.histograms.get(k) if old else None)
                      for k, h in new.histograms.items()}
        out.append(Interval(b.time_s, dt, requests, samples, batches, new.queue_depth, new.in_flight,
                            histograms, {k: v for k, v in errors.items() if v}))
    return out


def _sum_histograms(items: Sequence[Histogram]) -> Histogram | None:
    if not items:
        return None
    bounds = items[-1].bounds
    same = [h for h in items if h.bounds == bounds]
    return Histogram(bounds, np.sum([h.counts for h in same], axis=0), sum(h.sum for h in same),
                     sum(h.count for h in same))


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


def summary(items: Sequence[Interval], latest: VersionSnapshot | None) -> dict:
    """The figures of a window of intervals (oldest first) of one version: requests by outcome,
    throughput (successful requests/s) and samples/s over the window, request latency and queue
    time percentiles (ms), mean compute time per batch (ms), batches and the mean batch size, the
    batch-size distribution, errors by kind; and the gauges of the ``latest`` snapshot."""
    window_s = sum(i.duration_s for i in items)
    requests = [sum(col) for col in zip(*(i.requests for i in items))] or [0] * len(OUTCOMES)
    histograms = {k: _sum_histograms([i.histograms[k] for i in items if k in i.histograms]) for k in HISTOGRAMS}
    errors: dict[str, int] = {}
    for i in items:
        for k, v in i.errors.items():
            errors[k] = errors.get(k, 0) + v
    batches = sum(i.batches for i in items)
    samples = sum(i.samples for i in items)
    last = items[-1] if items else None
    return {
        "window_s": round(window_s, 3),
        "requests": {name: n for (_, name), n in zip(OUTCOMES, requests)},
        "throughput_rps": requests[0] / window_s if window_s else None,
        "throughput_now_rps": last.requests[0] / last.duration_s if last else None,
        "samples_ps": samples / window_s if window_s else None,
        "latency_ms": _quantiles(histograms["request_us"], 1e-3),
        "queue_ms": {**_quantiles(histograms["queue_us"], 1e-3), "mean": _mean(histograms["queue_us"], 1e-3)},
        "compute_ms": {"mean": _mean(histograms["compute_us"], 1e-3)},
        "batches": batches,
        # From the batch-size histogram, which counts failed batches too (samples_inferred does not).
        "batch_size_mean": _mean(histograms["batch_size"], 1.0),
        "batch_sizes": batch_sizes(histograms["batch_size"]),
        "queue_depth": latest.queue_depth if latest is not None else None,
        "in_flight": latest.in_flight if latest is not None else None,
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
    }


def series(items: Sequence[Interval]) -> dict:
    """The figures of each interval as columns for charts: ``time`` (Unix s, the interval's end),
    ``throughput_rps``, ``samples_ps``, ``requests_ps`` by outcome, ``latency_ms`` and ``queue_ms``
    percentiles, ``queue_depth``, ``in_flight``, ``batch_size_mean`` and ``errors_ps`` by kind.
    A figure with nothing to measure in an interval (no request ended) is None."""
    kinds = sorted({k for i in items for k in i.errors})
    out: dict = {
        "time": [round(i.end_s, 3) for i in items],
        "throughput_rps": [i.requests[0] / i.duration_s for i in items],
        "samples_ps": [i.samples / i.duration_s for i in items],
        "requests_ps": {name: [i.requests[j] / i.duration_s for i in items] for j, (_, name) in enumerate(OUTCOMES)},
        "latency_ms": {name: [] for _, name in QUANTILES},
        "queue_ms": {name: [] for _, name in QUANTILES},
        "queue_depth": [i.queue_depth for i in items],
        "in_flight": [i.in_flight for i in items],
        "batch_size_mean": [_mean(i.histograms.get("batch_size"), 1.0) for i in items],
        "errors_ps": {k: [i.errors.get(k, 0) / i.duration_s for i in items] for k in kinds},
    }
    for i in items:
        for target, key in ((out["latency_ms"], "request_us"), (out["queue_ms"], "queue_us")):
            for name, v in _quantiles(i.histograms.get(key), 1e-3).items():
                target[name].append(v)
    return out


def minutes(items: Sequence[Interval], width_s: float = 60.0) -> list[dict]:
    """The intervals grouped by the minute (``width_s``) they end in, newest first, each group as
    :func:`summary` figures plus ``start`` (Unix s): the history as a table for pages without scripts."""
    groups: dict[int, list[Interval]] = {}
    for i in items:
        groups.setdefault(int(i.end_s // width_s), []).append(i)
    rows = []
    for slot in sorted(groups, reverse=True):
        group = groups[slot]
        rows.append({"start": slot * width_s, **summary(group, None)})
    return rows
