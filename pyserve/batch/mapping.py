"""Which input columns feed which model input, and the conversion of a chunk of rows into tensors.

A model input takes the column of its own name, unless ``--columns INPUT=COLUMNS`` names others:

- ``--columns x=features``: the column ``features`` (a number per row for an input of shape ``[]`` or
  ``[1]``; a list, or fixed-size list, of ``prod(shape)`` values per row otherwise, laid out row-major);
- ``--columns x=f0,f1,f2``: a 1-D input of shape ``[3]`` assembled from three columns of numbers;
- ``--columns 'x=f*'``: the columns matching a shell pattern (:mod:`fnmatch`), in the file's order.

Each chunk is checked as a whole, with Arrow compute kernels (no loop over rows in Python), and a row
that cannot be an input is a failed row with a message, the others going on: a null, a list of the
wrong length, a value that cannot be converted to the input's datatype (a cast of the chunk that fails
is bisected down to the rows it fails on), and, with ``--nan error`` (the default), a NaN.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pyserve.config import ModelConfig
from pyserve.errors import invalid

NAN_POLICIES = ("error", "allow")
# KServe datatype -> the Arrow type of its values.
ARROW_TYPES: dict[str, pa.DataType] = {
    "BOOL": pa.bool_(), "UINT8": pa.uint8(), "UINT16": pa.uint16(), "UINT32": pa.uint32(),
    "UINT64": pa.uint64(), "INT8": pa.int8(), "INT16": pa.int16(), "INT32": pa.int32(), "INT64": pa.int64(),
    "FP16": pa.float16(), "FP32": pa.float32(), "FP64": pa.float64(), "BYTES": pa.binary(),
}


@dataclass(frozen=True)
class InputColumns:
    """Model input ``input`` (``datatype``, per-row ``shape``, -1 for a dimension set by the data) and
    the ``columns`` that make it: one column, or several stacked along a 1-D input's last axis."""

    input: str
    columns: tuple[str, ...]
    datatype: str
    shape: tuple[int, ...]


@dataclass
class Tensors:
    """A chunk's rows as the model's inputs: ``rows`` (int64 [n]) the positions within the chunk of
    the rows that converted, ``inputs`` (name -> array [n, *shape]) their tensors, and ``failed``
    (position -> message) the rows that did not."""

    rows: np.ndarray
    inputs: dict[str, np.ndarray]
    failed: dict[int, str]


def parse_maps(flags: list[str]) -> dict[str, str]:
    """``--columns INPUT=COLUMNS`` flags as input -> COLUMNS; INVALID_ARGUMENT for a malformed flag."""
    maps: dict[str, str] = {}
    for flag in flags:
        name, sep, columns = flag.partition("=")
        if not sep or not name or not columns:
            raise invalid(f"--columns {flag!r}: expected INPUT=COLUMN, INPUT=COL1,COL2,... or INPUT=PATTERN")
        if name in maps:
            raise invalid(f"--columns {flag!r}: input {name!r} is mapped twice")
        maps[name] = columns
    return maps


