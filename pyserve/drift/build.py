"""Building a model version's reference profile (``pyserve profile``, docs/drift.md#the-profile).

From training data — a Parquet, CSV, NPY or NPZ file — or from the version's golden samples
(``golden.npz``, :mod:`pyserve.release.golden`). The data's columns or arrays are matched to the
model's inputs by name:

- Parquet / CSV: a column named as the input (for a vector input, a list column); or the columns given
  with ``columns={"x": ["a", "b", ...]}`` (``--columns x=a,b,...``); or, for the one input left
  unmatched, every column no other input took, in the file's order (the usual training table). A
  column named as an output is the reference of that output.
- NPZ: arrays named ``NAME`` or ``inputs/NAME`` (and ``outputs/NAME``, as golden.npz has them).
- NPY: one array, the model's only input.

Samples are along the first axis. With ``run_model`` the model itself (its own backend, in-process
through :class:`~pyserve.service.ModelHost`) is run on the inputs, and its outputs are profiled too,
so that prediction drift has a reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pyserve.config import ModelConfig, TensorSpec
from pyserve.datatypes import NUMPY_DTYPES
from pyserve.drift.profile import MAX_COLUMNS, Profile, TensorProfile, now_text, tensor_profile
from pyserve.errors import PyserveError, invalid
from pyserve.release.golden import GOLDEN_FILE, GoldenSamples

log = logging.getLogger("pyserve.drift")

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".npy": "npy", ".npz": "npz"}
MAX_RUN_REQUESTS = 64  # requests in flight while the model runs on the data


class Data:
    """Reference arrays by tensor name (samples along axis 0), and feature names of column tensors."""

    def __init__(self) -> None:
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}
        self.names: dict[str, list[str]] = {}

    @property
    def rows(self) -> int:
        arrays = [*self.inputs.values(), *self.outputs.values()]
        return len(arrays[0]) if arrays else 0


def _row_rank(spec: TensorSpec, batching: bool) -> int:
    """The rank of one sample of ``spec`` (its shape without the batch dimension)."""
    return len(spec.shape) if batching else max(len(spec.shape) - 1, 0)


def _table_arrays(path: Path, fmt: str) -> dict[str, np.ndarray]:
    """The columns of a Parquet or CSV file as numpy arrays (a list column stacked to 2-D)."""
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError as e:
        raise invalid("reading Parquet and CSV files needs pyarrow: pip install 'pyserve[drift]'") from e
    try:
        table = pq.read_table(path) if fmt == "parquet" else pacsv.read_csv(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds of errors for a bad file
        raise invalid(f"{path}: cannot read it as {fmt.upper()}: {e}") from None
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).to_numpy(zero_copy_only=False)
        if column.dtype == object and column.size and isinstance(column[0], np.ndarray):
            try:
                column = np.stack(column)
            except ValueError:
                raise invalid(f"{path}: column {name!r}: its lists differ in length") from None
        out[name] = column
    return out


def read_data(path: Path, config: ModelConfig, columns: Mapping[str, list[str]] | None = None) -> Data:
    """The reference arrays of ``config``'s inputs (and outputs present) in the file ``path``.

    INVALID_ARGUMENT naming the file, the tensor and the columns/arrays found when an input cannot be
    matched, or the format is not one of :data:`FORMATS`."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise invalid(f"{path}: expected a .parquet, .csv, .npy or .npz file")
    if not path.is_file():
        raise invalid(f"{path}: no such file")
    columns = dict(columns or {})
    for name in columns:
        if name not in {s.name for s in config.inputs}:
            raise invalid(f"--columns {name}=...: the model has no input {name!r} "
                          f"(inputs: {', '.join(s.name for s in config.inputs)})")
    data = Data()
    batching = config.max_batch_size > 0
    if fmt == "npy":
        if len(config.inputs) != 1:
            raise invalid(f"{path}: an NPY file holds one array, but the model has {len(config.inputs)} inputs; "
                          "give an NPZ file with one array per input")
        try:
            data.inputs[config.inputs[0].name] = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise invalid(f"{path}: not an NPY file numpy can read without pickle: {e}") from None
        return data
    if fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001
            raise invalid(f"{path}: not an NPZ file numpy can read without pickle: {e}") from None
        for group, specs, into in (("inputs", config.inputs, data.inputs), ("outputs", config.outputs, data.outputs)):
            for spec in specs:
                for key in (f"{group}/{spec.name}", spec.name):
                    if key in arrays and not (group == "outputs" and key == spec.name and spec.name in data.inputs):
                        into[spec.name] = arrays[key]
                        break
        missing = [s.name for s in config.inputs if s.name not in data.inputs and not s.optional]
        if missing:
            raise invalid(f"{path}: no array for input(s) {', '.join(missing)} (arrays: {', '.join(arrays)}); "
                          "name them as the inputs, or inputs/NAME")
        return data
    table = _table_arrays(path, fmt)
    used: set[str] = set()
    unmatched: list[TensorSpec] = []
    for spec in config.inputs:
        if spec.name in columns:
            absent = [c for c in columns[spec.name] if c not in table]
            if absent:
                raise invalid(f"{path}: --columns {spec.name}: no column(s) {', '.join(absent)} "
                              f"(columns: {', '.join(table)})")
            data.inputs[spec.name] = np.stack([table[c] for c in columns[spec.name]], axis=1)
            data.names[spec.name] = list(columns[spec.name])
            used.update(columns[spec.name])
        elif spec.name in table:
            data.inputs[spec.name] = table[spec.name]
            used.add(spec.name)
        else:
            unmatched.append(spec)
    outputs = {s.name for s in config.outputs}
    for spec in config.outputs:
        if spec.name in table and spec.name not in used:
            data.outputs[spec.name] = table[spec.name]
            used.add(spec.name)
    required = [s for s in unmatched if not s.optional]
    if len(required) == 1 and _row_rank(required[0], batching) == 1:
        rest = [c for c in table if c not in used and c not in outputs]
        spec = required[0]
        width = spec.shape[-1]
        if rest and (width == -1 or width == len(rest)):
            data.inputs[spec.name] = np.stack([table[c] for c in rest], axis=1)
            data.names[spec.name] = rest
            return data
        raise invalid(f"{path}: input {spec.name!r} takes {width} columns, but {len(rest)} are left "
                      f"({', '.join(rest[:10])}{', ...' if len(rest) > 10 else ''}); name them with "
                      f"--columns {spec.name}=C1,C2,...")
    if required:
        raise invalid(f"{path}: no column for input(s) {', '.join(s.name for s in required)} "
                      f"(columns: {', '.join(table)}); name a column as the input, or use --columns NAME=C1,C2,...")
    return data


