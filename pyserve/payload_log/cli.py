"""``pyserve logs``: the records of a payload log folder, filtered or through SQL, as a table or a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from pyserve.errors import invalid
from pyserve.payload_log import query as q

FORMATS = ("table", "csv", "json", "parquet")
# Columns of the table view (the others: --format json / csv / parquet, or --sql).
TABLE_COLUMNS = ("time", "model", "version", "request_id", "protocol", "outcome", "status", "duration_us",
                 "inputs", "outputs", "error")
MAX_CELL = 48


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``pyserve logs``."""
    p.add_argument("log_dir", type=Path, metavar="DIR", help="the payload log folder (serve's --payload-log-dir)")
    p.add_argument("--model", default=None, help="only this model's records")
    p.add_argument("--version", dest="model_version", default=None, metavar="V",
                   help="only this model version's records")
    p.add_argument("--since", default=None, metavar="TIME",
                   help="from this time: ISO 8601 (2026-11-30T14:00:00Z; UTC when no zone) or a span "
                        "before now (30s, 15m, 2h, 7d)")
    p.add_argument("--until", default=None, metavar="TIME", help="before this time (as --since)")
    p.add_argument("--outcome", choices=q.OUTCOMES, default=None, help="only records of this outcome")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help=f"newest N records, 1..{q.MAX_LIMIT} (default 20)")
    p.add_argument("--sql", default=None, metavar="QUERY",
                   help="run this DuckDB SQL instead of the filters; the view 'logs' holds every record, "
                        "e.g. \"SELECT model, outcome, count(*) FROM logs GROUP BY ALL\"")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default, on stdout), csv, json (one object per line) or parquet")
    p.add_argument("--output", "-o", type=Path, default=None, metavar="FILE",
                   help="write to FILE instead of stdout (needed for parquet)")


def _warn(message: str) -> None:
    print(f"pyserve logs: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Runs ``pyserve logs``; its exit status (PyserveError for bad arguments). A file of the log that
    cannot be read is skipped with a warning on stderr."""
    if not args.log_dir.is_dir():
        raise invalid(f"{args.log_dir}: no such payload log folder")
    if args.format == "parquet" and args.output is None:
        raise invalid("--format parquet: give the file to write with --output FILE")
    if args.sql is not None:
        given = [f"--{k.replace('model_version', 'version')}" for k in ("model", "model_version", "since", "until",
                                                                         "outcome") if getattr(args, k) is not None]
        if given:
            raise invalid(f"--sql: {', '.join(given)} only filter without --sql; put them in the query's WHERE")
        try:
            table = q.sql(args.log_dir, args.sql, _warn)
        except ImportError as e:
            raise invalid(str(e)) from None
    else:
        if not 1 <= args.limit <= q.MAX_LIMIT:
            raise invalid(f"--limit: expected an integer from 1 to {q.MAX_LIMIT}, got {args.limit}")
        query = q.LogQuery(args.model, args.model_version,
                           q.parse_time(args.since, "--since") if args.since else None,
                           q.parse_time(args.until, "--until") if args.until else None,
                           args.outcome, args.limit)
        try:
            table = q.select(args.log_dir, query, _warn)
        except ImportError as e:
            raise invalid(str(e)) from None
    try:
        _write(table, args.format, args.output, every_column=args.sql is not None)
    except OSError as e:  # a folder that does not exist, no permission, a full disk
        raise invalid(f"--output {args.output}: cannot write: {e.strerror or e}") from None
    return 0


def _write(table: Any, fmt: str, output: Path | None, every_column: bool = False) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    if fmt == "csv":
        text = _csv(table)
    elif fmt == "json":
        text = "".join(orjson.dumps(r).decode() + "\n" for r in q.records(table))
    else:
        text = format_table(table, every_column)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


def _cell(value: Any) -> str:
    """A value as text: tensors and structs as JSON, without the tensors a record does not have."""
    plain = q.plain_value(value)
    text = plain if isinstance(plain, str) else "" if plain is None else orjson.dumps(plain).decode()
    return text


def _csv(table: Any) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.column_names)
    for row in q.shortest_floats(table).to_pylist():
        writer.writerow([_cell(v) for v in row.values()])
    return out.getvalue()


def format_table(table: Any, every_column: bool = False) -> str:
    """The rows as a text table, with the row count: the main columns of a record (every column of
    a ``--sql`` result), cells cut to :data:`MAX_CELL` characters."""
    names = list(table.column_names) if every_column else [c for c in TABLE_COLUMNS if c in table.column_names]
    rows = [[_cell(row.get(c)) for c in names] for row in q.shortest_floats(table).to_pylist()]
    limit = MAX_CELL
    widths = [max([len(n)] + [min(len(r[i]), limit) for r in rows]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        return "  ".join((c if len(c) <= limit else c[:limit - 3] + "...").ljust(w)
                         for c, w in zip(cells, widths)).rstrip()

    lines = [line(names)] + [line(r) for r in rows]
    noun = "row" if every_column else "record"  # a --sql result's rows need not be records
    lines.append(f"({len(rows)} {noun}{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"
