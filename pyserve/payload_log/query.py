"""Reading the payload log: filters over its complete Parquet files through DuckDB.

Used by ``pyserve logs`` and ``GET /v2/logs``. Only complete files are read (files being written have
a temporary name), so records appear once their file is closed: within ``--payload-log-rotate-s``.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyserve.errors import invalid
from pyserve.repository.sources import check_model_name

log = logging.getLogger("pyserve.payload_log")

OUTCOMES = ("success", "failure", "timeout", "rejected", "cancelled")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def require_duckdb() -> Any:
    """The duckdb module; ImportError saying what to install when it is missing."""
    try:
        import duckdb
    except ImportError as e:
        raise ImportError("querying the payload log needs duckdb, which is not installed: "
                          "pip install 'pyserve[log]'") from e
    return duckdb


def parse_time(text: str, what: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """A point in time, UTC: ISO 8601 (``2026-11-30T14:00:00Z``; no zone means UTC) or a span before
    ``now`` (``90s``, ``15m``, ``2h``, ``7d``). INVALID_ARGUMENT naming ``what`` otherwise."""
    text = text.strip()
    now = now or datetime.datetime.now(datetime.UTC)
    match = _RELATIVE.match(text)
    if match:
        try:
            return now - datetime.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
        except OverflowError:  # before year 1, or too many days for a timedelta
            max_days = (now - datetime.datetime.min.replace(tzinfo=datetime.UTC)).days
            raise invalid(f"{what}: {text!r} reaches back before the year 1; a span before now is at most "
                          f"{max_days}d") from None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise invalid(f"{what}: expected an ISO 8601 time (2026-11-30T14:00:00Z) or a span before now "
                      f"(30s, 15m, 2h, 7d), got {text!r}") from None
    try:
        return when.replace(tzinfo=datetime.UTC) if when.tzinfo is None else when.astimezone(datetime.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the year 1 in UTC
        raise invalid(f"{what}: {text!r} is outside the years 1 to 9999 in UTC") from None


@dataclass(frozen=True)
class LogQuery:
    """Filters of the log: each None matches everything; ``limit`` newest records first."""

    model: str | None = None
    version: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    outcome: str | None = None
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if self.model is not None:
            check_model_name(self.model)  # it names a folder of the log: no '..', no '/'
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise invalid(f"outcome: expected one of {', '.join(OUTCOMES)}, got {self.outcome!r}")
        if type(self.limit) is not int or not 1 <= self.limit <= MAX_LIMIT:
            raise invalid(f"limit: expected an integer from 1 to {MAX_LIMIT}, got {self.limit!r}")


# Whether each file of a log is readable, by path: (size, mtime_ns) when checked, and why not (None:
# readable). A file is checked again only once its size or time changed; entries of files gone from
# a folder are dropped when that folder is listed again.
_checked: dict[Path, tuple[tuple[int, int], str | None]] = {}
_checked_lock = threading.Lock()


def _why_unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a payload log file (None: it can): its Parquet footer and
    schema only, a few KB read whatever the file's size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_metadata(path).schema.to_arrow_schema()
    except (OSError, pa.ArrowException, ValueError) as e:
        return f"not a readable Parquet file: {e}"
    index = schema.get_field_index("time")
    if index < 0 or not pa.types.is_timestamp(schema.field(index).type):
        return "not a payload log file: it has no timestamp column 'time'"
    return None


def readable_files(files: list[Path], warn: Callable[[str], None] | None = None) -> list[Path]:
    """``files`` without those that cannot be read (a corrupt or foreign file in the log folder),
    each skipped one named through ``warn`` (default: a logged warning) the first time it is seen
    as it is; a file that vanished meanwhile (retention) is left out silently."""
    warn = warn or (lambda message: log.warning("payload log: %s", message))
    good: list[Path] = []
    seen: dict[Path, tuple[tuple[int, int], str | None]] = {}
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            continue
        key = (st.st_size, st.st_mtime_ns)
        with _checked_lock:
            cached = _checked.get(path)
        if cached is not None and cached[0] == key:
            reason = cached[1]
        else:
            reason = _why_unreadable(path)
            if reason is not None:
                warn(f"skipping {path}: {reason}")
        seen[path] = (key, reason)
        if reason is None:
            good.append(path)
    folders = {p.parent for p in files}
    with _checked_lock:
        for path in [p for p in _checked if p.parent in folders and p not in seen]:
            del _checked[path]
        _checked.update(seen)
    return good


def _connect(log_dir: Path, model: str | None, warn: Callable[[str], None] | None) -> tuple[Any, list[Path]]:
    """A DuckDB connection with the view ``logs`` over the complete, readable files (of ``model``;
    each unreadable one skipped and named through ``warn``, see :func:`readable_files`), and those
    files; a log without such files gives an empty ``logs`` with the fixed columns."""
    duckdb = require_duckdb()
    con = duckdb.connect()
    from pyserve.payload_log.files import completed_files  # pyarrow: only `pyserve logs` needs it

    listed = completed_files(Path(log_dir), model) if Path(log_dir).is_dir() else []
    files = readable_files(listed, warn)
    if files:
        con.read_parquet([str(p) for p in files], union_by_name=True).create_view("logs")
    else:
        from pyserve.payload_log.table import BASE_FIELDS

        import pyarrow as pa

        empty = pa.schema([*BASE_FIELDS, pa.field("other_tensors", pa.string())]).empty_table()
        con.register("logs_empty", empty)
        con.execute("CREATE VIEW logs AS SELECT * FROM logs_empty")
    return con, files


def _why_damaged(path: Path) -> str | None:
    """Why the data of ``path`` cannot be read (None: it can, or it vanished): every page decoded,
    so a file whose footer reads well but whose pages are damaged (a disk fault, a copy cut short and
    patched) is told apart from a wrong query. The whole file is read: only on a failed query."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).read()
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException, ValueError) as e:
        return f"its data cannot be read: {e}"
    return None