def golden_data(version_dir: Path, config: ModelConfig) -> Data:
    """The reference arrays of a version's golden samples (inputs and expected outputs), one row per
    sample (a whole request per entry is split into its rows). INVALID_ARGUMENT: no or bad file."""
    path = Path(version_dir) / GOLDEN_FILE
    if not path.is_file():
        raise invalid(f"{path}: no golden samples (see docs/release.md)")
    golden = GoldenSamples.read(path)
    batching = config.max_batch_size > 0
    data = Data()
    for specs, arrays, into in ((config.inputs, golden.inputs, data.inputs), (config.outputs, golden.outputs,
                                                                             data.outputs)):
        ranks = {s.name: len(s.shape) + int(batching) for s in specs}
        for name, array in arrays.items():
            if name not in ranks:
                raise invalid(f"{path}: the model has no tensor {name!r}")
            if array.ndim == ranks[name] + 1 and array.ndim >= 2:  # one request per entry: rows of all
                array = array.reshape(-1, *array.shape[2:])
            into[name] = array
    return data


def _check_fits(source: str, role: str, spec: TensorSpec, array: np.ndarray, batching: bool) -> None:
    """INVALID_ARGUMENT when ``array`` cannot be what the model's ``spec`` takes: strings for a number
    tensor, numbers for a BYTES one, or rows of another width than the tensor's fixed last dimension."""
    text = np.asarray(array).dtype.kind in "OSU"
    if spec.datatype == "BYTES" and not text:
        raise invalid(f"{source}: {role} {spec.name!r} is BYTES (strings), got numbers ({array.dtype})")
    if spec.datatype != "BYTES" and text:
        raise invalid(f"{source}: {role} {spec.name!r} is {spec.datatype}, got strings")
    row = tuple(spec.shape) if batching else tuple(spec.shape[1:])
    if row and row[-1] > 0 and array.ndim == 1 + len(row) and array.ndim >= 2 and array.shape[-1] != row[-1]:
        raise invalid(f"{source}: {role} {spec.name!r} takes rows of {row[-1]} values, got {array.shape[-1]}")


def _wire(array: np.ndarray, spec: TensorSpec, batching: bool) -> np.ndarray:
    """``array`` as the model takes ``spec``: its datatype (strings as bytes for BYTES), and the
    shape of its rows when they hold as many values (a column of scalars for a ``[1]`` input)."""
    if batching and all(d > 0 for d in spec.shape) and array.ndim and array.size == len(array) * int(
            np.prod(spec.shape)):
        array = array.reshape(len(array), *spec.shape)
    if spec.datatype == "BYTES":
        return np.array([v.encode() if isinstance(v, str) else bytes(v) for v in array.reshape(-1)],
                        dtype=object).reshape(array.shape)
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[spec.datatype])


