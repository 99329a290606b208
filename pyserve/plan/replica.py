"""The replica model: what one pod serves within the SLO, its p99 and in-flight requests at a given
load, and how long it takes to start.

A pod's curve is a list of measured points (throughput_rps, p99_ms, in_flight), sorted by throughput.
At a per-pod load x (req/s) between two points, p99 and in-flight are interpolated linearly; below the
first point they are the first point's p99 and x times the first point's latency (Little's law);
above the last point the pod is past what was measured: p99 is unbounded (``inf``) and in-flight is
extrapolated with the last point's latency (a lower bound: a real overloaded queue grows).

Sources of a curve: the levels of a ``pyserve bench --json`` report (in-flight by Little's law,
``throughput * latency``, from the server's mean request time when the bench read pyserve's metrics,
else the client's mean latency: the same derivation as the bench's autoscaler target), or explicit
points ``RPS:P99_MS`` whose in-flight is ``RPS * P99_MS`` (Little's law with p99 standing in for the
mean: an upper bound, so a simulated HPA scales a little early).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any

import numpy as np

from pyserve.bench import capacity as capacity_mod


class ModelError(ValueError):
    """A bench report or curve that cannot build a replica model; the message names the input."""


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One measured point of a pod."""

    throughput_rps: float
    p99_ms: float
    in_flight: float


@dataclasses.dataclass(frozen=True)
class ReplicaModel:
    """One pod: ``capacity_rps`` within the SLO, its curve, and ``startup_s`` from creation to ready."""

    capacity_rps: float
    curve: tuple[CurvePoint, ...]
    startup_s: float
    slo_p99_ms: float

    def __post_init__(self) -> None:
        if not self.capacity_rps > 0 or math.isinf(self.capacity_rps):
            raise ModelError(f"capacity per pod must be a finite number of req/s > 0, got {self.capacity_rps}")
        if not self.curve:
            raise ModelError("the latency curve has no point")
        xs = [p.throughput_rps for p in self.curve]
        if any(b <= a for a, b in itertools.pairwise(xs)) or xs[0] <= 0:
            raise ModelError(f"curve throughputs must be > 0 and strictly increasing, got {xs}")
        if not 0 <= self.startup_s < math.inf:
            raise ModelError(f"startup must be a finite number of seconds >= 0, got {self.startup_s}")

    def _column(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        xs = np.array([p.throughput_rps for p in self.curve])
        return xs, np.array([getattr(p, field) for p in self.curve])

    def p99_ms(self, load_rps: np.ndarray | float) -> np.ndarray | float:
        """p99 (ms) of a pod at ``load_rps`` per pod (scalar or float64 array); ``inf`` past the last
        measured point, the first point's p99 below it."""
        xs, ys = self._column("p99_ms")
        x = np.asarray(load_rps, np.float64)
        out = np.where(x > xs[-1], np.inf, np.interp(x, xs, ys))
        return float(out) if out.ndim == 0 else out

    def in_flight(self, load_rps: float) -> float:
        """Requests in flight in a pod at ``load_rps`` per pod (what ``pyserve_inflight_requests`` shows)."""
        if load_rps <= 0:
            return 0.0
        first, last = self.curve[0], self.curve[-1]
        if load_rps <= first.throughput_rps or load_rps >= last.throughput_rps:
            end = first if load_rps <= first.throughput_rps else last
            return load_rps * end.in_flight / end.throughput_rps  # the end point's latency
        xs, ys = self._column("in_flight")
        return float(np.interp(load_rps, xs, ys))


def parse_curve(text: str) -> tuple[CurvePoint, ...]:
    """``RPS:P99_MS,RPS:P99_MS,...`` (e.g. ``20:25,40:45``) as points; in-flight = RPS * P99_MS / 1000."""
    points = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            rps, p99 = float(parts[0]), float(parts[1])
        except ValueError:
            raise ModelError(f"--p99-curve: expected RPS:P99_MS items separated by commas, got {item!r}") from None
        if not (rps > 0 and p99 > 0 and math.isfinite(rps) and math.isfinite(p99)):
            raise ModelError(f"--p99-curve: {item!r}: req/s and p99 ms must be finite and > 0")
        points.append(CurvePoint(rps, p99, rps * p99 / 1e3))
    return tuple(sorted(points, key=lambda p: p.throughput_rps))


@dataclasses.dataclass(frozen=True)
class BenchCurve:
    """What a ``pyserve bench --json`` report gives the plan."""

    model: str
    capacity_rps: float | None  # None: no level met the SLO
    curve: tuple[CurvePoint, ...]
    target_value: float | None  # the bench's autoscaler target for the same SLO and headroom


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _field(key: str, value: Any, positive: bool = False, nullable: bool = False) -> float:
    """``value`` (a level's field ``key``) as a finite number >= 0 (> 0 when ``positive``; None as NaN
    when ``nullable``); ValueError naming the field otherwise."""
    if value is None and nullable:
        return math.nan
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value < 0 or (positive and value == 0)):
        raise ValueError(f"'{key}' must be a finite number {'> 0' if positive else '>= 0'}"
                         f"{' or null' if nullable else ''}, got {value!r}")
    return float(value)


