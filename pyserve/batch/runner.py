"""The batch job: chunks of the input through the model's own queue in the core, to the output and
errors files.

Three things overlap, so that the model's instances never wait for files:

- a reader thread reads the next chunk and converts it into tensors (:mod:`pyserve.batch.mapping`);
- the event loop cuts the current chunk into requests of ``max_batch_size`` rows and keeps
  ``in_flight`` of them (default: twice the model's ``instance_count``) queued in the core, which
  batches and runs them on the instances' threads as it does a server's requests
  (:meth:`~pyserve.service.InferenceService.submit`, the same path as every transport's);
- a writer thread writes the previous chunk's output and error rows.

Memory holds at most four chunks (the one being read, two being scored: the next chunk's requests
queue behind the current one's last, so that no instance waits at a chunk's end; the one being
written) and ``in_flight`` batches in the core, whatever the input's size: about ``4 x chunk_rows x``
(a row's input bytes + output bytes), plus, for Parquet, one row group of the input being read
(docs/batch.md: the bound, measured).

A request the model refuses (INVALID_ARGUMENT) or fails on (INTERNAL) is run again in halves until
the rows at fault are alone, so one bad row fails alone and the others of its request are answered.
Every input row ends in exactly one of the two files: input rows = output rows + error rows,
checked for every chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pyserve.batch.mapping import InputMapping, Tensors
from pyserve.batch.progress import Progress
from pyserve.batch.reader import Chunk, InputReader
from pyserve.batch.writer import OutputColumns, TableWriter, out_shape, output_format
from pyserve.datatypes import numpy_dtype
from pyserve.errors import ErrorKind, PyserveError, internal, invalid
from pyserve.protocol import InferRequest
from pyserve.runtime import ModelRunner
from pyserve.service import InferenceService
from pyserve.service.context import CallContext

# Rows per request of a model that does not batch (max_batch_size 0) but takes rows along a first
# dimension of -1.
UNBATCHED_REQUEST_ROWS = 32
# Error kinds that say something of the rows of a request (bisected to find them); others (a full
# queue, a timeout, a shutdown) fail the request's rows as they are.
ROW_KINDS = (ErrorKind.INVALID_ARGUMENT, ErrorKind.INTERNAL)


@dataclass(frozen=True)
class BatchOptions:
    """What a batch job reads and writes, and how.

    ``chunk_rows``: rows read, converted and written at a time (memory: see the module's docstring);
    ``in_flight``: requests queued in the core at once (0: twice the model's instance count);
    ``maps``: input -> columns (:func:`pyserve.batch.mapping.parse_maps`); ``keys``: the key columns
    (None: the columns no input takes); ``nan``: "error" or "allow"; ``split_outputs``: one column
    per output element (always for a CSV output)."""

    input: Path
    output: Path
    errors: Path
    maps: dict[str, str] = field(default_factory=dict)
    keys: list[str] | None = None
    chunk_rows: int = 16384
    in_flight: int = 0
    nan: str = "error"
    split_outputs: bool = False


@dataclass
class BatchSummary:
    """What a job did: rows read, written to the output, written to the errors file; seconds."""

    input_rows: int = 0
    output_rows: int = 0
    error_rows: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The summary line the command prints."""
        rate = self.input_rows / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.input_rows} input rows = {self.output_rows} output rows + {self.error_rows} error rows "
                f"({self.seconds:.1f} s, {rate:,.0f} rows/s)")


def _kind(t: pa.DataType) -> str:
    return "structs" if pa.types.is_struct(t) else "maps" if pa.types.is_map(t) else "lists"


def default_errors_path(output: Path) -> Path:
    """The errors file beside ``output``: ``scores.parquet`` -> ``scores.errors.parquet``."""
    return output.with_name(f"{output.stem}.errors{output.suffix}")


