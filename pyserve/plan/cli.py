"""Command line of ``pyserve plan``: simulate a load trace against replicas scaled by the Kubernetes
HPA, and say what keeps the p99 SLO (see docs/plan.md).

Exit codes: 0 simulated (whether or not the SLO was missed: the figures say); 2 bad command line or
input file (the message names the flag or file), or an output file that cannot be written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, TextIO

import numpy as np

from pyserve.plan import advise as advise_mod
from pyserve.plan.hpa import HpaSpec, ScalingPolicy, ScalingRules
from pyserve.plan.replica import CurvePoint, ModelError, ReplicaModel, from_bench_json, parse_curve
from pyserve.plan.simulate import Simulation, simulate
from pyserve.plan.trace import TraceError, parse_trace, read_trace_csv

EXIT_OK = 0
EXIT_USAGE = 2
DEFAULT_TRACE = "ramp:100:10000:1800"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the plan flags to ``parser``."""
    m = parser.add_argument_group("replica model")
    m.add_argument("--bench-json", metavar="FILE", help="a `pyserve bench --json` report: capacity and curve")
    m.add_argument("--capacity-rps", type=float, help="req/s one pod serves within the SLO (instead of --bench-json)")
    m.add_argument("--p99-curve", metavar="RPS:MS,...",
                   help="p99 of one pod at measured loads (with --capacity-rps; default one point CAPACITY:SLO)")
    m.add_argument("--slo-p99-ms", type=float, required=True, help="the p99 latency SLO (ms)")
    m.add_argument("--startup-s", type=float, required=True, help="seconds from pod creation to ready (model load)")
    m.add_argument("--headroom-pct", type=float, default=20.0,
                   help="headroom of the derived target value, as in pyserve bench (default 20)")

    h = parser.add_argument_group("HPA (Kubernetes defaults)")
    h.add_argument("--target-value", type=float,
                   help="averageValue of pyserve_inflight_requests per pod (default: derived, see docs/plan.md)")
    h.add_argument("--min-replicas", type=int, default=1, help="minReplicas (default 1)")
    h.add_argument("--max-replicas", type=int, default=1000, help="maxReplicas (default 1000)")
    h.add_argument("--sync-period-s", type=int, default=15, help="HPA sync period (default 15)")
    h.add_argument("--tolerance", type=float, default=0.1, help="HPA tolerance (default 0.1)")
    h.add_argument("--scale-up-stabilization-s", type=int, default=0, help="scaleUp stabilizationWindowSeconds (0)")
    h.add_argument("--scale-up-percent", type=int, default=100, help="scaleUp Percent policy value (100; 0 = none)")
    h.add_argument("--scale-up-pods", type=int, default=4, help="scaleUp Pods policy value (4; 0 = none)")
    h.add_argument("--scale-up-period-s", type=int, default=15, help="periodSeconds of the scaleUp policies (15)")
    h.add_argument("--scale-down-stabilization-s", type=int, default=300,
                   help="scaleDown stabilizationWindowSeconds (300)")
    h.add_argument("--scale-down-percent", type=int, default=100,
                   help="scaleDown Percent policy value (100; 0 = none)")
    h.add_argument("--scale-down-pods", type=int, default=0, help="scaleDown Pods policy value (0 = none)")
    h.add_argument("--scale-down-period-s", type=int, default=15,
                   help="periodSeconds of the scaleDown policies (15)")

    t = parser.add_argument_group("load trace")
    t.add_argument("--trace", default=None,
                   help=f"ramp:FROM:TO:DURATION_S, step:FROM:TO:AT_S:DURATION_S or const:RATE:DURATION_S "
                        f"(default {DEFAULT_TRACE})")
    t.add_argument("--trace-csv", metavar="FILE", help="CSV time_s,rate (instead of --trace)")

    o = parser.add_argument_group("output")
    o.add_argument("--every-s", type=int, default=60, help="a table row every N simulated seconds (default 60)")
    o.add_argument("--no-advice", action="store_true", help="skip the searches for what keeps the SLO")
    o.add_argument("--json", metavar="FILE", help="summary, advice and the per-second series")
    o.add_argument("--plot", metavar="FILE.png", help="load, replicas and p99 over time (matplotlib)")


class UsageError(ValueError):
    """A bad combination of flags."""


def _positive(name: str, v: float | None) -> None:
    if v is not None and (not v > 0 or math.isinf(v)):
        raise UsageError(f"{name} must be a finite number > 0, got {v}")


