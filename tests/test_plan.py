"""``pyserve plan``: the HPA algorithm against the Kubernetes documentation's rules, the simulation and
its advice against cases computed by hand, the trace and model inputs, the plot, and the command end
to end on the report of a real ``pyserve bench`` run.

The hand-computed cases share one pod model: capacity C = 100 req/s within the SLO, p99 flat at 50 ms
up to 100 req/s, so in-flight per pod = load x 0.05 s (Little's law) and the derived target is
in_flight(C) x (1 - 0.2) = 5 x 0.8 = 4 requests per pod: the HPA aims at 80 req/s per pod.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import Repo, toml_tensors

from pyserve.bench import autoscale
from pyserve.bench import cli as bench_cli
from pyserve.plan import advise, cli
from pyserve.plan.hpa import Hpa, HpaSpec, ScalingPolicy, ScalingRules, metric_replicas
from pyserve.plan.replica import CurvePoint, ModelError, ReplicaModel, from_bench_json, parse_curve
from pyserve.plan.simulate import simulate, steady_state
from pyserve.plan.trace import TraceError, parse_trace, read_trace_csv

CURVE = (CurvePoint(50, 50, 2.5), CurvePoint(100, 50, 5.0))


def pod(startup_s: float = 40.0) -> ReplicaModel:
    return ReplicaModel(capacity_rps=100.0, curve=CURVE, startup_s=startup_s, slo_p99_ms=100.0)


def spec(**kw) -> HpaSpec:
    return HpaSpec(**{"min_replicas": 1, "max_replicas": 100, "target_value": 4.0, **kw})


def step(lo: float, hi: float, at: int, n: int) -> np.ndarray:
    return parse_trace(f"step:{lo:g}:{hi:g}:{at}:{n}")


# --- the HPA algorithm (Kubernetes "Horizontal Pod Autoscaling", autoscaling/v2 behavior) -------


def test_ratio_and_tolerance():
    # The documentation's example: metric 200m against a target of 100m doubles the replicas; 50m halves.
    assert metric_replicas(3, 3 * 0.2, 3, 0, 0.1, 0.1) == 6
    assert metric_replicas(4, 4 * 0.05, 4, 0, 0.1, 0.1) == 2
    # Within the tolerance of 0.1 nothing changes; just past it, ceil(ratio * pods).
    assert metric_replicas(10, 10 * 1.09, 10, 0, 1.0, 0.1) == 10
    assert metric_replicas(10, 10 * 1.11, 10, 0, 1.0, 0.1) == 12
    assert metric_replicas(10, 10 * 0.91, 10, 0, 1.0, 0.1) == 10
    assert metric_replicas(10, 10 * 0.85, 10, 0, 1.0, 0.1) == 9
    assert metric_replicas(5, 0.0, 0, 5, 1.0, 0.1) == 5  # no pod reports: no change


def test_missing_pods_count_zero_up_and_target_down():
    # Up: 2 ready pods at 12.5 each (ratio 3.125), 4 starting counted as 0: 25 / (6 * 4) = 1.04 -> tolerance.
    assert metric_replicas(6, 25.0, 2, 4, 4.0, 0.1) == 6
    # 2 ready at 25 each, 4 missing as 0: ratio 50 / 24 = 2.083, ceil(2.083 * 6) = 13.
    assert metric_replicas(6, 50.0, 2, 4, 4.0, 0.1) == 13
    # Down: 2 ready at 1 (ratio 0.25), 2 missing counted as the target 4: (2 + 8) / 16 = 0.625 -> ceil(2.5) = 3.
    assert metric_replicas(4, 2.0, 2, 2, 4.0, 0.1) == 3
    # Counting the missing pods flips up into down: no change.
    assert metric_replicas(10, 2 * 4.8, 2, 8, 4.0, 0.1) == 10


def test_scale_down_stabilization_keeps_the_highest_recommendation():
    hpa = Hpa(spec())
    assert hpa.evaluate(0, 10, 40.0, 10) == 10  # ratio 1: recommendation 10
    # Load drops to 1/5: the raw recommendation is 2, but 10 was recommended within the last 300 s.
    for t in range(15, 300, 15):
        assert hpa.evaluate(t, 10, 8.0, 10) == 10
    # At 300 s the recommendation of 0 s has left the window (strictly after now - 300): down to 2.
    assert hpa.evaluate(300, 10, 8.0, 10) == 2


def test_scale_up_stabilization_keeps_the_lowest_recommendation():
    hpa = Hpa(spec(scale_up=ScalingRules(30, (ScalingPolicy("Percent", 100, 15),))))
    assert hpa.evaluate(0, 2, 8.0, 2) == 2  # recommendation 2
    assert hpa.evaluate(15, 2, 16.0, 2) == 2  # raw 4, but 2 within the last 30 s
    assert hpa.evaluate(30, 2, 16.0, 2) == 4  # the 0 s recommendation is out; 15 s and 30 s say 4


def test_scale_up_policies_limit_the_rate():
    # Default: the larger of +100% and +4 pods per 15 s.
    hpa = Hpa(spec())
    assert hpa.evaluate(0, 2, 2 * 40.0, 2) == 6  # raw 20; max(2 * 2, 2 + 4) = 6
    # 5 s later the period still holds the +4: it starts from 2 again, so no more.
    assert hpa.evaluate(5, 6, 2 * 40.0, 2) == 6
    # At 15 s the event of 0 s is out of the period: max(6 * 2, 6 + 4) = 12.
    assert hpa.evaluate(15, 6, 2 * 80.0, 2) == 12
    # Large counts: the percent policy wins (10 -> 20, not 14).
    assert Hpa(spec()).evaluate(0, 10, 10 * 40.0, 10) == 20
    # selectPolicy Min takes the smaller limit, Disabled forbids scaling up.
    rules = ScalingRules(0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)), "Min")
    assert Hpa(spec(scale_up=rules)).evaluate(0, 10, 10 * 40.0, 10) == 14
    off = ScalingRules(0, (ScalingPolicy("Pods", 4, 15),), "Disabled")
    assert Hpa(spec(scale_up=off)).evaluate(0, 10, 10 * 40.0, 10) == 10
    assert Hpa(spec(max_replicas=7)).evaluate(0, 2, 2 * 40.0, 2) == 6
    assert Hpa(spec(max_replicas=5)).evaluate(0, 2, 2 * 40.0, 2) == 5


def test_scale_down_policies_and_min_replicas():
    no_window = ScalingRules(0, (ScalingPolicy("Pods", 3, 15),))
    hpa = Hpa(spec(scale_down=no_window))
    assert hpa.evaluate(0, 10, 10.0, 10) == 7  # raw 3, at most 3 pods per 15 s
    assert hpa.evaluate(15, 7, 7.0, 7) == 4
    fast = ScalingRules(0, (ScalingPolicy("Percent", 100, 15),))
    assert Hpa(spec(scale_down=fast, min_replicas=5)).evaluate(0, 10, 1.0, 10) == 5


@pytest.mark.parametrize("bad", [{"min_replicas": 0}, {"max_replicas": 0}, {"target_value": 0.0},
                                 {"sync_period_s": 0}, {"tolerance": 1.0}])
def test_hpa_spec_rejects(bad):
    with pytest.raises(ValueError):
        spec(**bad)


# --- the simulation, by hand ---------------------------------------------------------------


def test_an_overflowing_ratio_recommends_a_bounded_integer():
    """A load so large over a target so small that ratio x pods overflows to inf (was an OverflowError)."""
    assert metric_replicas(2, 1e308, 2, 0, 1e-300, 0.1) == 10**12
    assert metric_replicas(5, 1e308, 2, 3, 1e-300, 0.1) == 10**12


def test_step_load_by_hand():
    """100 -> 1000 req/s at 60 s, startup 40 s, 300 s in all.

    Steady state at 100 req/s: ceil(100 * 0.05 / 4) -> from 1 pod, ratio 1.25 -> 2; at 2, ratio 0.625 -> 2.
    60 s: ratio (1000 * 0.05 / 2) / 4 = 6.25, raw 13, limited to max(2 * 2, 2 + 4) = 6; 4 pods ready at 100 s.
    75 s: 2 ready, 4 missing as 0: 50 / (6 * 4) = 2.08, raw 13, limit max(12, 10) = 12; 6 more ready at 115 s.
    90 s: 2 ready, 10 missing: 50 / 48 = 1.04, within the tolerance: 12. 105 s, 115 s: 1.04 again.
    SLO: 1000 > ready * 100 from 60 s while 2 (to 99 s) and 6 (100 to 114 s) pods are ready: 55 s,
    55 * 1000 requests at risk of 60 * 100 + 240 * 1000 = 246,000.
    """
    sim = simulate(step(100, 1000, 60, 300), pod(40), spec())
    assert sim.initial_replicas == 2
    assert sim.replicas[59] == 2 and sim.replicas[60] == 6 and sim.replicas[74] == 6
    assert sim.replicas[75] == 12 and sim.replicas.max() == 12 and sim.replicas[-1] == 12
    assert sim.ready[99] == 2 and sim.ready[100] == 6 and sim.ready[114] == 6 and sim.ready[115] == 12
    assert np.flatnonzero(sim.miss).tolist() == list(range(60, 115))
    assert sim.miss_seconds == 55 and sim.miss_share == pytest.approx(55 / 300)
    assert sim.requests_at_risk == 55_000 and sim.requests_total == 246_000
    assert sim.p99_ms[0] == 50 and math.isinf(sim.p99_ms[60]) and sim.p99_ms[200] == 50


def test_step_load_faster_startup_by_hand():
    """The same step with startup 10 s: the 4 pods of 60 s are ready at 70 s (6 ready: 600 < 1000); at
    75 s, 6 ready: ratio (1000 * 0.05 / 6) / 4 = 2.08, raw 13, limit max(12, 10) = 12, ready at 85 s.
    Misses 60..84: 25 s, 25,000 requests."""
    sim = simulate(step(100, 1000, 60, 300), pod(10), spec())
    assert sim.ready[69] == 2 and sim.ready[70] == 6 and sim.ready[85] == 12
    assert np.flatnonzero(sim.miss).tolist() == list(range(60, 85))
    assert sim.requests_at_risk == 25_000


def test_scale_down_removes_starting_pods_first(tmp_path):
    """1000 req/s for 15 s from 60 s, then nothing, with no scale-down window. 60 s: 2 -> 6 (4 starting).
    75 s: load 0, ratio 0; the 4 starting pods count as the target: 16 / 24 = 0.67 -> ceil(4) = 4. The
    2 pods removed are starting ones, so the 2 ready pods stay. 90 s: 2 ready, 2 starting as the target:
    8 / 16 = 0.5 -> 2; the 2 starting pods go, never ready."""
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,rate\n0,100\n59,100\n60,1000\n74,1000\n75,0\n199,0\n")
    down = ScalingRules(0, (ScalingPolicy("Percent", 100, 15),))
    sim = simulate(read_trace_csv(str(trace)), pod(40), spec(scale_down=down))
    assert sim.replicas[74] == 6 and sim.replicas[75] == 4 and sim.ready[75] == 2
    assert sim.replicas[90] == 2 and sim.ready[60:105].tolist() == [2] * 45


def test_steady_state_is_the_hpa_fixed_point():
    assert steady_state(pod(), spec(), 100.0) == 2
    # From 1 pod: ratio 1000 * 0.05 / 4 = 12.5 -> 13; at 13, ratio 0.96 is within the tolerance.
    assert steady_state(pod(), spec(), 1000.0) == 13
    assert steady_state(pod(), spec(min_replicas=5), 100.0) == 5


def test_advice_min_warm_replicas_by_hand():
    """The 100 -> 1000 step is instant and pods take 40 s: only pods already warm can take it, so
    ceil(1000 / 100) = 10; no scale-up rate and no startup time helps (at 0 s, the first sync adds only
    4 pods: 6 * 100 < 1000)."""
    rates, model, hpa = step(100, 1000, 60, 300), pod(40), spec()
    a = advise.advise(rates, model, hpa)
    assert a.min_replicas == 10
    assert simulate(rates, model, spec(min_replicas=9)).miss_seconds > 0
    assert a.scale_up_pods is None and a.max_startup_s is None and a.scale_up_period_s == 15


def test_advice_scale_up_pods_by_hand():
    """Startup 0: at 60 s the HPA reaches 2 + k pods at once (more than +100%); 10 pods serve 1000 req/s,
    so k = 8. With k = 7, 9 pods: a miss."""
    rates, model = step(100, 1000, 60, 300), pod(0)
    pods, period = advise.scale_up_pods(rates, model, spec())
    assert (pods, period) == (8, 15)
    seven = spec(scale_up=ScalingRules(0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 7, 15))))
    assert simulate(rates, model, seven).miss_seconds == 15  # 9 pods from 60 s, 13 at 75 s


def test_advice_is_robust_to_the_sync_phase():
    """A ramp 100 -> 1500 req/s over 300 s, startup 30 s: 13 warm pods keep the SLO, 14 miss it (where
    the 15 s syncs fall against the load), 15 and more keep it. The advice is 15, the smallest value from
    which every larger one keeps the SLO, checked here against every value up to ceil(1500 / 100)."""
    rates, model = parse_trace("ramp:100:1500:300"), pod(30)
    misses = {m: simulate(rates, model, spec(min_replicas=m)).miss_seconds for m in range(1, 16)}
    assert misses[13] == 0 and misses[14] > 0 and misses[15] == 0
    assert advise.min_warm_replicas(rates, model, spec()) == 15


def test_advice_max_startup_by_hand(tmp_path):
    """100 req/s, then 180 at 60 s, then 250 at 90 s. At 60 s: (180 * 0.05 / 2) / 4 = 1.125 -> ceil(2.25) = 3
    (a pod created at 60 s). At 75 s and 90 s, counting the starting pod as 0 brings the ratio within the
    tolerance or below 1: still 3. 250 req/s needs 3 ready pods (2 * 100 < 250): the new pod must be ready
    by 90 s, so startup <= 30 s. With 40 s, 90..99 s miss: 10 s, 2,500 requests. 3 warm pods never miss."""
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,rate\n0,100\n59,100\n60,180\n89,180\n90,250\n299,250\n")
    rates = read_trace_csv(str(trace))
    sim = simulate(rates, pod(40), spec())
    assert sim.replicas[60] == 3 and sim.replicas.max() == 3
    assert np.flatnonzero(sim.miss).tolist() == list(range(90, 100)) and sim.requests_at_risk == 2_500
    a = advise.advise(rates, pod(40), spec())
    assert (a.min_replicas, a.scale_up_pods, a.max_startup_s) == (3, None, 30)
    # The search goes past a startup that already keeps the SLO; a flat load keeps it at any startup.
    assert advise.max_startup_s(rates, pod(10), spec()) == 30
    assert advise.max_startup_s(parse_trace("const:100:120"), pod(10), spec()) == 120
    # A startup far past the trace's length searches no further than the trace (it searched up to 1e12 s).
    assert advise.max_startup_s(parse_trace("const:100:120"), pod(1e12), spec()) == 120
    assert simulate(rates, pod(31), spec()).miss_seconds == 1
    assert all(simulate(rates, pod(k), spec()).miss_seconds == 0 for k in range(31))  # every shorter one too


# --- inputs ------------------------------------------------------------------------------------


def test_traces(tmp_path):
    assert parse_trace("ramp:100:400:4").tolist() == [100, 200, 300, 400]
    assert parse_trace("step:1:5:2:4").tolist() == [1, 1, 5, 5]
    assert parse_trace("const:7:3").tolist() == [7, 7, 7]
    assert len(parse_trace("ramp:100:10000:1800")) == 1800
    f = tmp_path / "t.csv"
    f.write_text("time_s,rate\n10,0\n14,40\n")
    assert read_trace_csv(str(f)).tolist() == [0, 10, 20, 30, 40]


@pytest.mark.parametrize("spec_, words", [
    ("ramp:1:2", "FROM:TO:DURATION_S"), ("ramp:a:2:3", "FROM must be a number"),
    ("const:-1:3", ">= 0"), ("const:1:2.5", "whole number"), ("step:1:2:9:5", "AT_S"),
    ("sine:1:2", "expected ramp"),
    ("const:100:1e12", "at most 86400 s"), ("ramp:1:2:86401", "at most 86400 s"), ("const:1e308:60", "RATE must be at most 1e\\+09"),
    ("step:1:1e10:5:10", "TO must be at most"),
])
def test_trace_rejects(spec_, words):
    with pytest.raises(TraceError, match=words):
        parse_trace(spec_)


@pytest.mark.parametrize("text, words", [
    ("t,r\n0,1\n", "line 1: expected the header"), ("time_s,rate\n0,1\n0,2\n", "line 3: time_s 0 is not after"),
    ("time_s,rate\n0,x\n", "line 2: time_s and rate must be numbers"), ("time_s,rate\n0,-1\n", "line 2: rate"),
    ("time_s,rate\n0,1,2\n", "line 2: expected 2 columns"), ("time_s,rate\n", "no rows"),
    ("time_s,rate\n0,1\n1e12,2\n", "line 3: time_s 1e\\+12 is 1e\\+12 s after the first row's"),
    ("time_s,rate\n0,1e300\n", "line 2: rate must be at most"),
])
def test_trace_csv_rejects(tmp_path, text, words):
    f = tmp_path / "t.csv"
    f.write_text(text)
    with pytest.raises(TraceError, match=f"--trace-csv {f}: {words}"):
        read_trace_csv(str(f))


def test_replica_model_curve():
    m = ReplicaModel(100, (CurvePoint(20, 10, 0.2), CurvePoint(60, 30, 1.8)), 5, 40)
    assert m.p99_ms(40) == pytest.approx(20) and m.p99_ms(10) == 10 and math.isinf(m.p99_ms(61))
    assert m.in_flight(40) == pytest.approx(1.0) and m.in_flight(10) == pytest.approx(0.1)
    assert m.in_flight(120) == pytest.approx(3.6)  # the last point's latency, 30 ms
    assert parse_curve("40:45,20:25") == (CurvePoint(20, 25, 0.5), CurvePoint(40, 45, 1.8))
    with pytest.raises(ModelError, match="RPS:P99_MS"):
        parse_curve("20-25")
    with pytest.raises(ModelError, match="strictly increasing"):
        ReplicaModel(100, (CurvePoint(20, 10, 0.2), CurvePoint(20, 30, 1.8)), 5, 40)


def _bench_doc() -> dict:
    def level(c, thr, p99, mean, server_ms, errors=0):
        return {"concurrency": c, "throughput_rps": thr, "latency_ms": {"p99": p99, "mean": mean},
                "errors": errors, "server": None if server_ms is None else {"request_ms": server_ms}}

    return {"tool": "pyserve bench", "sweep": "concurrency", "config": {"model": "sleeper"},
            "levels": [level(1, 46.7, 24.9, 21.4, 20.4), level(2, 48.3, 44.4, 41.4, 40.2),
                       level(4, 48.3, 85.9, 82.9, 81.8), level(8, 10.0, None, None, None, errors=5)]}


def test_from_bench_json_by_hand(tmp_path):
    f = tmp_path / "b.json"
    f.write_text(json.dumps(_bench_doc()))
    b = from_bench_json(str(f), 50, 20)
    # Capacity within 50 ms: concurrency 2 (48.3 req/s); target = 48.3 * 0.0402 * 0.8 = 1.553.
    assert b.capacity_rps == 48.3 and b.model == "sleeper"
    assert b.target_value == pytest.approx(1.553, abs=1e-3)
    # Concurrency 4 measured the same throughput as 2: the curve keeps 2 (the lower p99); 8 failed.
    assert [(p.throughput_rps, p.p99_ms) for p in b.curve] == [(46.7, 24.9), (48.3, 44.4)]
    assert b.curve[0].in_flight == pytest.approx(46.7 * 0.0204)
    assert from_bench_json(str(f), 10, 20).capacity_rps is None


def _level_doc(**fields) -> str:
    """A bench report of one level (concurrency 1, 40 req/s, p99 20 ms), ``fields`` replaced."""
    level = {"concurrency": 1, "throughput_rps": 40, "latency_ms": {"p99": 20, "mean": 18}, "errors": 0,
             "server": None, **fields}
    return json.dumps({"tool": "pyserve bench", "sweep": "concurrency", "levels": [level]})


@pytest.mark.parametrize("doc, words", [("[]", "not a `pyserve bench --json` report"), ("{", "not JSON"),
                                        ('{"tool": "pyserve bench", "levels": []}', "'sweep' must be"),
                                        (json.dumps({"tool": "pyserve bench", "sweep": "concurrency",
                                                     "levels": [{"concurrency": 1}]}), "levels\\[0\\]"),
                                        # Fields of the wrong kind or out of range, named (some were tracebacks).
                                        (_level_doc(server=[1]), "levels\\[0\\]: 'server' must be an object or null"),
                                        (_level_doc(latency_ms=[1]), "levels\\[0\\]: 'latency_ms' must be an object"),
                                        (_level_doc(throughput_rps=-40), "levels\\[0\\]: 'throughput_rps' must be a finite number >= 0"),
                                        (_level_doc(throughput_rps=float("inf")), "levels\\[0\\]: 'throughput_rps' must be a finite"),
                                        (_level_doc(latency_ms={"p99": -20, "mean": 1}), "levels\\[0\\]: 'latency_ms.p99' must be"),
                                        (_level_doc(errors=1.5), "levels\\[0\\]: 'errors' must be an integer >= 0, got 1.5"),
                                        (_level_doc(concurrency=0), "levels\\[0\\]: 'concurrency' must be a finite number > 0"),
                                        (json.dumps({"tool": "pyserve bench", "sweep": "concurrency", "config": [1],
                                                     "levels": json.loads(_level_doc())["levels"]}),
                                         "'config' must be an object"),
                                        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
                                        (json.dumps({"tool": "pyserve bench", "sweep": "concurrency",
                                                     "levels": ["x"]}), "levels\\[0\\]: expected an object")])
def test_from_bench_json_rejects(tmp_path, doc, words):
    f = tmp_path / "b.json"
    f.write_text(doc)
    with pytest.raises(ModelError, match=f"--bench-json {f}: {words}"):
        from_bench_json(str(f), 50, 20)


# --- the plot ----------------------------------------------------------------------------------


def test_plot_series_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    from pyserve.plan import plot

    sim = simulate(step(100, 1000, 60, 300), pod(40), spec())
    fig = plot.figure(sim, 100.0, 100.0, "t")
    load_ax, rep_ax, p99_ax = fig.axes
    assert [ln.get_label() for ln in load_ax.get_lines()] == ["load (req/s)", "ready pods x capacity (req/s)"]
    assert len(load_ax.collections) == 1  # the SLO-miss shading
    assert [ln.get_label() for ln in rep_ax.get_lines()] == ["replicas (HPA)", "ready"]
    assert np.array_equal(rep_ax.get_lines()[1].get_ydata(), sim.ready)
    assert len(p99_ax.get_lines()) == 2  # p99 and the SLO line
    path = tmp_path / "p.png"
    plot.write_plot(str(path), sim, 100.0, 100.0, "t")
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (plot.WIDTH_PX, plot.HEIGHT_PX)


# --- the command -----------------------------------------------------------------------------


def plan(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(parser.parse_args(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_step_by_hand(tmp_path):
    out_json = tmp_path / "plan.json"
    code, out, err = plan(["--capacity-rps", "100", "--p99-curve", "50:50,100:50", "--slo-p99-ms", "100",
                           "--startup-s", "40", "--trace", "step:100:1000:60:300", "--json", str(out_json)])
    assert code == 0, err
    assert "averageValue 4 per pod" in out
    assert "SLO missed 55 of 300 s (18.3%), first at 60 s, last at 114 s; requests at risk: 55000 of 246000" in out
    assert "- minReplicas >= 10 (pods kept warm)" in out
    doc = json.loads(out_json.read_text())
    assert doc["summary"]["requests_at_risk"] == 55_000 and doc["advice"]["min_replicas"] == 10
    assert doc["series"]["ready"][115] == 12 and doc["series"]["p99_ms"][60] is None


def test_pyserve_plan_subcommand(tmp_path, capsys):
    """``pyserve plan`` is registered in the pyserve command and runs the module's flags and body."""
    from pyserve import cli as pyserve_cli

    code = pyserve_cli.main(["plan", "--capacity-rps", "100", "--p99-curve", "50:50,100:50", "--slo-p99-ms", "100",
                             "--startup-s", "40", "--trace", "step:100:1000:60:300", "--no-advice"])
    out = capsys.readouterr().out
    assert code == 0 and "SLO missed 55 of 300 s" in out and "What keeps" not in out


