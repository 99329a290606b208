"""What the dashboard's history costs: memory of a full ring of snapshots, and the time to compute
the figures of ``GET /dashboard/data`` and render the page from it (on a worker thread of the server).

Synthetic snapshots in the core's stats form (20 latency buckets, 12 batch-size buckets, counters that
grow by a seeded random amount each interval) for ``--versions`` model versions over ``--snapshots``
snapshots (721: an hour at the default 5 s). Prints the figures; no goal is asserted.

    python bench/bench_dashboard.py
    python bench/bench_dashboard.py --versions 50 --snapshots 721
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from pyserve.dashboard import page, series
from pyserve.dashboard.history import StatsHistory, make_snapshot

LATENCY_US = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
              1000000, 2500000, 5000000, 10000000, 30000000]
BATCH = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
OUTCOME_KEYS = [k for k, _ in series.OUTCOMES]


def stats_at(totals: dict) -> dict:
    def hist(bounds: list, counts: np.ndarray) -> dict:
        return {"upper_bounds": bounds, "counts": counts.tolist(), "sum": float(counts.sum()) * 300.0,
                "count": int(counts.sum())}

    return {**{k: int(totals[k]) for k in OUTCOME_KEYS}, "samples_inferred": int(totals["samples"]),
            "batches_executed": int(totals["batches"]), "queue_depth": 0, "in_flight": 0,
            "request_us": hist(LATENCY_US, totals["request"]), "queue_us": hist(LATENCY_US, totals["queue"]),
            "compute_us": hist(LATENCY_US, totals["compute"]), "batch_size": hist(BATCH, totals["batch"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--snapshots", type=int, default=721)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    totals = [{**{k: 0 for k in OUTCOME_KEYS}, "samples": 0, "batches": 0,
               "request": np.zeros(len(LATENCY_US) + 1, np.int64), "queue": np.zeros(len(LATENCY_US) + 1, np.int64),
               "compute": np.zeros(len(LATENCY_US) + 1, np.int64), "batch": np.zeros(len(BATCH) + 1, np.int64)}
              for _ in range(args.versions)]
    raws = []
    for _ in range(args.snapshots):
        raw = []
        for v, t in enumerate(totals):
            n = int(rng.integers(500, 2000))
            t["requests_succeeded"] += n
            t["requests_failed"] += int(rng.integers(0, 5))
            t["samples"] += 3 * n
            t["batches"] += n // 3
            for key in ("request", "queue", "compute"):
                t[key] += rng.multinomial(n, np.full(len(LATENCY_US) + 1, 1 / (len(LATENCY_US) + 1)))
            t["batch"] += rng.multinomial(n // 3, np.full(len(BATCH) + 1, 1 / (len(BATCH) + 1)))
            raw.append((f"model{v}", "1", stats_at(t)))
        raws.append(raw)
    errors = {(f"model{v}", "1", "invalid_argument"): 3 for v in range(args.versions)}

    tracemalloc.start()
    history = StatsHistory(args.snapshots)
    cache: dict = {}
    for i, raw in enumerate(raws):
        history.add(make_snapshot(1.8e9 + 5 * i, 5.0 * i, raw, errors, cache))
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"history: {args.snapshots} snapshots x {args.versions} versions hold {held / 1e6:.1f} MB")

    _, snapshots = history.snapshots()
    start = time.perf_counter()
    models = []
    for v in range(args.versions):
        items = series.intervals(snapshots, (f"model{v}", "1"))
        models.append({"model": f"model{v}", "version": "1", "loaded": True,
                       "summary": series.summary(items, snapshots[-1].versions[(f"model{v}", "1")]),
                       "series": series.series(items), "minutes": series.minutes(items)})
    figures_s = time.perf_counter() - start
    doc = {"server": {"version": "bench", "time": snapshots[-1].time_s, "interval_s": 5.0, "history_s": 3600.0,
                      "window_s": snapshots[-1].monotonic_s - snapshots[0].monotonic_s, "snapshots": len(snapshots),
                      "charts": {"library": "plotly", "version": "bench"}, "charts_hint": None},
           "models": models, "drift": {"enabled": False, "message": page.DRIFT_OFF, "features": []},
           "failures": {"enabled": False, "message": page.PAYLOAD_LOG_OFF, "records": []}}
    start = time.perf_counter()
    html = page.render(doc, "/dashboard/static/", "/dashboard/data", "bench")
    render_s = time.perf_counter() - start
    import orjson

    start = time.perf_counter()
    body = orjson.dumps(doc)
    json_s = time.perf_counter() - start
    print(f"figures of /dashboard/data: {figures_s * 1e3:.0f} ms (computed once per new snapshot, then cached)")
    print(f"JSON encoding: {json_s * 1e3:.1f} ms, {len(body) / 1e3:.0f} kB; page: {render_s * 1e3:.0f} ms, "
          f"{len(html) / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