async def _run(model_dir: Path, name: str, version: int, inputs: dict[str, np.ndarray], config: ModelConfig
               ) -> dict[str, np.ndarray]:
    from pyserve.service import ModelHost

    with tempfile.TemporaryDirectory(prefix="pyserve-profile-") as tmp:
        # A repository of this one model (the others of its repository are not loaded).
        os.symlink(model_dir.resolve(), Path(tmp) / name)
        async with ModelHost(Path(tmp)) as host:
            entry = host.registry.entry(name)
            runner = entry.versions.get(version)
            if runner is None:
                raise invalid(f"model '{name}' version {version} did not load: {entry.reason or 'see the log'}")
            config = runner.config
            step = config.max_batch_size if config.max_batch_size > 0 else 1
            rows = len(next(iter(inputs.values())))
            specs = {s.name: s for s in config.inputs}
            wired = {k: _wire(a, specs[k], config.max_batch_size > 0) for k, a in inputs.items()}
            chunks: list[dict[str, np.ndarray]] = [{} for _ in range(0, rows, step)]
            gate = asyncio.Semaphore(MAX_RUN_REQUESTS)

            async def one(i: int) -> None:
                async with gate:
                    try:
                        chunks[i] = await runner.infer({k: a[i * step:(i + 1) * step] for k, a in wired.items()})
                    except PyserveError as e:
                        raise invalid(f"running the model on rows {i * step}..{min(rows, (i + 1) * step) - 1}: "
                                      f"{e.message}") from None

            await asyncio.gather(*(one(i) for i in range(len(chunks))))
            return {o.name: np.concatenate([c[o.name] for c in chunks]) for o in config.outputs
                    if all(o.name in c for c in chunks)}


def run_model(model_dir: Path, name: str, version: int, data: Data, config: ModelConfig) -> None:
    """Runs version ``version`` of the model in ``model_dir`` on ``data.inputs`` (in-process, its own
    backend and batching) and puts its outputs in ``data.outputs`` (replacing any read from the file)."""
    data.outputs.update(asyncio.run(_run(model_dir, name, version, data.inputs, config)))


def sample_rows(data: Data, max_rows: int, seed: int = 0) -> None:
    """Keeps at most ``max_rows`` rows of ``data``, chosen at random (seeded), in their order."""
    rows = data.rows
    if rows <= max_rows:
        return
    keep = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    for arrays in (data.inputs, data.outputs):
        for k in arrays:
            arrays[k] = arrays[k][keep]


def build_profile(config: ModelConfig, version: int, data: Data, source: str,
                  kinds: Mapping[str, str] | None = None, max_columns: int = MAX_COLUMNS) -> Profile:
    """The profile of ``data`` for version ``version`` of ``config``'s model. ``kinds``: ``TENSOR`` or
    ``TENSOR:FEATURE`` -> ``numerical`` / ``categorical``, forcing a kind. INVALID_ARGUMENT when the
    arrays disagree in rows or a tensor cannot be profiled."""
    counts = {len(a) if np.ndim(a) else 1 for a in (*data.inputs.values(), *data.outputs.values())}
    if len(counts) > 1:
        sizes = ", ".join(f"{k} {len(a)}" for k, a in (*data.inputs.items(), *data.outputs.items()))
        raise invalid(f"{source}: every tensor needs the same number of samples, got {sizes}")
    if not data.rows:
        raise invalid(f"{source}: no samples")
    kinds = dict(kinds or {})
    tensors: list[TensorProfile] = []
    for role, specs, arrays in (("input", config.inputs, data.inputs), ("output", config.outputs, data.outputs)):
        for spec in specs:
            if spec.name not in arrays:
                continue
            forced = {k.partition(":")[2]: v for k, v in kinds.items() if k.partition(":")[0] == spec.name and ":" in k}
            array = arrays[spec.name]
            _check_fits(source, role, spec, array, config.max_batch_size > 0)
            if spec.name in kinds:  # the whole tensor
                forced = {**{f: kinds[spec.name] for f in _names_of(array, data.names.get(spec.name))}, **forced}
            try:
                tensors.append(tensor_profile(spec.name, role, spec.datatype, array, data.names.get(spec.name),
                                              forced, max_columns))
            except ValueError as e:
                raise invalid(f"{source}: {e}") from None
    if not tensors:
        raise invalid(f"{source}: none of the model's tensors is in the data")
    return Profile(config.name, str(version), data.rows, source, now_text(), tuple(tensors))


def _names_of(array: np.ndarray, names: list[str] | None) -> list[str]:
    """Every feature name a tensor of ``array`` may have (for a whole-tensor kind)."""
    from pyserve.drift.profile import SUMMARY_FEATURES, VALUE_FEATURE

    width = array.shape[1] if array.ndim == 2 else 0
    return [VALUE_FEATURE, *SUMMARY_FEATURES, *(names or [str(i) for i in range(width)])]
