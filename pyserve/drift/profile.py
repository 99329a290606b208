"""The reference profile of a model version: what its features looked like in training (docs/drift.md).

A profile is a small JSON file, ``drift_profile.json``, in the version folder beside the model file
(where ``golden.npz`` is). It describes each tensor the profile was built from (inputs, and outputs
when the model was run on the data) as features:

- a tensor whose rows are single values (shape ``[]`` or ``[1]`` per row) is one feature, ``value``;
- a tensor whose rows are vectors (``[k]``: the columns of a 2-D tensor) is ``k`` features, named by
  the training data's columns (or ``0``..``k-1``);
- a tensor whose rows have more dimensions, or more than ``max_columns`` columns, is described by
  four summary features of each row: ``mean``, ``std``, ``min``, ``max``.

Each feature is numerical or categorical, the way Evidently decides (its ``_get_column_type`` and
``_get_default_stattest``, evidentlyai/evidently ``src/evidently/legacy/utils/data_preprocessing.py``
and ``calculations/stattests/registry.py``): strings (BYTES) and booleans are categorical; numbers with
at most :data:`NUMBER_UNIQUE_AS_CATEGORICAL` distinct values in the reference are categorical (Evidently
tests them with chi-square or Jensen-Shannon); other numbers are numerical. An integer *output* (a
predicted class id: Evidently's prediction column of a classification task) is categorical up to
:data:`TOP_K` distinct values. A numerical feature keeps count, mean, std, min, max and its quantiles
at :data:`QUANTILE_PROBS` (a fine sketch of the distribution: the drift tests read the reference CDF
and quantile function off it); a categorical feature keeps the counts of its :data:`TOP_K` most
frequent values and the count of all others.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyserve.errors import invalid

PROFILE_FILE = "drift_profile.json"
FORMAT = "pyserve-drift-profile/1"
NUMBER_UNIQUE_AS_CATEGORICAL = 5  # Evidently's NUMBER_UNIQUE_AS_CATEGORICAL
TOP_K = 100  # values kept per categorical feature; the rest are counted as "other"
MAX_COLUMNS = 256  # a row vector with more columns is described by summary statistics
SUMMARY_FEATURES = ("mean", "std", "min", "max")
VALUE_FEATURE = "value"
# Quantile probabilities: every percent, finer in the tails (where a CDF interpolated between
# percentiles is least exact), min and max included. 107 numbers per numerical feature.
QUANTILE_PROBS = np.array(sorted({0.0, 0.001, 0.002, 0.005, *(i / 100 for i in range(1, 100)),
                                  0.995, 0.998, 0.999, 1.0}))
SIGNIFICANT_DIGITS = 10  # of the floats written: the file stays small, the sketch exact enough


@dataclass(frozen=True)
class NumericalFeature:
    """A numerical feature's reference: ``count`` values (NaN left out), their mean, std (population),
    min, max, and ``quantiles`` at :data:`QUANTILE_PROBS` (float64, ascending)."""

    name: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: np.ndarray = field(repr=False, compare=False)
    kind: str = "numerical"


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical feature's reference: ``count`` values, the counts of its most frequent ``values``
    (value -> count, at most :data:`TOP_K`; values are numbers or strings) and of all ``other`` values."""

    name: str
    count: int
    values: dict[Any, int] = field(compare=False)
    other: int = 0
    kind: str = "categorical"


Feature = NumericalFeature | CategoricalFeature


@dataclass(frozen=True)
class TensorProfile:
    """The features of one tensor: ``role`` ``input`` or ``output``; ``layout`` ``value`` (one value per
    row), ``columns`` (one feature per column of a row vector) or ``summary`` (:data:`SUMMARY_FEATURES`
    of each row)."""

    tensor: str
    role: str
    datatype: str
    layout: str
    features: tuple[Feature, ...]


@dataclass(frozen=True)
class Profile:
    """The reference profile of one model version (``rows``: the samples it was built from)."""

    model: str
    version: str
    rows: int
    source: str
    created: str
    tensors: tuple[TensorProfile, ...]

    def tensor(self, name: str, role: str) -> TensorProfile | None:
        """The profile of tensor ``name`` of ``role`` (None: not profiled)."""
        return next((t for t in self.tensors if t.tensor == name and t.role == role), None)


def profile_path_in(version_dir: Path) -> Path:
    """Where the profile of the version in ``version_dir`` is (beside its model file, as golden.npz)."""
    return Path(version_dir) / PROFILE_FILE


# -- features of an array ------------------------------------------------------------------------

def layout_of(row_shape: tuple[int, ...], max_columns: int = MAX_COLUMNS) -> str:
    """The layout of a tensor whose rows have ``row_shape`` (the shape after the first dimension)."""
    if math.prod(row_shape) == 1:  # [] or [1] (Triton's way to declare one value per row)
        return "value"
    if len(row_shape) == 1 and row_shape[0] <= max_columns:
        return "columns"
    return "summary"


