"""The dashboard's history: a ring of periodic snapshots of every loaded version's statistics.

:class:`ErrorCounts` is a service hook that counts the calls answered with an error by model, version
and kind (``pyserve_infer_errors_total`` has no version label). :class:`Sampler` takes a snapshot
every ``interval_s`` seconds as a task on the event loop: reading the core's counters is what a
``GET /metrics`` scrape does, a few µs per version; turning them into arrays and keeping them runs on
a worker thread. The request path is not touched.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pyserve.dashboard.series import Snapshot, VersionSnapshot, unrouted, version_snapshot
from pyserve.service.hooks import InferHooks

if TYPE_CHECKING:
    from pyserve.errors import PyserveError
    from pyserve.protocol import InferRequest
    from pyserve.runtime import ModelRunner
    from pyserve.service import InferenceService
    from pyserve.service.context import CallContext

log = logging.getLogger("pyserve.dashboard")


class ErrorCounts(InferHooks):
    """Counts calls answered with an error by (model, version, kind); version ``""`` when the call
    reached no version (an unknown or unavailable version, a body the transport refused). Names that
    are not models of the server are not counted (``known``), so they cannot grow the table.
    Event loop thread: one dict update per error."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self._known = known
        self.counts: dict[tuple[str, str, str], int] = {}

    def on_error(self, ctx: CallContext | None, model_name: str, runner: ModelRunner | None,
                 request: InferRequest | None, error: PyserveError) -> None:
        if runner is not None:
            key = (runner.config.name, runner.version, error.kind.name.lower())
        elif self._known(model_name):
            key = (model_name, "", error.kind.name.lower())
        else:
            return
        self.counts[key] = self.counts.get(key, 0) + 1


class StatsHistory:
    """The last ``size`` snapshots, oldest first; ``seq`` counts the snapshots ever added. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._ring: collections.deque[Snapshot] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self.seq = 0

    def add(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._ring.append(snapshot)
            self.seq += 1

    def snapshots(self) -> tuple[int, list[Snapshot]]:
        """(seq, the snapshots kept, oldest first)."""
        with self._lock:
            return self.seq, list(self._ring)


def make_snapshot(time_s: float, monotonic_s: float, stats: list[tuple[str, str, dict]],
                  errors: dict[tuple[str, str, str], int],
                  bounds_cache: dict[tuple, tuple[float, ...]] | None = None) -> Snapshot:
    """A :class:`Snapshot` from the core's stats of each (model, version) and the error counts of
    :class:`ErrorCounts` (worker thread)."""
    by_version: dict[tuple[str, str], dict[str, int]] = {}
    for (model, version, kind), n in errors.items():
        by_version.setdefault((model, version), {})[kind] = n
    versions: dict[tuple[str, str], VersionSnapshot] = {}
    for model, version, s in stats:
        versions[(model, version)] = version_snapshot(s, by_version.get((model, version)), bounds_cache)
    for (model, version), kinds in by_version.items():
        if version == "":
            versions[(model, "")] = unrouted(kinds)
    return Snapshot(time_s, monotonic_s, versions)


class Sampler:
    """Takes a snapshot of ``service``'s statistics every ``interval_s`` seconds into ``history``.

    ``clock`` and ``monotonic`` (seconds) and ``sleep`` can be replaced in tests."""

    def __init__(self, service: InferenceService, errors: ErrorCounts, history: StatsHistory, interval_s: float,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._service = service
        self._errors = errors
        self._history = history
        self._interval_s = interval_s
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._bounds: dict[tuple, tuple[float, ...]] = {}

    async def sample(self) -> None:
        """Takes one snapshot now (event loop thread; the conversion runs on a worker thread)."""
        raw = [(s.name, s.version, s.stats) for s in self._service.statistics()]
        errors = dict(self._errors.counts)
        now, mono = self._clock(), self._monotonic()
        snapshot = await asyncio.to_thread(make_snapshot, now, mono, raw, errors, self._bounds)
        self._history.add(snapshot)

    async def run(self) -> None:
        """Samples at once, then every ``interval_s`` seconds on a fixed schedule until cancelled."""
        start = self._monotonic()
        ticks = 0
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # the history must outlive one bad sample
                log.exception("dashboard: could not take a snapshot of the statistics")
            ticks += 1
            # A schedule, not a sleep after each sample: the snapshots stay interval_s apart.
            delay = start + ticks * self._interval_s - self._monotonic()
            if delay < 0:  # fell behind (a stalled loop): skip the missed ticks
                ticks += int(-delay // self._interval_s) + 1
                delay = start + ticks * self._interval_s - self._monotonic()
            await self._sleep(delay)
