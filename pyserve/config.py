"""Model configuration: ``REPO/<model>/config.toml`` parsed into frozen, validated dataclasses.

A wrong config is refused at load with a :class:`ConfigError` whose message names the file, the key
and what was expected, e.g.
``models/digits/config.toml: inputs[0].datatype: expected one of BOOL, UINT8, ..., got 'FLOAT'``.
Unknown keys are errors at every level, so a typo never passes silently. Types are strict: a bool is
not an int, a float is not an int.

Layout (every key optional unless noted; the model name is the folder name, and a ``name`` key,
if given, must equal it)::

    backend = "onnxruntime"        # onnxruntime (default) | python | identity | tensorrt; when left
                                   # out: python if a version folder holds model.py, else onnxruntime
    max_batch_size = 32            # 0 = no batching: each request runs alone, full shapes. Left out:
                                   # 0, except for a model whose tensors are read off its file (onnxruntime)
                                   # with a dynamic first dimension in every input and output: then the
                                   # server's default_max_batch_size (DEFAULT_MAX_BATCH_SIZE), shown as
                                   # auto-completed
    instance_count = 1             # >= 1
    default_model_filename = "model.onnx"   # a plain file name in each version folder;
                                   # default model.onnx / model.py / model.plan by backend
    [[inputs]]                     # required unless the backend is onnxruntime (then read off the model)
    name = "x"                     # unique among inputs
    datatype = "FP32"              # BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES
    shape = [64]                   # ints >= 1, or -1 for a variable dim; when max_batch_size > 0 the
                                   # shape EXCLUDES the batch dimension (Triton convention)
    [[outputs]]                    # as inputs
    name = "y"
    datatype = "FP32"
    shape = [10]
    [dynamic_batching]
    preferred_batch_sizes = [8, 16]   # each 1..max_batch_size, no duplicates
    max_queue_delay_us = 2000      # >= 0
    max_queue_size = 1024          # 0 = unbounded
    default_timeout_us = 0         # 0 = none
    priority_levels = 2            # >= 1; priority 1 is the highest
    default_priority_level = 2     # 1..priority_levels
    dispatch_when_idle = true      # default true: once the server has queued every request it has
                                   # received, an idle instance dispatches without waiting out
                                   # max_queue_delay_us; false: always wait (Triton's rule)
    [version_policy]               # exactly one of: latest = N | specific = [1, 3] | all = true
    latest = 1
    [onnxruntime]                  # options of the onnxruntime backend
    intra_op_num_threads = 1       # default 1; 0 = onnxruntime's own default
    inter_op_num_threads = 1       # default 1; 0 = onnxruntime's own default
    graph_optimization_level = "all"   # disable | basic | extended | all (default)
    [python]                       # options of the python backend
    class = "Model"                # default "Model"
    [payload_log]                  # the payload log of this model (docs/payload-log.md); off when absent
    enabled = true                 # default true once the table is present
    sample_rate = 0.1              # 0..1, the share of answered requests logged (default 0.1)
    failures = true                # default true: every failed request is logged, whatever the rate
    inputs = ["x"]                 # inputs kept (default: all); [] = none
    outputs = ["label"]            # outputs kept (default: all); [] = none
    redact = ["ssn"]               # tensors dropped before anything is written (never logged)
    hash = ["user_id"]             # tensors whose elements are logged as SHA-256 hex digests
    max_tensor_bytes = 65536       # a larger tensor is logged by datatype and shape only; 0 = no limit
    [drift]                        # drift of the logged traffic from the version's drift_profile.json
                                   # (docs/drift.md); off when absent; needs [payload_log]
    enabled = true                 # default true once the table is present
    window_rows = 500              # rows per window (tumbling); >= 10
    window_s = 300.0               # a window of at least min_rows rows is also closed this old (s)
    min_rows = 100                 # the fewest rows a window closed by window_s is tested on; >= 10
    inputs = ["x"]                 # inputs watched (default: all in the profile); [] = none
    outputs = ["label"]            # outputs watched (default: all in the profile); [] = none
    numerical_method = "auto"      # auto (ks below 1000 rows, wasserstein above) | ks | wasserstein | psi
    categorical_method = "auto"    # auto (chisquare below 1000 rows, jensenshannon above) | chisquare |
                                   # jensenshannon | psi
    correction = "bonferroni"      # of the p-value tests across the model's features: bonferroni |
                                   # benjamini-hochberg | none
    max_features = 256             # features watched and exported per version (profile order); >= 1
    [drift.thresholds]             # ks / chisquare: the significance level of a window of the model,
    ks = 0.01                      # corrected across its features (default 0.01); wasserstein (normed),
    wasserstein = 0.1              # jensenshannon, psi: the distance at or above which a feature
                                   # drifts (default 0.1 each)

A model folder without config.toml is allowed for ONNX models: everything is read off the model file
of the newest version. When a config gives inputs/outputs of an ONNX model they must agree with it; an
output shape that differs from the model's declaration stands when a warm-up run confirms it.
Version folders are named by positive decimal integers (``1``, ``2``, ...); other names are ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyserve.backends import registry as backends
from pyserve.classification import read_labels
from pyserve.datatypes import DATATYPES
from pyserve.errors import ErrorKind, PyserveError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib  # type: ignore[no-redef]

_TOP_KEYS = ("name", "backend", "max_batch_size", "instance_count", "default_model_filename", "inputs",
             "outputs", "dynamic_batching", "version_policy", "payload_log", "drift", *backends.option_tables())


class ConfigError(PyserveError):
    """A model configuration that is refused; the message names the file, the key and the expectation."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. When max_batch_size > 0 the shape excludes the batch dimension.

    ``labels``: an output's class labels, line by line from its ``label_filename`` (Triton's
    classification extension names classes with them); empty when it has none. ``label_filename``:
    that file's name as configured ("" when none), shown in Triton's model configuration.

    ``optional``: an input a request may leave out (an ONNX input of type optional(tensor(T)), read
    off the model, never from config.toml); the backend then gets only the inputs present. Models
    with optional inputs are served without batching (max_batch_size 0)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    labels: tuple[str, ...] = ()
    label_filename: str = ""
    optional: bool = False