def feature_matrix(layout: str, array: np.ndarray, columns: int | None = None) -> np.ndarray:
    """The features of ``array`` (rows along its first dimension) as a 2-D array [rows, features]:
    ``value``: the values [rows, 1]; ``columns``: the row vectors [rows, k] (ValueError when
    ``columns`` is given and k differs); ``summary``: mean, std, min, max of each row [rows, 4] (float64;
    ValueError for strings). Numbers keep their dtype; strings are an object array."""
    array = np.asarray(array)
    if array.ndim == 0:
        array = array.reshape(1)
    rows = array.shape[0]
    if layout == "value":
        if array.size != rows:
            raise ValueError(f"expected one value per row, got rows of shape {list(array.shape[1:])}")
        return array.reshape(rows, 1)
    if layout == "columns":
        matrix = array.reshape(rows, -1) if array.ndim != 2 else array
        if columns is not None and matrix.shape[1] != columns:
            raise ValueError(f"expected {columns} columns per row, got {matrix.shape[1]}")
        return matrix
    if array.dtype.kind in "OSU":
        raise ValueError("summary statistics of strings are not kept")
    flat = array.reshape(rows, -1).astype(np.float64, copy=False)
    if flat.shape[1] == 0:
        raise ValueError("empty rows")
    return np.stack([flat.mean(axis=1), flat.std(axis=1), flat.min(axis=1), flat.max(axis=1)], axis=1)


def _text(values: np.ndarray) -> np.ndarray:
    """Strings (bytes decoded as UTF-8, other bytes as ``\\xNN`` escapes, as the payload log shows
    them) of an array of strings or bytes."""
    return np.array([v.decode("utf-8", "backslashreplace") if isinstance(v, bytes | bytearray) else str(v)
                     for v in values.reshape(-1)], dtype=object)


def categorical_values(values: np.ndarray) -> np.ndarray:
    """``values`` (one feature) as comparable category keys: strings for strings and bytes, booleans
    as 0/1, numbers as float64."""
    if values.dtype.kind in "OSU":
        return _text(values)
    return values.astype(np.float64, copy=False)


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}") if math.isfinite(x) else x


def describe(name: str, values: np.ndarray, kind: str | None = None, output: bool = False) -> Feature:
    """The reference of one feature from its values (1-D). ``kind``: ``numerical`` / ``categorical``
    to force it; None: decided as the module says (``output``: the feature is of an output).
    ValueError when nothing is left (every value NaN) or strings are forced numerical."""
    values = np.asarray(values).reshape(-1)
    is_text = values.dtype.kind in "OSU"
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]  # NaN (missing) and +-inf left out
    if values.size == 0:
        raise ValueError(f"feature {name!r}: no values (all missing)")
    if kind is None:
        if is_text or values.dtype.kind == "b":
            kind = "categorical"
        else:
            distinct = np.unique(values).size
            limit = TOP_K if output and values.dtype.kind in "iu" else NUMBER_UNIQUE_AS_CATEGORICAL
            kind = "categorical" if distinct <= limit else "numerical"
    if kind == "categorical":
        keys, counts = np.unique(categorical_values(values), return_counts=True)
        order = np.argsort(-counts, kind="stable")[:TOP_K]
        kept = {_json_key(keys[i]): int(counts[i]) for i in order}
        return CategoricalFeature(name, int(values.size), kept, int(values.size - sum(kept.values())))
    if is_text:
        raise ValueError(f"feature {name!r}: strings cannot be numerical")
    v = values.astype(np.float64)
    q = np.array([_round(x) for x in np.quantile(v, QUANTILE_PROBS)])
    q[0], q[-1] = v.min(), v.max()  # exact: no value of the reference lies outside them
    q = np.clip(np.maximum.accumulate(q), q[0], q[-1])  # ascending whatever the rounding did
    return NumericalFeature(name, int(v.size), _round(float(v.mean())), _round(float(v.std())),
                            float(q[0]), float(q[-1]), q)