async def run_batch(service: InferenceService, runner: ModelRunner, options: BatchOptions,
                    progress: Progress | None = None) -> BatchSummary:
    """Scores every row of ``options.input`` with ``runner`` (a version of a model of ``service``'s
    host) into ``options.output`` and ``options.errors``. Raises INVALID_ARGUMENT for inputs that
    cannot be mapped or files that cannot be read or written (naming the flag and file)."""
    start_s = time.monotonic()
    config = runner.config
    output_format(options.output, "--output")
    output_format(options.errors, "--errors")
    reader = InputReader(options.input, options.chunk_rows)
    mapping = InputMapping(config, reader.schema, options.maps, options.keys)
    keys = pa.schema([reader.schema.field(k) for k in mapping.keys])
    split = options.split_outputs or output_format(options.output, "--output") == "csv"
    for flag, path in (("--output", options.output), ("--errors", options.errors)):
        nested = [f for f in keys if pa.types.is_nested(f.type)]  # lists, structs, maps
        if nested and output_format(path, flag) == "csv":  # --split-outputs splits outputs, not key columns
            raise invalid(f"{flag} {path}: key column {nested[0].name!r} holds {_kind(nested[0].type)} "
                          f"({nested[0].type}), which CSV cannot; write .parquet or .jsonl, or choose other key "
                          "columns with --key")
    columns = OutputColumns(config, keys, split)
    if progress is None:
        progress = Progress(reader.total, "rows" if reader.total_is_rows else "bytes", enabled=False)
    in_flight = options.in_flight or 2 * max(config.instance_count, 1)
    if config.dynamic_batching.max_queue_size > 0:  # more would be refused (UNAVAILABLE) as a full queue
        in_flight = min(in_flight, config.dynamic_batching.max_queue_size)
    scorer = _Scorer(service, runner, config.max_batch_size or UNBATCHED_REQUEST_ROWS, in_flight)
    text = mapping.columns if reader.format == "csv" else frozenset()
    chunks = reader.chunks(text)
    summary = BatchSummary()

    def prepare() -> tuple[Chunk, Tensors] | None:
        chunk = next(chunks, None)
        return None if chunk is None else (chunk, mapping.tensors(chunk.batch, chunk.failed, options.nan))

    loop = asyncio.get_running_loop()
    progress.restart()
    with (ThreadPoolExecutor(1, "pyserve-batch-read") as read_pool,
          ThreadPoolExecutor(1, "pyserve-batch-write") as write_pool,
          TableWriter(options.output, columns.schema, "--output") as out,
          TableWriter(options.errors, columns.error_schema, "--errors") as errors):
        def write(chunk: Chunk, ok_rows: np.ndarray, outputs: dict[str, np.ndarray], failed: dict[int, str]) -> None:
            out.write(columns.batch(chunk.start + ok_rows, chunk.batch.take(pa.array(ok_rows)), outputs))
            bad = np.array(sorted(failed), dtype=np.int64)
            errors.write(columns.errors(chunk.start + bad, chunk.batch.take(pa.array(bad)),
                                        [failed[int(i)] for i in bad]))

        async def finish(chunk: Chunk, tensors: Tensors, scoring: asyncio.Task) -> None:
            nonlocal writing
            ok, outputs, model_failed = await scoring
            failed = dict(tensors.failed)
            failed.update((int(tensors.rows[i]), m) for i, m in model_failed.items())
            ok_rows = tensors.rows[ok]
            if len(ok_rows) + len(failed) != chunk.batch.num_rows:
                raise internal(f"rows {chunk.start}..{chunk.start + chunk.batch.num_rows}: {len(ok_rows)} "
                               f"answered + {len(failed)} failed != {chunk.batch.num_rows} read")
            if writing is not None:
                await writing
            writing = loop.run_in_executor(write_pool, write, chunk, ok_rows, outputs, failed)
            summary.input_rows += chunk.batch.num_rows
            summary.output_rows += len(ok_rows)
            summary.error_rows += len(failed)
            progress.update(chunk.position, summary.input_rows)

        reading = loop.run_in_executor(read_pool, prepare)
        writing: asyncio.Future | None = None
        # Two chunks are scored at once: the next chunk's requests queue behind the last ones of the
        # current chunk, so the instances never wait for a chunk's end.
        scoring: deque[tuple[Chunk, Tensors, asyncio.Task]] = deque()
        try:
            while (item := await reading) is not None:
                reading = loop.run_in_executor(read_pool, prepare)
                scoring.append((*item, asyncio.ensure_future(scorer.score(item[1]))))
                if len(scoring) == 2:
                    await finish(*scoring.popleft())
            while scoring:
                await finish(*scoring.popleft())
            if writing is not None:
                await writing
        except BaseException:
            # The writer thread must be done with the files before they are closed and deleted.
            if writing is not None:
                await asyncio.gather(writing, return_exceptions=True)
            raise
        finally:
            for *_, task in scoring:
                task.cancel()
        progress.update(reader.total, summary.input_rows, final=True)
        assert out.rows == summary.output_rows and errors.rows == summary.error_rows  # noqa: S101
    summary.seconds = time.monotonic() - start_s
    return summary


