"""Records to Arrow: the columns of a payload-log file (docs/payload-log.md#the-files).

Every file holds the calls of one model. Its fixed columns are those of :data:`BASE_FIELDS`; then
``inputs`` and ``outputs``, each a struct with one field per tensor the model's ``[payload_log]``
keeps, typed from the model's config: a number tensor is a list nested as deep as its rank (batch
dimension included), of its own Arrow type (FP16 widened to float32); a BYTES tensor the same of
strings; a hashed tensor the same of hex digests. A tensor of a call that does not fit its column (a
failed request whose input had another datatype or rank, a classification output, a tensor larger than
``max_tensor_bytes``, or a tensor the model does not declare) is written as JSON in ``other_tensors``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from pyserve.config import PayloadLogConfig, TensorSpec
from pyserve.datatypes import NUMPY_DTYPES
from pyserve.payload_log.record import Capture, Tensor, tensor_size, json_tensor, select, tensor

BASE_FIELDS = (
    pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("version", pa.string()),
    pa.field("request_id", pa.string()),
    pa.field("protocol", pa.string()),
    pa.field("outcome", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("sampled", pa.bool_(), nullable=False),
    pa.field("duration_us", pa.int64()),
    pa.field("queue_us", pa.int64()),
    pa.field("compute_us", pa.int64()),
)
OTHER_TENSORS = pa.field("other_tensors", pa.string())

# Wire datatype -> (Arrow type, numpy type the values are cast to).
_TYPES: dict[str, tuple[pa.DataType, Any]] = {
    "BOOL": (pa.bool_(), np.bool_),
    "UINT8": (pa.uint8(), np.uint8), "UINT16": (pa.uint16(), np.uint16),
    "UINT32": (pa.uint32(), np.uint32), "UINT64": (pa.uint64(), np.uint64),
    "INT8": (pa.int8(), np.int8), "INT16": (pa.int16(), np.int16),
    "INT32": (pa.int32(), np.int32), "INT64": (pa.int64(), np.int64),
    "FP16": (pa.float32(), np.float32), "FP32": (pa.float32(), np.float32), "FP64": (pa.float64(), np.float64),
    "BYTES": (pa.string(), None),
}


class Column:
    """One tensor's column: its name, the datatype it takes (``BYTES`` for a hashed tensor), its rank."""

    __slots__ = ("name", "datatype", "rank", "type", "hashed", "dtype")

    def __init__(self, name: str, datatype: str, rank: int, hashed: bool) -> None:
        self.name = name
        self.datatype = datatype
        self.rank = rank
        self.hashed = hashed
        # The numpy dtype a fitting array has (None: BYTES, an object array).
        self.dtype = None if datatype == "BYTES" else np.dtype(NUMPY_DTYPES[datatype])
        t = _TYPES[datatype][0]
        for _ in range(rank):
            t = pa.list_(t)
        self.type = t

    def fits(self, arr: np.ndarray) -> bool:
        """Whether a call's array goes in this column (else it is written in ``other_tensors``)."""
        if arr.ndim != self.rank:
            return False
        return self.hashed or (arr.dtype.kind in "OSU" if self.dtype is None else arr.dtype == self.dtype)


class Layout:
    """The columns of one model's files: what its ``[payload_log]`` keeps of its declared tensors."""

    def __init__(self, capture: Capture) -> None:
        config = capture.config
        extra = 1 if capture.batching else 0

        def columns(specs: tuple[TensorSpec, ...], keep: tuple[str, ...] | None) -> list[Column]:
            return [Column(s.name, "BYTES" if s.name in config.hash else s.datatype, len(s.shape) + extra,
                           s.name in config.hash)
                    for s in specs if (keep is None or s.name in keep) and s.name not in config.redact]

        self.config = config
        self.inputs = columns(capture.input_specs, config.inputs)
        self.outputs = columns(capture.output_specs, config.outputs)
        fields = list(BASE_FIELDS)
        for key, cols in (("inputs", self.inputs), ("outputs", self.outputs)):
            if cols:  # Parquet has no empty struct: no column when nothing is kept
                fields.append(pa.field(key, pa.struct([pa.field(c.name, c.type) for c in cols])))
        fields.append(OTHER_TENSORS)
        self.schema = pa.schema(fields)


def layout_key(capture: Capture) -> tuple:
    """What decides a file's columns: calls with equal keys share a file."""
    return (capture.model, capture.batching, capture.input_specs, capture.output_specs, capture.config)