def row_shape(config: ModelConfig, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """The shape of one row of input ``name``: the configured shape of a model that batches; for one
    that does not (max_batch_size 0), its shape after a first dimension that must be -1."""
    if config.max_batch_size > 0:
        return shape
    if not shape or shape[0] != -1:
        raise invalid(f"model '{config.name}' does not batch (max_batch_size 0) and its input '{name}' has "
                      f"shape {list(shape)}: a batch job needs a first dimension of -1 to put rows on")
    return shape[1:]


class InputMapping:
    """The columns of each model input and the key columns passed through to the outputs.

    ``schema``: the input file's; ``maps``: :func:`parse_maps`'s; ``keys``: the key columns (None:
    every column no input takes). Raises INVALID_ARGUMENT naming the input or column for an input with
    no column, a column that does not exist or whose type cannot become the input's datatype."""

    def __init__(self, config: ModelConfig, schema: pa.Schema, maps: dict[str, str],
                 keys: list[str] | None = None) -> None:
        names = [n for n in schema.names if not n.startswith("\x00")]
        specs = {s.name: s for s in config.inputs}
        for name in maps:
            if name not in specs:
                raise invalid(f"--columns {name}=...: model '{config.name}' has no input {name!r} "
                              f"(inputs: {', '.join(specs)})")
        self.inputs: list[InputColumns] = []
        for spec in config.inputs:
            columns = _columns(maps[spec.name], names) if spec.name in maps else (
                (spec.name,) if spec.name in names else ())
            if not columns:
                if spec.optional:
                    continue
                where = f"--columns {spec.name}={maps[spec.name]} matches no column" if spec.name in maps else (
                    f"model input {spec.name!r} has no column of that name")
                raise invalid(f"{where}; the input's columns are {_listed(names)}: map one "
                              f"with --columns {spec.name}=COLUMN (or COL1,COL2,... or a pattern)")
            shape = row_shape(config, spec.shape, spec.name)
            if shape.count(-1) > 1:
                raise invalid(f"input {spec.name!r} has shape {list(shape)} per row: a batch job fills at most "
                              "one dimension set by the data (-1)")
            if len(columns) > 1 and len(shape) != 1:
                raise invalid(f"--columns {spec.name}={maps[spec.name]}: several columns make a 1-D input, but "
                              f"input {spec.name!r} has shape {list(shape)} per row")
            if len(columns) > 1 and shape[0] not in (-1, len(columns)):
                raise invalid(f"--columns {spec.name}={maps[spec.name]}: {len(columns)} columns, but input "
                              f"{spec.name!r} takes {shape[0]} values per row")
            for c in columns:
                _check_type(spec.name, c, schema.field(c).type, spec.datatype, len(columns) > 1)
            self.inputs.append(InputColumns(spec.name, columns, spec.datatype, shape))
        consumed = {c for i in self.inputs for c in i.columns}
        if keys is None:
            self.keys = [n for n in names if n not in consumed]
        else:
            missing = [k for k in keys if k not in names]
            if missing:
                raise invalid(f"--key {missing[0]}: no such column (columns: {_listed(names)})")
            self.keys = list(keys)

    @property
    def columns(self) -> frozenset[str]:
        """The columns some input takes."""
        return frozenset(c for i in self.inputs for c in i.columns)

    def tensors(self, batch: pa.RecordBatch, failed: dict[int, str], nan: str = "error") -> Tensors:
        """The inputs of the rows of ``batch`` (rows ``failed`` already are left out), checked as
        described in the module's docstring."""
        failed = dict(failed)
        cast: dict[str, pa.Array] = {}  # column -> its leaf values as the input's type
        for spec in self.inputs:
            for column in spec.columns:
                if column not in batch.schema.names:  # a JSON block without this field
                    for i in range(batch.num_rows):
                        failed.setdefault(i, f"input '{spec.input}': no column {column!r}")
                    continue
                cast[column] = _check_rows(spec, column, batch.column(column), nan, len(spec.columns) > 1, failed)
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[list(failed)] = False
        rows = np.flatnonzero(keep).astype(np.int64)
        if failed:  # convert the rows left (the common case, none failed, reuses the casts)
            good = batch.filter(pa.array(keep))
            cast = {c: _cast(spec, _flat(good.column(c))) for spec in self.inputs for c in spec.columns}
        inputs = {spec.input: _tensor(spec, [cast[c] for c in spec.columns], len(rows)) for spec in self.inputs}
        return Tensors(rows, inputs, failed)


def _listed(names: list[str], most: int = 12) -> str:
    """``names`` for a message: the first ``most``, then how many more."""
    if not names:
        return "none"
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _columns(pattern: str, names: list[str]) -> tuple[str, ...]:
    parts = pattern.split(",")
    if len(parts) > 1:
        missing = [p for p in parts if p not in names]
        if missing:
            raise invalid(f"--columns ...={pattern}: no column {missing[0]!r} (columns: {_listed(names)})")
        return tuple(parts)
    if any(ch in pattern for ch in "*?["):
        return tuple(n for n in names if fnmatch.fnmatchcase(n, pattern))
    if pattern not in names:
        raise invalid(f"--columns ...={pattern}: no column {pattern!r} (columns: {_listed(names)})")
    return (pattern,)


def _leaf(t: pa.DataType) -> tuple[pa.DataType, tuple[int, ...] | None]:
    """The value type of a (nested) list type and its dimensions (-1 for a variable-length outer list;
    None when an inner list varies too)."""
    dims: list[int] = []
    ok = True
    while _is_list(t):
        if pa.types.is_fixed_size_list(t):
            dims.append(t.list_size)
        elif not dims:
            dims.append(-1)
        else:
            ok = False
        t = t.value_type
    return t, tuple(dims) if ok else None


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _safe(source: pa.DataType, datatype: str) -> bool:
    # Numbers become floats as numpy's astype does (precision may round); a float becomes an integer
    # only when it is one, and no integer may overflow.
    return not (datatype.startswith("FP") and (pa.types.is_integer(source) or pa.types.is_floating(source)))


def _check_type(name: str, column: str, t: pa.DataType, datatype: str, scalar: bool) -> None:
    leaf, dims = _leaf(t)
    if scalar and _is_list(t):
        raise invalid(f"input '{name}': column {column!r} holds lists ({t}); several columns make an input "
                      "only from one number per column")
    if dims is None:
        raise invalid(f"input '{name}': column {column!r} is a list of variable-length lists ({t}); "
                      "store rows as one flat list or as fixed-size lists")
    try:
        pc.cast(pa.array([], leaf), ARROW_TYPES[datatype], safe=_safe(leaf, datatype))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as e:
        raise invalid(f"input '{name}': column {column!r} of type {t} cannot become {datatype}: {e}") from None


def _flat(a: pa.Array) -> pa.Array:
    """The leaf values of a (nested) list array (the array itself when it holds no lists)."""
    while _is_list(a.type):
        a = a.flatten()
    return a


def _rows_of(col: pa.Array, at: np.ndarray) -> np.ndarray:
    """The rows of ``col`` holding its leaf values at positions ``at`` (of :func:`_flat`'s result)."""
    if not _is_list(col.type):
        return at
    inner, t = 1, col.type.value_type
    while _is_list(t):
        inner *= t.list_size
        t = t.value_type
    if pa.types.is_fixed_size_list(col.type):
        return at // (col.type.list_size * inner)
    offsets = col.offsets.to_numpy()
    return np.searchsorted(offsets, offsets[0] + at // inner, side="right") - 1


def _cast(spec: InputColumns, values: pa.Array) -> pa.Array:
    return pc.cast(values, ARROW_TYPES[spec.datatype], safe=_safe(values.type, spec.datatype))


def _check_rows(spec: InputColumns, column: str, col: pa.Array, nan: str, scalar: bool,
                failed: dict[int, str]) -> pa.Array:
    """Adds the rows of ``col`` that cannot be input ``spec`` to ``failed``; returns the column's leaf
    values cast to the input's type (usable as they are only when no row of the chunk failed). Bad values are looked for
    row by row only when a whole-chunk kernel (null count, cast, any NaN) says there is one."""
    where = f"input '{spec.input}': column {column!r}"
    for i in np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False)):
        failed.setdefault(int(i), f"{where} is null")
    expected = 1 if scalar else math.prod(spec.shape)
    if not scalar and _is_list(col.type):
        counts = _row_counts(col)
        if -1 in spec.shape:  # a dimension set by the data: the chunk's first row sets it
            valid = counts[counts >= 0]
            fixed = math.prod(d for d in spec.shape if d >= 0)
            expected = int(valid[0]) if len(valid) and valid[0] % fixed == 0 and valid[0] else fixed
        for i in np.flatnonzero((counts != expected) & (counts >= 0)):
            failed.setdefault(int(i), f"{where} holds {counts[i]} values, expected {expected} "
                                      f"(shape {list(spec.shape)})")
    elif not scalar and expected != 1:
        raise invalid(f"{where} holds one value per row, but the input has shape {list(spec.shape)}: "
                      "map a list column or several columns")
    values = _flat(col)
    if values.null_count:
        at = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        for i in np.unique(_rows_of(col, at)):
            failed.setdefault(int(i), f"{where} holds a null value")
    target = ARROW_TYPES[spec.datatype]
    safe = _safe(values.type, spec.datatype)
    try:
        cast = pc.cast(values, target, safe=safe)
    except pa.ArrowInvalid:
        bad: dict[int, str] = {}
        _bisect_cast(values, target, safe, 0, len(values), bad)
        at = np.array(sorted(bad), dtype=np.int64)
        for i, message in zip(_rows_of(col, at), (bad[k] for k in sorted(bad))):
            failed.setdefault(int(i), f"{where}: cannot convert to {spec.datatype}: {message}")
        mask = np.zeros(len(values), dtype=bool)
        mask[at] = True  # the other values still go through the NaN check below
        cast = pc.cast(pc.if_else(pa.array(mask), pa.scalar(None, values.type), values), target, safe=safe)
    if nan == "error" and pa.types.is_floating(target) and pc.any(pc.is_nan(cast)).as_py():
        at = np.flatnonzero(pc.fill_null(pc.is_nan(cast), False).to_numpy(zero_copy_only=False))
        for i in np.unique(_rows_of(col, at)):
            failed.setdefault(int(i), f"{where} holds NaN (--nan allow lets NaN through)")
    return cast


