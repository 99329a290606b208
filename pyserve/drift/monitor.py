"""The drift monitor: windows of each model version's logged traffic tested against its profile.

Feed: the payload log's writer thread hands every batch of records it took off its queue to
:meth:`DriftMonitor.consume` (:meth:`pyserve.payload_log.PayloadLog.add_consumer`). That call keeps
only the answered, sampled calls of models with ``[drift]`` and appends references to them to a bounded
queue (full: dropped and counted in ``pyserve_drift_dropped_total``); it never converts a tensor and
never runs on the event loop's thread. The monitor's own thread takes the queue, turns each call's
tensors into feature rows (:func:`pyserve.drift.profile.feature_matrix`, vectorized) and adds them
to the version's window.

Windows are tumbling: a window closes when it holds ``window_rows`` rows, or when it is
``window_s`` seconds old and holds at least ``min_rows``; its features are then tested
(:mod:`pyserve.drift.stats`) and the window starts empty. Tumbling rather than sliding because
windows that share no rows give independent tests, so the false-alarm rate of a window is the test's
significance level (overlapping windows re-test the same rows and raise more alarms than their level
says), and each row is tested once (a sliding window pays a full test per step).

A feature drifts when its score passes its threshold; the p-values of a model version's features
(ks, chisquare) are compared with a cutoff corrected for testing them together (``correction``:
Bonferroni by default, :func:`pyserve.drift.stats.p_value_cutoffs`), so that with 64 features a
window of unchanged traffic raises an alarm with probability about ``thresholds.ks``, not
1 - 0.95^64. A feature that starts or stops drifting is logged (WARNING / INFO).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from pyserve.drift import stats
from pyserve.drift.metrics import DriftCollector
from pyserve.drift.profile import read_profile
from pyserve.drift.window import FeatureDrift, WatchedVersion
from pyserve.errors import PyserveError

if TYPE_CHECKING:
    from pyserve.config import ModelConfig
    from pyserve.payload_log.record import Capture

__all__ = ["DriftMonitor", "FeatureDrift"]

log = logging.getLogger("pyserve.drift")

QUEUE_SIZE = 10_000  # calls waiting for the monitor's thread


class DriftMonitor:
    """Watches the drift of every model version with ``[drift]`` (see the module's docstring).

    ``model_config(name)``: the config of a loaded model (None: unknown); ``profile_path(name, config,
    version)``: where that version's profile is (PyserveError: no such version folder);
    ``loaded()``: the (model, version) pairs loaded now, each with what stands for that load (its
    runner: the same object for as long as the version stays loaded); other versions are left out of
    snapshots and metrics, and their calls still queued are not tested. A version's window and results
    start anew when it is loaded again (a new object), and when its profile file changes.
    ``registry``: where the metrics are registered (None: none). ``clock``: monotonic seconds,
    ``wall``: Unix seconds (injectable for tests)."""

    def __init__(self, model_config: Callable[[str], ModelConfig | None],
                 profile_path: Callable[[str, ModelConfig, str], Path],
                 loaded: Callable[[], Mapping[tuple[str, str], object]],
                 registry: CollectorRegistry | None = None, queue_size: int = QUEUE_SIZE,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._model_config = model_config
        self._profile_path = profile_path
        self._loaded = loaded
        self._max = queue_size
        self._clock, self._wall = clock, wall
        self._queue: collections.deque[tuple] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        # (model, version) -> (config, its load, its profile's (size, mtime), the watched version or None)
        self._versions: dict[tuple[str, str], tuple[ModelConfig, object, tuple | None, WatchedVersion | None]] = {}
        self._lock = threading.Lock()  # guards _versions against readers on other threads
        self._thread = threading.Thread(target=self._run, name="pyserve-drift", daemon=True)
        self._listeners: tuple[Callable[[list[FeatureDrift]], None], ...] = ()
        self.dropped = Counter("pyserve_drift_dropped", "Logged calls the drift monitor dropped because its queue "
                               "was full.", ["model"], registry=None)
        if registry is not None:
            registry.register(self.dropped)
            registry.register(DriftCollector(self))

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the monitor's thread."""
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the thread (queued calls are left untested). Blocking: call it off the event loop."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Blocks until every call queued now has been added to its window (and full windows tested)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            self._wake.set()
            while (self._queue or self._busy) and self._thread.is_alive():
                if not self._idle.wait(max(0.0, deadline - time.monotonic())):
                    break

    def add_listener(self, listener: Callable[[list[FeatureDrift]], None]) -> None:
        """Calls ``listener`` with the results of every window tested, on the monitor's thread."""
        self._listeners = (*self._listeners, listener)

    # -- feed (the payload log's writer thread) --------------------------------------------------
    def consume(self, captures: list[Capture]) -> None:
        """Queues the answered, sampled calls of models watched for drift (references only)."""
        queued = False
        for c in captures:
            if c.status != "ok" or not c.sampled:
                continue  # failures and shadow pairs are not the traffic's sample
            config = self._model_config(c.model)
            if config is None or not config.drift.enabled:
                continue
            if len(self._queue) >= self._max:
                self.dropped.labels(c.model).inc()
                continue
            self._queue.append((c.model, c.version, c.inputs, c.outputs, c.config.redact + c.config.hash))
            queued = True
        if queued:
            self._wake.set()

    # -- the monitor's thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._until_next_window())
            self._wake.clear()
            with self._idle:
                self._busy = True
            try:
                self._drain()
                self._close_old_windows()
            except Exception:  # the monitor must outlive any one bad batch
                log.exception("the drift monitor failed on a batch of calls")
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _loaded_now(self) -> Mapping[tuple[str, str], object]:
        """``loaded()``, read from this thread while the event loop's thread may change the registry."""
        for _ in range(10):
            try:
                return self._loaded()
            except RuntimeError:  # a dict changed size while it was read: read it again
                time.sleep(0)
        return self._loaded()

    def _drain(self) -> None:
        queue = self._queue
        if not queue:
            return
        loaded = self._loaded_now()
        self._forget_unloaded(loaded)
        known: dict[tuple[str, str], WatchedVersion | None] = {}  # this drain's lookups
        # The calls of each version in order, added to its window in runs that end where it is due.
        pending: dict[WatchedVersion, tuple[list[tuple], list[int]]] = {}  # calls, [their rows]
        while queue:
            model, version, inputs, outputs, skip = queue.popleft()
            key = (model, version)
            if key in known:
                watched = known[key]
            else:
                watched = known[key] = self._version(model, version, loaded)
            if watched is None:
                continue
            rows = watched.rows_of(inputs, outputs)
            run, total = pending.setdefault(watched, ([], [0]))
            run.append((inputs, outputs, frozenset(skip), rows))
            total[0] += rows
            if watched.rows + total[0] >= watched.drift.window_rows:
                self._add(watched, run)
                del pending[watched]
        for watched, (run, _) in pending.items():
            self._add(watched, run)

    def _add(self, watched: WatchedVersion, run: list[tuple]) -> None:
        now = self._clock()
        watched.add(run, now)
        time.sleep(0)  # lets the event loop's thread have the GIL now rather than at the switch interval
        if watched.due(now):
            self._evaluate(watched)

    def _until_next_window(self) -> float | None:
        """Seconds until window_s closes some window (None: none will; new calls wake the thread)."""
        with self._lock:
            versions = [v for *_, v in self._versions.values() if v is not None and v.rows >= v.drift.min_rows]
        if not versions:
            return None
        return max(0.0, min(v.opened + v.drift.window_s for v in versions) - self._clock())

    def _close_old_windows(self) -> None:
        now = self._clock()
        with self._lock:
            versions = [v for *_, v in self._versions.values() if v is not None]
        for watched in versions:
            if watched.due(now):
                self._evaluate(watched)

    def _forget_unloaded(self, loaded: Mapping[tuple[str, str], object]) -> None:
        """Drops the windows of versions that are no longer loaded (or loaded anew since)."""
        with self._lock:
            gone = [key for key, cached in self._versions.items() if loaded.get(key, self) is not cached[1]]
            for key in gone:
                del self._versions[key]

    def _version(self, model: str, version: str, loaded: Mapping[tuple[str, str], object]) -> WatchedVersion | None:
        """The watched version (its profile read on first use, and again when the version is loaded
        anew, its config changes or its profile file changes); None when it is not watched (not
        loaded now, no [drift], no profile)."""
        key = (model, version)
        if key not in loaded:
            return None  # unloaded since the call: its window is gone
        load = loaded[key]
        config = self._model_config(model)
        if config is None or not config.drift.enabled:
            return None
        error: PyserveError | None = None
        stamp: tuple | None = None
        try:
            path = self._profile_path(model, config, version)
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except PyserveError as e:  # no such version folder: said below, once per load
            error = e
        except OSError:
            pass  # no profile file
        cached = self._versions.get(key)
        if cached is not None and cached[0] is config and cached[1] is load and cached[2] == stamp:
            return cached[3]
        if cached is not None and cached[3] is not None:
            log.info("model %s version %s: its drift windows start anew (the version was loaded again or its "
                     "profile changed)", model, version)
        watched = None
        try:
            if error is not None:
                raise error
            if stamp is None:
                log.warning("model %s version %s has [drift] but no profile (%s): its drift is not "
                            "watched; build one with: pyserve profile", model, version, path)
            else:
                watched = WatchedVersion(model, version, config, read_profile(path))
                if watched.feature_count == 0:
                    log.warning("model %s version %s: its profile %s describes none of the tensors "
                                "[drift] watches", model, version, path)
                else:
                    log.debug("watching the drift of model %s version %s: %d features, windows of %d rows (%s)", model,
                             version, watched.feature_count, config.drift.window_rows, path)
        except PyserveError as e:
            log.warning("the drift of model %s version %s is not watched: %s", model, version, e.message)
        with self._lock:
            self._versions[key] = (config, load, stamp, watched)
        return watched

    def _evaluate(self, watched: WatchedVersion) -> None:
        results = watched.evaluate(self._wall())
        for listener in self._listeners:
            try:
                listener([r for r, _ in results])
            except Exception:  # noqa: BLE001 - a listener's fault must not stop the monitor
                log.exception("a listener of the drift results failed")
        started = [r for r, was in results if r.drifted and not was]
        stopped = [r for r, was in results if was and not r.drifted]
        # One line per window and direction: 64 features drifting at once must not be 64 lines.
        if started:
            log.warning("model %s version %s: %s started drifting (window of %d rows): %s", watched.model,
                        watched.version, _count(started), watched.last_rows, _listed(started, "<", ">="))
        if stopped:
            log.info("model %s version %s: %s stopped drifting (window of %d rows): %s", watched.model,
                     watched.version, _count(stopped), watched.last_rows, _listed(stopped, ">=", "<"))

    # -- readers (any thread) --------------------------------------------------------------------
    def versions(self, model: str | None = None) -> list[WatchedVersion]:
        """The watched versions that are loaded now (of ``model`` only, when given)."""
        loaded = set(self._loaded())
        with self._lock:
            versions = [v for *_, v in self._versions.values() if v is not None]
        return [v for v in versions if (v.model, v.version) in loaded and (model is None or v.model == model)]

    def snapshot(self, model: str | None = None) -> list[FeatureDrift]:
        """The last tested window of every watched feature of the loaded versions (of ``model``), in
        model, version and profile order. A version whose first window is not yet full has none."""
        out: list[FeatureDrift] = []
        for v in sorted(self.versions(model), key=lambda v: (v.model, v.version)):
            out.extend(v.results)
        return out


MAX_LISTED = 20  # features named in one log line


def _count(results: list[FeatureDrift]) -> str:
    return f"{len(results)} feature{'s' if len(results) != 1 else ''}"


def _listed(results: list[FeatureDrift], p_sign: str, distance_sign: str) -> str:
    """``tensor feature (method score sign threshold)``, comma-separated, at most :data:`MAX_LISTED`."""
    text = ", ".join(
        f"{r.tensor} feature {r.feature} ({r.method} {r.score:.3g} "
        f"{_sign(r, p_sign, distance_sign)} {r.threshold:.3g})"
        for r in results[:MAX_LISTED])
    return text + (f" and {len(results) - MAX_LISTED} more" if len(results) > MAX_LISTED else "")


def _sign(r: FeatureDrift, p_sign: str, distance_sign: str) -> str:
    if r.method == "missing":  # drifts when its share is above the reference's
        return ">" if distance_sign == ">=" else "<="
    return p_sign if r.method in stats.P_VALUE_METHODS else distance_sign