def _table(parent: Any, key: str, nullable: bool = False) -> dict[str, Any]:
    value = parent.get(key)
    if value is None and nullable:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"'{key}' must be an object{' or null' if nullable else ''}, got {value!r}")
    return value


def from_bench_json(path: str, slo_p99_ms: float, headroom_pct: float) -> BenchCurve:
    """The curve and the capacity within ``slo_p99_ms`` of the levels in a ``pyserve bench --json`` file.

    Raises ModelError naming the file and the field when the report is not usable.
    """
    from pyserve.bench import autoscale

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ModelError(f"--bench-json {path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"--bench-json {path}: not JSON: {e}") from None
    except RecursionError:
        raise ModelError(f"--bench-json {path}: JSON nested too deeply for a bench report") from None
    except UnicodeDecodeError:
        raise ModelError(f"--bench-json {path}: not UTF-8 text") from None
    if not isinstance(doc, dict) or doc.get("tool") != "pyserve bench" or not isinstance(doc.get("levels"), list):
        raise ModelError(f"--bench-json {path}: not a `pyserve bench --json` report (no 'tool' and 'levels')")
    mode = doc.get("sweep")
    if mode not in ("concurrency", "request_rate"):
        raise ModelError(f"--bench-json {path}: 'sweep' must be 'concurrency' or 'request_rate', got {mode!r}")
    points: list[capacity_mod.LevelPoint] = []
    loads: list[autoscale.LevelLoad] = []
    curve: list[CurvePoint] = []
    for i, lv in enumerate(doc["levels"]):
        try:
            if not isinstance(lv, dict):
                raise ValueError(f"expected an object, got {lv!r}")
            level = _field(mode, lv[mode], positive=True)
            thr = _field("throughput_rps", lv["throughput_rps"])
            lat = _table(lv, "latency_ms")
            p99 = _field("latency_ms.p99", lat["p99"], nullable=True)
            mean = _field("latency_ms.mean", lat["mean"], nullable=True)
            errors = lv["errors"]
            if isinstance(errors, bool) or not isinstance(errors, int) or errors < 0:
                raise ValueError(f"'errors' must be an integer >= 0, got {errors!r}")
            server = _table(lv, "server", nullable=True)
            server_ms = _field("server.request_ms", server.get("request_ms"), nullable=True)
        except KeyError as e:
            raise ModelError(f"--bench-json {path}: levels[{i}]: missing field {e}") from None
        except (TypeError, ValueError) as e:
            raise ModelError(f"--bench-json {path}: levels[{i}]: {e}") from None
        points.append(capacity_mod.LevelPoint(level, thr, p99, errors))
        loads.append(autoscale.LevelLoad(level, thr, mean, server_ms))
        latency_ms = server_ms if not math.isnan(server_ms) else mean
        if errors == 0 and thr > 0 and not math.isnan(p99) and not math.isnan(latency_ms):
            curve.append(CurvePoint(thr, p99, thr * latency_ms / 1e3))
    if not curve:
        raise ModelError(f"--bench-json {path}: no level without errors and with latencies to build a curve from")
    # A closed-loop sweep can measure the same throughput twice past saturation: keep the first (lowest p99).
    curve.sort(key=lambda p: (p.throughput_rps, p.p99_ms))
    unique: list[CurvePoint] = []
    for p in curve:
        if not unique or p.throughput_rps > unique[-1].throughput_rps:
            unique.append(p)
    cap = capacity_mod.answer(points, slo_p99_ms, None, headroom_pct, str(mode))
    scaling = autoscale.target(loads, cap) if cap.capacity_rps is not None else None
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ModelError(f"--bench-json {path}: 'config' must be an object, got {config!r}")
    model = str(config.get("model", ""))
    return BenchCurve(model, cap.capacity_rps, tuple(unique), None if scaling is None else scaling.target_value)

