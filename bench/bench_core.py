"""Core overhead per request: submit -> batch -> complete with the no-op ("identity") backend.

Closed loop: N coroutines each ``await runner.infer(x)`` back to back for a fixed time, through the
asyncio runtime (``pyserve.runtime.CompletionPump`` + ``ModelRunner``, uvloop when installed). A second
mode drives ``pyserve._core`` directly from one plain thread (submit until N are in flight, wait on the
completion queue, drain) to show the cost without asyncio futures.

The goal (the issue's): at least 100,000 requests/s on one core with 64 in flight. Pin it to one core:

    taskset -c 1 python bench/bench_core.py

Each point: a warm-up, then one measured window. A request belongs to the window in which it completes.
Latency percentiles are numpy's linear interpolation over every request of the window.
``us_per_request`` is window wall time / requests: on one pinned core, all CPU spent per request
(event loop, binding, scheduler thread and the wake-ups between them) plus whatever else ran on that
core. ``user_us_per_req``/``sys_us_per_req``/``req_per_cpu_s`` come from getrusage (all threads of this
process) and do not count other processes, so they are the figures to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pyserve import _core
from pyserve.config import DynamicBatching, ModelConfig, TensorSpec
from pyserve.runtime import CompletionPump, ModelRunner

try:
    import uvloop
except ImportError:  # optional: the standard loop works, only slower
    uvloop = None


@dataclass
class Point:
    """One measured window."""

    mode: str
    in_flight: int
    requests: int
    window_s: float
    latencies_ns: np.ndarray
    batches: int
    usage: tuple[float, float, int]  # CPU user s, CPU system s, context switches over the window


    def row(self) -> dict[str, Any]:
        rate = self.requests / self.window_s
        p50, p99 = np.percentile(self.latencies_ns, [50, 99]) / 1e3 if self.requests else (0.0, 0.0)
        return {
            "in_flight": self.in_flight,
            "mode": self.mode,
            "requests_per_s": rate,
            "us_per_request": 1e6 / rate if rate else float("inf"),
            "p50_us": p50,
            "p99_us": p99,
            "mean_batch": self.requests / self.batches if self.batches else 0.0,
            "user_us_per_req": self.usage[0] * 1e6 / self.requests if self.requests else 0.0,
            "sys_us_per_req": self.usage[1] * 1e6 / self.requests if self.requests else 0.0,
            "switches_per_req": self.usage[2] / self.requests if self.requests else 0.0,
            # Requests per second of CPU used (all threads): what one core would do if nothing else ran
            # on it. Steadier than requests_per_s on a shared machine.
            "req_per_cpu_s": self.requests / cpu_s if (cpu_s := self.usage[0] + self.usage[1]) > 0 else 0.0,
        }


def usage_now() -> tuple[float, float, int]:
    """CPU time (all threads: event loop and scheduler instances) and context switches so far."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_nvcsw + u.ru_nivcsw


def usage_since(start: tuple[float, float, int]) -> tuple[float, float, int]:
    now = usage_now()
    return now[0] - start[0], now[1] - start[1], now[2] - start[2]


def model_config(max_batch_size: int, delay_us: int) -> ModelConfig:
    """A one-input no-op model: FP32 [4] per sample."""
    return ModelConfig(
        name="noop",
        backend="identity",
        inputs=(TensorSpec("x", "FP32", (4,)),),
        outputs=(TensorSpec("y", "FP32", (4,)),),
        max_batch_size=max_batch_size,
        dynamic_batching=DynamicBatching(max_queue_delay_us=delay_us),
    )


async def closed_loop_asyncio(config: ModelConfig, in_flight: int, warmup_s: float, window_s: float) -> Point:
    """N coroutines each awaiting runner.infer() in a loop; measures the window after the warm-up."""
    pump = CompletionPump()
    runner = ModelRunner(config, "1", "identity", pump)
    x = {"x": np.zeros((1, 4), np.float32)}
    clock = time.perf_counter_ns
    start_ns = clock() + int(warmup_s * 1e9)
    end_ns = start_ns + int(window_s * 1e9)
    latencies: list[int] = []
    batches_at_start = 0
    usage_at_start = usage_now()

    async def worker() -> None:
        infer = runner.infer
        record = latencies.append
        while True:
            t0 = clock()
            if t0 >= end_ns:
                return
            await infer(x)
            t1 = clock()
            if start_ns <= t1 < end_ns:
                record(t1 - t0)

    async def mark_start() -> None:
        nonlocal batches_at_start, usage_at_start
        await asyncio.sleep(max(0.0, (start_ns - clock()) / 1e9))
        batches_at_start = runner.stats()["batches_executed"]
        usage_at_start = usage_now()

    marker = asyncio.ensure_future(mark_start())
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    await marker
    usage = usage_since(usage_at_start)
    batches = runner.stats()["batches_executed"] - batches_at_start  # approximate: window edges race
    await runner.stop()
    pump.close()
    return Point("asyncio", in_flight, len(latencies), window_s, np.asarray(latencies), batches, usage)