def _row_counts(col: pa.Array) -> np.ndarray:
    """The number of leaf values of each row of a list column (-1 for a null row)."""
    t = col.type
    if pa.types.is_fixed_size_list(t):
        counts = np.full(len(col), t.list_size, dtype=np.int64)
    else:
        counts = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    t = t.value_type
    while _is_list(t):  # inner fixed-size lists (a variable inner list is refused by _check_type)
        counts *= t.list_size
        t = t.value_type
    counts[col.is_null().to_numpy(zero_copy_only=False)] = -1
    return counts


def _bisect_cast(values: pa.Array, target: pa.DataType, safe: bool, lo: int, hi: int, bad: dict[int, str]) -> None:
    """Finds the values of ``values[lo:hi]`` that do not cast, halving the range: a chunk with k bad
    values costs about 2k log2(n) casts of shrinking slices."""
    try:
        pc.cast(values.slice(lo, hi - lo), target, safe=safe)
        return
    except pa.ArrowInvalid as e:
        if hi - lo == 1:
            bad[lo] = str(e)
            return
    mid = (lo + hi) // 2
    _bisect_cast(values, target, safe, lo, mid, bad)
    _bisect_cast(values, target, safe, mid, hi, bad)


def _tensor(spec: InputColumns, values: list[pa.Array], n: int) -> np.ndarray:
    """Input ``spec`` as an array [n, *shape] from the leaf values (of the input's type) of each of
    its columns, for rows that all passed the checks."""
    parts = []
    for v in values:
        if spec.datatype == "BYTES":
            objects = np.empty(len(v), dtype=object)
            objects[:] = v.to_pylist()
            parts.append(objects)
        else:
            parts.append(v.to_numpy(zero_copy_only=False))
    if len(parts) > 1:
        return np.ascontiguousarray(np.stack(parts, axis=-1))
    if n == 0:
        return parts[0].reshape((0, *(max(d, 0) for d in spec.shape)))
    return np.ascontiguousarray(parts[0].reshape((n, *spec.shape)))
