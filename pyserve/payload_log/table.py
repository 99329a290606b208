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

from pyserve.config import TensorSpec
from pyserve.payload_log.record import Capture, Tensor, json_tensor, select

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

    __slots__ = ("name", "datatype", "rank", "type")

    def __init__(self, name: str, datatype: str, rank: int) -> None:
        self.name = name
        self.datatype = datatype
        self.rank = rank
        t = _TYPES[datatype][0]
        for _ in range(rank):
            t = pa.list_(t)
        self.type = t

    def fits(self, tensor: Tensor) -> bool:
        return tensor.values is not None and tensor.datatype == self.datatype and len(tensor.shape) == self.rank


class Layout:
    """The columns of one model's files: what its ``[payload_log]`` keeps of its declared tensors."""

    def __init__(self, capture: Capture) -> None:
        config = capture.config
        extra = 1 if capture.batching else 0

        def columns(specs: tuple[TensorSpec, ...], keep: tuple[str, ...] | None) -> list[Column]:
            return [Column(s.name, "BYTES" if s.name in config.hash else s.datatype, len(s.shape) + extra)
                    for s in specs if (keep is None or s.name in keep) and s.name not in config.redact]

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
    arr = values
    present = [s for s in shapes if s is not None]
    for level in range(rank - 1, 0, -1):
        counts = np.array([int(np.prod(s[:level])) for s in present], dtype=np.int64)
        lengths = np.repeat(np.array([s[level] for s in present], dtype=np.int32), counts)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        arr = pa.ListArray.from_arrays(pa.array(offsets), arr)
    top = np.array([s[0] if s is not None else 0 for s in shapes], dtype=np.int32)
    offsets = np.zeros(len(shapes) + 1, dtype=np.int32)
    np.cumsum(top, out=offsets[1:])
    mask = np.array([s is None for s in shapes] + [False])
    return pa.ListArray.from_arrays(pa.array(offsets, mask=mask if mask.any() else None), arr).cast(type_)


def _column(column: Column, tensors: list[Tensor | None]) -> pa.Array:
    present = [t for t in tensors if t is not None]
    arrow_type, np_type = _TYPES[column.datatype]
    if column.rank == 0:
        items = [None if t is None else t.values.reshape(()).item() for t in tensors]  # type: ignore[union-attr]
        return pa.array(items, type=arrow_type)
    if np_type is None:
        flat = [v for t in present for v in t.values.reshape(-1)]  # type: ignore[union-attr]
        values = pa.array(flat, type=pa.string())
    elif present:
        values = pa.array(np.concatenate([t.values.reshape(-1).astype(np_type, copy=False)  # type: ignore[union-attr]
                                          for t in present]), type=arrow_type)
    else:
        values = pa.array([], type=arrow_type)
    return _nested(values, [None if t is None else t.shape for t in tensors], column.rank, column.type)


def _split(columns: list[Column], tensors: dict[str, Tensor], other: dict[str, dict]) -> dict[str, Tensor]:
    """The tensors that fit their column; the rest go to ``other`` as JSON."""
    by_name = {c.name: c for c in columns}
    fitting = {}
    for name, tensor in tensors.items():
        column = by_name.get(name)
        if column is not None and column.fits(tensor):
            fitting[name] = tensor
        else:
            other[name] = json_tensor(tensor)
    return fitting


def build_table(layout: Layout, captures: list[Capture], decoded: list[tuple[dict, dict]]) -> pa.Table:
    """The rows of ``captures`` (all of one :func:`layout_key`), with their tensors ``decoded``
    (:func:`decode`), as a table of ``layout.schema``."""
    inputs_rows: list[dict[str, Tensor]] = []
    outputs_rows: list[dict[str, Tensor]] = []
    others: list[str | None] = []
    queue: list[int | None] = []
    compute: list[int | None] = []
    for capture, (inputs, outputs) in zip(captures, decoded):
        other_in: dict[str, dict] = {}
        other_out: dict[str, dict] = {}
        inputs_rows.append(_split(layout.inputs, inputs, other_in))
        outputs_rows.append(_split(layout.outputs, outputs, other_out))
        doc = {k: v for k, v in (("inputs", other_in), ("outputs", other_out)) if v}
        others.append(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY).decode() if doc else None)
        q, c = capture.timings_us()
        queue.append(q)
        compute.append(c)
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
        "queue_us": pa.array(queue, pa.int64()),
        "compute_us": pa.array(compute, pa.int64()),
    }
    for key, cols, rows in (("inputs", layout.inputs, inputs_rows), ("outputs", layout.outputs, outputs_rows)):
        if cols:
            children = [_column(c, [row.get(c.name) for row in rows]) for c in cols]
            columns[key] = pa.StructArray.from_arrays(children, fields=list(layout.schema.field(key).type))
    columns["other_tensors"] = pa.array(others, pa.string())
    return pa.Table.from_arrays([columns[f.name] for f in layout.schema], schema=layout.schema)


def decode(capture: Capture) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The inputs and outputs the log keeps of ``capture``, redacted (:func:`select`)."""
    config = capture.config
    return select(capture.inputs, config.inputs, config), select(capture.outputs, config.outputs, config)