def _json_key(key: Any) -> Any:
    """A category key as JSON keeps it: a string, or a number (integers as int)."""
    if isinstance(key, str):
        return key
    f = float(key)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def tensor_profile(tensor: str, role: str, datatype: str, array: np.ndarray, names: list[str] | None = None,
                   kinds: dict[str, str] | None = None, max_columns: int = MAX_COLUMNS) -> TensorProfile:
    """The profile of one tensor from its reference ``array`` (samples along the first dimension).

    ``names``: the features' names for a ``columns`` layout (default ``0``..``k-1``); ``kinds``:
    feature name -> kind forced. ValueError naming the tensor and feature when a feature is empty or
    strings would need summary statistics."""
    array = np.asarray(array)
    if array.ndim == 0:
        array = array.reshape(1)
    layout = layout_of(tuple(array.shape[1:]), max_columns)
    try:
        matrix = feature_matrix(layout, array)
    except ValueError as e:
        raise ValueError(f"{role} {tensor!r}: {e}") from None
    if layout == "value":
        feature_names = [VALUE_FEATURE]
    elif layout == "summary":
        feature_names = list(SUMMARY_FEATURES)
    else:
        feature_names = list(names) if names is not None else [str(i) for i in range(matrix.shape[1])]
    kinds = kinds or {}
    features = []
    for i, fname in enumerate(feature_names):
        try:
            features.append(describe(fname, matrix[:, i], kinds.get(fname), output=role == "output"))
        except ValueError as e:
            raise ValueError(f"{role} {tensor!r}: {e}") from None
    return TensorProfile(tensor, role, datatype, layout, tuple(features))


# -- the file ------------------------------------------------------------------------------------

def _feature_doc(f: Feature) -> dict:
    if isinstance(f, NumericalFeature):
        return {"name": f.name, "kind": f.kind, "count": f.count, "mean": f.mean, "std": f.std, "min": f.min,
                "max": f.max, "quantiles": [float(q) for q in f.quantiles]}
    return {"name": f.name, "kind": f.kind, "count": f.count,
            "values": [[k, c] for k, c in f.values.items()], "other": f.other}


def to_json(profile: Profile) -> dict:
    """The JSON document of a profile (:func:`read_profile` reads it back)."""
    return {"format": FORMAT, "model": profile.model, "version": profile.version, "rows": profile.rows,
            "source": profile.source, "created": profile.created,
            "quantile_probs": [float(p) for p in QUANTILE_PROBS],
            "tensors": [{"tensor": t.tensor, "role": t.role, "datatype": t.datatype, "layout": t.layout,
                         "features": [_feature_doc(f) for f in t.features]} for t in profile.tensors]}


def write_profile(profile: Profile, path: Path) -> None:
    """Writes ``profile`` to ``path`` (a temporary file renamed over it: never half written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_json(profile), separators=(",", ":"), allow_nan=False) + "\n")
    os.replace(tmp, path)


def now_text() -> str:
    """The time now, ISO 8601 UTC (a profile's ``created``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_profile(path: Path) -> Profile:
    """Reads a profile; INVALID_ARGUMENT naming the file and what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise invalid(f"{path}: not a drift profile: {e}") from None
    if not isinstance(doc, dict):
        raise invalid(f"{path}: not a drift profile: expected a JSON object, got {type(doc).__name__}")
    try:
        if doc.get("format") != FORMAT:
            raise ValueError(f"format: expected {FORMAT!r}, got {doc.get('format')!r}")
        probs = np.asarray(doc["quantile_probs"], dtype=np.float64)
        if probs.shape != QUANTILE_PROBS.shape or not np.allclose(probs, QUANTILE_PROBS):
            raise ValueError("quantile_probs: not the probabilities this pyserve writes")
        tensors = []
        for t in doc["tensors"]:
            if t["role"] not in ("input", "output") or t["layout"] not in ("value", "columns", "summary"):
                raise ValueError(f"tensor {t.get('tensor')!r}: bad role or layout")
            features: list[Feature] = []
            for f in t["features"]:
                if f["kind"] == "numerical":
                    q = np.asarray(f["quantiles"], dtype=np.float64)
                    if q.shape != QUANTILE_PROBS.shape or np.any(np.diff(q) < 0):
                        raise ValueError(f"feature {f['name']!r}: quantiles: expected {QUANTILE_PROBS.size} "
                                         "ascending numbers")
                    features.append(NumericalFeature(str(f["name"]), int(f["count"]), float(f["mean"]),
                                                     float(f["std"]), float(f["min"]), float(f["max"]), q))
                elif f["kind"] == "categorical":
                    features.append(CategoricalFeature(str(f["name"]), int(f["count"]),
                                                       {k: int(c) for k, c in f["values"]}, int(f["other"])))
                else:
                    raise ValueError(f"feature {f.get('name')!r}: kind: expected numerical or categorical")
            tensors.append(TensorProfile(str(t["tensor"]), t["role"], str(t["datatype"]), t["layout"],
                                         tuple(features)))
        return Profile(str(doc["model"]), str(doc["version"]), int(doc["rows"]), str(doc.get("source", "")),
                       str(doc.get("created", "")), tuple(tensors))
    except (KeyError, TypeError, ValueError) as e:
        raise invalid(f"{path}: not a drift profile: {e!r}" if isinstance(e, KeyError) else
                      f"{path}: not a drift profile: {e}") from None