@pytest.mark.parametrize("argv, words", [
    (["--capacity-rps", "100", "--bench-json", "x.json"], "either --bench-json"),
    (["--capacity-rps", "-1"], "--capacity-rps must be"),
    (["--capacity-rps", "100", "--trace", "ramp:1"], "--trace 'ramp:1'"),
    (["--capacity-rps", "100", "--trace", "const:1:5", "--trace-csv", "t.csv"], "not both"),
    (["--capacity-rps", "100", "--min-replicas", "0"], "minReplicas must be >= 1"),
    (["--capacity-rps", "100", "--scale-up-percent", "0", "--scale-up-pods", "0"], "never scale up"),
    (["--capacity-rps", "100", "--scale-down-percent", "0"], "never scale down"),
    (["--bench-json", "absent.json"], "--bench-json absent.json: cannot read"),
])
def test_cli_rejects(argv, words):
    code, out, err = plan([*argv, "--slo-p99-ms", "100", "--startup-s", "10"])
    assert code == cli.EXIT_USAGE and words in err and out == ""


SLEEPER = """
import time


class Model:
    def infer(self, inputs):
        time.sleep(0.02)
        return {"y": inputs["x"]}
"""


@pytest.mark.slow
def test_cli_on_a_real_bench_report(serve_module, tmp_path):
    """A short real bench of a 20 ms model (one request at a time), then the plan on its report: the
    plan's capacity and target are the bench's, the snippets carry the target, and every simulated
    second misses exactly when its load exceeds the ready pods' capacity."""
    repo = Repo(tmp_path / "models")
    repo.python("sleeper", SLEEPER, 'backend = "python"\nmax_batch_size = 0\ninstance_count = 1\n'
                + toml_tensors("inputs", [("x", "FP32", [1, 4])]) + toml_tensors("outputs", [("y", "FP32", [1, 4])]))
    server = serve_module([repo.root])
    bench_json = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    out = io.StringIO()
    code = bench_cli.run(parser.parse_args(
        ["-m", "sleeper", "-u", server.url, "--concurrency", "1:2:1", "--warmup-s", "0.3", "--window-s", "1",
         "--max-windows", "4", "--protocol", "binary", "--p99-slo-ms", "1000", "--target-rate", "100",
         "--json", str(bench_json), "-q"]), out=out, err=io.StringIO())
    assert code == 0
    bench = json.loads(bench_json.read_text())
    scaling = bench["autoscaling"]
    assert scaling["latency_source"] == "server" and scaling["metric"] == "pyserve_inflight_requests"
    chosen = next(lv for lv in bench["levels"] if lv["concurrency"] == bench["capacity"]["level"])
    in_flight = chosen["throughput_rps"] * chosen["server"]["request_ms"] / 1e3
    assert scaling["target_value"] == pytest.approx(in_flight * 0.8, abs=1e-3)
    assert f"averageValue: {autoscale.quantity(scaling['target_value'])}" in out.getvalue()
    assert 'query: sum(pyserve_inflight_requests{model="sleeper"})' in out.getvalue()

    plan_json, png = tmp_path / "plan.json", tmp_path / "plan.png"
    argv = ["--bench-json", str(bench_json), "--slo-p99-ms", "1000", "--startup-s", "30",
            "--trace", "step:20:200:60:600", "--json", str(plan_json)]
    has_mpl = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        has_mpl = False
    code, _, err = plan(argv + (["--plot", str(png)] if has_mpl else []))
    assert code == 0, err
    doc = json.loads(plan_json.read_text())
    cap = bench["capacity"]["capacity_rps"]
    assert doc["replica_model"]["capacity_rps"] == cap and doc["model"] == "sleeper"
    assert doc["hpa"]["target_value"] == scaling["target_value"]
    s = doc["series"]
    rate, ready, missed = (np.array(s[k], float) for k in ("rate_rps", "ready", "slo_missed"))
    assert np.array_equal(missed.astype(bool), rate > ready * cap)
    assert doc["summary"]["requests_at_risk"] == pytest.approx(rate[missed.astype(bool)].sum())
    assert doc["summary"]["slo_miss_seconds"] > 0  # 200 req/s arrive at once; pods take 30 s
    assert doc["advice"]["min_replicas"] == math.ceil(200 / cap - 1e-9)
    if has_mpl:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# The flags docs/plan.md gives to plan the HPA of deploy/kubernetes/overlays/hpa.