def _forget_damaged(files: list[Path], warn: Callable[[str], None] | None) -> bool:
    """Marks each of ``files`` whose data is damaged as unreadable (so :func:`readable_files` skips it
    from now on, until the file changes), naming it through ``warn``; True when one was."""
    warn = warn or (lambda message: log.warning("payload log: %s", message))
    found = False
    for path in files:
        reason = _why_damaged(path)
        if reason is None:
            continue
        found = True
        warn(f"skipping {path}: {reason}")
        try:
            st = os.stat(path)
        except OSError:
            continue
        with _checked_lock:
            _checked[path] = ((st.st_size, st.st_mtime_ns), reason)
    return found


def _query(log_dir: Path, model: str | None, warn: Callable[[str], None] | None,
           run: Callable[[Any], Any], on_error: Callable[[Exception], Exception] | None = None) -> Any:
    """``run(connection)`` over the readable files; when DuckDB fails and some file's data turns out
    damaged, that file is skipped (named through ``warn``) and the query run again without it.
    Any other failure is raised as ``on_error(error)`` (or as it is)."""
    duckdb = require_duckdb()
    while True:
        con, files = _connect(log_dir, model, warn)
        try:
            return run(con)
        except duckdb.Error as e:
            # Each round skips at least one file, so this ends.
            if not _forget_damaged(files, warn):
                if on_error is None:
                    raise
                raise on_error(e) from None


def select(log_dir: Path, query: LogQuery, warn: Callable[[str], None] | None = None) -> Any:
    """The records matching ``query``, newest first, as a pyarrow Table (unreadable files skipped,
    named through ``warn``)."""
    where, params = [], {}
    for key in ("model", "version", "outcome"):
        value = getattr(query, key)
        if value is not None:
            where.append(f"{key} = ${key}")
            params[key] = value
    if query.since is not None:
        where.append("time >= $since")
        params["since"] = query.since
    if query.until is not None:
        where.append("time < $until")
        params["until"] = query.until
    sql = "SELECT * FROM logs" + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY time DESC LIMIT {query.limit}"
    return _query(log_dir, query.model, warn, lambda con: _arrow(con.sql(sql, params=params)))


def _arrow(relation: Any) -> Any:
    """A DuckDB relation as a pyarrow Table (``to_arrow_table`` in DuckDB 2, ``arrow`` before); a
    statement that returns nothing gives an empty table."""
    import pyarrow as pa

    if relation is None:
        return pa.table({})
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def sql(log_dir: Path, statement: str, warn: Callable[[str], None] | None = None) -> Any:
    """The result of one SQL statement of the user's over the view ``logs`` (every complete, readable
    file), as a pyarrow Table. INVALID_ARGUMENT with DuckDB's message when the statement fails on
    sound files."""
    return _query(log_dir, None, warn, lambda con: _arrow(con.sql(statement)),
                  lambda e: invalid(f"--sql: {e}"))


def plain_value(value: Any) -> Any:
    """A value of a record as JSON: structs without their null fields (tensors not in the record)."""
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    return value


def _float32_as_shown(type_: Any) -> Any:
    """``type_`` with its float32 leaves as strings (None when it has none)."""
    import pyarrow as pa

    if pa.types.is_float32(type_):
        return pa.string()
    if pa.types.is_list(type_):
        inner = _float32_as_shown(type_.value_type)
        return None if inner is None else pa.list_(inner)
    if pa.types.is_struct(type_):
        fields = [(f, _float32_as_shown(f.type)) for f in type_]
        if all(t is None for _, t in fields):
            return None
        return pa.struct([f.with_type(t) if t is not None else f for f, t in fields])
    return None


def _string_as_float(type_: Any, shown: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_float32(type_):
        return pa.float64()
    if pa.types.is_list(type_):
        return pa.list_(_string_as_float(type_.value_type, shown.value_type))
    if pa.types.is_struct(type_):
        return pa.struct([f.with_type(_string_as_float(f.type, s.type)) for f, s in zip(type_, shown)])
    return shown


def shortest_floats(table: Any) -> Any:
    """``table`` with float32 values widened to the float64 of their shortest decimal form, so that
    0.1 written as FP32 reads 0.1, not 0.10000000149011612 (through Arrow's float -> string cast)."""
    for i, field in enumerate(table.schema):
        shown = _float32_as_shown(field.type)
        if shown is not None:
            column = table.column(i).cast(shown).cast(_string_as_float(field.type, shown))
            table = table.set_column(i, field.with_type(column.type), column)
    return table


def records(table: Any) -> list[dict]:
    """The rows of a result as JSON-ready dicts (times in ISO 8601, UTC; ``other_tensors`` parsed;
    FP32 values as their shortest decimal form)."""
    import orjson

    out = []
    for row in shortest_floats(table).to_pylist():
        row = {k: plain_value(v) for k, v in row.items()}
        other = row.get("other_tensors")
        if isinstance(other, str):
            row["other_tensors"] = orjson.loads(other)
        out.append(row)
    return out
