"""The Parquet files of the payload log: one open file per model, rotation, retention.

A file is written under a temporary name (``<model>/.<name>.parquet.tmp``), closed (Parquet's footer
written), flushed to disk (fsync) and only then renamed to ``<model>/<name>.parquet``: a reader, or a
server killed at any moment, never sees a half-written ``.parquet`` file. ``<name>`` is the UTC time
the file was opened, the process id and a sequence number (``20261130T140512.123456Z-4242-000001``),
so names sort by time.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("pyserve.payload_log")

SUFFIX = ".parquet"
TMP_SUFFIX = ".parquet.tmp"
# Rows (or bytes) buffered per model before they are written as one Parquet row group.
ROW_GROUP_ROWS = 8192
ROW_GROUP_BYTES = 16 << 20
_TMP_NAME = re.compile(r"^\.\d{8}T\d{6}\.\d{6}Z-(\d+)-\d+\.parquet\.tmp$")
# Columns whose values are mostly unique: no dictionary encoding tried (it costs and saves nothing).
_UNIQUE = ("time", "request_id", "duration_us", "queue_us", "compute_us", "other_tensors")
_TENSORS = ("inputs", "outputs", "other_tensors")


def writer_options(schema: pa.Schema) -> dict:
    """The Parquet writer's options for a file of ``schema``: zstd; dictionary encoding only for the
    strings that repeat (model, version, protocol, outcome, status, error, BYTES tensors: labels,
    categories, digests); min/max statistics only for the fixed columns (what a query filters on).

    Numbers get neither: the dictionary that Parquet tries first and then abandons for float
    features, and the statistics of every tensor element, cost more than half of the writer's
    encoding time and the dictionary made the files larger (docs/payload-log.md#cost)."""
    dictionary: list[str] = []

    def walk(path: str, t: pa.DataType) -> None:
        if pa.types.is_struct(t):
            for f in t:
                walk(f"{path}.{f.name}", f.type)
        elif pa.types.is_list(t):
            walk(f"{path}.list.element", t.value_type)
        elif pa.types.is_string(t):
            dictionary.append(path)

    for f in schema:
        if f.name not in _UNIQUE:
            walk(f.name, f.type)
    statistics = [f.name for f in schema if f.name not in _TENSORS]
    return {"compression": "zstd", "use_dictionary": dictionary, "write_statistics": statistics}


@dataclass
class OpenFile:
    """A file being filled: its temporary and final paths, its writer, its schema, its rows."""

    tmp: Path
    final: Path
    sink: pa.NativeFile
    writer: pq.ParquetWriter
    schema: pa.Schema
    opened: float
    rows: int = 0
    pending: list[pa.Table] = field(default_factory=list)
    pending_rows: int = 0
    pending_bytes: int = 0


def completed_files(log_dir: Path, model: str | None = None) -> list[Path]:
    """The complete files of the log (of one model), oldest first; files being written are not listed."""
    log_dir = Path(log_dir)
    folders = [log_dir / model] if model is not None else [p for p in log_dir.iterdir() if p.is_dir()] \
        if log_dir.is_dir() else []
    files = [p for d in folders if d.is_dir() for p in d.iterdir()
             if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: p.name)


class ParquetFiles:
    """The files of one log folder, written by one thread (not thread-safe).

    ``on_closed(model, rows)`` is called for each file made visible; ``on_lost(model, rows)`` for
    rows that could not be written (a full disk, a folder removed)."""

    def __init__(self, log_dir: Path, rotate_bytes: int, rotate_s: float, retain_bytes: int, retain_s: float,
                 on_closed=None, on_lost=None) -> None:
        self.log_dir = Path(log_dir)
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.retain_bytes = retain_bytes
        self.retain_s = retain_s
        self._open: dict[str, OpenFile] = {}
        self._seq = 0
        self._on_closed = on_closed or (lambda model, rows: None)
        self._on_lost = on_lost or (lambda model, rows: None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Deletes the temporary files of servers that died while writing (unreadable: no footer)."""
        for folder in (p for p in self.log_dir.iterdir() if p.is_dir()):
            for p in folder.iterdir():
                match = _TMP_NAME.match(p.name)
                if match and not _alive(int(match.group(1))):
                    log.warning("removing %s, left unfinished by process %s", p, match.group(1))
                    p.unlink(missing_ok=True)

    def append(self, model: str, table: pa.Table) -> None:
        """Adds rows of ``model`` (a new file when the schema changed, e.g. a new version)."""
        f = self._open.get(model)
        if f is not None and not f.schema.equals(table.schema):
            self.close(model)
            f = None
        if f is None:
            f = self._create(model, table.schema)
            if f is None:
                self._on_lost(model, table.num_rows)
                return
        f.pending.append(table)
        f.pending_rows += table.num_rows
        f.pending_bytes += table.nbytes
        if f.pending_rows >= ROW_GROUP_ROWS or f.pending_bytes >= ROW_GROUP_BYTES:
            if not self._write_pending(model, f):
                return  # the file was given up: the next rows start a new one
        if f.sink.tell() + f.pending_bytes >= self.rotate_bytes:
            self.close(model)

    def due(self, now: float) -> bool:
        """Whether :meth:`rotate_due` would close a file at ``now``."""
        return any(now - f.opened >= self.rotate_s for f in self._open.values())

    def rotate_due(self, now: float | None = None) -> None:
        """Closes the files older than ``rotate_s``."""
        now = time.time() if now is None else now
        for model, f in list(self._open.items()):
            if now - f.opened >= self.rotate_s:
                self.close(model)

    def close(self, model: str) -> None:
        """Finishes the file of ``model``: pending rows, footer, fsync, rename to its final name."""
        f = self._open.get(model)
        if f is None or not self._write_pending(model, f):
            return
        del self._open[model]
        try:
            f.writer.close()
            f.sink.flush()
            os.fsync(f.sink.fileno())
            f.sink.close()
            if f.rows:
                os.rename(f.tmp, f.final)
                self._fsync_dir(f.final.parent)
                self._on_closed(model, f.rows)
            else:
                f.tmp.unlink(missing_ok=True)
        except (OSError, pa.ArrowException) as e:
            log.error("payload log: cannot finish %s: %s; its %d records are lost", f.final, e, f.rows)
            self._on_lost(model, f.rows)
            _discard(f)

    def close_all(self) -> None:
        for model in list(self._open):
            self.close(model)

    def enforce_retention(self, now: float | None = None) -> int:
        """Deletes complete files older than ``retain_s``, then the oldest while the total is over
        ``retain_bytes``; returns how many were deleted."""
        now = time.time() if now is None else now
        try:
            stats = [(p, p.stat()) for p in completed_files(self.log_dir)]
        except OSError:
            return 0
        stats.sort(key=lambda ps: (ps[1].st_mtime, ps[0].name))
        total = sum(s.st_size for _, s in stats)
        deleted = 0
        for p, s in stats:
            if now - s.st_mtime <= self.retain_s and total <= self.retain_bytes:
                break
            try:
                p.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("payload log: cannot delete %s: %s", p, e)
                continue
            total -= s.st_size
        return deleted

    def _create(self, model: str, schema: pa.Schema) -> OpenFile | None:
        now = time.time()
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        name = f"{stamp}-{os.getpid()}-{self._seq:06d}"
        folder = self.log_dir / model
        tmp, final = folder / f".{name}{TMP_SUFFIX}", folder / f"{name}{SUFFIX}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            sink = pa.OSFile(str(tmp), "wb")
            writer = pq.ParquetWriter(sink, schema, **writer_options(schema))
        except OSError as e:
            log.error("payload log: cannot create %s: %s", tmp, e)
            return None
        f = OpenFile(tmp, final, sink, writer, schema, now)
        self._open[model] = f
        return f

    def _write_pending(self, model: str, f: OpenFile) -> bool:
        """Writes the pending rows of ``model``'s open file ``f`` as a row group; False when that
        failed and the file was given up.

        A write that fails (a full disk) leaves the file without a footer and pyarrow's writer closed
        (each later write: ArrowInvalid "Operation on closed file"; its close: no error, no footer),
        so the file is given up whole: removed, its rows and the pending ones counted lost. Finished
        and renamed, it would be a ``.parquet`` file that no reader opens (and a query over the
        folder fails on it)."""
        if not f.pending:
            return True
        table = pa.concat_tables(f.pending) if len(f.pending) > 1 else f.pending[0]
        f.pending, f.pending_rows, f.pending_bytes = [], 0, 0
        try:
            f.writer.write_table(table)
        except (OSError, pa.ArrowException) as e:
            lost = f.rows + table.num_rows
            log.error("payload log: cannot write %s: %s; the file is given up, %d records lost",
                      f.tmp, e, lost)
            self._open.pop(model, None)
            _discard(f)
            self._on_lost(model, lost)
            return False
        f.rows += table.num_rows
        return True

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        # The rename itself must reach the disk too, or a power cut could forget the file.
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _discard(f: OpenFile) -> None:
    """Closes what is left of a file given up and removes it (its errors, a full disk's, ignored)."""
    for close in (f.writer.close, f.sink.close):
        try:
            close()
        except (OSError, pa.ArrowException):
            pass
    try:
        f.tmp.unlink(missing_ok=True)
    except OSError as e:  # a folder made read-only meanwhile: the next server removes it (an orphan)
        log.warning("payload log: cannot remove %s: %s", f.tmp, e)


def _alive(pid: int) -> bool:
    # Our own pid at start-up is a previous server's (a container's pid 1 is the same every run).
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
