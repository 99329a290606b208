"""Reading the payload log: filters over its complete Parquet files through DuckDB.

Used by ``pyserve logs`` and ``GET /v2/logs``. Only complete files are read (files being written have
a temporary name), so records appear once their file is closed: within ``--payload-log-rotate-s``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyserve.errors import invalid
from pyserve.repository.sources import check_model_name

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
        return now - datetime.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise invalid(f"{what}: expected an ISO 8601 time (2026-11-30T14:00:00Z) or a span before now "
                      f"(30s, 15m, 2h, 7d), got {text!r}") from None
    return when.replace(tzinfo=datetime.UTC) if when.tzinfo is None else when.astimezone(datetime.UTC)


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


def connect(log_dir: Path, model: str | None = None) -> Any:
    """A DuckDB connection with the view ``logs`` over the complete files (of ``model``); a log
    without files gives an empty ``logs`` with the fixed columns."""
    duckdb = require_duckdb()
    con = duckdb.connect()
    from pyserve.payload_log.files import completed_files  # pyarrow: only `pyserve logs` needs it

    files = [str(p) for p in completed_files(Path(log_dir), model)] if Path(log_dir).is_dir() else []
    if files:
        con.read_parquet(files, union_by_name=True).create_view("logs")
    else:
        from pyserve.payload_log.table import BASE_FIELDS

        import pyarrow as pa

        empty = pa.schema([*BASE_FIELDS, pa.field("other_tensors", pa.string())]).empty_table()
        con.register("logs_empty", empty)
        con.execute("CREATE VIEW logs AS SELECT * FROM logs_empty")
    return con


def select(log_dir: Path, query: LogQuery) -> Any:
    """The records matching ``query``, newest first, as a pyarrow Table."""
    con = connect(log_dir, query.model)
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
    return _arrow(con.sql(sql, params=params))


def _arrow(relation: Any) -> Any:
    """A DuckDB relation as a pyarrow Table (``to_arrow_table`` in DuckDB 2, ``arrow`` before); a
    statement that returns nothing gives an empty table."""
    import pyarrow as pa

    if relation is None:
        return pa.table({})
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def sql(log_dir: Path, statement: str) -> Any:
    """The result of one SQL statement of the user's over the view ``logs`` (every complete file), as
    a pyarrow Table."""
    con = connect(log_dir)
    try:
        return _arrow(con.sql(statement))
    except Exception as e:  # duckdb's errors: the user's SQL is wrong
        raise invalid(f"--sql: {e}") from None


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
