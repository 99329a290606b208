"""Records to Arrow: the columns of a payload-log file (docs/payload-log.md#the-files).

Every file holds the calls of one model. Its fixed columns are those of :data:`BASE_FIELDS`; then
``inputs`` and ``outputs``, each a struct with one field per tensor the model's ``[payload_log]``
keeps, typed from the model's config: a number tensor is a list nested as deep as its rank (batch
dimension included), of its own Arrow type (FP16 widened to float32); a BYTES tensor the same of
strings; a hashed tensor the same of hex digests. A tensor of a call that does not fit its column (a
failed request whose input had another datatype or rank, a classification output, a tensor larger than
``max_tensor_bytes``, or a tensor the model does not declare) is written as JSON in ``other_tensors``.

A table is built a batch of calls at a time, from :class:`Records` (one tuple per field, as the
writer transposes its queue). The fixed columns are converted from those tuples by Arrow; a number
tensor whose arrays all fit its column is one numpy concatenation and offsets computed in numpy, with
no Python per call. Only a batch with a call that needs more (BYTES or hashed values, a tensor that
does not fit or is not declared) takes the call-by-call path for that struct.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pyserve.config import PayloadLogConfig, TensorSpec
from pyserve.datatypes import NUMPY_DTYPES
from pyserve.payload_log.record import (OK, SUCCESS, Capture, Tensor, json_tensor, outcome_of, select, tensor,
                                        tensor_size)

if TYPE_CHECKING:
    from pyserve.config import ModelConfig

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

    def __init__(self, model: ModelConfig) -> None:
        config = model.payload_log
        extra = 1 if model.max_batch_size > 0 else 0

        def columns(specs: tuple[TensorSpec, ...], keep: tuple[str, ...] | None) -> list[Column]:
            return [Column(s.name, "BYTES" if s.name in config.hash else s.datatype, len(s.shape) + extra,
                           s.name in config.hash)
                    for s in specs if (keep is None or s.name in keep) and s.name not in config.redact]

        self.model = model.name
        self.config = config
        self.inputs = columns(model.inputs, config.inputs)
        self.outputs = columns(model.outputs, config.outputs)
        fields = list(BASE_FIELDS)
        for key, cols in (("inputs", self.inputs), ("outputs", self.outputs)):
            if cols:  # Parquet has no empty struct: no column when nothing is kept
                fields.append(pa.field(key, pa.struct([pa.field(c.name, c.type) for c in cols])))
        fields.append(OTHER_TENSORS)
        self.schema = pa.schema(fields)


def layout_key(model: ModelConfig) -> tuple:
    """What decides a file's columns: calls of models with equal keys share a file."""
    return (model.name, model.max_batch_size > 0, model.inputs, model.outputs, model.payload_log)


class Records(NamedTuple):
    """The calls of one batch, field by field: each field a sequence with one item per call, in the
    order of the calls (the fields of :class:`~pyserve.payload_log.record.Capture` but the model's)."""

    time_ns: tuple[int, ...] | np.ndarray  # wall-clock, ns since the Unix epoch
    duration_ns: tuple[int, ...]
    version: tuple[str, ...]
    request_id: tuple[str | None, ...]
    protocol: tuple[str, ...]
    status: tuple[str, ...]
    error: tuple[str | None, ...]
    sampled: tuple[bool, ...]
    inputs: tuple[dict | None, ...]
    outputs: tuple[dict | None, ...]
    queue_us: tuple[int | None, ...]
    compute_us: tuple[int | None, ...]

    @classmethod
    def of(cls, captures: list[Capture]) -> Records:
        """The fields of ``captures`` (all of one model), transposed."""
        return cls(*(tuple(getattr(c, name) for c in captures) for name in cls._fields))


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
    out = pa.ListArray.from_arrays(pa.array(offsets, mask=mask), arr)
    return out if out.type == type_ else out.cast(type_)


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


_DTYPE, _NDIM, _NBYTES, _SIZE, _SHAPE = (attrgetter(a) for a in ("dtype", "ndim", "nbytes", "size", "shape"))


def _uniform(values: pa.Array, n: int, shape: tuple[int, ...], type_: pa.DataType) -> pa.Array:
    """List arrays nested as deep as ``shape`` over the flat ``values`` of ``n`` tensors of that one
    shape: every offset is a multiple of a dimension (no per-call shapes to read)."""
    arr, count = values, n
    counts = [n]
    for d in shape[:-1]:
        count *= d
        counts.append(count)
    for level in range(len(shape) - 1, -1, -1):
        offsets = np.arange(counts[level] + 1, dtype=np.int32)
        offsets *= shape[level]
        arr = pa.ListArray.from_arrays(pa.array(offsets), arr)
    return arr if arr.type == type_ else arr.cast(type_)


