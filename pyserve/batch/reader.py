"""Input files read in chunks of rows, as Arrow record batches, whatever their format.

Each format is read by pyarrow or numpy, streaming, so that memory holds one chunk (and, for Parquet,
the column chunks of one row group) whatever the file's size:

- Parquet (``.parquet``, ``.pq``): ``pyarrow.parquet.ParquetFile.iter_batches``.
- CSV (``.csv``, ``.tsv``): ``pyarrow.csv.open_csv``, a streaming reader. The columns that feed the model
  are read as text and converted per chunk (:mod:`pyserve.batch.mapping`), so that one bad value is
  one failed row and not a failed file.
- JSON Lines (``.jsonl``, ``.ndjson``): blocks of lines parsed by ``pyarrow.json.read_json``; a block
  that pyarrow refuses (a line that is not JSON, a field whose type changes) is parsed line by line,
  a line that is not a JSON object becoming a failed row.
- NPY (``.npy``): one column named after the file's stem (``features.npy``: ``features``).
- NPZ (``.npz``): one column per member (``np.savez(f, x=..., id=...)``: ``x``, ``id``); every member
  holds the same number of rows.

NPY and NPZ arrays are read from their files ``chunk_rows`` rows at a time (numpy's header, then
raw bytes; compressed members are unzipped as they are read), never whole. A row of an array with
more than one dimension is an Arrow fixed-size list (nested for three dimensions and more).
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from pyserve.errors import invalid

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".npy": "npy", ".npz": "npz"}
# Bytes a CSV block holds: pyarrow's unit of parsing (its chunks are not a number of rows).
CSV_BLOCK_BYTES = 4 << 20


def input_format(path: Path) -> str:
    """The format of ``path`` by its extension; INVALID_ARGUMENT naming the supported ones."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise invalid(f"--input {path}: unknown format {path.suffix or '(no extension)'!r}; expected one of "
                      f"{', '.join(sorted(FORMATS))}")
    return fmt


@dataclass
class Chunk:
    """Rows ``start`` .. ``start + batch.num_rows`` of the input; ``position`` how far the file was
    read (rows, or bytes for CSV and JSON Lines) for the progress; ``failed``: row (within the chunk)
    -> message for rows the reader itself could not read (JSON lines that are not objects)."""

    start: int
    batch: pa.RecordBatch
    position: int
    failed: dict[int, str]


