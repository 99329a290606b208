"""Advice: what keeps the SLO through a trace, each lever searched alone with the others as given.

- **minimum warm replicas**: the smallest ``minReplicas`` (up to ``maxReplicas``) with no second
  missing the SLO;
- **scale-up rate**: the smallest ``Pods`` value of the scale-up policy (pods added per policy
  period, the ``Percent`` policies kept, ``selectPolicy: Max``) with no miss;
- **startup**: the largest whole number of seconds of pod startup (up to the longer of the given
  startup and the trace) with no miss: how fast pods must come up.

Each search is a bisection, which assumes that more warm pods, a faster scale-up and a shorter
startup never add a miss (true of the model: each only brings ready pods earlier); the answer is
checked by a final simulation. ``None`` means no value in the range keeps the SLO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from pyserve.plan.hpa import HpaSpec, ScalingPolicy
from pyserve.plan.replica import ReplicaModel
from pyserve.plan.simulate import simulate


@dataclasses.dataclass(frozen=True)
class Advice:
    """The searched values (None: none in range keeps the SLO)."""

    min_replicas: int | None
    scale_up_pods: int | None  # pods per period of the scale-up Pods policy
    scale_up_period_s: int
    max_startup_s: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


def _smallest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """The smallest v in [lo, hi] with ok(v), for a monotone ok; None when ok(hi) is false."""
    if lo > hi or not ok(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _keeps(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> bool:
    return simulate(rates, model, spec).miss_seconds == 0


def min_warm_replicas(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> int | None:
    """The smallest minReplicas in [spec.min_replicas, spec.max_replicas] that keeps the SLO."""
    return _smallest(spec.min_replicas, spec.max_replicas,
                     lambda m: _keeps(rates, model, dataclasses.replace(spec, min_replicas=m)))


def _with_pods_policy(spec: HpaSpec, pods: int, period_s: int) -> HpaSpec:
    others = tuple(p for p in spec.scale_up.policies if p.type != "Pods")
    rules = dataclasses.replace(spec.scale_up, policies=(*others, ScalingPolicy("Pods", pods, period_s)),
                                select_policy="Max")
    return dataclasses.replace(spec, scale_up=rules)


def scale_up_pods(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> tuple[int | None, int]:
    """The smallest scale-up ``Pods`` policy value (1..maxReplicas) that keeps the SLO, and its period
    (the given Pods policy's, else the sync period)."""
    period = next((p.period_s for p in spec.scale_up.policies if p.type == "Pods"), spec.sync_period_s)
    v = _smallest(1, spec.max_replicas, lambda k: _keeps(rates, model, _with_pods_policy(spec, k, period)))
    return v, period


def max_startup_s(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> int | None:
    """The largest whole startup in [0, max(model.startup_s, len(rates))] seconds that keeps the SLO."""
    top = max(int(model.startup_s), len(rates))
    # Search the smallest "delay removed" d so that startup top - d keeps the SLO.
    d = _smallest(0, top, lambda k: _keeps(rates, dataclasses.replace(model, startup_s=float(top - k)), spec))
    return None if d is None else top - d


def advise(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> Advice:
    """All three searches."""
    pods, period = scale_up_pods(rates, model, spec)
    return Advice(min_warm_replicas(rates, model, spec), pods, period, max_startup_s(rates, model, spec))