OVERLAY_HPA_FLAGS = ["--min-replicas", "2", "--max-replicas", "10", "--target-value", "8",
                     "--scale-up-stabilization-s", "0", "--scale-up-percent", "0", "--scale-up-pods", "4",
                     "--scale-up-period-s", "30", "--scale-down-stabilization-s", "300",
                     "--scale-down-percent", "0", "--scale-down-pods", "1", "--scale-down-period-s", "60"]


def test_the_hpa_overlay_can_be_planned():
    """The HPA of overlays/hpa, as its YAML says, is the HpaSpec of the flags docs/plan.md gives for it
    (its scale-down policy is of type Pods, which plan could not express before --scale-down-pods)."""
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    doc = yaml.safe_load((root / "deploy/kubernetes/overlays/hpa/hpa.yaml").read_text())["spec"]

    def rules(d: dict) -> ScalingRules:
        return ScalingRules(d.get("stabilizationWindowSeconds", 0),
                            tuple(ScalingPolicy(p["type"], p["value"], p["periodSeconds"]) for p in d["policies"]),
                            d.get("selectPolicy", "Max"))

    expected = HpaSpec(doc["minReplicas"], doc["maxReplicas"],
                       float(doc["metrics"][0]["pods"]["target"]["averageValue"]),
                       rules(doc["behavior"]["scaleUp"]), rules(doc["behavior"]["scaleDown"]))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([*OVERLAY_HPA_FLAGS, "--capacity-rps", "100", "--slo-p99-ms", "100",
                              "--startup-s", "10"])
    assert cli.build_hpa(args, args.target_value) == expected
    assert " ".join(OVERLAY_HPA_FLAGS) in (root / "docs/plan.md").read_text().replace("\\\n", "").replace("  ", " ")
