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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pyserve.drift import stats
from pyserve.drift.profile import (
    CategoricalFeature,
    NumericalFeature,
    Profile,
    TensorProfile,
    categorical_values,
    feature_matrix,
    read_profile,
)
from pyserve.errors import PyserveError

if TYPE_CHECKING:
    from pyserve.config import DriftConfig, ModelConfig
    from pyserve.payload_log.record import Capture

log = logging.getLogger("pyserve.drift")

QUEUE_SIZE = 10_000  # calls waiting for the monitor's thread


@dataclass(frozen=True)
class FeatureDrift:
    """The last tested window of one feature of one model version.

    ``tensor``: the input or output; ``feature``: its name in the profile (a column name, ``value``, or
    a summary statistic); ``kind``: ``numerical`` or ``categorical``; ``method``: ks, wasserstein,
    chisquare, jensenshannon or psi; ``score``: a p-value (ks, chisquare) or a distance; ``threshold``:
    what the score was compared with (for p-values the corrected cutoff); ``drifted``: the score passed it
    (p-value below, distance at or above); ``window_rows``: the rows tested; ``updated``: when, in Unix
    seconds."""

    model: str
    version: str
    tensor: str
    feature: str
    kind: str
    method: str
    score: float
    threshold: float
    drifted: bool
    window_rows: int
    updated: float

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON object."""
        return {"model": self.model, "version": self.version, "tensor": self.tensor, "feature": self.feature,
                "kind": self.kind, "method": self.method, "score": self.score, "threshold": self.threshold,
                "drifted": self.drifted, "window_rows": self.window_rows, "updated": self.updated}


class _Watched:
    """One watched tensor: its profile and the features of it that are tested."""

    def __init__(self, profile: TensorProfile, keep: int) -> None:
        self.profile = profile
        self.features = profile.features[:keep]
        self.numerical = [i for i, f in enumerate(self.features) if isinstance(f, NumericalFeature)]
        self.categorical = [i for i, f in enumerate(self.features) if isinstance(f, CategoricalFeature)]
        self.columns = len(profile.features) if profile.layout == "columns" else None
        self.chunks_num: list[np.ndarray] = []
        self.chunks_cat: list[list[np.ndarray]] = []
        self.mismatch_logged = False

    def add(self, array: np.ndarray) -> int:
        """Adds the rows of ``array`` to the window; their number (ValueError: not this tensor's form)."""
        matrix = feature_matrix(self.profile.layout, array, self.columns)
        if self.numerical:
            self.chunks_num.append(matrix[:, self.numerical].astype(np.float64))
        if self.categorical:
            self.chunks_cat.append([categorical_values(matrix[:, i]) for i in self.categorical])
        return matrix.shape[0]

    def clear(self) -> None:
        self.chunks_num, self.chunks_cat = [], []


class _Version:
    """The window and the last results of one model version."""

    def __init__(self, model: str, version: str, config: ModelConfig, profile: Profile) -> None:
        self.model, self.version, self.config = model, version, config
        drift: DriftConfig = config.drift
        self.drift = drift
        self.tensors: list[tuple[str, _Watched]] = []  # (role, watched), inputs first
        budget = drift.max_features
        total = 0
        for role, chosen, specs in (("input", drift.inputs, config.inputs), ("output", drift.outputs, config.outputs)):
            for spec in specs:
                tp = profile.tensor(spec.name, role)
                if tp is None or (chosen is not None and spec.name not in chosen):
                    continue
                total += len(tp.features)
                if budget > 0:
                    self.tensors.append((role, _Watched(tp, budget)))
                    budget -= min(budget, len(tp.features))
        self.feature_count = sum(len(w.features) for _, w in self.tensors)
        if total > self.feature_count:
            log.warning("model %s version %s: its profile describes %d features; only the first %d "
                        "are watched ([drift] max_features)", model, version, total, self.feature_count)
        self.rows = 0
        self.opened = 0.0
        self.results: tuple[FeatureDrift, ...] = ()
        self.windows = 0
        self.last_rows = 0
        self.last_update = 0.0

    def add(self, inputs: dict | None, outputs: dict | None, skip: frozenset[str], now: float) -> None:
        rows = 0
        for role, watched in self.tensors:
            tensors = inputs if role == "input" else outputs
            name = watched.profile.tensor
            array = tensors.get(name) if tensors else None
            if array is None or name in skip or (array.size > 1 and not any(array.strides)):
                continue  # absent, redacted or hashed, or over max_tensor_bytes (a broadcast placeholder)
            try:
                rows = max(rows, watched.add(array))
            except (ValueError, TypeError) as e:
                if not watched.mismatch_logged:
                    watched.mismatch_logged = True
                    log.warning("model %s version %s: %s %r of shape %s does not fit its profile (%s); "
                                "such calls are left out", self.model, self.version, role,
                                name, list(np.shape(array)), e)
        if rows and not self.rows:
            self.opened = now
        self.rows += rows

    def due(self, now: float) -> bool:
        return self.rows >= self.drift.window_rows or (
            self.rows >= self.drift.min_rows and now - self.opened >= self.drift.window_s)

    def evaluate(self, wall: float) -> list[tuple[FeatureDrift, bool]]:
        """Tests the window's features and empties it; each result with whether it drifted before."""
        drift = self.drift
        scored: list[tuple[int, int, str, Any, str, float, int]] = []  # (tensor, feature index, ..., rows)
        for t, (_role, watched) in enumerate(self.tensors):
            name = watched.profile.tensor
            if watched.chunks_num:
                matrix = np.concatenate(watched.chunks_num)
                for j, i in enumerate(watched.numerical):
                    values = matrix[:, j]
                    values = values[~np.isnan(values)]
                    if values.size:
                        feature = watched.features[i]
                        method = stats.choose("numerical", values.size, drift.numerical_method)
                        scored.append((t, i, name, feature, method, stats.score(feature, values, method),
                                       values.size))
            if watched.chunks_cat:
                for j, i in enumerate(watched.categorical):
                    values = np.concatenate([chunk[j] for chunk in watched.chunks_cat])
                    feature = watched.features[i]
                    method = stats.choose("categorical", values.size, categorical_method=drift.categorical_method)
                    scored.append((t, i, name, feature, method, stats.score(feature, values, method), values.size))
            watched.clear()
        scored.sort(key=lambda s: s[:2])  # the profile's order
        window_rows = self.rows
        self.rows = 0
        p_values = np.array([s for *_, m, s, _ in scored if m in stats.P_VALUE_METHODS])
        # ks and chisquare features are tested together at one family-wise level (their thresholds agree
        # by default; with different ones each method's features are corrected at its own level).
        cutoffs = {m: stats.p_value_cutoffs(p_values, drift.threshold(m), drift.correction)
                   for m in stats.P_VALUE_METHODS}
        before = {(r.tensor, r.feature): r.drifted for r in self.results}
        out = []
        for _, _, name, feature, method, score, rows in scored:
            if method in stats.P_VALUE_METHODS:
                threshold = cutoffs[method]
                drifted = score < threshold if drift.correction != "benjamini-hochberg" else score <= threshold
            else:
                threshold = drift.threshold(method)
                drifted = score >= threshold
            result = FeatureDrift(self.model, self.version, name, feature.name, feature.kind, method, score,
                                  threshold, bool(drifted), rows, wall)
            out.append((result, before.get((name, feature.name), False)))
        self.results = tuple(r for r, _ in out)
        self.windows += 1
        self.last_rows = window_rows
        self.last_update = wall
        return out


class DriftMonitor:
    """Watches the drift of every model version with ``[drift]`` (see the module's docstring).

    ``model_config(name)``: the config of a loaded model (None: unknown); ``profile_path(name, config,
    version)``: where that version's profile is (PyserveError: no such version folder);
    ``loaded()``: the (model, version) pairs loaded now (others are left out of snapshots and metrics).
    ``registry``: where the metrics are registered (None: none). ``clock``: monotonic seconds,
    ``wall``: Unix seconds (injectable for tests)."""

    def __init__(self, model_config: Callable[[str], ModelConfig | None],
                 profile_path: Callable[[str, ModelConfig, str], Path],
                 loaded: Callable[[], Iterable[tuple[str, str]]],
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
        self._versions: dict[tuple[str, str], tuple[ModelConfig, _Version | None]] = {}
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

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            model, version, inputs, outputs, skip = queue.popleft()
            watched = self._version(model, version)
            if watched is None:
                continue
            now = self._clock()
            watched.add(inputs, outputs, frozenset(skip), now)
            if watched.due(now):
                self._evaluate(watched)

    def _until_next_window(self) -> float | None:
        """Seconds until window_s closes some window (None: none will; new calls wake the thread)."""
        with self._lock:
            versions = [v for _, v in self._versions.values() if v is not None and v.rows >= v.drift.min_rows]
        if not versions:
            return None
        return max(0.0, min(v.opened + v.drift.window_s for v in versions) - self._clock())

    def _close_old_windows(self) -> None:
        now = self._clock()
        with self._lock:
            versions = [v for _, v in self._versions.values() if v is not None]
        for watched in versions:
            if watched.due(now):
                self._evaluate(watched)

    def _version(self, model: str, version: str) -> _Version | None:
        """The watched version (its profile read on first use, and again after a reload); None when
        it is not watched (no [drift], no profile)."""
        config = self._model_config(model)
        if config is None or not config.drift.enabled:
            return None
        key = (model, version)
        cached = self._versions.get(key)
        if cached is not None and cached[0] is config:
            return cached[1]
        watched = None
        try:
            path = self._profile_path(model, config, version)
            if not path.is_file():
                log.warning("model %s version %s has [drift] but no profile (%s): its drift is not "
                            "watched; build one with: pyserve profile", model, version, path)
            else:
                watched = _Version(model, version, config, read_profile(path))
                if watched.feature_count == 0:
                    log.warning("model %s version %s: its profile %s describes none of the tensors "
                                "[drift] watches", model, version, path)
                else:
                    log.debug("watching the drift of model %s version %s: %d features, windows of %d rows (%s)", model,
                             version, watched.feature_count, config.drift.window_rows, path)
        except PyserveError as e:
            log.warning("the drift of model %s version %s is not watched: %s", model, version, e.message)
        with self._lock:
            self._versions[key] = (config, watched)
        return watched

    def _evaluate(self, watched: _Version) -> None:
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
    def versions(self, model: str | None = None) -> list[_Version]:
        """The watched versions that are loaded now (of ``model`` only, when given)."""
        loaded = set(self._loaded())
        with self._lock:
            versions = [v for _, v in self._versions.values() if v is not None]
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
        f"{p_sign if r.method in stats.P_VALUE_METHODS else distance_sign} {r.threshold:.3g})"
        for r in results[:MAX_LISTED])
    return text + (f" and {len(results) - MAX_LISTED} more" if len(results) > MAX_LISTED else "")


class DriftCollector(Collector):
    """The drift gauges, read from the monitor at scrape time (docs/metrics.md)."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self._monitor = monitor

    def collect(self):  # type: ignore[override]
        labels = ["model", "version", "tensor", "feature"]
        score = GaugeMetricFamily("pyserve_drift_score", "Drift score of a feature in its last tested window: a "
                                  "p-value (ks, chisquare) or a distance (wasserstein, jensenshannon, psi).",
                                  labels=labels)
        detected = GaugeMetricFamily("pyserve_drift_detected", "1 when the feature drifted in its last tested "
                                     "window, else 0.", labels=labels)
        model_detected = GaugeMetricFamily("pyserve_drift_model_detected", "1 when some feature of the model "
                                           "version drifted in its last tested window, else 0.",
                                           labels=["model", "version"])
        rows = GaugeMetricFamily("pyserve_drift_window_rows", "Rows of the last tested window.",
                                 labels=["model", "version"])
        updated = GaugeMetricFamily("pyserve_drift_last_update_timestamp_seconds", "When the last window was "
                                    "tested (Unix seconds).", labels=["model", "version"])
        windows = CounterMetricFamily("pyserve_drift_windows", "Windows tested since the version was first seen.",
                                      labels=["model", "version"])
        for v in self._monitor.versions():
            if not v.windows:
                continue
            for r in v.results:
                key = [r.model, r.version, r.tensor, r.feature]
                score.add_metric(key, r.score)
                detected.add_metric(key, 1.0 if r.drifted else 0.0)
            mv = [v.model, v.version]
            model_detected.add_metric(mv, 1.0 if any(r.drifted for r in v.results) else 0.0)
            rows.add_metric(mv, v.last_rows)
            updated.add_metric(mv, v.last_update)
            windows.add_metric(mv, v.windows)
        yield from (score, detected, model_detected, rows, updated, windows)
