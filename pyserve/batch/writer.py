"""The output and errors files: their columns, and writers for Parquet, CSV and JSON Lines.

An output row is ``row_index`` (the row's position in the input, from 0), the key columns, then one
column per model output: a number (or bytes) for an output of shape ``[]``, a fixed-size list for one
of shape ``[k]`` (nested fixed-size lists for more dimensions; a variable-length list for a dimension
of -1), or, with ``--split-outputs``, one column per element named ``NAME_i`` (``NAME_i_j`` for 2-D).
An error row is ``row_index``, the key columns and ``error`` (the message).

The format follows the file's extension: ``.parquet`` (pyarrow.parquet.ParquetWriter, one row group
per chunk), ``.csv`` (pyarrow.csv.CSVWriter; lists cannot be CSV cells, so CSV outputs are split) or
``.jsonl`` (one JSON object per line; bytes as UTF-8 text).

A file is written under a temporary name beside it and renamed into place only when the job ends well
(:meth:`TableWriter.commit`): a job that stops half-way leaves no output that looks whole (a Parquet
footer would make it read as complete), and an older file of the same name is kept.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pyserve.batch.mapping import ARROW_TYPES
from pyserve.batch.reader import as_arrow
from pyserve.config import ModelConfig
from pyserve.errors import invalid

ROW_INDEX = "row_index"
ERROR = "error"
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def output_format(path: Path, flag: str) -> str:
    """The format of an output file by its extension; INVALID_ARGUMENT naming the flag otherwise."""
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise invalid(f"{flag} {path}: cannot write {path.suffix or '(no extension)'!r} files; expected "
                      f"one of {', '.join(sorted(OUTPUT_FORMATS))} (NPY/NPZ inputs are scored into these)")
    return fmt


def out_shape(config: ModelConfig, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-row shape of an output (after the batch dimension of a model that batches, or the
    first -1 of one that does not)."""
    return shape if config.max_batch_size > 0 else shape[1:]


class OutputColumns:
    """How the outputs of ``config`` become columns (``split``: one column per element)."""

    def __init__(self, config: ModelConfig, keys: pa.Schema, split: bool) -> None:
        self.specs = [(o.name, o.datatype, out_shape(config, o.shape)) for o in config.outputs]
        self.split = split
        self.keys = keys
        fields = [pa.field(ROW_INDEX, pa.int64()), *keys]
        for name, datatype, shape in self.specs:
            value = ARROW_TYPES[datatype]
            if split and shape:
                if -1 in shape:
                    raise invalid(f"--split-outputs: output {name!r} has shape {list(shape)}, with a dimension "
                                  "set by the data; it can only be written as lists (Parquet or JSON Lines)")
                fields += [pa.field(c, value) for c in _split_names(name, shape)]
            else:
                for d in reversed(shape):
                    value = pa.list_(value, d) if d >= 0 else pa.list_(value)
                fields.append(pa.field(name, value))
        names = [f.name for f in fields]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise invalid(f"column {clash[0]!r} would be written twice (a key column, {ROW_INDEX!r} or an "
                          "output of the model); pass --key to choose the key columns")
        self.schema = pa.schema(fields)
        self.error_schema = pa.schema([pa.field(ROW_INDEX, pa.int64()), *keys, pa.field(ERROR, pa.string())])

    def batch(self, row_index: np.ndarray, keys: pa.RecordBatch, outputs: dict[str, np.ndarray]) -> pa.RecordBatch:
        """The output rows: ``row_index`` int64 [n], ``keys`` their key columns, ``outputs`` name ->
        [n, *shape]."""
        arrays: list[pa.Array] = [pa.array(row_index, pa.int64()), *key_arrays(keys, self.keys)]
        for name, datatype, shape in self.specs:
            a = outputs[name]
            if self.split and shape:
                flat = a.reshape(len(a), -1)
                arrays += [_column(flat[:, j], datatype) for j in range(flat.shape[1])]
            else:
                arrays.append(_column(a, datatype))
        return pa.RecordBatch.from_arrays([x.cast(f.type) for x, f in zip(arrays, self.schema)], schema=self.schema)

    def errors(self, row_index: np.ndarray, keys: pa.RecordBatch, messages: Sequence[str]) -> pa.RecordBatch:
        """The error rows: as :meth:`batch`, with each row's message."""
        arrays = [pa.array(row_index, pa.int64()), *key_arrays(keys, self.keys), pa.array(messages, pa.string())]
        return pa.RecordBatch.from_arrays(arrays, schema=self.error_schema)


