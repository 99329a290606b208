"""``pyserve batch``: score a file of rows offline with a model folder, repository model, ONNX file or
artifact, through the same core as ``pyserve serve`` (docs/batch.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pyserve.errors import invalid

# Exit status of a job that finished with failed rows under --fail-on-error.
EXIT_ROWS_FAILED = 1


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``pyserve batch``."""
    from pyserve.cli import positive_number

    p.add_argument("model", type=Path, metavar="MODEL_OR_ARTIFACT",
                   help="a model folder (config.toml, version folders), a repository folder (with "
                        "--model-name), an .onnx file, or an artifact file (pyserve package)")
    p.add_argument("--input", "-i", type=Path, required=True, metavar="FILE",
                   help="rows to score: .parquet, .csv, .tsv, .jsonl, .npy or .npz")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="FILE",
                   help="where the outputs go, with row_index and the key columns: .parquet, .csv or .jsonl")
    p.add_argument("--errors", type=Path, default=None, metavar="FILE",
                   help="where failed rows go (row_index, key columns, error); always written "
                        "(default: OUTPUT's name with .errors before its extension)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model of a repository folder (or the name of an .onnx file's model)")
    p.add_argument("--model-version", default=None, metavar="V",
                   help="a version number or alias of the model's traffic policy (default: the newest)")
    p.add_argument("--public-key", type=Path, default=None, metavar="FILE",
                   help="the public key that checks a signed artifact's signature")
    p.add_argument("--lock-policy", choices=("warn", "refuse"), default="refuse",
                   help="an artifact whose dependency lock differs from this environment is refused "
                        "(default) or only logged")
    p.add_argument("--columns", action="append", default=[], metavar="INPUT=COLUMNS",
                   help="the column(s) of a model input when not its own name: one column, C1,C2,... "
                        "stacked into a 1-D input, or a shell pattern such as 'f*' (repeatable)")
    p.add_argument("--key", action="append", default=None, metavar="COLUMN",
                   help="a column copied to the output and errors rows to join them back (repeatable; "
                        "default: every column no input takes)")
    p.add_argument("--split-outputs", action="store_true",
                   help="one column per element of an output (NAME_0, NAME_1, ...) instead of a list "
                        "column (always for a .csv output)")
    p.add_argument("--nan", choices=("error", "allow"), default="error",
                   help="a NaN in a floating-point input fails its row (error, default) or goes to the model")
    p.add_argument("--chunk-rows", type=_positive, default=16384, metavar="N",
                   help="rows read, converted and written at a time; memory holds about 4 chunks "
                        "(default 16384)")
    p.add_argument("--in-flight", type=_positive, default=None, metavar="N",
                   help="requests of max_batch_size rows queued in the core at once (default: twice the "
                        "model's instance_count, so that no instance waits)")
    p.add_argument("--fail-on-error", action="store_true",
                   help="exit with status 1 when a row failed (default: 0, the counts in the summary)")
    p.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="a bar redrawn in place (bar), a line every --progress-interval-s (lines), or "
                        "nothing; auto: bar on a terminal, lines otherwise")
    p.add_argument("--progress-interval-s", type=positive_number, default=10.0, metavar="S",
                   help="seconds between progress lines, > 0 (default 10)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="warning",
                   help="the log level (default warning: the loading of the model is not told)")


def run(args: argparse.Namespace) -> int:
    """Runs ``pyserve batch``; its exit status (PyserveError for bad arguments, files or models)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise invalid("pyserve batch needs pyarrow: pip install 'pyserve[batch]'") from None
    from pyserve.batch.mapping import parse_maps
    from pyserve.batch.model import open_model
    from pyserve.batch.progress import Progress
    from pyserve.batch.reader import InputReader
    from pyserve.batch.runner import BatchOptions, default_errors_path, run_batch

    errors = args.errors or default_errors_path(args.output)
    options = BatchOptions(input=args.input, output=args.output, errors=errors, maps=parse_maps(args.columns),
                           keys=args.key, chunk_rows=args.chunk_rows, in_flight=args.in_flight or 0,
                           nan=args.nan, split_outputs=args.split_outputs)
    if args.output.resolve() == errors.resolve() or args.input.resolve() in (args.output.resolve(), errors.resolve()):
        raise invalid("--input, --output and --errors must be three different files")
    reader = InputReader(args.input, args.chunk_rows)  # a bad input is refused before the model loads
    tty = {"auto": None, "bar": True, "lines": False, "none": None}[args.progress]
    progress = Progress(reader.total, "rows" if reader.total_is_rows else "bytes", tty=tty,
                        interval_s=args.progress_interval_s, enabled=args.progress != "none")

    async def job() -> object:
        async with open_model(args.model, args.model_name, args.model_version, args.public_key,
                              args.lock_policy) as (service, runner):
            return await run_batch(service, runner, options, progress)

    summary = asyncio.run(job())
    print(f"pyserve batch: {summary.line()}; outputs in {args.output}, failed rows in {errors}")
    return EXIT_ROWS_FAILED if args.fail_on_error and summary.error_rows else 0
