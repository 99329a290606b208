"""Command line of ``pyserve bench`` (perf_analyzer's habits) and its exit codes.

Exit codes: 0 measured, no failed request; 1 measured, but requests failed (reported by status);
2 bad command line or input data (or an output file that cannot be written); 3 target unreachable or
not a usable KServe v2 model; 4 a generator process died; 130 interrupted (Ctrl-C), no figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from pyserve.bench import autoscale
from pyserve.bench import capacity as capacity_mod
from pyserve.bench.loadgen import new_event_loop
from pyserve.bench.options import DISTRIBUTIONS, PROTOCOLS, BenchOptions, OptionError, options_from_args
from pyserve.bench.payload import PayloadError
from pyserve.bench.results import RunResult
from pyserve.bench.fleet import GeneratorError
from pyserve.bench.runner import TargetError, run_sweep

EXIT_OK = 0
EXIT_REQUEST_ERRORS = 1
EXIT_USAGE = 2
EXIT_TARGET = 3
EXIT_GENERATOR = 4
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench flags to ``parser`` (the lead's ``pyserve bench`` subcommand, or our own)."""
    t = parser.add_argument_group("target")
    t.add_argument("-m", "--model", required=True, help="model name")
    t.add_argument("-u", "--url", default="localhost:8000", help="HOST:PORT or http(s) URL (default localhost:8000)")
    t.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    t.add_argument("--protocol", default="json", choices=PROTOCOLS, help="request encoding (default json)")
    t.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout, counted as an error")

    s = parser.add_argument_group("load")
    s.add_argument(
        "--concurrency", default=None,
        help="closed loop sweep: START:END:xFACTOR, START:END:STEP, A,B,C or N (default 1:64:x2)",
    )
    s.add_argument("--request-rate", default=None, help="open loop sweep over req/s, same forms as --concurrency")
    s.add_argument("--distribution", default="poisson", choices=DISTRIBUTIONS, help="open loop arrivals")
    s.add_argument("--processes", type=int, default=1, help="generator processes sharing the load (default 1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the arrival schedule and random inputs")

    d = parser.add_argument_group("input data")
    d.add_argument("--batch-size", type=int, default=1, help="samples per request (the leading -1 dim)")
    d.add_argument("--shape", action="append", metavar="NAME:D1,D2", help="dims of a variable input (repeat)")
    d.add_argument("--input-data", default=None, metavar="FILE", help=".npy, .npz or JSON {name: [...]}")

    w = parser.add_argument_group("measurement")
    w.add_argument("--warmup-s", type=float, default=2.0, help="load before measuring (default 2)")
    w.add_argument("--window-s", type=float, default=5.0, help="measurement window (default 5)")
    w.add_argument("--stability-pct", type=float, default=10.0, help="last 3 windows within this %% (default 10)")
    w.add_argument("--max-windows", type=int, default=10, help="windows per level at most (default 10)")

    c = parser.add_argument_group("capacity answer")
    c.add_argument("--p99-slo-ms", type=float, default=None, help="latency SLO on p99")
    c.add_argument("--target-rate", type=float, default=None, help="req/s the deployment must serve")
    c.add_argument("--headroom-pct", type=float, default=20.0, help="capacity kept in reserve (default 20)")

    o = parser.add_argument_group("output")
    o.add_argument("--csv", default=None, metavar="FILE", help="one row per level")
    o.add_argument("--json", default=None, metavar="FILE", help="the whole run")
    o.add_argument("--raw-csv", default=None, metavar="FILE", help="every measured request")
    o.add_argument("--plot", default=None, metavar="FILE.png", help="latency percentiles vs throughput (matplotlib)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def _run_async(opts: BenchOptions, err: TextIO) -> RunResult:
    # asyncio.Runner turns Ctrl-C into a cancellation of the sweep, so its sessions and generator
    # processes are closed before KeyboardInterrupt is raised here.
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run_sweep(opts, lambda line: print(line, file=err, flush=True)))


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the bench for parsed ``args``; the exit code. The table and answer go to ``out``, progress
    and errors to ``err``."""
    out = out or sys.stdout
    err = err or sys.stderr
    from pyserve.bench import report

    try:
        opts = options_from_args(args)
        if opts.plot:
            from pyserve.bench.plot import check_available

            check_available()
    except (OptionError, RuntimeError) as e:
        print(f"pyserve bench: error: {e}", file=err)
        return EXIT_USAGE
    try:
        result = _run_async(opts, err)
    except TargetError as e:
        print(f"pyserve bench: error: {e}", file=err)
        return EXIT_TARGET
    except (PayloadError, OptionError) as e:
        print(f"pyserve bench: error: {e}", file=err)
        return EXIT_USAGE
    except GeneratorError as e:
        print(f"pyserve bench: error: {e}", file=err)
        return EXIT_GENERATOR
    except KeyboardInterrupt:
        print("pyserve bench: interrupted; no figures", file=err)
        return EXIT_INTERRUPTED

    report.print_table(result, opts.mode, out)
    answer = None
    scaling = None
    if opts.p99_slo_ms is not None:
        points = [
            capacity_mod.LevelPoint(r.level, r.throughput_rps, r.latency_ms["p99_ms"], r.errors) for r in result.levels
        ]
        answer = capacity_mod.answer(points, opts.p99_slo_ms, opts.target_rate, opts.headroom_pct, opts.mode)
        out.write("\n" + answer.text + "\n")
        scaling = _autoscale_target(result, answer)
        if scaling is not None:
            out.write(_autoscale_text(scaling, answer, opts.model))
    out.flush()
    outputs = [
        ("--csv", opts.csv, lambda path: report.write_csv(path, result, opts.mode)),
        ("--json", opts.json, lambda path: report.write_json(path, result, opts, answer, scaling)),
        ("--raw-csv", opts.raw_csv, lambda path: report.write_raw_csv(path, result, opts.mode)),
        ("--plot", opts.plot, lambda path: _write_plot(path, result, opts)),
    ]
    for flag, path, write in outputs:
        if not path:
            continue
        try:
            write(path)
        except OSError as e:  # checked before the run, but the disk may fill or the folder go
            print(f"pyserve bench: error: {flag} {path}: cannot write: {e.strerror or e}", file=err)
            return EXIT_USAGE

    failed = sum(r.errors for r in result.levels)
    if failed:
        total = sum(r.requests for r in result.levels)
        kinds: dict[str, int] = {}
        for r in result.levels:
            for k, v in r.errors_by_status.items():
                kinds[k] = kinds.get(k, 0) + v
        by = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
        print(
            f"pyserve bench: error: {failed} of {total} requests to {opts.infer_url} failed ({by}); "
            "latency figures cover successful requests only",
            file=err,
        )
        return EXIT_REQUEST_ERRORS
    return EXIT_OK


def _autoscale_target(result: RunResult, answer: capacity_mod.CapacityAnswer) -> autoscale.AutoscaleTarget | None:
    levels = [
        autoscale.LevelLoad(
            r.level, r.throughput_rps, r.latency_ms["mean_ms"], r.server.request_ms if r.server else float("nan")
        )
        for r in result.levels
    ]
    return autoscale.target(levels, answer)


def _autoscale_text(scaling: autoscale.AutoscaleTarget, answer: capacity_mod.CapacityAnswer, model: str) -> str:
    # maxReplicas: the replicas of the target rate when one was given; else a placeholder to edit.
    max_replicas = answer.replicas if answer.replicas is not None else 10
    return (
        f"{scaling.text}\n"
        f"\n# HPA (autoscaling/v2; the Prometheus adapter serves {scaling.metric} as a Pods metric):\n"
        f"{autoscale.hpa_yaml(model, scaling.target_value, 1, max_replicas)}"
        f"\n# KEDA ScaledObject (prometheus trigger; threshold is per replica):\n"
        f"{autoscale.keda_yaml(model, scaling.target_value, 1, max_replicas)}"
    )


def _write_plot(path: str, result: RunResult, opts: BenchOptions) -> None:
    from pyserve.bench.plot import write_plot

    write_plot(path, result, opts.mode, opts.model, opts.p99_slo_ms)


def main(argv: list[str] | None = None) -> int:
    """``python -m pyserve.bench``."""
    parser = argparse.ArgumentParser(
        prog="pyserve bench", description="Measure what one replica of a KServe v2 model holds."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
