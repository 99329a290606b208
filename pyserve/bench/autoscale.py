"""The autoscaler's target value that keeps p99 under the SLO, and the HPA and KEDA snippets that use it.

The metric is pyserve's own gauge ``pyserve_inflight_requests`` (requests accepted and not yet
answered: queued plus running; docs/metrics.md), averaged per pod. The target is derived from the
level the capacity answer chose (the highest throughput within the SLO):

    in_flight = throughput_rps * latency_s          (Little's law, L = lambda * W)
    target    = in_flight * (1 - headroom_pct / 100)

``latency_s`` is the server's mean request time (Δ``pyserve_request_duration_seconds_sum`` /
Δ``_count``, which is what the gauge counts) when the bench read the server's metrics, else the
client's mean latency (which adds the HTTP round trip, so the target is a little high).

Sources: Little, "A Proof for the Queuing Formula L = λW", Operations Research 9(3), 1961; the
Kubernetes documentation "Horizontal Pod Autoscaling" (autoscaling/v2, ``type: Pods`` metrics with
``target.type: AverageValue``); KEDA's "Prometheus" scaler (``query``, ``threshold``; the threshold is
per replica).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from pyserve.bench.capacity import CapacityAnswer

METRIC = "pyserve_inflight_requests"


@dataclasses.dataclass(frozen=True)
class LevelLoad:
    """What the target needs from one measured level."""

    level: float  # the sweep value
    throughput_rps: float
    mean_ms: float  # client-side mean latency of successful requests (NaN when none)
    server_request_ms: float  # server-side mean request time; NaN without pyserve metrics


@dataclasses.dataclass(frozen=True)
class AutoscaleTarget:
    """The per-pod target of ``pyserve_inflight_requests`` and how it was derived."""

    metric: str
    in_flight: float  # per pod, at the capacity level
    latency_source: str  # "server" (pyserve_request_duration_seconds) or "client" (mean latency)
    latency_ms: float
    headroom_pct: float
    target_value: float  # in_flight * (1 - headroom), requests per pod
    text: str


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def target(levels: Sequence[LevelLoad], cap: CapacityAnswer) -> AutoscaleTarget | None:
    """The target value for the level ``cap`` chose; None when no level met the SLO.

    Raises ValueError when the chosen level is not among ``levels`` or has no latency to use.
    """
    if cap.level is None or cap.capacity_rps is None:
        return None
    chosen = [lv for lv in levels if lv.level == cap.level]
    if not chosen:
        raise ValueError(f"level {cap.level} of the capacity answer is not among the measured levels")
    lv = chosen[0]
    if not math.isnan(lv.server_request_ms):
        source, latency_ms = "server", lv.server_request_ms
    elif not math.isnan(lv.mean_ms):
        source, latency_ms = "client", lv.mean_ms
    else:
        raise ValueError(f"level {cap.level} has no latency to derive the in-flight requests from")
    in_flight = lv.throughput_rps * latency_ms / 1e3
    value = round(in_flight * (1 - cap.headroom_pct / 100.0), 3)
    what = "pyserve_request_duration_seconds mean" if source == "server" else "client mean latency"
    text = (
        f"Autoscaler target: {METRIC} = {_fmt(value)} per pod "
        f"(in-flight at the capacity level = {_fmt(lv.throughput_rps)} req/s * {_fmt(latency_ms)} ms [{what}] "
        f"= {_fmt(in_flight)}, minus {_fmt(cap.headroom_pct)}% headroom)."
    )
    return AutoscaleTarget(METRIC, in_flight, source, latency_ms, cap.headroom_pct, value, text)


def quantity(value: float) -> str:
    """``value`` as a Kubernetes quantity: milli-units (``1550m``) unless it is a whole number."""
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def hpa_yaml(model: str, value: float, min_replicas: int, max_replicas: int, deployment: str = "pyserve") -> str:
    """An ``autoscaling/v2`` HorizontalPodAutoscaler on the per-pod average of ``pyserve_inflight_requests``
    (served to the HPA by the Prometheus adapter as a ``Pods`` metric)."""
    return f"""apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {deployment}-{model}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {deployment}
  minReplicas: {min_replicas}
  maxReplicas: {max_replicas}
  metrics:
  - type: Pods
    pods:
      metric:
        name: {METRIC}
        selector:
          matchLabels:
            model: {model}
      target:
        type: AverageValue
        averageValue: {quantity(value)}
"""


def keda_yaml(
    model: str,
    value: float,
    min_replicas: int,
    max_replicas: int,
    deployment: str = "pyserve",
    prometheus: str = "http://prometheus.monitoring.svc:9090",
) -> str:
    """A KEDA ScaledObject with a ``prometheus`` trigger: ``sum(pyserve_inflight_requests{model=...})``
    against ``threshold`` per replica."""
    return f"""apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {deployment}-{model}
spec:
  scaleTargetRef:
    name: {deployment}
  minReplicaCount: {min_replicas}
  maxReplicaCount: {max_replicas}
  triggers:
  - type: prometheus
    metadata:
      serverAddress: {prometheus}
      query: sum({METRIC}{{model="{model}"}})
      threshold: "{_fmt(value)}"
"""