def _one_shape(arrays: list[np.ndarray], rank: int) -> tuple[int, ...] | None:
    """The shape all ``arrays`` (of ``rank`` >= 1) share, None when they differ. Ranks 1 and 2 are
    told by their lengths and sizes, without a shape tuple per array."""
    if rank > 2:
        shapes = set(map(_SHAPE, arrays))
        return shapes.pop() if len(shapes) == 1 else None
    lengths, sizes = set(map(len, arrays)), set(map(_SIZE, arrays))
    if len(lengths) != 1 or len(sizes) != 1:
        return None
    length, size = lengths.pop(), sizes.pop()
    if rank == 1:
        return (length,)
    return (length, size // length) if length else None


def _values(arrays: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """The values of every array, each flattened in row-major order, one after the other: their
    buffers joined (a copy, no Python per array); non-contiguous arrays through numpy."""
    try:
        return np.frombuffer(b"".join(arrays), dtype=dtype)
    except (BufferError, ValueError, TypeError):  # a non-contiguous array has no simple buffer
        return np.concatenate([a.reshape(-1) for a in arrays])


def _numbers_column(column: Column, arrays: list[np.ndarray], limit: int) -> pa.Array | None:
    """The column of a number tensor over calls that all have it, with no Python per call; None when
    some array does not fit the column (datatype, rank) or is over ``limit`` bytes (0: none)."""
    if column.dtype is None or column.hashed or column.rank == 0:
        return None
    try:
        if set(map(_DTYPE, arrays)) != {column.dtype} or set(map(_NDIM, arrays)) != {column.rank}:
            return None
        if limit and max(map(_NBYTES, arrays)) > limit:
            return None
    except AttributeError:  # not an ndarray: the call-by-call path converts it
        return None
    arrow_type, np_type = _TYPES[column.datatype]
    values = pa.array(_values(arrays, column.dtype).astype(np_type, copy=False), type=arrow_type)
    shape = _one_shape(arrays, column.rank)
    if shape is not None:  # every call's tensor has the same shape (one sample each, say)
        return _uniform(values, len(arrays), shape, column.type)
    return _nested(values, list(map(_SHAPE, arrays)), column.rank, column.type)


def _fast_columns(columns: list[Column], keep: tuple[str, ...] | None, rows: tuple[dict | None, ...],
                  config: PayloadLogConfig) -> list[pa.Array] | None:
    """The Arrow columns of ``columns`` over ``rows`` built batch-wise, when every call has every
    column's tensor, fitting, and no other kept tensor; else None (the call-by-call path)."""
    try:
        counts = set(map(len, rows))  # TypeError: a call without tensors
    except TypeError:
        return None
    children = []
    for column in columns:
        try:
            arrays = list(map(itemgetter(column.name), rows))
        except KeyError:
            return None
        child = _numbers_column(column, arrays, config.max_tensor_bytes)
        if child is None:
            return None
        children.append(child)
    if counts != {len(columns)}:  # more tensors than columns: only redacted or unkept ones may be there
        declared = {c.name for c in columns}
        for names in set(map(tuple, rows)):
            for name in names:
                if name not in declared and name not in config.redact and (keep is None or name in keep):
                    return None  # a tensor the model does not declare: written in other_tensors
    return children


def _tensor_columns(columns: list[Column], keep: tuple[str, ...] | None, rows: tuple[dict | None, ...],
                    config: PayloadLogConfig, others: dict[int, dict], key: str) -> list[pa.Array]:
    """The Arrow columns of ``columns`` over ``rows`` (each call's arrays by name); what does not fit
    a column, and kept tensors the model does not declare, go to ``others[row][key]`` as JSON."""
    fast = _fast_columns(columns, keep, rows, config)
    if fast is not None:
        return fast
    limit = config.max_tensor_bytes
    by_row: list[list[np.ndarray | None]] = [[] for _ in columns]
    names = {c.name for c in columns}
    for i, row in enumerate(rows):
        for j, column in enumerate(columns):
            arr = row.get(column.name) if row else None
            if arr is not None and (not column.fits(arr) or (limit and tensor_size(arr) > limit)):
                json = json_tensor(tensor(column.name, arr, config))
                others.setdefault(i, {}).setdefault(key, {})[column.name] = json
                arr = None
            by_row[j].append(arr)
        if row and not row.keys() <= names:  # tensors the model does not declare (or redacted ones)
            for name, arr in row.items():
                if name not in names and name not in config.redact and (keep is None or name in keep):
                    others.setdefault(i, {}).setdefault(key, {})[name] = json_tensor(tensor(name, arr, config))
    return [_column(c, arrays, config) for c, arrays in zip(columns, by_row)]


def _us(values: tuple[int, ...] | np.ndarray) -> np.ndarray:
    """Nanoseconds to whole microseconds."""
    if not isinstance(values, np.ndarray):
        values = np.fromiter(values, dtype=np.int64, count=len(values))
    return values // 1000


def _timings(queue: tuple[int | None, ...], compute: tuple[int | None, ...]) -> tuple[pa.Array, pa.Array]:
    """The queue_us and compute_us columns: both null where the call never queued (None or < 0)."""
    q, c = pa.array(queue, pa.int64()), pa.array(compute, pa.int64())
    ran = pc.fill_null(pc.greater_equal(q, 0), False)
    if q.null_count or not pc.all(ran).as_py():
        none = pa.scalar(None, pa.int64())
        q, c = pc.if_else(ran, q, none), pc.if_else(ran, c, none)
    return q, c


def _repeated(values: tuple, type_: pa.DataType) -> pa.Array:
    """A column of values that are often all the same (a version, a protocol, no error): one value
    repeated when they are (counted by identity first, so usually no comparison), else converted one
    by one."""
    if values.count(values[0]) == len(values):
        return pa.repeat(pa.scalar(values[0], type_), len(values))
    return pa.array(values, type_)


def _outcomes(status: tuple[str, ...]) -> pa.Array:
    """The outcome of each status (``success`` for ``ok``): one lookup per distinct status."""
    if status.count(OK) == len(status):
        return pa.repeat(pa.scalar(SUCCESS), len(status))
    outcome = {s: outcome_of(s) for s in set(status)}
    return pa.array(list(map(outcome.__getitem__, status)), pa.string())


def build_table(layout: Layout, records: Records | list[Capture]) -> pa.Table:
    """The rows of ``records`` (calls of the model of ``layout``, all of one :func:`layout_key`) as a
    table of ``layout.schema``: column by column, without a Python object per value."""
    if not isinstance(records, Records):
        records = Records.of(records)
    config = layout.config
    n = len(records.duration_ns)
    others: dict[int, dict] = {}  # row -> what goes to other_tensors (few rows, if any)
    tensor_columns = {}
    for key, cols, keep in (("inputs", layout.inputs, config.inputs), ("outputs", layout.outputs, config.outputs)):
        children = _tensor_columns(cols, keep, getattr(records, key), config, others, key)
        if cols:
            tensor_columns[key] = pa.StructArray.from_arrays(children, fields=list(layout.schema.field(key).type))
    queue_us, compute_us = _timings(records.queue_us, records.compute_us)
    columns: dict[str, pa.Array] = {
        "time": pa.array(_us(records.time_ns), pa.timestamp("us", tz="UTC")),
        "model": pa.repeat(pa.scalar(layout.model), n),
        "version": _repeated(records.version, pa.string()),
        "request_id": pa.array(records.request_id, pa.string()),
        "protocol": _repeated(records.protocol, pa.string()),
        "outcome": _outcomes(records.status),
        "status": _repeated(records.status, pa.string()),
        "error": _repeated(records.error, pa.string()),
        "sampled": _repeated(records.sampled, pa.bool_()),
        "duration_us": pa.array(_us(records.duration_ns), pa.int64()),
        "queue_us": queue_us,
        "compute_us": compute_us,
        **tensor_columns,
        "other_tensors": pa.array([orjson.dumps(others[i], option=orjson.OPT_SERIALIZE_NUMPY).decode()
                                   if i in others else None for i in range(n)], pa.string())
        if others else pa.nulls(n, pa.string()),
    }
    return pa.Table.from_arrays([columns[f.name] for f in layout.schema], schema=layout.schema)


def decode(capture: Capture) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The inputs and outputs the log keeps of ``capture``, redacted (:func:`select`)."""
    config = capture.config
    return select(capture.inputs, config.inputs, config), select(capture.outputs, config.outputs, config)


def warm_up() -> None:
    """Builds and writes (to memory) a small table of every kind of column, so that what pyarrow
    imports and sets up on first use (pandas, when installed, at its first numpy conversion; the
    compute functions; the Parquet writer) is done now. The server calls it before it freezes what
    start-up built out of the garbage collector's generations (pyserve.server.app): imported later,
    on the writer's thread, pandas alone would add some 70,000 objects to the oldest generation,
    which every full collection walks. Raises what pyarrow raises (nothing, as a rule)."""
    import io

    import pyarrow.parquet as pq

    from pyserve.config import ModelConfig, TensorSpec
    from pyserve.payload_log.files import writer_options

    model = ModelConfig("warm-up", "python", (TensorSpec("x", "FP32", (2,)), TensorSpec("s", "BYTES", (1,))),
                        (TensorSpec("y", "INT64", (1,)),), max_batch_size=4,
                        payload_log=PayloadLogConfig(enabled=True, sample_rate=1.0))
    layout = Layout(model)
    x = np.zeros((1, 2), np.float32)
    records = Records(np.zeros(2, np.int64), (1, 1), ("1", "1"), ("a", None), ("http+json", "http+json"),
                      (OK, "invalid_argument"), (None, "e"), (True, True),
                      ({"x": x, "s": np.array([[b"a"]], dtype=object)}, {"x": x[:, :1]}),
                      ({"y": np.zeros((1, 1), np.int64)}, None), (1, None), (1, None))
    table = build_table(layout, records)
    with pq.ParquetWriter(io.BytesIO(), table.schema, **writer_options(table.schema)) as writer:
        writer.write_table(table)