def _nested(values: pa.Array, shapes: list[tuple[int, ...] | None], rank: int, type_: pa.DataType) -> pa.Array:
    """List arrays nested ``rank`` deep over the flat ``values`` of each row's tensor of ``shapes``
    (None: a null row), row-major, as numpy's ``tolist`` would nest them."""
    if rank == 0:  # a scalar tensor: the value itself (values hold a null for each missing row)
        return values
    missing = [s is None for s in shapes]
    dims = np.array([s for s in shapes if s is not None], dtype=np.int64).reshape(-1, rank)
    arr = values
    for level in range(rank - 1, 0, -1):
        # Level k holds prod(shape[:k]) lists of shape[k] items per row.
        lengths = np.repeat(dims[:, level], dims[:, :level].prod(axis=1))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        arr = pa.ListArray.from_arrays(pa.array(offsets), arr)
    top = np.zeros(len(shapes), dtype=np.int64)
    top[~np.array(missing, dtype=bool)] = dims[:, 0]
    offsets = np.zeros(len(shapes) + 1, dtype=np.int32)
    np.cumsum(top, out=offsets[1:])
    mask = np.array([*missing, False]) if any(missing) else None
    return pa.ListArray.from_arrays(pa.array(offsets, mask=mask), arr).cast(type_)


def _column(column: Column, arrays: list[np.ndarray | None], config: PayloadLogConfig) -> pa.Array:
    """The Arrow column of one tensor over rows whose arrays fit it (None: a null row)."""
    arrow_type, np_type = _TYPES[column.datatype]
    if column.datatype == "BYTES":  # text or digests: one Python string per element
        arrays = [None if a is None else tensor(column.name, a, config).values for a in arrays]
    if column.rank == 0:
        return pa.array([None if a is None else a.reshape(()).item() for a in arrays], type=arrow_type)
    present = [a.reshape(-1) for a in arrays if a is not None]
    if np_type is None:
        values = pa.array([v for a in present for v in a], type=pa.string())
    elif present:
        values = pa.array(np.concatenate(present).astype(np_type, copy=False), type=arrow_type)
    else:
        values = pa.array([], type=arrow_type)
    return _nested(values, [None if a is None else a.shape for a in arrays], column.rank, column.type)


def _tensor_columns(columns: list[Column], keep: tuple[str, ...] | None, rows: list[dict | None],
                    config: PayloadLogConfig, others: list[dict], key: str) -> list[pa.Array]:
    """The Arrow columns of ``columns`` over ``rows`` (each call's arrays by name); what does not fit
    a column, and kept tensors the model does not declare, go to ``others[row][key]`` as JSON."""
    limit = config.max_tensor_bytes
    by_row: list[list[np.ndarray | None]] = [[] for _ in columns]
    names = {c.name for c in columns}
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            arr = row.get(column.name) if row else None
            if arr is not None and (not column.fits(arr) or (limit and tensor_size(arr) > limit)):
                others[i].setdefault(key, {})[column.name] = json_tensor(tensor(column.name, arr, config))
                arr = None
            by_row[j].append(arr)
        if row and not row.keys() <= names:  # tensors the model does not declare (or redacted ones)
            for name, arr in row.items():
                if name not in names and name not in config.redact and (keep is None or name in keep):
                    others[i].setdefault(key, {})[name] = json_tensor(tensor(name, arr, config))
    return [_column(c, arrays, config) for c, arrays in zip(columns, by_row)]


def build_table(layout: Layout, captures: list[Capture]) -> pa.Table:
    """The rows of ``captures`` (all of one :func:`layout_key`) as a table of ``layout.schema``.

    Column by column, without a Python object per value: a number tensor's arrays are concatenated
    and nested by their shapes in Arrow."""
    config = layout.config
    others: list[dict] = [{} for _ in captures]
    tensor_columns = {}
    for key, cols, keep in (("inputs", layout.inputs, config.inputs), ("outputs", layout.outputs, config.outputs)):
        rows = [getattr(c, key) for c in captures]
        children = _tensor_columns(cols, keep, rows, config, others, key)
        if cols:
            tensor_columns[key] = pa.StructArray.from_arrays(children, fields=list(layout.schema.field(key).type))
    timings = [c.timings_us() for c in captures]
    columns: dict[str, pa.Array] = {
        "time": pa.array([c.time_ns // 1000 for c in captures], pa.timestamp("us", tz="UTC")),
        "model": pa.array([c.model for c in captures], pa.string()),
        "version": pa.array([c.version for c in captures], pa.string()),
        "request_id": pa.array([c.request_id for c in captures], pa.string()),
        "protocol": pa.array([c.protocol for c in captures], pa.string()),
        "outcome": pa.array([c.outcome for c in captures], pa.string()),
        "status": pa.array([c.status for c in captures], pa.string()),
        "error": pa.array([c.error for c in captures], pa.string()),
        "sampled": pa.array([c.sampled for c in captures], pa.bool_()),
        "duration_us": pa.array([c.duration_ns // 1000 for c in captures], pa.int64()),
        "queue_us": pa.array([t[0] for t in timings], pa.int64()),
        "compute_us": pa.array([t[1] for t in timings], pa.int64()),
        **tensor_columns,
        "other_tensors": pa.array([orjson.dumps(o, option=orjson.OPT_SERIALIZE_NUMPY).decode() if o else None
                                   for o in others], pa.string()),
    }
    return pa.Table.from_arrays([columns[f.name] for f in layout.schema], schema=layout.schema)


def decode(capture: Capture) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The inputs and outputs the log keeps of ``capture``, redacted (:func:`select`)."""
    config = capture.config
    return select(capture.inputs, config.inputs, config), select(capture.outputs, config.outputs, config)