class _Scorer:
    """Runs a chunk's tensors as requests of ``request_rows`` rows, ``in_flight`` at a time."""

    def __init__(self, service: InferenceService, runner: ModelRunner, request_rows: int, in_flight: int) -> None:
        self.service = service
        self.runner = runner
        self.request_rows = request_rows
        self.slots = asyncio.Semaphore(in_flight)

    async def score(self, tensors: Tensors) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, str]]:
        """(ok: bool [n] per converted row, outputs name -> [ok rows, ...] in row order, failed:
        index into ``tensors.rows`` -> message)."""
        n = len(tensors.rows)
        pieces: dict[int, dict[str, np.ndarray]] = {}
        failed: dict[int, str] = {}
        step = self.request_rows
        await asyncio.gather(*(self._run(tensors.inputs, lo, min(lo + step, n), pieces, failed)
                               for lo in range(0, n, step)))
        ok = np.ones(n, dtype=bool)
        ok[list(failed)] = False
        names = [o.name for o in self.runner.config.outputs]
        parts = [pieces[lo] for lo in sorted(pieces)]
        try:
            outputs = {k: np.concatenate([p[k] for p in parts]) if parts else _empty(self.runner, k) for k in names}
        except ValueError as e:
            raise invalid(f"model '{self.runner.config.name}': an output's shape varies from batch to batch "
                          f"({e}); a batch job writes outputs of one shape per row") from None
        return ok, outputs, failed

    async def _run(self, inputs: dict[str, np.ndarray], lo: int, hi: int,
                   pieces: dict[int, dict[str, np.ndarray]], failed: dict[int, str]) -> None:
        request = InferRequest({k: v[lo:hi] for k, v in inputs.items()})
        ctx = CallContext("batch")
        async with self.slots:
            try:
                future = self.service.submit(self.runner, request, ctx)
                try:
                    await future
                except PyserveError:
                    pass  # complete() raises it
                pieces[lo] = self.service.complete(self.runner, request, ctx, future).outputs
                return
            except PyserveError as e:
                self.service.failed(self.runner.config.name, e, ctx, self.runner, request)
                error = e
        if hi - lo == 1 or error.kind not in ROW_KINDS:
            for i in range(lo, hi):
                failed[i] = f"model '{self.runner.config.name}' version {self.runner.version}: {error.message}"
            return
        mid = (lo + hi) // 2
        await asyncio.gather(self._run(inputs, lo, mid, pieces, failed), self._run(inputs, mid, hi, pieces, failed))


def _empty(runner: ModelRunner, name: str) -> np.ndarray:
    """Output ``name`` of no rows (a chunk whose rows all failed)."""
    spec = runner.output_specs[name]
    return np.empty((0, *(max(d, 0) for d in out_shape(runner.config, spec.shape))), numpy_dtype(spec.datatype))