def closed_loop_core(config: ModelConfig, in_flight: int, warmup_s: float, window_s: float) -> Point:
    """One plain thread keeps N requests in _core.Scheduler: submit, wait, drain (no asyncio)."""
    cq = _core.CompletionQueue()
    options = _core.SchedulerOptions(
        model_name=config.name, model_version="1", inputs=[("x", "FP32", [4])], outputs=[("y", "FP32", [4])],
        max_batch_size=config.max_batch_size, max_queue_delay_us=config.dynamic_batching.max_queue_delay_us,
    )
    sched = _core.Scheduler(options, "identity", cq)
    x = {"x": np.zeros((1, 4), np.float32)}
    clock = time.perf_counter_ns
    submit, wait, drain = sched.submit, cq.wait, cq.drain
    start_ns = clock() + int(warmup_s * 1e9)
    end_ns = start_ns + int(window_s * 1e9)
    latencies: list[int] = []
    outstanding = 0
    batches_at_start = None
    usage_at_start = usage_now()
    while True:
        now = clock()
        if now >= end_ns:
            break
        if batches_at_start is None and now >= start_ns:
            batches_at_start = sched.stats()["batches_executed"]
            usage_at_start = usage_now()
        while outstanding < in_flight:
            submit(x, clock())  # the token is the submit time
            outstanding += 1
        wait(1000)
        done = drain()
        t1 = clock()
        outstanding -= len(done)
        if start_ns <= t1 < end_ns:
            latencies.extend(t1 - item[0] for item in done)
    usage = usage_since(usage_at_start)
    batches = sched.stats()["batches_executed"] - (batches_at_start or 0)
    sched.stop(True)
    cq.drain()
    return Point("core-thread", in_flight, len(latencies), window_s, np.asarray(latencies), batches, usage)


def print_table(rows: list[dict[str, Any]]) -> None:
    """A fixed-width table; the sweep variable (in_flight) first, units in the column names."""
    cols = ["in_flight", "mode", "requests_per_s", "us_per_request", "p50_us", "p99_us", "mean_batch",
            "user_us_per_req", "sys_us_per_req", "switches_per_req", "req_per_cpu_s"]
    widths = [max(len(c), 11) for c in cols]
    print("  ".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for r in rows:
        cells = [f"{r[c]:>{w},.{2 if c == 'switches_per_req' else 1}f}" if isinstance(r[c], float) else f"{r[c]:>{w}}"
                 for c, w in zip(cols, widths)]
        print("  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep and prints the table; exit status 1 if the goal is missed (with --check)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--in-flight", type=int, nargs="+", default=[1, 64], help="requests in flight (sweep)")
    p.add_argument("--window-s", type=float, default=3.0, help="measured window per point")
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_us (0: send what is queued)")
    p.add_argument("--mode", choices=["asyncio", "core-thread", "both"], default="both")
    p.add_argument("--no-uvloop", action="store_true", help="use the standard asyncio loop")
    p.add_argument("--goal", type=float, default=100_000.0, help="requests/s wanted at the largest in-flight")
    p.add_argument("--check", action="store_true", help="exit 1 when the asyncio goal is missed")
    args = p.parse_args(argv)

    config = model_config(args.max_batch_size, args.delay_us)
    use_uvloop = uvloop is not None and not args.no_uvloop
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop if use_uvloop else None
    gc.freeze()  # the warm objects need no scanning; the loops allocate little that survives
    rows = []
    for n in args.in_flight:
        if args.mode in ("asyncio", "both"):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                rows.append(runner.run(closed_loop_asyncio(config, n, args.warmup_s, args.window_s)).row())
        if args.mode in ("core-thread", "both"):
            rows.append(closed_loop_core(config, n, args.warmup_s, args.window_s).row())
    loop_name = "uvloop" if use_uvloop else "asyncio"
    print(f"# pyserve core overhead, identity backend, max_batch_size {args.max_batch_size}, "
          f"max_queue_delay_us {args.delay_us}, loop {loop_name}, window {args.window_s} s")
    print_table(rows)
    top = [r for r in rows if r["mode"] == "asyncio" and r["in_flight"] == max(args.in_flight)]
    if top:
        met = top[0]["requests_per_s"] >= args.goal
        print(f"# goal {args.goal:,.0f} requests/s at {top[0]['in_flight']} in flight (asyncio): "
              f"{'met' if met else 'MISSED'} ({top[0]['requests_per_s']:,.0f} requests/s, "
              f"{top[0]['req_per_cpu_s']:,.0f} requests per CPU second)")
        if args.check and not met:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