def build_model(args: argparse.Namespace) -> tuple[ReplicaModel, float, str]:
    """The replica model, the HPA target value and the model's name, from the flags."""
    _positive("--slo-p99-ms", args.slo_p99_ms)
    _positive("--target-value", args.target_value)
    if not 0 <= args.headroom_pct < 100:
        raise UsageError(f"--headroom-pct must be in [0, 100), got {args.headroom_pct}")
    if (args.bench_json is None) == (args.capacity_rps is None):
        raise UsageError("give either --bench-json FILE or --capacity-rps (with --p99-curve)")
    if args.bench_json is not None:
        if args.p99_curve is not None:
            raise UsageError("--p99-curve goes with --capacity-rps, not with --bench-json")
        bench = from_bench_json(args.bench_json, args.slo_p99_ms, args.headroom_pct)
        if bench.capacity_rps is None:
            raise ModelError(f"--bench-json {args.bench_json}: no measured level meets p99 <= {args.slo_p99_ms:g} ms "
                             "without errors: one pod cannot serve within the SLO")
        model = ReplicaModel(bench.capacity_rps, bench.curve, args.startup_s, args.slo_p99_ms)
        derived = bench.target_value
        name = bench.model
    else:
        _positive("--capacity-rps", args.capacity_rps)
        curve = (parse_curve(args.p99_curve) if args.p99_curve is not None
                 else (CurvePoint(args.capacity_rps, args.slo_p99_ms, args.capacity_rps * args.slo_p99_ms / 1e3),))
        model = ReplicaModel(args.capacity_rps, curve, args.startup_s, args.slo_p99_ms)
        derived = round(model.in_flight(args.capacity_rps) * (1 - args.headroom_pct / 100), 3)
        name = ""
    target = args.target_value if args.target_value is not None else derived
    if target is None or not target > 0:
        raise UsageError("no target value could be derived: give --target-value")
    return model, target, name


def _scaling_policies(args: argparse.Namespace, direction: str) -> tuple[ScalingPolicy, ...]:
    """The scale-``direction`` policies ("up" or "down") of the flags: Percent, then Pods, each where
    its value is not 0. Raises UsageError when both are 0."""
    period = getattr(args, f"scale_{direction}_period_s")
    policies = tuple(ScalingPolicy(kind, value, period)
                     for kind, value in (("Percent", getattr(args, f"scale_{direction}_percent")),
                                         ("Pods", getattr(args, f"scale_{direction}_pods")))
                     if value)
    if not policies:
        raise UsageError(f"--scale-{direction}-percent and --scale-{direction}-pods are both 0: the HPA "
                         f"could never scale {direction}")
    return policies


def build_hpa(args: argparse.Namespace, target: float) -> HpaSpec:
    """The HPA spec of the flags (Kubernetes' defaults where not given)."""
    up, down = _scaling_policies(args, "up"), _scaling_policies(args, "down")
    return HpaSpec(
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, target_value=target,
        scale_up=ScalingRules(args.scale_up_stabilization_s, up), scale_down=ScalingRules(
            args.scale_down_stabilization_s, down),
        sync_period_s=args.sync_period_s, tolerance=args.tolerance)


def load_trace(args: argparse.Namespace) -> np.ndarray:
    """The per-second rates of ``--trace`` or ``--trace-csv``."""
    if args.trace is not None and args.trace_csv is not None:
        raise UsageError("give --trace or --trace-csv, not both")
    if args.trace_csv is not None:
        return read_trace_csv(args.trace_csv)
    return parse_trace(args.trace or DEFAULT_TRACE)


def _fmt_ms(v: float) -> str:
    if math.isnan(v):
        return "-"
    return "past" if math.isinf(v) else f"{v:.2f}"


def _policies(rules: ScalingRules) -> str:
    return " or ".join(f"{p.value}{'%' if p.type == 'Percent' else ' pods'} per {p.period_s} s" for p in rules.policies)


