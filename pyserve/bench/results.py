"""What one level measured, computed from the raw samples of its stable windows."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from pyserve.bench.server_metrics import ServerSplit
from pyserve.bench.windows import STABLE_WINDOWS, Samples, WindowStats, errors_by_status, latency_summary_ms


@dataclasses.dataclass
class LevelResult:
    """One point of the sweep. Latency figures cover successful requests only (NaN when none)."""

    mode: str
    level: float
    offered_rate_rps: float  # open loop: the scheduled rate; closed loop: NaN
    windows: int  # windows measured
    stable: bool
    duration_s: float  # length of the windows the figures come from
    requests: int
    errors: int
    errors_by_status: dict[str, int]
    throughput_rps: float  # successful requests per second
    samples_per_s: float  # throughput * samples per request
    latency_ms: dict[str, float]  # p50_ms, p90_ms, p95_ms, p99_ms, max_ms, mean_ms
    late_sends: int
    server: ServerSplit | None
    generator_cpu_pct: float  # the busiest generator process, % of one core
    window_stats: list[WindowStats]
    raw: list[tuple[int, Samples]]  # (window index, samples) of every measured window

    @property
    def error_rate(self) -> float:
        """Failed requests / all completed requests in the reported windows."""
        return self.errors / self.requests if self.requests else math.nan

    @property
    def succeeded(self) -> bool:
        """Whether at least one request of the reported windows succeeded."""
        return self.requests > self.errors

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None)."""

        def clean(x: float) -> float | None:
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            self.mode: self.level,
            "offered_rate_rps": clean(self.offered_rate_rps),
            "throughput_rps": self.throughput_rps,
            "samples_per_s": self.samples_per_s,
            "latency_ms": {k.removesuffix("_ms"): clean(v) for k, v in self.latency_ms.items()},
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": clean(self.error_rate),
            "errors_by_status": self.errors_by_status,
            "late_sends": self.late_sends,
            "server": None
            if self.server is None
            else {k: clean(v) for k, v in dataclasses.asdict(self.server).items()},
            "generator_cpu_pct": self.generator_cpu_pct,
            "windows": self.windows,
            "stable": self.stable,
            "duration_s": self.duration_s,
            "window_stats": [
                {
                    "index": w.index,
                    "throughput_rps": w.throughput_rps,
                    "p99_ms": clean(w.p99_ms),
                    "completed": w.completed,
                    "errors": w.errors,
                }
                for w in self.window_stats
            ],
        }


def summarize_level(
    mode: str,
    level: float,
    windows: Sequence[Samples],
    stats: list[WindowStats],
    stable: bool,
    window_s: float,
    samples_per_request: int,
    server: ServerSplit | None,
    generator_cpu_pct: float,
) -> LevelResult:
    """A level's figures from its last (up to) 3 windows: the stable ones when it stabilised."""
    used = list(windows[-STABLE_WINDOWS:])
    merged = Samples.concat(used)
    ok = merged.ok
    n_ok = int(ok.sum())
    duration = len(used) * window_s
    throughput = n_ok / duration if duration else 0.0
    return LevelResult(
        mode=mode,
        level=level,
        offered_rate_rps=level if mode == "request_rate" else math.nan,
        windows=len(windows),
        stable=stable,
        duration_s=duration,
        requests=len(merged),
        errors=len(merged) - n_ok,
        errors_by_status=errors_by_status(merged.status),
        throughput_rps=throughput,
        samples_per_s=throughput * samples_per_request,
        latency_ms=latency_summary_ms(merged.latency_s[ok]),
        late_sends=int(merged.late.sum()),
        server=server,
        generator_cpu_pct=generator_cpu_pct,
        window_stats=stats,
        raw=list(enumerate(windows)),
    )


@dataclasses.dataclass
class RunResult:
    """A whole sweep."""

    levels: list[LevelResult]
    payload_bytes: int
    samples_per_request: int
    processes: int
    notes: list[str]  # warnings and early stops, also printed as they happen
