"""The autoscaler's target value of ``pyserve bench`` (per-pod ``pyserve_inflight_requests`` by Little's
law at the capacity level, minus headroom) and its HPA and KEDA snippets, against hand-computed cases.
The end-to-end check on a real bench run is in tests/test_plan.py (``test_cli_on_a_real_bench_report``)."""

from __future__ import annotations

import math

import pytest

from pyserve.bench import autoscale
from pyserve.bench.capacity import CapacityAnswer


def _cap(level, rps, headroom=20.0) -> CapacityAnswer:
    return CapacityAnswer(50, None, headroom, rps, level, None, "")


def test_autoscale_target_by_hand():
    levels = [autoscale.LevelLoad(1, 46.7, 21.4, 20.4), autoscale.LevelLoad(2, 48.3, 41.4, 40.2)]
    t = autoscale.target(levels, _cap(2, 48.3))
    assert t.latency_source == "server" and t.in_flight == pytest.approx(1.94166)
    assert t.target_value == 1.553  # 1.94166 * 0.8, to 3 decimals
    assert "pyserve_inflight_requests = 1.553 per pod" in t.text
    # Without the server's metrics: the client's mean latency, 48.3 * 0.0414 * 0.5.
    client = autoscale.target([autoscale.LevelLoad(2, 48.3, 41.4, math.nan)], _cap(2, 48.3, 50))
    assert client.latency_source == "client" and client.target_value == pytest.approx(1.0, abs=1e-3)
    assert autoscale.target(levels, CapacityAnswer(50, None, 20, None, None, None, "")) is None


def test_quantities_and_snippets():
    assert autoscale.quantity(1.553) == "1553m" and autoscale.quantity(2.0) == "2"
    hpa = autoscale.hpa_yaml("digits", 1.553, 1, 6)
    for line in ("apiVersion: autoscaling/v2", "kind: HorizontalPodAutoscaler", "  - type: Pods",
                 "        name: pyserve_inflight_requests", "            model: digits",
                 "        type: AverageValue", "        averageValue: 1553m", "  maxReplicas: 6"):
        assert line in hpa.splitlines()
    keda = autoscale.keda_yaml("digits", 1.553, 1, 6)
    for line in ("kind: ScaledObject", "  - type: prometheus", '      query: sum(pyserve_inflight_requests{model="digits"})',
                 '      threshold: "1.553"', "  maxReplicaCount: 6"):
        assert line in keda.splitlines()
