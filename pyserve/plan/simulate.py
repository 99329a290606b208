"""The simulation: a load trace against replicas of the replica model, scaled by the HPA, in steps of
one second.

Each second ``t`` (0, 1, ... of the trace):

1. when ``t`` is a multiple of the sync period, the HPA evaluates (:mod:`pyserve.plan.hpa`) with the
   pods ready at ``t`` reporting ``pyserve_inflight_requests`` = the replica model's in-flight at the
   per-pod load ``rate / ready``, and the pods still starting reporting nothing; new pods are created
   at ``t`` and are ready at ``t + startup_s``; removed pods go at once, the newest (still starting)
   first, as a ReplicaSet removes not-ready pods first;
2. the load of second ``t`` (``rate[t]`` requests) is spread evenly over the pods ready at ``t``;
3. the second **misses the SLO** when the per-pod load exceeds the capacity within the SLO
   (``rate > ready * capacity_rps``; with no ready pod, any load misses). Its arrivals are then
   **requests at risk**: they are served (or refused) by pods past their measured capacity, so their
   p99 is not known to be within the SLO.

The trace starts in steady state: the replicas the HPA settles on for the first second's rate (at
least minReplicas), all ready, with no history of recommendations or scale events.

Limits: each second is a steady state of its own (no backlog carries over from an overloaded second,
so recovery is instant once enough pods are ready); the metric is seen at once (no Prometheus scrape
or adapter delay); load is spread evenly; pods never fail.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any

import numpy as np

from pyserve.plan.hpa import Hpa, HpaSpec, metric_replicas
from pyserve.plan.replica import ReplicaModel


@dataclasses.dataclass(frozen=True)
class Simulation:
    """Per-second series (shape (duration_s,)) and the summary of one run."""

    time_s: np.ndarray  # int64, seconds from the trace's start
    rate_rps: np.ndarray  # float64, offered load
    replicas: np.ndarray  # int64, the Deployment's replicas (the HPA's answer)
    ready: np.ndarray  # int64, pods ready
    p99_ms: np.ndarray  # float64, the replica model's p99 at the per-pod load; inf past the curve, NaN idle
    miss: np.ndarray  # bool, the second missed the SLO
    initial_replicas: int

    @property
    def miss_seconds(self) -> int:
        """Seconds that missed the SLO."""
        return int(self.miss.sum())

    @property
    def miss_share(self) -> float:
        """Share of the trace's seconds that missed the SLO, in [0, 1]."""
        return self.miss_seconds / len(self.miss) if len(self.miss) else 0.0

    @property
    def requests_total(self) -> float:
        """Requests offered over the trace (rate x 1 s, summed)."""
        return float(self.rate_rps.sum())

    @property
    def requests_at_risk(self) -> float:
        """Requests that arrived during seconds that missed the SLO."""
        return float(self.rate_rps[self.miss].sum())

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        misses = np.flatnonzero(self.miss)
        return {
            "duration_s": len(self.time_s),
            "initial_replicas": self.initial_replicas,
            "peak_replicas": int(self.replicas.max()),
            "peak_rate_rps": float(self.rate_rps.max()),
            "slo_miss_seconds": self.miss_seconds,
            "slo_miss_share": self.miss_share,
            "first_miss_s": int(misses[0]) if len(misses) else None,
            "last_miss_s": int(misses[-1]) if len(misses) else None,
            "requests_total": self.requests_total,
            "requests_at_risk": self.requests_at_risk,
            "requests_at_risk_share": self.requests_at_risk / self.requests_total if self.requests_total else 0.0,
        }


def _metric_sum(model: ReplicaModel, rate: float, ready: int) -> float:
    return ready * model.in_flight(rate / ready) if ready else 0.0


def steady_state(model: ReplicaModel, spec: HpaSpec, rate: float) -> int:
    """The replicas the HPA settles on for a constant ``rate`` with every pod ready (>= minReplicas)."""
    n = spec.min_replicas
    for _ in range(1000):  # converges in a few steps; the bound only guards against a cycle
        nxt = min(max(metric_replicas(n, _metric_sum(model, rate, n), n, 0, spec.target_value, spec.tolerance),
                      spec.min_replicas), spec.max_replicas)
        if nxt == n:
            break
        n = nxt
    return n


def simulate(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> Simulation:
    """Run ``rates`` (float64 req/s, one per second) against ``model`` scaled by an HPA ``spec``."""
    n = len(rates)
    if n == 0:
        raise ValueError("the trace has no second")
    hpa = Hpa(spec)
    initial = steady_state(model, spec, float(rates[0]))
    ready_at: list[float] = [-math.inf] * initial  # sorted: pods are created in time order
    replicas = np.empty(n, np.int64)
    ready = np.empty(n, np.int64)
    for t in range(n):
        if t % spec.sync_period_s == 0:
            r = bisect.bisect_right(ready_at, t)
            new = hpa.evaluate(float(t), len(ready_at), _metric_sum(model, float(rates[t]), r), r)
            if new > len(ready_at):
                ready_at.extend([t + model.startup_s] * (new - len(ready_at)))
            else:
                del ready_at[new:]  # the newest first: still-starting pods go before ready ones
        replicas[t], ready[t] = len(ready_at), bisect.bisect_right(ready_at, t)
    rates = np.asarray(rates, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_pod = np.where(ready > 0, rates / np.maximum(ready, 1), np.inf)
    p99 = np.where(rates > 0, model.p99_ms(per_pod), np.nan)  # no ready pod: inf (past the curve)
    miss = rates > ready * model.capacity_rps  # with no ready pod, any load misses
    return Simulation(np.arange(n), rates, replicas, ready, p99, miss, initial)
