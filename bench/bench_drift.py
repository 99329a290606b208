"""Drift detection through the real path: a seeded benchmark that prints its figures (docs/drift.md).

A Python-backend model of 64 FP32 features (``x`` [64], batching) with a score output is profiled from
20,000 training rows (``pyserve profile --outputs``, a Parquet file), then served in-process: ModelHost,
InferenceService, the payload log (Parquet files) with its writer thread feeding the drift monitor.
Requests of one row each go through ``InferenceService.infer``, the path every protocol takes.

1. False alarms: ``--null-windows`` windows of unshifted rows (drawn from the training distribution).
   A feature's false alarm: the feature flagged in a window. A window's false alarm: any feature of the
   model flagged (the model-level "drift detected", with the configured multiple-comparison correction).
   Printed: both rates with the per-feature rate an uncorrected p < 0.05 would have had.
2. Detection: ``--trials`` times, the mean of one feature (picked at random) shifts by 0.5 of its
   standard deviation at a random request; the shifted stream runs ``--budget`` requests. Printed: how
   many requests after the shift the first window flagging that feature closed (min / median / max),
   and how many trials found it within the budget.
3. Latency: the same requests with the drift monitor fed and not fed, in alternating blocks of one run;
   p50 and p99 of ``service.infer`` in each state.

Run: ``python bench/bench_drift.py`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pyserve import cli
from pyserve.drift.monitor import DriftMonitor, FeatureDrift
from pyserve.drift.profile import profile_path_in
from pyserve.payload_log import PayloadLog, PayloadLogSettings
from pyserve.protocol import InferRequest
from pyserve.service import InferenceService, ModelHost

FEATURES = 64
MODEL = '''
import numpy as np

class Model:
    def __init__(self):
        self.w = np.random.default_rng(7).normal(size=(64, 1)).astype(np.float32) / 8

    def infer(self, inputs):
        return {"score": inputs["x"] @ self.w}
'''


def config(sample_rate: float, window_rows: int, correction: str) -> str:
    return f'''backend = "python"
max_batch_size = 32
[dynamic_batching]
max_queue_delay_us = 0
[[inputs]]
name = "x"
datatype = "FP32"
shape = [{FEATURES}]
[[outputs]]
name = "score"
datatype = "FP32"
shape = [1]
[payload_log]
sample_rate = {sample_rate}
[drift]
window_rows = {window_rows}
min_rows = {min(100, window_rows)}
correction = "{correction}"
'''


class Traffic:
    """Rows of the training distribution: feature i ~ N(mean_i, std_i), a few skewed."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.mean = rng.uniform(-3, 3, FEATURES)
        self.std = rng.uniform(0.5, 2.0, FEATURES)
        self.rng = np.random.default_rng(seed + 1)
        self.sent = 0  # rows handed out for requests (the training rows too)

    def rows(self, n: int, shift_feature: int | None = None, shift_sd: float = 0.0) -> np.ndarray:
        z = self.rng.standard_normal((n, FEATURES))
        z[:, ::8] = self.rng.exponential(1.0, (n, FEATURES // 8 + (FEATURES % 8 > 0))) - 1  # skewed ones
        x = self.mean + self.std * z
        if shift_feature is not None:  # every feature's own sd is std (the skewed ones' too)
            x[:, shift_feature] += shift_sd * self.std[shift_feature]
        self.sent += n
        return x.astype(np.float32)


def build(root: Path, traffic: Traffic, args: argparse.Namespace) -> Path:
    model_dir = root / "repo" / "tabular"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.toml").write_text(config(args.sample_rate, args.window_rows, args.correction))
    (model_dir / "1" / "model.py").write_text(MODEL)
    train = traffic.rows(args.train_rows)
    traffic.sent = 0
    table = pa.table({f"f{i:02d}": train[:, i] for i in range(FEATURES)})
    pq.write_table(table, root / "train.parquet")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["profile", str(model_dir), "--data", str(root / "train.parquet"), "--outputs"])
    assert status == 0, "pyserve profile failed"
    print(f"# profile: {out.getvalue().strip().replace(str(root), '<tmp>')}")
    return root / "repo"


class Windows:
    """Every window's results, with the cumulative rows at its end."""

    def __init__(self) -> None:
        self.results: list[tuple[int, list[FeatureDrift]]] = []
        self.rows = 0

    def __call__(self, results: list[FeatureDrift]) -> None:
        if results:
            self.rows += max(r.window_rows for r in results)
            self.results.append((self.rows, results))


STEP = 2000  # requests between waits for the payload log and the monitor: their queues never overflow


async def send(service: InferenceService, rows: np.ndarray, concurrency: int,
               latencies: list[float] | None = None, settle_every: tuple | None = None) -> None:
    """Infers ``rows`` one per request from ``concurrency`` callers; with ``settle_every`` (plog,
    monitor), waits for both every :data:`STEP` requests."""
    if settle_every is not None and len(rows) > STEP:
        for i in range(0, len(rows), STEP):
            await send(service, rows[i:i + STEP], concurrency, latencies)
            await settle(*settle_every)
        return
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(rows):
            i = position
            position += 1
            start = time.perf_counter()
            await service.infer("tabular", None, InferRequest({"x": rows[i:i + 1]}))
            if latencies is not None:
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate k/n."""
    if n == 0:
        return (0.0, 1.0)
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


async def run(repo: Path, log_dir: Path, traffic: Traffic, args: argparse.Namespace) -> None:
    async with ModelHost(repo) as host:
        plog = PayloadLog(PayloadLogSettings(log_dir=log_dir, flush_s=0.05),
                          lambda name: host.registry.models[name].config)
        monitor = DriftMonitor(lambda name: host.registry.models[name].config if name in host.registry.models
                               else None,
                               lambda name, cfg, version: profile_path_in(
                                   host.repository.sources.version_dir(name, cfg, int(version))),
                               lambda: {(r.config.name, r.version): r for r in host.registry.runners()})
        windows = Windows()
        monitor.add_listener(windows)
        plog.add_consumer(monitor.consume)
        service = InferenceService(host, hooks=[plog])
        plog.start()
        monitor.start()
        try:
            await phases(service, plog, monitor, windows, traffic, args)
        finally:
            await asyncio.to_thread(plog.close)
            await asyncio.to_thread(monitor.close)


async def settle(plog: PayloadLog, monitor: DriftMonitor) -> None:
    await asyncio.to_thread(plog.flush)
    await asyncio.to_thread(monitor.flush)


async def phases(service: InferenceService, plog: PayloadLog, monitor: DriftMonitor, windows: Windows,
                 traffic: Traffic, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed + 2)
    per_window = round(args.window_rows / args.sample_rate)
    if args.null_windows:
        await false_alarms(service, plog, monitor, windows, traffic, args, per_window)
    if args.trials:
        await detection(service, plog, monitor, windows, traffic, args, per_window, rng)
    await latency(service, plog, monitor, traffic, args)


async def false_alarms(service: InferenceService, plog: PayloadLog, monitor: DriftMonitor, windows: Windows,
                       traffic: Traffic, args: argparse.Namespace, per_window: int) -> None:
    """1. False alarms over windows of unshifted rows."""
    first = len(windows.results)
    started = time.perf_counter()
    for _ in range(0, args.null_windows, 10):  # not all rows at once: memory
        await send(service, traffic.rows(per_window * min(10, args.null_windows - _)), args.concurrency,
                   settle_every=(plog, monitor))
    await settle(plog, monitor)
    null = [r for _, r in windows.results[first:]]
    elapsed = time.perf_counter() - started
    tested = sum(len(r) for r in null)
    flagged = sum(f.drifted for r in null for f in r)
    uncorrected = sum(f.score < 0.05 for r in null for f in r if f.method in ("ks", "chisquare"))
    alarms = sum(any(f.drifted for f in r) for r in null)
    lo, hi = wilson(alarms, len(null))
    methods = sorted({f.method for r in null for f in r})
    print(f"# unshifted: {len(null)} windows of {args.window_rows} rows, {len(null[0]) if null else 0} features "
          f"each ({', '.join(methods)}; correction {args.correction}); {per_window * args.null_windows} requests "
          f"in {elapsed:.1f} s")
    print(f"per-feature false alarms: {flagged}/{tested} = {flagged / max(tested, 1):.4%} "
          f"(uncorrected p < 0.05 would flag {uncorrected / max(tested, 1):.2%})")
    print(f"per-window false alarms (model-level drift detected): {alarms}/{len(null)} = "
          f"{alarms / max(len(null), 1):.2%} (95% CI {lo:.2%}..{hi:.2%})")


async def detection(service: InferenceService, plog: PayloadLog, monitor: DriftMonitor, windows: Windows,
                    traffic: Traffic, args: argparse.Namespace, per_window: int, rng: np.random.Generator) -> None:
    """2. Detection of a shift of one feature's mean."""
    delays: list[int] = []
    misses = 0
    wrong = 0
    for trial in range(args.trials):
        feature = int(rng.integers(FEATURES))
        lead = int(rng.integers(per_window))  # the shift starts at a random point of a window
        await send(service, traffic.rows(lead), args.concurrency)
        await settle(plog, monitor)
        first = len(windows.results)
        shift_request = traffic.sent
        await send(service, traffic.rows(args.budget, feature, args.shift_sd), args.concurrency,
                   settle_every=(plog, monitor))
        await settle(plog, monitor)
        found = None
        for end, results in windows.results[first:]:
            names = {f.feature for f in results if f.drifted and f.tensor == "x"}
            if f"f{feature:02d}" in names:
                found = end
                break
            wrong += bool(names)
        if found is None:
            misses += 1
        else:  # the window's end in requests (exact at sample rate 1; expected otherwise)
            delays.append(round(found / args.sample_rate) - shift_request)
        # back to unshifted traffic: the shifted rows leave the windows
        await send(service, traffic.rows(per_window * 2 + (per_window - (args.budget + lead) % per_window)),
                   args.concurrency, settle_every=(plog, monitor))
        await settle(plog, monitor)
    if delays:
        d = np.array(delays)
        print(f"# shifted: {args.trials} trials, the mean of one of {FEATURES} features moved by {args.shift_sd} sd "
              f"at a random request; {args.budget} shifted requests each")
        print(f"detected within {args.budget} requests: {len(delays)}/{args.trials}; requests from shift to "
              f"detection: min {d.min()}, median {int(np.median(d))}, max {d.max()}; "
              f"windows flagging another feature first: {wrong}")
    else:
        print(f"detected within {args.budget} requests: 0/{args.trials}")


async def latency(service: InferenceService, plog: PayloadLog, monitor: DriftMonitor, traffic: Traffic,
                  args: argparse.Namespace) -> None:
    """3. Latency with the drift monitor fed and not, in alternating blocks of one run."""
    on: list[float] = []
    off: list[float] = []
    for block in range(args.latency_blocks * 2):
        feeding = block % 2 == 0
        if not feeding:
            plog.remove_consumer(monitor.consume)
        await send(service, traffic.rows(args.latency_rows), args.concurrency, on if feeding else off)
        await settle(plog, monitor)
        if not feeding:
            plog.add_consumer(monitor.consume)

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(np.array(xs) * 1e6, q))

    print(f"# latency of service.infer, {args.concurrency} concurrent callers, {len(on)} calls in each state, "
          f"alternating blocks of {args.latency_rows}")
    print(f"drift on : p50 {pct(on, 50):.0f} us, p99 {pct(on, 99):.0f} us")
    print(f"drift off: p50 {pct(off, 50):.0f} us, p99 {pct(off, 99):.0f} us")
    lost = plog.records_total.labels("tabular", "dropped")._value.get()
    print(f"# dropped: {lost:.0f} by the payload log, "
          f"{monitor.dropped.labels('tabular')._value.get():.0f} by the drift monitor")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-rows", type=int, default=20_000)
    p.add_argument("--window-rows", type=int, default=500)
    p.add_argument("--sample-rate", type=float, default=1.0)
    p.add_argument("--correction", default="bonferroni")
    p.add_argument("--null-windows", type=int, default=200)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--shift-sd", type=float, default=0.5)
    p.add_argument("--budget", type=int, default=2000, help="shifted requests per trial")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--latency-blocks", type=int, default=5)
    p.add_argument("--latency-rows", type=int, default=2000)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    traffic = Traffic(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        repo = build(Path(tmp), traffic, args)
        print(f"# seed {args.seed}, window_rows {args.window_rows}, sample_rate {args.sample_rate}")
        asyncio.run(run(repo, Path(tmp) / "log", traffic, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
