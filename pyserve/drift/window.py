"""The window of one watched model version: its feature rows, and the tests when it closes.

:class:`WatchedVersion` turns each logged call's tensors into feature rows
(:func:`pyserve.drift.profile.feature_matrix`, vectorized), and when the window is due tests each
feature (:mod:`pyserve.drift.stats`), the p-values against a cutoff corrected across the version's
features. The results are :class:`FeatureDrift` records.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pyserve.drift import stats
from pyserve.drift.profile import (
    CategoricalFeature,
    NumericalFeature,
    Profile,
    TensorProfile,
    categorical_values,
    feature_matrix,
)
from pyserve.drift.result import FeatureDrift

if TYPE_CHECKING:
    from pyserve.config import DriftConfig, ModelConfig

log = logging.getLogger("pyserve.drift")

YIELD_EVERY_FEATURES = 16  # features tested between two yields of the GIL


class WatchedTensor:
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


MISSING = "missing"  # the method of a feature whose every value in the window is missing (NaN)


class WatchedVersion:
    """The window and the last results of one model version."""

    def __init__(self, model: str, version: str, config: ModelConfig, profile: Profile) -> None:
        self.model, self.version, self.config = model, version, config
        drift: DriftConfig = config.drift
        self.drift = drift
        self.profile_rows = max(profile.rows, 1)
        self.tensors: list[tuple[str, WatchedTensor]] = []  # (role, watched), inputs first
        budget = drift.max_features
        total = 0
        for role, chosen, specs in (("input", drift.inputs, config.inputs), ("output", drift.outputs, config.outputs)):
            for spec in specs:
                tp = profile.tensor(spec.name, role)
                if tp is None or (chosen is not None and spec.name not in chosen):
                    continue
                total += len(tp.features)
                if budget > 0:
                    self.tensors.append((role, WatchedTensor(tp, budget)))
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

    def rows_of(self, inputs: dict | None, outputs: dict | None) -> int:
        """The rows a call adds: the first dimension of its first watched tensor (0: none present)."""
        for role, watched in self.tensors:
            tensors = inputs if role == "input" else outputs
            array = tensors.get(watched.profile.tensor) if tensors else None
            if array is not None:
                return len(array) if array.ndim else 1
        return 0

    def add(self, calls: list[tuple[dict | None, dict | None, frozenset[str], int]], now: float) -> None:
        """Adds calls (inputs, outputs, names not to watch, rows) to the window: per tensor, their
        arrays concatenated and turned into feature rows at once."""
        for role, watched in self.tensors:
            name = watched.profile.tensor
            arrays = []
            for inputs, outputs, skip, _ in calls:
                tensors = inputs if role == "input" else outputs
                array = tensors.get(name) if tensors else None
                if array is None or name in skip or (array.size > 1 and not any(array.strides)):
                    continue  # absent, redacted or hashed, or over max_tensor_bytes (a broadcast placeholder)
                arrays.append(array if array.ndim else array.reshape(1))
            if not arrays:
                continue
            try:
                joined = [np.concatenate(arrays)] if len(arrays) > 1 else arrays
            except ValueError:  # rows of different shapes: each call on its own
                joined = arrays
            for array in joined:
                try:
                    watched.add(array)
                except (ValueError, TypeError) as e:
                    if not watched.mismatch_logged:
                        watched.mismatch_logged = True
                        log.warning("model %s version %s: %s %r of shape %s does not fit its profile (%s); "
                                    "such calls are left out", self.model, self.version, role,
                                    name, list(np.shape(array)), e)
        rows = sum(c[3] for c in calls)
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
                missing = np.isnan(matrix).any(axis=0)
                whole = [j for j in range(matrix.shape[1]) if not missing[j]]
                method = stats.choose("numerical", matrix.shape[0], drift.numerical_method)
                # The columns without a missing value, tested together a chunk at a time; between
                # chunks the thread lets the event loop's thread have the GIL (sleep(0) releases it),
                # which it would otherwise wait for up to the interpreter's 5 ms switch interval.
                for c in range(0, len(whole), YIELD_EVERY_FEATURES):
                    chunk = whole[c:c + YIELD_EVERY_FEATURES]
                    features = [watched.features[watched.numerical[j]] for j in chunk]
                    scores = stats.numerical_scores(features, matrix[:, chunk], method)
                    scored.extend((t, watched.numerical[j], name, f, method, float(sc), matrix.shape[0])
                                  for j, f, sc in zip(chunk, features, scores))
                    time.sleep(0)
                for j in np.nonzero(missing)[0]:
                    values = matrix[:, j]
                    values = values[~np.isnan(values)]
                    i = watched.numerical[j]
                    feature = watched.features[i]
                    if values.size:
                        method = stats.choose("numerical", values.size, drift.numerical_method)
                        scored.append((t, i, name, feature, method, stats.score(feature, values, method),
                                       values.size))
                    else:  # every value missing: reported as the "missing" check, not dropped
                        scored.append((t, i, name, feature, MISSING, 1.0, matrix.shape[0]))
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
        # A feature reported as missing still counts in the family of tests (as a p-value of 1), so
        # the corrected cutoff of the others does not move when a feature goes missing.
        padded = [1.0 for *_, m, _, rows in scored
                  if m == MISSING and stats.choose("numerical", rows, drift.numerical_method) in stats.P_VALUE_METHODS]
        p_values = np.concatenate([p_values, padded]) if padded else p_values
        # ks and chisquare features are tested together at one family-wise level (their thresholds agree
        # by default; with different ones each method's features are corrected at its own level).
        cutoffs = {m: stats.p_value_cutoffs(p_values, drift.threshold(m), drift.correction)
                   for m in stats.P_VALUE_METHODS}
        before = {(r.tensor, r.feature): r.drifted for r in self.results}
        out = []
        for _, _, name, feature, method, score, rows in scored:
            if method == MISSING:  # drifted: a larger share missing than in the reference
                threshold = 1.0 - min(feature.count / self.profile_rows, 1.0)
                drifted = score > threshold
            elif method in stats.P_VALUE_METHODS:
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