@dataclass(frozen=True)
class DynamicBatching:
    """The knobs of the dynamic batcher and the request queue of a model."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    max_queue_size: int = 0
    default_timeout_us: int = 0
    priority_levels: int = 1
    default_priority_level: int = 1
    dispatch_when_idle: bool = True


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve."""

    kind: str = "latest"
    latest: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available``, ascending."""
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            wanted = set(self.versions)
            return [v for v in ordered if v in wanted]
        return ordered[-self.latest:] if self.latest > 0 else []


@dataclass(frozen=True)
class PayloadLogConfig:
    """What the payload log keeps of one model's calls (``[payload_log]``; docs/payload-log.md).

    ``inputs`` / ``outputs``: the tensor names kept, None for all. ``redact``: names never written;
    ``hash``: names whose elements are written as SHA-256 hex digests. ``max_tensor_bytes``: a tensor
    larger than this is logged by datatype and shape only (0: no limit)."""

    enabled: bool = False
    sample_rate: float = 0.1
    failures: bool = True
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    redact: tuple[str, ...] = ()
    hash: tuple[str, ...] = ()
    max_tensor_bytes: int = 65536


# [drift]: the methods a feature may be tested with, by kind, and their default thresholds (docs/drift.md).
# ks and chisquare give p-values: their threshold is the family-wise level of one window of the model,
# corrected across its features (Evidently tests each column at 0.05 alone; at 0.05 family-wise, 4.8% of
# windows of unchanged traffic raised an alarm in bench/bench_drift.py, at the edge of the 5% goal). The
# others are distances, Evidently's defaults: a feature drifts at or above the threshold.
NUMERICAL_METHODS = ("auto", "ks", "wasserstein", "psi")
CATEGORICAL_METHODS = ("auto", "chisquare", "jensenshannon", "psi")
CORRECTIONS = ("bonferroni", "benjamini-hochberg", "none")
DEFAULT_THRESHOLDS = {"ks": 0.01, "chisquare": 0.01, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1}
MIN_WINDOW_ROWS = 10


@dataclass(frozen=True)
class DriftConfig:
    """How the drift of one model's logged traffic is watched (``[drift]``; docs/drift.md).

    ``window_rows``: rows per (tumbling) window; ``window_s``: a window holding at least ``min_rows``
    rows is also tested once it is this many seconds old. ``inputs`` / ``outputs``: the tensors watched
    (None: every one the profile describes). ``numerical_method`` / ``categorical_method``: one of
    :data:`NUMERICAL_METHODS` / :data:`CATEGORICAL_METHODS`. ``correction``: the multiple-comparison
    correction of the p-value tests across the model's features. ``thresholds``: (method, threshold)
    pairs of every method of :data:`DEFAULT_THRESHOLDS`. ``max_features``: features watched per version."""

    enabled: bool = False
    window_rows: int = 500
    window_s: float = 300.0
    min_rows: int = 100
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    numerical_method: str = "auto"
    categorical_method: str = "auto"
    correction: str = "bonferroni"
    thresholds: tuple[tuple[str, float], ...] = tuple(DEFAULT_THRESHOLDS.items())
    max_features: int = 256

    def threshold(self, method: str) -> float:
        """The threshold of ``method`` (a key of :data:`DEFAULT_THRESHOLDS`)."""
        return dict(self.thresholds)[method]


@dataclass(frozen=True)
class ModelConfig:
    """The validated configuration of one model (all of its versions)."""

    name: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    dynamic_batching: DynamicBatching = DynamicBatching()
    instance_count: int = 1
    version_policy: VersionPolicy = VersionPolicy()
    default_model_filename: str = ""
    # hash=False: a mapping is not hashable, and the config stays usable as a dict key.
    backend_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source: str = ""
    # The keys filled in from the model file rather than the config (Triton's auto-complete):
    # "inputs", "outputs", "max_batch_size".
    auto_completed: tuple[str, ...] = ()
    payload_log: PayloadLogConfig = PayloadLogConfig()
    drift: DriftConfig = DriftConfig()

    def __post_init__(self) -> None:
        if not isinstance(self.backend_options, types.MappingProxyType):
            object.__setattr__(self, "backend_options", types.MappingProxyType(dict(self.backend_options)))

    @property
    def model_filename(self) -> str:
        """The model file name inside a version folder (the backend's default when not configured)."""
        return self.default_model_filename or backends.get(self.backend).model_filename


# ---------------------------------------------------------------------------------------------
# Strict readers of TOML values. Each names ``source: key`` in its error.

def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def _check_keys(source: str, table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(source, prefix + key, f"unknown key{hint}; expected one of {', '.join(allowed)}")


def _table(source: str, value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(source, key, f"expected a table, got {value!r}")
    return value


# The largest values the C++ core can take: counts are int64, levels and instances C ints, and
# durations in µs become ns in an int64 (a larger one would wrap around to a tiny or negative time).
INT64_MAX = 2**63 - 1
C_INT_MAX = 2**31 - 1
MAX_US = INT64_MAX // 1000
# Each instance is a thread and each priority level a queue: a config (a load request's override
# included) must not be able to ask for millions of either.
MAX_INSTANCES = 1024
# The max_batch_size of a model whose config sets none and whose first dimension is dynamic in every
# input and output (the server's --default-max-batch-size; Triton's ONNX Runtime backend has its
# default-max-batch-size, 4). Work-conserving batching forms batches this large only under load, so a
# lone client pays nothing for it; at 32 a small model's cost per sample is near its floor (docs/
# configuration.md); and it bounds the memory one batch of a large model may take.
DEFAULT_MAX_BATCH_SIZE = 32
MAX_PRIORITY_LEVELS = 1024
_MAXIMUMS = {"instance_count": MAX_INSTANCES, "priority_levels": MAX_PRIORITY_LEVELS,
             "default_priority_level": MAX_PRIORITY_LEVELS, "max_queue_delay_us": MAX_US,
             "default_timeout_us": MAX_US}


def _int(source: str, value: Any, key: str, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer >= ``minimum`` and <= ``maximum`` (by default the one the core's field for ``key``
    holds: :data:`_MAXIMUMS`, else an int64)."""
    # bool is a subclass of int in Python; TOML true must not pass for 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(source, key, f"expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise _fail(source, key, f"expected an integer >= {minimum}, got {value}")
    if maximum is None:
        maximum = _MAXIMUMS.get(key.rpartition(".")[2], INT64_MAX)
    if value > maximum:
        raise _fail(source, key, f"expected an integer from {minimum} to {maximum}, got {value}")
    return value


def _str(source: str, value: Any, key: str, choices: tuple[str, ...] = ()) -> str:
    if choices and value not in choices:
        raise _fail(source, key, f"expected one of {', '.join(choices)}, got {value!r}")
    if not isinstance(value, str) or not value:
        raise _fail(source, key, f"expected a non-empty string, got {value!r}")
    return value


def _int_list(source: str, value: Any, key: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _fail(source, key, f"expected a list of integers >= {minimum}, got {value!r}")
    return tuple(_int(source, v, f"{key}[{i}]", minimum) for i, v in enumerate(value))


def _parse_tensors(source: str, value: Any, key: str, model_dir: Path | None = None) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(source, key, f"expected a non-empty array of tables ([[{key}]]), got {value!r}")
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    allowed = ("name", "datatype", "shape", "label_filename") if key == "outputs" else ("name", "datatype", "shape")
    for i, entry in enumerate(value):
        at = f"{key}[{i}]"
        table = _table(source, entry, at)
        _check_keys(source, table, allowed, at + ".")
        for required in ("name", "datatype", "shape"):
            if required not in table:
                raise _fail(source, f"{at}.{required}", "missing; each tensor needs name, datatype and shape")
        name = _str(source, table["name"], at + ".name")
        if name in seen:
            raise _fail(source, at + ".name", f"duplicate tensor name {name!r} in {key}")
        seen.add(name)
        datatype = _str(source, table["datatype"], at + ".datatype", DATATYPES)
        shape = table["shape"]
        if not isinstance(shape, list):
            raise _fail(source, at + ".shape", f"expected a list of integers >= 1 or -1, got {shape!r}")
        for j, dim in enumerate(shape):
            if isinstance(dim, bool) or not isinstance(dim, int) or (dim < 1 and dim != -1) or dim > INT64_MAX:
                raise _fail(source, f"{at}.shape[{j}]", f"expected an integer >= 1 or -1, got {dim!r}")
        labels: tuple[str, ...] = ()
        if "label_filename" in table:
            labels = _read_label_file(source, table["label_filename"], at + ".label_filename", model_dir)
        specs.append(TensorSpec(name, datatype, tuple(shape), labels,
                                table.get("label_filename", "")))
    return tuple(specs)


def _read_label_file(source: str, value: Any, key: str, model_dir: Path | None) -> tuple[str, ...]:
    """The labels of a ``label_filename``: a file of the model folder, one label per line."""
    filename = _str(source, value, key)
    if model_dir is None:
        raise _fail(source, key, "label files are read from a model folder; this model has none")
    if "\0" in filename:
        raise _fail(source, key, f"expected a file name without NUL characters, got {filename!r}")
    parts = Path(filename).parts
    if Path(filename).is_absolute() or ".." in parts:
        raise _fail(source, key, f"expected a file of the model folder {model_dir}, got {filename!r}")
    path = model_dir / filename
    try:
        # A symlink may not lead out of the model folder: a load request names the file.
        inside = model_dir.resolve() in path.resolve().parents
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise _fail(source, key, f"expected a file of the model folder {model_dir}, got {filename!r}, "
                    "which leads out of it")
    try:
        return tuple(read_labels(path))
    except PyserveError as e:
        raise _fail(source, key, e.message) from None


def _parse_dynamic_batching(source: str, value: Any) -> DynamicBatching:
    key = "dynamic_batching"
    table = _table(source, value, key)
    names = tuple(f.name for f in dataclasses.fields(DynamicBatching))
    _check_keys(source, table, names, key + ".")
    minimums = {"priority_levels": 1, "default_priority_level": 1}
    kwargs: dict[str, Any] = {}
    for name, v in table.items():
        if name == "preferred_batch_sizes":
            sizes = _int_list(source, v, f"{key}.{name}", 1)
            if len(set(sizes)) != len(sizes):
                raise _fail(source, f"{key}.{name}", f"expected no duplicates, got {list(sizes)}")
            kwargs[name] = tuple(sorted(sizes))
        elif name == "dispatch_when_idle":
            if type(v) is not bool:
                raise _fail(source, f"{key}.{name}", f"expected true or false, got {v!r}")
            kwargs[name] = v
        else:
            kwargs[name] = _int(source, v, f"{key}.{name}", minimums.get(name, 0))
    return DynamicBatching(**kwargs)


def _parse_version_policy(source: str, value: Any) -> VersionPolicy:
    key = "version_policy"
    table = _table(source, value, key)
    _check_keys(source, table, ("latest", "specific", "all"), key + ".")
    if len(table) != 1:
        got = ", ".join(table) or "none"
        raise _fail(source, key,
                    f"expected exactly one of latest = N, specific = [...], all = true; got {got}")
    (kind, v), = table.items()
    if kind == "latest":
        return VersionPolicy("latest", latest=_int(source, v, f"{key}.latest", 1))
    if kind == "specific":
        versions = _int_list(source, v, f"{key}.specific", 1)
        if not versions:
            raise _fail(source, f"{key}.specific", "expected a non-empty list of versions >= 1, got []")
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    if v is not True:
        raise _fail(source, f"{key}.all", f"expected true, got {v!r}")
    return VersionPolicy("all")


def _names(source: str, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(source, key, f"expected a list of tensor names, got {value!r}")
    names = tuple(_str(source, v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(set(names)) != len(names):
        raise _fail(source, key, f"expected no duplicates, got {list(names)}")
    return names


def _parse_payload_log(source: str, value: Any) -> PayloadLogConfig:
    key = "payload_log"
    table = _table(source, value, key)
    _check_keys(source, table, tuple(f.name for f in dataclasses.fields(PayloadLogConfig)), key + ".")
    kwargs: dict[str, Any] = {"enabled": True}  # a [payload_log] table turns the log on unless it says not
    for name, v in table.items():
        at = f"{key}.{name}"
        if name in ("enabled", "failures"):
            if type(v) is not bool:
                raise _fail(source, at, f"expected true or false, got {v!r}")
            kwargs[name] = v
        elif name == "sample_rate":
            if type(v) not in (int, float) or not 0 <= v <= 1:
                raise _fail(source, at, f"expected a number from 0 to 1, got {v!r}")
            kwargs[name] = float(v)
        elif name == "max_tensor_bytes":
            kwargs[name] = _int(source, v, at, 0)
        else:
            kwargs[name] = _names(source, v, at)
    return PayloadLogConfig(**kwargs)


def _check_payload_log(src: str, config: ModelConfig) -> None:
    """The names of ``[payload_log]`` must be tensors of the model (a typo would log a secret)."""
    log = config.payload_log
    inputs = {t.name for t in config.inputs}
    tensors = inputs | {t.name for t in config.outputs}
    for key, names, known in (("inputs", log.inputs, inputs), ("outputs", log.outputs, tensors - inputs),
                              ("redact", log.redact, tensors), ("hash", log.hash, tensors)):
        for i, name in enumerate(names or ()):
            if name not in known:
                what = "an input" if key == "inputs" else "an output" if key == "outputs" else "a tensor"
                raise _fail(src, f"payload_log.{key}[{i}]", f"expected {what} of the model "
                            f"({', '.join(sorted(known))}), got {name!r}")
    both = sorted(set(log.redact) & set(log.hash))
    if both:
        raise _fail(src, "payload_log.hash", f"{', '.join(both)} also in payload_log.redact: "
                    "a tensor is either dropped or hashed")


def _parse_drift(source: str, value: Any) -> DriftConfig:
    key = "drift"
    table = _table(source, value, key)
    _check_keys(source, table, tuple(f.name for f in dataclasses.fields(DriftConfig)), key + ".")
    kwargs: dict[str, Any] = {"enabled": True}  # a [drift] table turns drift on unless it says not
    for name, v in table.items():
        at = f"{key}.{name}"
        if name == "enabled":
            if type(v) is not bool:
                raise _fail(source, at, f"expected true or false, got {v!r}")
            kwargs[name] = v
        elif name in ("window_rows", "min_rows"):
            kwargs[name] = _int(source, v, at, MIN_WINDOW_ROWS, 10_000_000)
        elif name == "max_features":
            kwargs[name] = _int(source, v, at, 1, 100_000)
        elif name == "window_s":
            if type(v) not in (int, float) or not 0 < v <= 366 * 86400:
                raise _fail(source, at, f"expected a number of seconds > 0, got {v!r}")
            kwargs[name] = float(v)
        elif name in ("numerical_method", "categorical_method", "correction"):
            choices = {"numerical_method": NUMERICAL_METHODS, "categorical_method": CATEGORICAL_METHODS,
                       "correction": CORRECTIONS}[name]
            kwargs[name] = _str(source, v, at, choices)
        elif name == "thresholds":
            given = _table(source, v, at)
            _check_keys(source, given, tuple(DEFAULT_THRESHOLDS), at + ".")
            thresholds = dict(DEFAULT_THRESHOLDS)
            for method, t in given.items():
                limit = 1 if method in ("ks", "chisquare") else 1e6
                if type(t) not in (int, float) or not 0 < t <= limit:
                    what = "a significance level in (0, 1]" if limit == 1 else "a distance > 0"
                    raise _fail(source, f"{at}.{method}", f"expected {what}, got {t!r}")
                thresholds[method] = float(t)
            kwargs[name] = tuple(thresholds.items())
        else:
            kwargs[name] = _names(source, v, at)
    if "window_rows" in kwargs and "min_rows" not in kwargs:  # the default follows a smaller window
        kwargs["min_rows"] = min(DriftConfig.min_rows, kwargs["window_rows"])
    config = DriftConfig(**kwargs)
    if config.min_rows > config.window_rows:
        raise _fail(source, f"{key}.min_rows", f"expected at most window_rows ({config.window_rows}), "
                    f"got {config.min_rows}")
    return config


def _check_drift(src: str, config: ModelConfig) -> None:
    """The names of ``[drift]`` must be tensors of the model."""
    drift = config.drift
    for key, names, specs in (("inputs", drift.inputs, config.inputs), ("outputs", drift.outputs, config.outputs)):
        known = {t.name for t in specs}
        for i, name in enumerate(names or ()):
            if name not in known:
                raise _fail(src, f"drift.{key}[{i}]", f"expected {'an input' if key == 'inputs' else 'an output'} "
                            f"of the model ({', '.join(sorted(known))}), got {name!r}")


def _parse_options(source: str, backend: str, value: Any) -> dict[str, Any]:
    kind = backends.get(backend)
    table = _table(source, value, backend)
    _check_keys(source, table, tuple(kind.options), backend + ".")
    options = kind.defaults()
    for name, v in table.items():
        try:
            options[name] = kind.options[name].parse(v)
        except ValueError as e:
            raise _fail(source, f"{backend}.{name}", str(e)) from None
    return options


# ---------------------------------------------------------------------------------------------

def version_dirs(model_dir: Path) -> list[int]:
    """The version numbers of a model folder (subfolders named by positive integers), ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isascii() and p.name.isdigit() and p.name == str(int(p.name))
                  and int(p.name) > 0)


def _validate(config: ModelConfig) -> ModelConfig:
    """Checks across keys; also run on configs built from overrides."""
    src = config.source or config.name
    if config.backend not in backends.REGISTRY:
        raise _fail(src, "backend", f"expected one of {', '.join(backends.REGISTRY)}, got {config.backend!r}")
    _int(src, config.max_batch_size, "max_batch_size", 0)
    _int(src, config.instance_count, "instance_count", 1)
    filename = config.default_model_filename
    if filename and (filename in (".", "..") or "/" in filename or "\\" in filename):
        raise _fail(src, "default_model_filename", f"expected a plain file name, got {filename!r}")
    batching = config.dynamic_batching
    for size in batching.preferred_batch_sizes:
        if not 1 <= size <= config.max_batch_size:
            raise _fail(src, "dynamic_batching.preferred_batch_sizes",
                        f"expected sizes in 1..max_batch_size ({config.max_batch_size}), got {size}")
    if not 1 <= batching.default_priority_level <= batching.priority_levels:
        raise _fail(src, "dynamic_batching.default_priority_level",
                    f"expected 1..priority_levels ({batching.priority_levels}), "
                    f"got {batching.default_priority_level}")
    if not config.inputs or not config.outputs:
        raise _fail(src, "inputs" if not config.inputs else "outputs",
                    f"the {config.backend} backend needs [[inputs]] and [[outputs]] in config.toml")
    _check_payload_log(src, config)
    _check_drift(src, config)
    kind = backends.get(config.backend)
    if kind.check is not None:
        kind.check(config)
    return config


def _newest_model_file(model_dir: Path, filename: str, policy: VersionPolicy) -> Path | None:
    # The newest version that will be served: a newer draft left out by the policy must not count.
    for version in reversed(policy.select(version_dirs(model_dir))):
        path = model_dir / str(version) / filename
        if path.is_file():
            return path
    return None


def read_config_file(model_dir: Path) -> dict[str, Any]:
    """The raw TOML of ``model_dir/config.toml`` ({} when there is none); ConfigError if not TOML."""
    path = Path(model_dir) / "config.toml"
    if not path.is_file():
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_model_config(model_dir: Path, raw: Mapping[str, Any] | None = None, source: str = "",
                      default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> ModelConfig:
    """Read and validate ``model_dir/config.toml`` (optional for ONNX models); ConfigError if wrong.

    ``raw``, when given, is used instead of the file: a config in config.toml's shape as a mapping (a
    load request's config override); ``source`` then names it in the messages.
    ``default_max_batch_size``: the max_batch_size of a config that sets none, for a model whose
    backend completes configs from the model file and allows batching (0: such configs get 0)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir}: not a model folder")
    if raw is None:
        raw, source = read_config_file(model_dir), ""  # the file names itself
    source = source or str(model_dir / "config.toml")
    _check_keys(source, raw, _TOP_KEYS, "")
    name = model_dir.name
    if "name" in raw and raw["name"] != name:
        raise _fail(source, "name", f"expected the folder name {name!r} (or no name), got {raw['name']!r}")
    filename = _str(source, raw["default_model_filename"], "default_model_filename") \
        if "default_model_filename" in raw else ""

    if "backend" in raw:
        kind = backends.get(_str(source, raw["backend"], "backend", backends.backend_names()))
    elif filename:
        kind = backends.kind_of_file(filename)
    else:
        kind = backends.detect([model_dir / str(v) for v in version_dirs(model_dir)])
    backend = kind.name
    for other in backends.option_tables():
        if other != backend and other in raw:
            raise _fail(source, other, f"options of the {other} backend, but the backend is {backend!r}")

    max_batch_size = _int(source, raw.get("max_batch_size", 0), "max_batch_size", 0)
    config = ModelConfig(
        name=name,
        backend=backend,
        inputs=_parse_tensors(source, raw["inputs"], "inputs") if "inputs" in raw else (),
        outputs=_parse_tensors(source, raw["outputs"], "outputs", model_dir) if "outputs" in raw else (),
        max_batch_size=max_batch_size,
        dynamic_batching=_parse_dynamic_batching(source, raw["dynamic_batching"])
        if "dynamic_batching" in raw else DynamicBatching(),
        instance_count=_int(source, raw.get("instance_count", 1), "instance_count", 1),
        version_policy=_parse_version_policy(source, raw["version_policy"])
        if "version_policy" in raw else VersionPolicy(),
        default_model_filename=filename,
        backend_options=_parse_options(source, backend, raw.get(backend, {})),
        source=source,
        payload_log=_parse_payload_log(source, raw["payload_log"]) if "payload_log" in raw else PayloadLogConfig(),
        drift=_parse_drift(source, raw["drift"]) if "drift" in raw else DriftConfig(),
    )
    if kind.complete is not None:
        model_file = _newest_model_file(model_dir, config.model_filename, config.version_policy)
        # An explicit max_batch_size, 0 included, is the config's word: only a missing one is completed.
        auto = 0 if "max_batch_size" in raw else default_max_batch_size
        config = kind.complete(config, model_file, auto)
    return _validate(config)


def config_from_onnx(name: str, onnx_path: Path, max_batch_size: int | None = None,
                     default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, **overrides: Any) -> ModelConfig:
    """The config of a single ONNX file served without a repository (``pyserve serve --model name=f.onnx``).

    ``max_batch_size`` None: completed from the model as for a config.toml that sets none (batching
    with ``default_max_batch_size`` when the model allows it, see :func:`load_model_config`).
    ``overrides`` replace ModelConfig fields; ``dynamic_batching``, ``version_policy`` and
    ``backend_options`` may be given as dataclasses/mappings or as dicts in the TOML form. The
    backend then loads ``onnx_path.parent / onnx_path.name``, i.e. version_dir = onnx_path.parent."""
    onnx_path = Path(onnx_path)
    source = str(onnx_path)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{source}: model name: expected a non-empty name without '/', got {name!r}")
    if not onnx_path.is_file():
        raise ConfigError(f"{source}: no such ONNX file")
    fixed = {"name", "backend", "default_model_filename", "source", "auto_completed"}
    allowed = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in fixed)
    _check_keys(source, overrides, allowed, "")
    if isinstance(overrides.get("dynamic_batching"), dict):
        overrides["dynamic_batching"] = _parse_dynamic_batching(source, overrides["dynamic_batching"])
    if isinstance(overrides.get("version_policy"), dict):
        overrides["version_policy"] = _parse_version_policy(source, overrides["version_policy"])
    if isinstance(overrides.get("payload_log"), dict):
        overrides["payload_log"] = _parse_payload_log(source, overrides["payload_log"])
    if isinstance(overrides.get("drift"), dict):
        overrides["drift"] = _parse_drift(source, overrides["drift"])
    kind = backends.get(backends.DEFAULT_BACKEND)
    options = dict(overrides.get("backend_options", {}))
    overrides["backend_options"] = _parse_options(source, kind.name, options)
    auto = default_max_batch_size if max_batch_size is None else 0
    max_batch_size = _int(source, 0 if max_batch_size is None else max_batch_size, "max_batch_size", 0)
    config = ModelConfig(name=name, backend=kind.name, inputs=(), outputs=(), max_batch_size=max_batch_size,
                         default_model_filename=onnx_path.name, source=source)
    config = dataclasses.replace(config, **overrides)
    assert kind.complete is not None
    return _validate(kind.complete(config, onnx_path, auto))
