"""The coordinator: checks the target, builds the request once, then runs the sweep level by level:
warm-up, back-to-back windows until the last 3 agree (or the cap), server metrics read at the window
edges, and the figures of each level.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Callable

import aiohttp

from pyserve.bench.fleet import Fleet, GeneratorError, make_fleet
from pyserve.bench.loadgen import LevelPlan, auth_headers
from pyserve.bench.options import BenchOptions
from pyserve.bench.payload import Payload, PayloadError, build_payload
from pyserve.bench.results import LevelResult, RunResult, summarize_level
from pyserve.bench.server_metrics import Snapshot, scrape, split
from pyserve.bench.windows import STABLE_WINDOWS, Samples, WindowStats, is_stable, window_stats

# Time between telling the generators about a level and its first send (process start-up margin).
_LOCAL_LEAD_S = 0.02
_PROCESS_LEAD_S = 0.25
# A generator process at or above this share of one core is likely the bottleneck.
SATURATION_PCT = 90.0

Progress = Callable[[str], None]


class TargetError(Exception):
    """The target cannot be benchmarked (down, unknown model, bad metadata); names the URL."""


async def fetch_metadata(session: aiohttp.ClientSession, url: str) -> dict:
    """GET the model metadata; :class:`TargetError` naming ``url`` when that fails."""
    try:
        async with session.get(url) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise TargetError(f"{url} answered HTTP {resp.status}: {text[:200].strip()}")
    except aiohttp.ClientConnectorError as e:
        raise TargetError(_unreachable(url, e)) from None
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        raise TargetError(f"cannot reach {url}: {e or type(e).__name__}") from None
    try:
        meta = json.loads(text)
    except ValueError:
        raise TargetError(f"{url} did not answer JSON model metadata: {text[:200]!r}") from None
    if not isinstance(meta, dict):
        raise TargetError(f"{url} did not answer a JSON object")
    return meta


def _unreachable(url: str, e: aiohttp.ClientConnectorError) -> str:
    """Why no connection to ``url`` could be made, and what to check."""
    if isinstance(e, aiohttp.ClientSSLError):  # a server answered: the TLS handshake failed
        return f"cannot reach {url}: {e}"
    if isinstance(e.os_error, socket.gaierror):
        return f"cannot reach {url}: cannot resolve host {e.host!r} ({e.os_error.strerror}); check -u/--url"
    return (f"cannot reach {url}: {e}; is the server running there? Start it (pyserve serve) "
            "or point -u/--url at it")


def level_plans(opts: BenchOptions, index: int, level: float, processes: int, t0: float) -> list[LevelPlan]:
    """Split one level between the processes: concurrency by workers, rate by rate."""
    plans = []
    for i in range(processes):
        if opts.mode == "concurrency":
            total = int(level)
            workers, rate = total // processes + (1 if i < total % processes else 0), 0.0
        else:
            workers, rate = 0, level / processes
        plans.append(
            LevelPlan(
                mode=opts.mode,
                workers=workers,
                rate=rate,
                distribution=opts.distribution,
                # A different stream per process and level, reproducible from --seed.
                seed=opts.seed * 1_000_003 + index * 1_009 + i,
                phase_s=i / level if opts.mode == "request_rate" else 0.0,
                t0=t0,
                warmup_s=opts.warmup_s,
                window_s=opts.window_s,
                max_windows=opts.max_windows,
            )
        )
    return plans


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_level(
    opts: BenchOptions,
    fleet: Fleet,
    session: aiohttp.ClientSession,
    index: int,
    level: float,
    payload: Payload,
    progress: Progress,
) -> LevelResult:
    """Measure one level (the fleet must be idle)."""
    lead = _LOCAL_LEAD_S if fleet.size == 1 else _PROCESS_LEAD_S
    plans = level_plans(opts, index, level, fleet.size, time.monotonic() + lead)
    name = f"{opts.mode} {level:g}"
    fleet.run_level(plans)
    await _sleep_until(plans[0].measure_start)
    snapshots: list[Snapshot | None] = [await scrape(session, opts.metrics_url, opts.model, opts.model_version)]
    pending: dict[int, list[Samples]] = {}
    windows: list[Samples] = []
    stats: list[WindowStats] = []
    cpu = [0.0] * fleet.size
    last: int | None = None  # the last window that counts, once decided
    done = 0
    while done < fleet.size:
        proc, msg = await fleet.inbox.get()
        if msg[0] == "done":
            done += 1
            continue
        if msg[0] == "died":
            raise GeneratorError(f"generator process {proc} died during {name}; no figures for this run")
        _, k, samples, cpu_s, wall_s = msg
        if last is not None and k > last:
            continue  # sent before the stop arrived: beyond the decided end
        cpu[proc] = 100.0 * cpu_s / wall_s if wall_s > 0 else 0.0
        pending.setdefault(k, []).append(samples)
        if len(pending[k]) < fleet.size:
            continue
        merged = Samples.concat(pending.pop(k))
        snapshots.append(await scrape(session, opts.metrics_url, opts.model, opts.model_version))
        windows.append(merged)
        stats.append(window_stats(k, merged, opts.window_s))
        w = stats[-1]
        p99 = "n/a" if math.isnan(w.p99_ms) else f"{w.p99_ms:.2f} ms"
        if not opts.quiet:
            progress(
                f"[{name}] window {k + 1}/{opts.max_windows}: {w.throughput_rps:.1f} req/s, "
                f"p99 {p99}, {w.errors} errors"
            )
        stable = is_stable(stats, opts.stability_pct)
        if stable or len(stats) >= opts.max_windows:
            last = k
            fleet.stop_level()
    stable = is_stable(stats, opts.stability_pct)
    if not opts.quiet or not stable:
        if stable:
            progress(f"[{name}] stable after {len(stats)} windows")
        else:
            progress(
                f"[{name}] NOT stable: the last {STABLE_WINDOWS} of {len(stats)} windows differ by more than "
                f"{opts.stability_pct:g}% in throughput or p99; figures come from them anyway"
            )
    used = min(STABLE_WINDOWS, len(windows))
    server = split(snapshots[len(windows) - used], snapshots[len(windows)]) if windows else None
    return summarize_level(
        opts.mode, level, windows, stats, stable, opts.window_s, payload.samples, server, max(cpu)
    )


async def run_sweep(opts: BenchOptions, progress: Progress) -> RunResult:
    """Check the target, build the request, and measure every level."""
    timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, headers=auth_headers()) as session:
        meta = await fetch_metadata(session, opts.model_url)
        try:
            payload = build_payload(
                meta, opts.protocol, opts.shapes, opts.batch_size, opts.input_data, opts.seed
            )
        except (PayloadError, OSError, ValueError) as e:
            raise PayloadError(str(e)) from None
        limit = int(max(opts.levels)) if opts.mode == "concurrency" else 0
        per_process = math.ceil(limit / opts.processes) if limit else 0
        fleet = make_fleet(opts.processes, opts.infer_url, payload, per_process, opts.timeout_s)
        result = RunResult([], len(payload.body), payload.samples, opts.processes, [])

        def note(line: str) -> None:
            result.notes.append(line)
            progress(line)

        try:
            await fleet.start()
            for index, level in enumerate(opts.levels):
                res = await run_level(opts, fleet, session, index, level, payload, progress)
                result.levels.append(res)
                if res.generator_cpu_pct > SATURATION_PCT:
                    note(
                        f"warning: at {opts.mode} {level:g} a generator process used {res.generator_cpu_pct:.0f}% "
                        "of a core: the generator may be the bottleneck; add --processes or pin it (taskset)"
                    )
                if res.late_sends:
                    note(
                        f"warning: at {opts.mode} {level:g}, {res.late_sends} of {res.requests} sends started more "
                        "than 1 ms after their scheduled time (their latency counts from the schedule)"
                    )
                if not res.succeeded:
                    note(
                        f"no request to {opts.infer_url} succeeded at {opts.mode} {level:g}; "
                        "stopping the sweep here"
                    )
                    break
        finally:
            await fleet.close()
    return result
