"""The load generator of one process: closed loop (N workers back to back) or open loop (a
precomputed arrival schedule), cutting completions into back-to-back windows on the monotonic clock.

The generator never decides when a level is done: it sends each finished window to whoever runs it
(``emit``) and keeps going until ``stop`` is set or ``max_windows`` have passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np

from pyserve.bench.payload import Payload
from pyserve.bench.windows import STATUS_CONNECTION_ERROR, STATUS_TIMEOUT, Samples

# A send that starts later than this after its scheduled time is counted as late.
LATE_THRESHOLD_S = 1e-3

Emit = Callable[[tuple[Any, ...]], None]


@dataclasses.dataclass(frozen=True)
class LevelPlan:
    """One process's share of one sweep level. Times are on the shared monotonic clock."""

    mode: str  # "concurrency" or "request_rate"
    workers: int  # closed loop: this process's share of the concurrency
    rate: float  # open loop: this process's share of the request rate (req/s)
    distribution: str  # "poisson" or "constant"
    seed: int
    phase_s: float  # constant arrivals: offset so that the processes interleave
    t0: float  # time.monotonic() at which load starts (warm-up first)
    warmup_s: float
    window_s: float
    max_windows: int

    @property
    def measure_start(self) -> float:
        """Monotonic time at which window 0 starts."""
        return self.t0 + self.warmup_s


def arrival_schedule(rate: float, distribution: str, duration_s: float, seed: int, phase_s: float = 0.0) -> np.ndarray:
    """Send times (seconds from the level's start) covering ``duration_s``, from a seeded RNG.

    Poisson: exponential gaps of mean 1/rate; constant: gaps of exactly 1/rate starting at ``phase_s``.
    """
    if rate <= 0:
        return np.empty(0)
    if distribution == "constant":
        return phase_s + np.arange(0, math.ceil(duration_s * rate) + 1) / rate
    rng = np.random.default_rng(seed)
    expected = rate * duration_s
    # Mean + 6 sigma arrivals cover the duration but for one in ~10^9; top up in the rare case not.
    n = int(expected + 6 * math.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate, size=n))
    while times[-1] < duration_s:
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=n))
        times = np.concatenate([times, more])
    return times[times < duration_s]


class _WindowBuffers:
    """Completed requests sorted into windows by completion time (not thread safe: one loop)."""

    def __init__(self, measure_start: float, window_s: float) -> None:
        self.measure_start = measure_start
        self.window_s = window_s
        self.rows: dict[int, tuple[list[float], list[float], list[int], list[bool]]] = {}

    def record(self, start: float, end: float, latency_s: float, status: int, late: bool) -> None:
        index = math.floor((end - self.measure_start) / self.window_s)
        if index < 0:
            return  # completed during warm-up
        rows = self.rows.get(index)
        if rows is None:
            rows = self.rows[index] = ([], [], [], [])
        rows[0].append(start - self.measure_start)
        rows[1].append(latency_s)
        rows[2].append(status)
        rows[3].append(late)

    def take(self, index: int) -> Samples:
        rows = self.rows.pop(index, ([], [], [], []))
        return Samples(
            np.asarray(rows[0], dtype=np.float64),
            np.asarray(rows[1], dtype=np.float64),
            np.asarray(rows[2], dtype=np.int32),
            np.asarray(rows[3], dtype=bool),
        )


class Generator:
    """Sends one prebuilt request to one URL over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, payload: Payload) -> None:
        self._session = session
        self._url = url
        self._body = payload.body
        self._headers = payload.headers

    async def send(self) -> int:
        """One request; its HTTP status, or a pseudo status for timeouts and connection errors."""
        try:
            async with self._session.post(self._url, data=self._body, headers=self._headers) as resp:
                await resp.read()
                return resp.status
        except asyncio.TimeoutError:
            return STATUS_TIMEOUT
        except (aiohttp.ClientError, OSError):
            return STATUS_CONNECTION_ERROR

    async def _closed_worker(self, buffers: _WindowBuffers) -> None:
        clock = time.monotonic
        while True:
            start = clock()
            status = await self.send()
            end = clock()
            buffers.record(start, end, end - start, status, False)
            if status == STATUS_CONNECTION_ERROR:
                # A refused connection returns at once; yield so a dead target cannot spin the loop.
                await asyncio.sleep(0.001)

    async def _send_at(self, scheduled: float, buffers: _WindowBuffers) -> None:
        start = time.monotonic()
        status = await self.send()
        end = time.monotonic()
        # Latency from the SCHEDULED time: a late send is charged to the request (no coordinated omission).
        buffers.record(scheduled, end, end - scheduled, status, start - scheduled > LATE_THRESHOLD_S)

    async def _open_scheduler(
        self, plan: LevelPlan, buffers: _WindowBuffers, inflight: set[asyncio.Task[None]]
    ) -> None:
        duration = plan.warmup_s + (plan.max_windows + 1) * plan.window_s
        times = plan.t0 + arrival_schedule(plan.rate, plan.distribution, duration, plan.seed, plan.phase_s)
        clock = time.monotonic
        for scheduled in times.tolist():
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # Never wait for replies: each send is its own task.
            task = asyncio.create_task(self._send_at(scheduled, buffers))
            inflight.add(task)
            task.add_done_callback(inflight.discard)

    async def run_level(self, plan: LevelPlan, emit: Emit, stop: asyncio.Event) -> None:
        """Run one level until ``stop`` or ``plan.max_windows`` windows.

        Emits ``("window", index, Samples, cpu_s, wall_s)`` at each window's end (cpu and wall since
        the start of measurement, for this process), then ``("done",)``.
        """
        buffers = _WindowBuffers(plan.measure_start, plan.window_s)
        inflight: set[asyncio.Task[None]] = set()
        if plan.mode == "concurrency":
            load = [asyncio.create_task(self._closed_worker(buffers)) for _ in range(plan.workers)]
        else:
            load = [asyncio.create_task(self._open_scheduler(plan, buffers, inflight))]
        stop_wait = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stop_wait], timeout=max(0.0, plan.measure_start - time.monotonic()))
            cpu0, wall0 = time.process_time(), time.monotonic()
            for index in range(plan.max_windows):
                if stop.is_set():
                    break
                edge = plan.measure_start + (index + 1) * plan.window_s
                await asyncio.wait([stop_wait], timeout=max(0.0, edge - time.monotonic()))
                if stop.is_set():
                    break  # the window in progress is incomplete: drop it
                # Everything recorded from now on ends after ``edge``: window ``index`` is final.
                emit(("window", index, buffers.take(index), time.process_time() - cpu0, time.monotonic() - wall0))
        finally:
            stop_wait.cancel()
            for task in load + list(inflight):
                task.cancel()
            await asyncio.gather(*load, *inflight, stop_wait, return_exceptions=True)
            emit(("done",))


TOKEN_ENV = "PYSERVE_TOKEN"  # pyserve.control_cli's, read here too: the generator's processes inherit it


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer $PYSERVE_TOKEN`` for a server that requires a token ({} when unset)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def make_session(limit: int, timeout_s: float) -> aiohttp.ClientSession:
    """The client session of one process; ``limit`` 0 = no cap on connections (open loop)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        auto_decompress=False,
        headers=auth_headers(),
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop for the generator: uvloop's when installed (cheaper per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
