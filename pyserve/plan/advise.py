"""Advice: what keeps the SLO through a trace, each lever searched alone with the others as given.

- **minimum warm replicas**: the smallest ``minReplicas`` from which every larger value keeps the SLO
  (no second missing it);
- **scale-up rate**: the smallest ``Pods`` value of the scale-up policy (pods added per policy period,
  the ``Percent`` policies kept, ``selectPolicy: Max``) from which every larger value keeps the SLO;
- **startup**: the largest whole number of seconds of pod startup such that it and every shorter
  startup keep the SLO (searched up to the trace's length: a longer startup is never ready within it).

"Every larger value" matters: the SLO is not monotone in these levers. Where the HPA's 15 s sync
falls against the load, and the tolerance band, can make 13 warm pods keep the SLO, 14 miss it and 15
keep it again (tests/test_plan.py has such a case). So each search scans from a value known to keep
the SLO towards the other end and stops at the first miss:

- warm replicas from ``ceil(peak / capacity)`` (enough ready pods for the peak at all times: no
  miss) down;
- scale-up pods from the peak replicas of the run with no Pods limit (any larger value runs the same)
  down;
- startup from 0 s up.

``None`` means no value in the range keeps the SLO.
"""

from __future__ import annotations

import dataclasses
import math
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


def _keeps(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> bool:
    return simulate(rates, model, spec).miss_seconds == 0


def _lowest_of_run(top: int, bottom: int, ok: Callable[[int], bool]) -> int | None:
    """Scan down from ``top``: the lowest v such that ok holds for all of [v, top]; None if not ok(top)."""
    if not ok(top):
        return None
    v = top
    while v > bottom and ok(v - 1):
        v -= 1
    return v


def min_warm_replicas(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> int | None:
    """The smallest minReplicas in [spec.min_replicas, spec.max_replicas] from which every larger value
    keeps the SLO."""
    top = min(spec.max_replicas, max(spec.min_replicas, math.ceil(round(float(rates.max()) / model.capacity_rps, 9))))
    return _lowest_of_run(top, spec.min_replicas,
                          lambda m: _keeps(rates, model, dataclasses.replace(spec, min_replicas=m)))


def _with_pods_policy(spec: HpaSpec, pods: int, period_s: int) -> HpaSpec:
    others = tuple(p for p in spec.scale_up.policies if p.type != "Pods")
    rules = dataclasses.replace(spec.scale_up, policies=(*others, ScalingPolicy("Pods", pods, period_s)),
                                select_policy="Max")
    return dataclasses.replace(spec, scale_up=rules)


def scale_up_pods(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> tuple[int | None, int]:
    """The smallest scale-up ``Pods`` policy value from which every larger value keeps the SLO, and its
    period (the given Pods policy's, else the sync period)."""
    period = next((p.period_s for p in spec.scale_up.policies if p.type == "Pods"), spec.sync_period_s)
    # With Pods = maxReplicas the rate never binds; no larger value can change the run past its peak.
    unlimited = simulate(rates, model, _with_pods_policy(spec, spec.max_replicas, period))
    top = max(1, int(unlimited.replicas.max()))
    v = _lowest_of_run(top, 1, lambda k: _keeps(rates, model, _with_pods_policy(spec, k, period)))
    return v, period


def max_startup_s(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> int | None:
    """The largest whole startup S (up to the trace's length in seconds: a pod that starts longer is never
    ready within it) such that every startup in [0, S] keeps the SLO."""
    top = len(rates)
    s = -1
    while s < top and _keeps(rates, dataclasses.replace(model, startup_s=float(s + 1)), spec):
        s += 1
    return None if s < 0 else s


def advise(rates: np.ndarray, model: ReplicaModel, spec: HpaSpec) -> Advice:
    """All three searches."""
    pods, period = scale_up_pods(rates, model, spec)
    return Advice(min_warm_replicas(rates, model, spec), pods, period, max_startup_s(rates, model, spec))