def report(sim: Simulation, model: ReplicaModel, spec: HpaSpec, name: str, every_s: int,
           advice: advise_mod.Advice | None, out: TextIO) -> None:
    """The text report: inputs, a table of replicas over time, the SLO figures and the advice."""
    what = f"model {name}: " if name else ""
    out.write(f"{what}one pod serves {model.capacity_rps:.6g} req/s within p99 <= {model.slo_p99_ms:g} ms; "
              f"startup {model.startup_s:g} s\n")
    out.write(f"HPA: pyserve_inflight_requests averageValue {spec.target_value:g} per pod, replicas "
              f"{spec.min_replicas}..{spec.max_replicas}, sync {spec.sync_period_s} s, tolerance {spec.tolerance:g}; "
              f"scale up by max({_policies(spec.scale_up)}), window {spec.scale_up.stabilization_window_s} s; "
              f"scale down by {_policies(spec.scale_down)}, window {spec.scale_down.stabilization_window_s} s\n")
    out.write(f"{'time_s':>8} {'load_rps':>10} {'replicas':>9} {'ready':>6} {'p99_ms':>8} {'slo':>5}\n")
    last = len(sim.time_s) - 1
    for t in range(len(sim.time_s)):
        if t % every_s and t != last:
            continue
        out.write(f"{t:>8} {sim.rate_rps[t]:>10.1f} {sim.replicas[t]:>9} {sim.ready[t]:>6} "
                  f"{_fmt_ms(sim.p99_ms[t]):>8} {'MISS' if sim.miss[t] else 'ok':>5}\n")
    s = sim.summary()
    if s["slo_miss_seconds"]:
        out.write(f"SLO missed {s['slo_miss_seconds']} of {s['duration_s']} s ({100 * s['slo_miss_share']:.1f}%), "
                  f"first at {s['first_miss_s']} s, last at {s['last_miss_s']} s; requests at risk: "
                  f"{s['requests_at_risk']:.0f} of {s['requests_total']:.0f} "
                  f"({100 * s['requests_at_risk_share']:.1f}%). Peak replicas {s['peak_replicas']}.\n")
    else:
        out.write(f"SLO kept all {s['duration_s']} s; {s['requests_total']:.0f} requests; "
                  f"peak replicas {s['peak_replicas']}.\n")
    if advice is None:
        return
    out.write("What keeps the SLO through this trace (each alone, the rest as given):\n")
    out.write(f"- minReplicas >= {advice.min_replicas} (pods kept warm)\n" if advice.min_replicas is not None
              else f"- no minReplicas up to maxReplicas {spec.max_replicas} is enough\n")
    if sim.miss_seconds == 0 and advice.min_replicas is not None and advice.min_replicas > spec.min_replicas:
        out.write(f"  (minReplicas {spec.min_replicas} keeps it in this run, but a value between it and "
                  f"{advice.min_replicas} does not: the result hangs on where the syncs fall)\n")
    out.write(f"- a scaleUp policy of type Pods with value >= {advice.scale_up_pods} per "
              f"{advice.scale_up_period_s} s\n" if advice.scale_up_pods is not None
              else "- no scale-up rate is enough: pods are not ready soon enough at any rate\n")
    out.write(f"- pods ready at most {advice.max_startup_s} s after creation (now {model.startup_s:g} s)\n"
              if advice.max_startup_s is not None
              else "- no startup time is enough, even 0 s (the HPA's sync period and rate limits alone miss)\n")


def _series(sim: Simulation) -> dict[str, list[Any]]:
    return {
        "time_s": sim.time_s.tolist(),
        "rate_rps": sim.rate_rps.tolist(),
        "replicas": sim.replicas.tolist(),
        "ready": sim.ready.tolist(),
        "p99_ms": [None if not math.isfinite(v) else v for v in sim.p99_ms.tolist()],  # null: idle or past curve
        "slo_missed": sim.miss.tolist(),
    }


def to_json(sim: Simulation, model: ReplicaModel, spec: HpaSpec, name: str,
            advice: advise_mod.Advice | None) -> dict[str, Any]:
    """The run as a JSON-ready dict."""
    import dataclasses

    return {
        "tool": "pyserve plan",
        "model": name,
        "replica_model": {
            "capacity_rps": model.capacity_rps, "slo_p99_ms": model.slo_p99_ms, "startup_s": model.startup_s,
            "curve": [dataclasses.asdict(p) for p in model.curve],
        },
        "hpa": dataclasses.asdict(spec),
        "summary": sim.summary(),
        "advice": None if advice is None else advice.to_dict(),
        "series": _series(sim),
    }


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``pyserve plan`` for parsed ``args``; the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.every_s < 1:
            raise UsageError(f"--every-s must be >= 1, got {args.every_s}")
        model, target, name = build_model(args)
        spec = build_hpa(args, target)
        rates = load_trace(args)
        if args.plot:
            from pyserve.plan.plot import check_available

            check_available()
    except (UsageError, ModelError, TraceError, RuntimeError, ValueError) as e:
        print(f"pyserve plan: error: {e}", file=err)
        return EXIT_USAGE
    sim = simulate(rates, model, spec)
    advice = None if args.no_advice else advise_mod.advise(rates, model, spec)
    report(sim, model, spec, name, args.every_s, advice, out)
    out.flush()
    try:
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(to_json(sim, model, spec, name, advice), f, indent=2)
                f.write("\n")
        if args.plot:
            from pyserve.plan.plot import write_plot

            write_plot(args.plot, sim, model.slo_p99_ms, model.capacity_rps,
                       f"pyserve plan{': ' + name if name else ''}")
    except OSError as e:
        print(f"pyserve plan: error: cannot write {e.filename}: {e.strerror or e}", file=err)
        return EXIT_USAGE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m pyserve.plan``."""
    parser = argparse.ArgumentParser(prog="pyserve plan", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
