"""Output of a sweep: the terminal table, the CSV and JSON files, the raw per-request CSV.

The CSV schema is stable: the columns below, in this order, the sweep variable first. Empty cells
mean "not measured" (no successful request, or a target without pyserve metrics).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from typing import Any, TextIO

from pyserve.bench.autoscale import AutoscaleTarget
from pyserve.bench.capacity import CapacityAnswer
from pyserve.bench.options import BenchOptions
from pyserve.bench.results import LevelResult, RunResult
from pyserve.bench.windows import status_label

# After the sweep variable (``concurrency`` or ``request_rate``).
CSV_COLUMNS = (
    "offered_rate_rps",
    "throughput_rps",
    "samples_per_s",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "requests",
    "errors",
    "error_rate",
    "errors_by_status",
    "late_sends",
    "server_queue_ms",
    "server_compute_ms",
    "server_request_ms",
    "server_avg_batch_size",
    "generator_cpu_pct",
    "windows",
    "stable",
)
RAW_COLUMNS = ("window", "start_s", "latency_ms", "status", "late")


def csv_header(mode: str) -> list[str]:
    """The CSV header of a sweep over ``mode``."""
    return [mode, *CSV_COLUMNS]


def _cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return f"{x:.6g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"
    return str(x)


def _level_cell(level: float) -> str:
    return str(int(level)) if level == int(level) else f"{level:g}"


def _row(r: LevelResult) -> list[str]:
    s = r.server
    values: list[Any] = [
        r.offered_rate_rps,
        r.throughput_rps,
        r.samples_per_s,
        *(r.latency_ms[k] for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")),
        r.requests,
        r.errors,
        r.error_rate,
        ";".join(f"{k}:{v}" for k, v in r.errors_by_status.items()),
        r.late_sends,
        s.queue_ms if s else None,
        s.compute_ms if s else None,
        s.request_ms if s else None,
        s.avg_batch_size if s else None,
        r.generator_cpu_pct,
        r.windows,
        r.stable,
    ]
    return [_level_cell(r.level), *(_cell(v) for v in values)]


def write_csv(path: str, run: RunResult, mode: str) -> None:
    """One row per level, header :func:`csv_header`."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(csv_header(mode))
        for r in run.levels:
            w.writerow(_row(r))


def write_raw_csv(path: str, run: RunResult, mode: str) -> None:
    """Every completed request of every measured window (warm-up excluded)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([mode, *RAW_COLUMNS])
        for r in run.levels:
            level = _level_cell(r.level)
            for window, s in r.raw:
                for start, lat, status, late in zip(
                    s.start_s.tolist(), s.latency_s.tolist(), s.status.tolist(), s.late.tolist()
                ):
                    w.writerow([level, window, f"{start:.6f}", f"{lat * 1e3:.4f}", status_label(status), int(late)])


def to_json(
    run: RunResult, opts: BenchOptions, cap: CapacityAnswer | None, scaling: AutoscaleTarget | None = None
) -> dict[str, Any]:
    """The whole run as a JSON-ready dict."""
    config = dataclasses.asdict(opts)
    config["shapes"] = {k: list(v) for k, v in opts.shapes.items()}
    config["levels"] = list(opts.levels)
    return {
        "tool": "pyserve bench",
        "sweep": opts.mode,
        "config": config,
        "target": {"infer_url": opts.infer_url, "payload_bytes": run.payload_bytes},
        "samples_per_request": run.samples_per_request,
        "percentile_estimator": "nearest-rank on the raw latencies of the last 3 windows",
        "levels": [r.to_dict() for r in run.levels],
        "capacity": None if cap is None else dataclasses.asdict(cap),
        "autoscaling": None if scaling is None else dataclasses.asdict(scaling),
        "notes": run.notes,
    }


def write_json(
    path: str, run: RunResult, opts: BenchOptions, cap: CapacityAnswer | None, scaling: AutoscaleTarget | None = None
) -> None:
    """The JSON report (NaN written as null)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(to_json(run, opts, cap, scaling), f, indent=2)
        f.write("\n")


def _fmt(x: float | None, spec: str = ".2f") -> str:
    if x is None or math.isnan(x):
        return "-"
    return format(x, spec)


def print_table(run: RunResult, mode: str, out: TextIO) -> None:
    """The human table: one line per level."""
    cols = [
        (mode, 12),
        ("req/s", 10),
        ("p50 ms", 9),
        ("p90 ms", 9),
        ("p95 ms", 9),
        ("p99 ms", 9),
        ("max ms", 9),
        ("errors", 8),
        ("queue ms", 9),
        ("compute ms", 11),
        ("batch", 6),
        ("gen cpu", 8),
        ("stable", 7),
    ]
    out.write(" ".join(f"{name:>{width}}" for name, width in cols) + "\n")
    for r in run.levels:
        lat, s = r.latency_ms, r.server
        cells = [
            _level_cell(r.level),
            _fmt(r.throughput_rps, ".1f"),
            *(_fmt(lat[k]) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")),
            str(r.errors),
            _fmt(s.queue_ms if s else None),
            _fmt(s.compute_ms if s else None),
            _fmt(s.avg_batch_size if s else None, ".1f"),
            f"{r.generator_cpu_pct:.0f}%",
            "yes" if r.stable else "NO",
        ]
        out.write(" ".join(f"{c:>{width}}" for c, (_, width) in zip(cells, cols)) + "\n")
    for r in run.levels:
        if r.errors:
            by = ", ".join(f"{k}: {v}" for k, v in r.errors_by_status.items())
            out.write(f"{mode} {_level_cell(r.level)}: {r.errors} of {r.requests} requests failed ({by})\n")
