"""The dashboard: one page per server showing every model version over the last hour (docs/dashboard.md).

:class:`Dashboard` attaches to the service layer as a hook (errors by model, version and kind), keeps
a ring of periodic snapshots of the core's statistics (:mod:`~pyserve.dashboard.history`), and builds
from them, the drift monitor's results and the payload log's recent failures the document of
``GET /dashboard/data`` (:meth:`Dashboard.document`) and the page of ``GET /dashboard``
(:meth:`Dashboard.page`). Figures are computed on a worker thread, from snapshots taken off the
request path; the HTTP transport only routes to these methods.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import pyserve
from pyserve.dashboard import drift as drift_rows
from pyserve.dashboard import page, series
from pyserve.dashboard.assets import CHARTS_HINT, Asset, Assets, plotly_version
from pyserve.dashboard.history import ErrorCounts, Sampler, StatsHistory
from pyserve.dashboard.settings import DashboardSettings

if TYPE_CHECKING:
    from pyserve.dashboard.drift import DriftMonitor
    from pyserve.service import InferenceService

__all__ = ["Dashboard", "DashboardSettings"]

log = logging.getLogger("pyserve.dashboard")

STATIC_PREFIX = "/dashboard/static/"
DATA_URL = "/dashboard/data"
# What a failed call's inputs show when the server has control tokens (docs/dashboard.md).
INPUTS_HIDDEN = "(hidden: this server has control tokens; GET /v2/logs with one shows them)"


class FailureSource(Protocol):
    """What the dashboard reads of the payload log (``PayloadLog.recent_failures``)."""

    def recent_failures(self, limit: int) -> list[dict]: ...


def _version_order(version: str) -> tuple[int, int, str]:
    """Versions by number (they are folder names of digits), the calls with no version last."""
    if not version:
        return (2, 0, "")
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class Dashboard:
    """The dashboard of a server.

    ``service``: whose statistics are sampled (its hooks get :class:`ErrorCounts`). ``payload_log``:
    where recent failures come from (None: the payload log is off). ``drift``: returns the drift
    monitor now (None: drift detection is off); asked at each request, so a monitor set later is
    seen. ``clock``: wall-clock seconds (tests)."""

    def __init__(self, settings: DashboardSettings, service: InferenceService,
                 payload_log: FailureSource | None = None,
                 drift: Callable[[], DriftMonitor | None] = lambda: None,
                 clock: Callable[[], float] = time.time, hide_inputs: bool = False,
                 worker: tuple[int, int] | None = None) -> None:
        settings.check()
        # (index, count) in a --workers server: the figures are this worker's only, and the page says so.
        self._worker = worker
        self.settings = settings
        self._service = service
        self._payload_log = payload_log
        self._drift = drift
        self._clock = clock
        # True when the server has control tokens: the failed calls' inputs are payload, which only a
        # control read (GET /v2/logs) shows; the page keeps the rest of each record.
        self._hide_inputs = hide_inputs
        # The host's registry exists once the host has started: looked up at each error.
        self.errors = ErrorCounts(lambda name: name in service.host.registry.models)
        service.add_hooks(self.errors)
        self.history = StatsHistory(settings.snapshots)
        self.sampler = Sampler(service, self.errors, self.history, settings.interval_s, clock=clock)
        self.assets = Assets()
        version = plotly_version()
        self.charts = None if version is None else {"library": "plotly", "version": version}
        # Cache-busting for the page's own files: they change with pyserve.
        self.assets_version = pyserve.__version__
        self._cache: tuple[int, list[dict]] = (-1, [])
        self._cache_lock = threading.Lock()

    async def run(self) -> None:
        """Samples the statistics until cancelled (a task of the server)."""
        await self.sampler.run()

    # -- the document ------------------------------------------------------------------------------
    async def document(self) -> dict:
        """The document of ``GET /dashboard/data`` (docs/api.md#dashboard). The drift monitor and the
        payload log are read on the event loop's thread (a copy of their lists); the figures are
        computed on a worker thread."""
        monitor = self._drift()
        results: list | None = None
        if monitor is not None:
            try:
                results = list(monitor.snapshot())
            except Exception:  # the page must outlive a broken monitor: it shows no drift then
                log.exception("dashboard: cannot read the drift monitor")
                results = []
        failures = (self._payload_log.recent_failures(self.settings.failures)
                    if self._payload_log is not None else None)
        if failures is not None and self._hide_inputs:
            failures = [{**record, "inputs": INPUTS_HIDDEN} for record in failures]
        logged = {name: entry.config.payload_log.enabled
                  for name, entry in self._service.host.registry.models.items() if entry.config is not None}
        return await asyncio.to_thread(self.build, results, failures, logged)

    def build(self, drift_results: list | None, failures: list[dict] | None, logged: dict[str, bool]) -> dict:
        """The document from the history and what :meth:`document` read (any thread)."""
        seq, snapshots = self.history.snapshots()
        models = self._models(seq, snapshots)
        window_s = snapshots[-1].monotonic_s - snapshots[0].monotonic_s if len(snapshots) > 1 else 0.0
        if drift_results is None:
            drift = {"enabled": False, "message": page.DRIFT_OFF, "features": []}
        else:
            features = drift_rows.rows(drift_results)
            drift = {"enabled": True, "message": None if features else page.DRIFT_EMPTY, "features": features}
        if failures is None:
            failure_doc = {"enabled": False, "message": page.PAYLOAD_LOG_OFF, "records": []}
        else:
            failure_doc = {"enabled": True, "message": None, "records": failures,
                           "not_logged": sorted(name for name, on in logged.items() if not on)}
        return {
            "server": {
                "version": pyserve.__version__,
                "time": snapshots[-1].time_s if snapshots else self._clock(),
                "interval_s": self.settings.interval_s,
                "history_s": self.settings.history_s,
                "window_s": round(window_s, 3),
                "snapshots": len(snapshots),
                "charts": self.charts,
                "charts_hint": None if self.charts is not None else CHARTS_HINT,
                "worker": ({"index": self._worker[0], "count": self._worker[1]}
                           if self._worker is not None else None),
            },
            "models": models,
            "drift": drift,
            "failures": failure_doc,
        }

    def _models(self, seq: int, snapshots: list[series.Snapshot]) -> list[dict]:
        """The figures of every version seen in the window; computed once per new snapshot."""
        with self._cache_lock:
            if self._cache[0] == seq:
                return self._cache[1]
        latest = snapshots[-1] if snapshots else None
        keys = {k for s in snapshots for k in s.versions}
        out = []
        for model, version in sorted(keys, key=lambda k: (k[0], _version_order(k[1]))):
            items = series.intervals(snapshots, (model, version))
            now = latest.versions.get((model, version)) if latest is not None else None
            loaded = now is not None and version != ""
            out.append({
                "model": model,
                "version": version,
                "loaded": loaded,
                "summary": series.summary(items, now if loaded else None),
                "series": series.series(items),
                "minutes": series.minutes(items),
            })
        with self._cache_lock:
            self._cache = (seq, out)
        return out

    # -- the page and its files ----------------------------------------------------------------------
    async def page(self) -> str:
        """The HTML of ``GET /dashboard``."""
        doc = await self.document()
        return await asyncio.to_thread(page.render, doc, STATIC_PREFIX, DATA_URL, self.assets_version)

    async def asset(self, name: str) -> Asset | None:
        """A static file of the page by name (read and compressed on a worker thread the first time)."""
        return await asyncio.to_thread(self.assets.get, name)