def key_arrays(batch: pa.RecordBatch, keys: pa.Schema) -> list[pa.Array]:
    """The key columns of ``batch`` with the types of ``keys`` (a JSON block may lack a field, or read
    it as another type: null, or cast)."""
    out = []
    for f in keys:
        if f.name not in batch.schema.names:
            out.append(pa.nulls(batch.num_rows, f.type))
            continue
        try:
            out.append(batch.column(f.name).cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise invalid(f"key column {f.name!r}: a later chunk holds values that are not {f.type}: {e}; "
                          "choose other --key columns") from None
    return out


def _split_names(name: str, shape: tuple[int, ...]) -> list[str]:
    return [f"{name}_{'_'.join(map(str, i))}" for i in itertools.product(*(range(d) for d in shape))]


def _column(a: np.ndarray, datatype: str) -> pa.Array:
    if datatype == "BYTES":
        flat = pa.array(list(a.reshape(-1)), pa.binary())
        for d in reversed(a.shape[1:]):
            flat = pa.FixedSizeListArray.from_arrays(flat, d)
        return flat
    return as_arrow(a)


class TableWriter:
    """Writes record batches of ``schema`` to ``path`` in the format of its extension (``flag`` names
    the file in errors). The rows go to a temporary file beside ``path``: :meth:`commit` finishes it and
    renames it to ``path``; :meth:`close` without a commit (a failed job) deletes it. As a context
    manager, it commits when the block ends without an exception."""

    def __init__(self, path: Path, schema: pa.Schema, flag: str) -> None:
        self.path = Path(path)
        self.flag = flag
        self.format = output_format(self.path, flag)
        self.rows = 0
        self.schema = schema
        self._w: Any = None
        if self.format == "csv":
            lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
            if lists:
                raise invalid(f"{flag} {path}: column {lists[0]!r} holds lists, which CSV cannot; write "
                              ".parquet or .jsonl, or pass --split-outputs")
        parent = self.path.parent
        if not parent.is_dir():
            raise invalid(f"{flag} {path}: cannot write it: the folder {parent} does not exist")
        try:
            # Created by the format's writer, so that it has the mode any new file has (umask).
            self.partial = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.partial")
            if self.format == "parquet":
                import pyarrow.parquet as pq

                self._w = pq.ParquetWriter(self.partial, schema)
            elif self.format == "csv":
                import pyarrow.csv as pcsv

                self._w = pcsv.CSVWriter(self.partial, schema)
            else:
                self._w = open(self.partial, "w", encoding="utf-8")
        except (OSError, pa.ArrowException) as e:  # ArrowInvalid: a type the format cannot hold
            self._discard()
            raise invalid(f"{flag} {path}: cannot write it: {getattr(e, 'strerror', None) or e}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        """Appends ``batch`` (of :attr:`schema`)."""
        if batch.num_rows == 0:
            return
        if self.format == "jsonl":
            self._w.writelines(json.dumps(row, default=_json_default, allow_nan=True) + "\n"
                               for row in batch.to_pylist())
        else:
            self._w.write_batch(batch)
        self.rows += batch.num_rows

    def commit(self) -> None:
        """Finishes the file (a Parquet footer) and renames it to :attr:`path`; INVALID_ARGUMENT naming
        the flag and file when it cannot be."""
        try:
            self._w.close()
            self._w = None
            os.replace(self.partial, self.path)
        except OSError as e:
            self._discard()
            raise invalid(f"{self.flag} {self.path}: cannot write it: {e.strerror or e}") from None

    def close(self) -> None:
        """Deletes the unfinished file unless :meth:`commit` ran."""
        self._discard()

    def _discard(self) -> None:
        if self._w is not None:
            try:
                self._w.close()
            except Exception:  # noqa: BLE001, S110  (the file is deleted anyway)
                pass
            self._w = None
        partial = getattr(self, "partial", None)
        if partial is not None and partial.exists():
            partial.unlink()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None and self._w is not None:
            self.commit()
        else:
            self.close()


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