class InputReader:
    """Reads ``path`` in chunks of about ``chunk_rows`` rows.

    :attr:`schema` is known after construction (Parquet and NPY/NPZ from their headers, CSV and JSON
    Lines from their first block); :attr:`total` is the number of rows (Parquet, NPY/NPZ) or bytes
    (CSV, JSON Lines) that :attr:`Chunk.position` counts up to. Raises INVALID_ARGUMENT naming the
    file for a file that cannot be read as its extension says."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path = Path(path)
        self.format = input_format(self.path)
        self.chunk_rows = chunk_rows
        if not self.path.is_file():
            raise invalid(f"--input {self.path}: no such file")
        self.total = self.path.stat().st_size
        self.total_is_rows = False
        try:
            self.schema = getattr(self, f"_schema_{self.format}")()
        except (pa.ArrowException, OSError, ValueError, zipfile.BadZipFile) as e:
            raise invalid(f"--input {self.path}: cannot read it as {self.format}: {e}") from None

    def chunks(self, text_columns: frozenset[str] = frozenset()) -> Iterator[Chunk]:
        """The chunks in file order. ``text_columns``: CSV columns read as text (converted later)."""
        try:
            yield from getattr(self, f"_chunks_{self.format}")(text_columns)
        except (pa.ArrowException, OSError, ValueError, zipfile.BadZipFile) as e:
            raise invalid(f"--input {self.path}: cannot read it as {self.format}: {e}") from None

    # -- Parquet --------------------------------------------------------------------------------
    def _schema_parquet(self) -> pa.Schema:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.path).metadata
        self.total, self.total_is_rows = meta.num_rows, True
        return pq.ParquetFile(self.path).schema_arrow

    def _chunks_parquet(self, _: frozenset[str]) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        start = 0
        # pre_buffer (the default) keeps every column chunk read so far: memory would grow with the file.
        with pq.ParquetFile(self.path, memory_map=False, buffer_size=1 << 20, pre_buffer=False) as f:
            for batch in f.iter_batches(batch_size=self.chunk_rows, use_threads=False):
                yield Chunk(start, batch, start + batch.num_rows, {})
                start += batch.num_rows

    # -- CSV ------------------------------------------------------------------------------------
    def _csv_options(self, text_columns: frozenset[str]) -> dict[str, Any]:
        import pyarrow.csv as pcsv

        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        return {"read_options": pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
                "parse_options": pcsv.ParseOptions(delimiter=delimiter),
                "convert_options": pcsv.ConvertOptions(column_types={c: pa.string() for c in text_columns})}

    def _schema_csv(self) -> pa.Schema:
        import pyarrow.csv as pcsv

        with pcsv.open_csv(self.path, **self._csv_options(frozenset())) as r:
            return r.schema

    def _chunks_csv(self, text_columns: frozenset[str]) -> Iterator[Chunk]:
        import pyarrow.csv as pcsv

        start = 0
        with open(self.path, "rb") as raw, pcsv.open_csv(raw, **self._csv_options(text_columns)) as r:
            for batch in r:
                for piece in _split(batch, self.chunk_rows):
                    yield Chunk(start, piece, raw.tell(), {})
                    start += piece.num_rows

    # -- JSON Lines -----------------------------------------------------------------------------
    def _schema_jsonl(self) -> pa.Schema:
        with open(self.path, "rb") as f:
            for chunk in self._json_blocks(f):
                return chunk.batch.schema
        raise ValueError("the file holds no JSON line")

    def _chunks_jsonl(self, _: frozenset[str]) -> Iterator[Chunk]:
        with open(self.path, "rb") as f:
            yield from self._json_blocks(f)

    def _json_blocks(self, f: IO[bytes]) -> Iterator[Chunk]:
        import pyarrow.json as pj

        start = 0
        while True:
            lines = [line for line in itertools.islice(f, self.chunk_rows) if line.strip()]
            if not lines:
                return
            try:
                table = pj.read_json(io.BytesIO(b"".join(lines))).combine_chunks()
                chunk = Chunk(start, table.to_batches()[0], f.tell(), {})
            except pa.ArrowInvalid:
                batch, failed = _json_by_line(lines)
                chunk = Chunk(start, batch, f.tell(), failed)
            yield chunk
            start += chunk.batch.num_rows

    # -- NPY / NPZ ------------------------------------------------------------------------------
    def _members(self) -> list[tuple[str, Any]]:
        """(column, opener) of each array of the file; opener() returns a binary file at its header."""
        if self.format == "npy":
            return [(self.path.stem, lambda: open(self.path, "rb"))]
        with zipfile.ZipFile(self.path) as z:
            names = [n for n in z.namelist() if n.endswith(".npy")]
        if not names:
            raise ValueError("no .npy member")
        path = self.path

        def opener(name: str) -> Any:
            def open_member() -> IO[bytes]:
                z = zipfile.ZipFile(path)
                return z.open(name)
            return open_member
        return [(n[:-4], opener(n)) for n in names]

    def _schema_npy(self) -> pa.Schema:
        fields, rows = [], set()
        for column, opener in self._members():
            with opener() as f:
                shape, dtype = _npy_header(f, column)
            rows.add(shape[0])
            fields.append(pa.field(column, _list_type(pa.from_numpy_dtype(dtype), shape[1:])))
        if len(rows) != 1:
            raise ValueError(f"its arrays hold different numbers of rows ({sorted(rows)}); expected one number")
        self.total, self.total_is_rows = rows.pop(), True
        return pa.schema(fields)

    _schema_npz = _schema_npy

    def _chunks_npy(self, _: frozenset[str]) -> Iterator[Chunk]:
        files = [opener() for _, opener in self._members()]
        try:
            heads = [_npy_header(f, c) for f, (c, _) in zip(files, self._members())]
            for start in range(0, self.total, self.chunk_rows):
                n = min(self.chunk_rows, self.total - start)
                arrays = []
                for f, (shape, dtype) in zip(files, heads):
                    row_items = int(np.prod(shape[1:], dtype=np.int64))
                    data = f.read(n * row_items * dtype.itemsize)
                    if len(data) != n * row_items * dtype.itemsize:
                        raise ValueError("an array ends before its header's shape says")
                    arrays.append(as_arrow(np.frombuffer(data, dtype).reshape((n, *shape[1:]))))
                yield Chunk(start, pa.RecordBatch.from_arrays(arrays, schema=self.schema), start + n, {})
        finally:
            for f in files:
                f.close()

    _chunks_npz = _chunks_npy


def _npy_header(f: IO[bytes], column: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an NPY header, ``f`` left at the data; ValueError for what cannot stream."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    if dtype.hasobject:
        raise ValueError(f"array {column!r} holds Python objects (pickled), which are not read; store "
                         "strings as S or U arrays")
    if len(shape) == 0:
        raise ValueError(f"array {column!r} is a scalar; expected rows along its first dimension")
    if fortran and len(shape) > 1:
        raise ValueError(f"array {column!r} is in Fortran order, which cannot be read by rows; save "
                         "np.ascontiguousarray(a)")
    return tuple(shape), dtype


def _list_type(value: pa.DataType, dims: tuple[int, ...]) -> pa.DataType:
    for d in reversed(dims):
        value = pa.list_(value, d)
    return value


def as_arrow(a: np.ndarray) -> pa.Array:
    """A numpy array [rows, ...] as an Arrow array of rows (fixed-size lists for the dimensions after
    the first), without a copy of numeric data."""
    if a.dtype.kind in "SU":
        flat = pa.array(a.reshape(-1).astype(object if a.dtype.kind == "U" else a.dtype))
    else:
        flat = pa.array(np.ascontiguousarray(a).reshape(-1))
    for d in reversed(a.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, d)
    return flat


def _split(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    for at in range(0, batch.num_rows, rows):
        yield batch.slice(at, rows)


def _json_by_line(lines: list[bytes]) -> tuple[pa.RecordBatch, dict[int, str]]:
    """A block pyarrow refused, line by line: a line that is not a JSON object is a failed row
    (its message in the result's dict), and a field whose values are of several scalar types is
    read as text, to be converted (and refused row by row) with the other inputs (see
    :func:`_json_column` for lists and objects)."""
    rows: list[dict[str, Any]] = []
    failed: dict[int, str] = {}
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError as e:
            row = None
            failed[i] = f"not a JSON line: {e}"
        if row is not None and not isinstance(row, dict):
            failed[i] = f"expected a JSON object, got {type(row).__name__}"
            row = None
        rows.append(row or {})
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns = {name: _json_column(name, [r.get(name) for r in rows], failed) for name in names}
    if not columns:
        columns["\x00"] = pa.nulls(len(lines))  # every line failed: the rows still count
    return pa.RecordBatch.from_pydict(columns), failed


def _json_kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else "a scalar"


def _json_column(name: str, values: list[Any], failed: dict[int, str]) -> pa.Array:
    """The Arrow column of field ``name``'s ``values`` (one per line; None where absent). Scalars of
    several types become text (converted, and refused value by value, with the model's inputs). When
    lists or objects are mixed with other kinds, or with each other's shapes, the kind and then the
    Arrow type most lines have wins, and a line whose value does not fit it is a failed row (its
    message added to ``failed``, by line) instead of failing the block: one bad line, one failed row."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    kinds = collections.Counter(_json_kind(v) for _, v in present)
    if set(kinds) == {"a scalar"}:
        return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                        pa.string())
    values = list(values)
    kind = kinds.most_common(1)[0][0]
    types: dict[int, pa.DataType] = {}
    for i, v in present:
        if _json_kind(v) != kind:
            failed.setdefault(i, f"field {name!r}: expected {kind} as most lines of its block have, got "
                                 f"{_json_kind(v)}")
            values[i] = None
            continue
        try:
            types[i] = pa.array([v]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            failed.setdefault(i, f"field {name!r}: {e}")
            values[i] = None
    common = collections.Counter(types.values()).most_common(1)[0][0] if types else pa.null()
    for i in types:
        try:
            pa.array([values[i]], common)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            failed.setdefault(i, f"field {name!r}: the value does not fit the type most lines of its block "
                                 f"have ({common})")
            values[i] = None
    return pa.array(values, common)
