"""The payload log: the inputs, outputs and errors of each model's calls, kept in Parquet files and
optionally posted as CloudEvents (docs/payload-log.md).

:class:`PayloadLog` is a set of service hooks (:class:`~pyserve.service.hooks.InferHooks`), so it sees
every call whatever protocol carried it. On the event loop's thread a hook only decides whether the
call is logged (the model's ``[payload_log]``: on, sample rate, failures) and appends the fields of
a :class:`~pyserve.payload_log.record.Capture` (references only) to a bounded queue; when the queue
is full the record is dropped and counted, and the call goes on untouched. A writer thread takes the queue
every ``flush_s`` seconds, selects and redacts the tensors, builds Arrow columns, appends them to the
model's open Parquet file and hands the records to the CloudEvents sink.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from pyserve.payload_log.failures import RecentFailures
from pyserve.payload_log.record import OK, Capture
from pyserve.payload_log.settings import PayloadLogSettings
from pyserve.service.hooks import InferHooks

if TYPE_CHECKING:
    from pyserve.config import ModelConfig
    from pyserve.errors import PyserveError
    from pyserve.payload_log.files import ParquetFiles
    from pyserve.payload_log.sink import CloudEventsSink
    from pyserve.protocol import InferRequest, InferResponse
    from pyserve.release.shadow import ShadowPair
    from pyserve.runtime import ModelRunner
    from pyserve.service.context import CallContext

__all__ = ["PayloadLog", "PayloadLogSettings", "require_pyarrow"]

log = logging.getLogger("pyserve.payload_log")

RETENTION_EVERY_S = 60.0  # how often retention runs besides after each rotation
RECENT_FAILURES = 100  # failed calls kept in memory for the dashboard (recent_failures)


def require_pyarrow() -> None:
    """Raises ImportError, saying what to install, when pyarrow (the payload log's files) is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ImportError("the payload log writes Parquet files with pyarrow, which is not installed: "
                          "pip install 'pyserve[log]'") from e


def _within(tensors: dict | None, limit: int) -> dict | None:
    """``tensors`` with each array over ``limit`` bytes replaced by a view of one zero broadcast to its
    shape: same datatype, shape and ``nbytes``, no memory held (the record then logs no values)."""
    if not tensors:
        return tensors
    for arr in tensors.values():
        if arr.nbytes > limit:
            return {n: np.broadcast_to(np.zeros((), a.dtype), a.shape) if a.nbytes > limit else a
                    for n, a in tensors.items()}
    return tensors


class PayloadLog(InferHooks):
    """The payload log of a server: hooks, the writer thread, the sink.

    ``model_config(name)`` gives the config of a model by name (None when unknown): a call refused
    before a model version was found (an unavailable version) still reaches the log of its model.
    ``registry``: where the metrics are registered (None: a private registry, for tests)."""

    def __init__(self, settings: PayloadLogSettings, model_config: Callable[[str], ModelConfig | None],
                 registry: CollectorRegistry | None = None) -> None:
        if settings.log_dir is not None:
            require_pyarrow()
        self.settings = settings
        self._model_config = model_config
        self._queue: collections.deque[tuple] = collections.deque()  # Capture fields, in order
        self._max = settings.queue_size
        self._random = random.random
        registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.records_total = Counter(
            "pyserve_payload_log_records", "Payload log records by result: written (in a complete file), "
            "dropped (the queue was full), lost (could not be written).", ["model", "result"], registry=registry)
        self._dropped = self.records_total.labels  # bound once: the drop path stays cheap
        queue_depth = Gauge("pyserve_payload_log_queue_depth", "Payload log records waiting for the writer thread.",
                            registry=registry)
        queue_depth.set_function(lambda: len(self._queue))
        self.sink_events_total = Counter(
            "pyserve_payload_log_sink_events", "CloudEvents of the payload log sink by result: delivered, "
            "failed (given up after the retries), dropped (the sink's queue was full).",
            ["model", "result"], registry=registry)
        self.sink_retries_total = Counter(
            "pyserve_payload_log_sink_retries", "Posts of the payload log sink retried after a failure.",
            ["model"], registry=registry)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyserve-payload-log", daemon=True)
        self._files: ParquetFiles | None = None
        self._sink: CloudEventsSink | None = None
        self._started = False
        self._flush_requests: collections.deque[threading.Event] = collections.deque()
        self._layouts: dict[tuple, object] = {}  # layout key -> Layout (few: one per model config)
        self._consumers: tuple[Callable[[list[Capture]], None], ...] = ()
        self._failures = RecentFailures(RECENT_FAILURES)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Opens the log folder and starts the writer thread (and the sink's)."""
        settings = self.settings
        if settings.log_dir is not None:
            from pyserve.payload_log.files import ParquetFiles

            self._files = ParquetFiles(settings.log_dir, settings.rotate_bytes, settings.rotate_s,
                                       settings.retain_bytes, settings.retain_s, on_closed=self._written,
                                       on_lost=self._lost)
            self._files.enforce_retention()
        if settings.sink_url is not None:
            from pyserve.payload_log.sink import CloudEventsSink

            self._sink = CloudEventsSink(settings, self.sink_events_total, self.sink_retries_total)
            self._sink.start()
        self._started = True
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes every queued record, closes (and so publishes) the open files, stops the sink after
        delivering what it can in its timeout. Blocking: call it off the event loop."""
        if not self._started:
            return
        self._stop.set()
        self._thread.join(timeout_s)
        if self._sink is not None:
            self._sink.close(self.settings.sink_timeout_s)

    def flush(self) -> None:
        """Blocks (up to 30 s) until what is queued now is written and every open file published."""
        done = threading.Event()
        self._flush_requests.append(done)
        done.wait(30)

    def add_consumer(self, consumer: Callable[[list[Capture]], None]) -> None:
        """Hands every batch of records the writer thread takes off the queue to ``consumer``, on the
        writer thread, before they are written (the drift monitor's feed). It must only queue what it
        needs (references) and return; an exception is logged and the records are still written."""
        self._consumers = (*self._consumers, consumer)

    def remove_consumer(self, consumer: Callable[[list[Capture]], None]) -> None:
        """Stops handing records to ``consumer``."""
        self._consumers = tuple(c for c in self._consumers if c != consumer)  # ==: bound methods are made anew

    def recent_failures(self, limit: int = RECENT_FAILURES) -> list[dict]:
        """The last failed calls the writer thread has taken (at most :data:`RECENT_FAILURES`),
        newest first, as short dicts (:class:`~pyserve.payload_log.failures.RecentFailures`). Any thread."""
        return self._failures.newest(limit)

    # -- hooks (event loop thread: references only) ------------------------------------------------
    def after_response(self, ctx: CallContext, runner: ModelRunner, request: InferRequest,
                       response: InferResponse) -> None:
        config = runner.config
        rate = config.payload_log.sample_rate
        if not config.payload_log.enabled or (rate < 1.0 and self._random() >= rate):
            return
        self._put(ctx, config, runner.version, OK, None, True, request.inputs, response.outputs)

    def on_error(self, ctx: CallContext | None, model_name: str, runner: ModelRunner | None,
                 request: InferRequest | None, error: PyserveError) -> None:
        config = runner.config if runner is not None else self._model_config(model_name)
        if config is None or not config.payload_log.enabled:
            return  # not a model of this server (names are not logged: they could be anything)
        rate = config.payload_log.sample_rate
        sampled = rate >= 1.0 or self._random() < rate
        if not (sampled or config.payload_log.failures):
            return
        self._put(ctx, config, runner.version if runner is not None else "", error.kind.name.lower(), error.message,
                  sampled, request.inputs if request is not None else None, None)

    def shadow_pair(self, pair: ShadowPair) -> None:
        """Logs a mirrored call whose candidate disagreed with the stable answer or failed, whatever
        the sample rate, when the model's payload log is on: two records with the request's id, the
        stable answer (its own protocol and duration) and the candidate's (protocol ``shadow``; its
        error when it failed), both with ``sampled`` false. Event loop thread: queues only."""
        stable = pair.stable
        if not stable.runner.config.payload_log.enabled:
            return
        inputs = stable.request.inputs
        self._put(stable.ctx, stable.runner.config, stable.runner.version, OK, None, False, inputs, stable.outputs,
                  stable.duration_ns)
        error = pair.candidate_error
        self._put(pair.candidate_ctx, pair.candidate.config, pair.candidate.version,
                  OK if error is None else error.kind.name.lower(), None if error is None else error.message,
                  False, inputs, pair.candidate_outputs)

    def _put(self, ctx: CallContext | None, config: ModelConfig, version: str, status: str, error: str | None,
             sampled: bool, inputs: dict | None, outputs: dict | None, duration_ns: int | None = None) -> None:
        if len(self._queue) >= self._max:
            self._dropped(config.name, "dropped").inc()
            return
        limit = config.payload_log.max_tensor_bytes
        if limit:  # the queue must not keep a large body alive: only its datatype and shape are logged
            inputs, outputs = _within(inputs, limit), _within(outputs, limit)
        now_ns = time.time_ns()
        if duration_ns is None:
            duration_ns = time.monotonic_ns() - ctx.started_ns if ctx is not None else 0
        # A plain tuple, Capture's fields in order: the writer thread builds the Capture.
        self._queue.append((
            now_ns - duration_ns, duration_ns, config.name, version,
            ctx.request_id if ctx is not None else None, ctx.protocol if ctx is not None else "",
            status, error, sampled, inputs, outputs, ctx.future if ctx is not None else None,
            config.payload_log, config.max_batch_size > 0, config.inputs, config.outputs))

    # -- the writer thread -----------------------------------------------------------------------
    def _written(self, model: str, rows: int) -> None:
        self.records_total.labels(model, "written").inc(rows)

    def _lost(self, model: str, rows: int) -> None:
        self.records_total.labels(model, "lost").inc(rows)

    def _run(self) -> None:
        next_retention = time.time() + RETENTION_EVERY_S
        while True:
            stopping = self._stop.wait(self.settings.flush_s)
            try:
                self._drain()
                if self._files is not None:
                    now = time.time()
                    flushes = []
                    while self._flush_requests:
                        flushes.append(self._flush_requests.popleft())
                    if flushes or stopping:
                        self._files.close_all()
                    else:
                        self._files.rotate_due(now)
                    if flushes or stopping or now >= next_retention:
                        self._files.enforce_retention(now)
                        next_retention = now + RETENTION_EVERY_S
                    for done in flushes:
                        done.set()
                else:
                    while self._flush_requests:
                        self._flush_requests.popleft().set()
            except Exception:  # the writer must outlive any one bad batch
                log.exception("payload log: the writer failed on a batch of records")
            if stopping and not self._queue:
                return

    def _drain(self) -> None:
        queue = self._queue
        n = len(queue)
        if not n:
            return
        captures = [Capture(*queue.popleft()) for _ in range(n)]
        for consumer in self._consumers:
            try:
                consumer(captures)
            except Exception:  # noqa: BLE001 - a consumer's fault must not lose the records
                log.exception("payload log: a consumer of the records failed")
        try:
            self._failures.add(captures)
        except Exception:  # noqa: BLE001 - the dashboard's preview must never cost a record
            log.exception("payload log: cannot keep the recent failures")
        if self._sink is not None:
            self._send(captures)
        if self._files is not None:
            self._append(captures)

    def _send(self, captures: list[Capture]) -> None:
        from pyserve.payload_log.table import decode

        assert self._sink is not None
        for capture in captures:
            try:
                self._sink.put(capture, *decode(capture))
            except Exception:  # noqa: BLE001 - one odd record must not lose the others
                log.exception("payload log: cannot send a record of model %r", capture.model)
                self.sink_events_total.labels(capture.model, "failed").inc(2)

    def _append(self, captures: list[Capture]) -> None:
        from pyserve.payload_log.table import Layout, build_table, layout_key

        # Grouped by the identity of the config objects (alive, so distinct, during this batch; the
        # same for every call of one model version), then one layout looked up by value per group.
        groups: dict[tuple, list[Capture]] = {}
        for c in captures:
            groups.setdefault((c.model, id(c.config), id(c.input_specs), id(c.output_specs), c.batching),
                              []).append(c)
        for group in groups.values():
            key = layout_key(group[0])
            layout = self._layouts.get(key)
            if layout is None:
                if len(self._layouts) > 1000:  # configs reloaded many times: forget the old ones
                    self._layouts.clear()
                layout = self._layouts[key] = Layout(group[0])
            try:
                table = build_table(layout, group)
            except Exception:  # noqa: BLE001 - one odd batch must not stop the writer
                log.exception("payload log: cannot build the records of model %r", group[0].model)
                self._lost(group[0].model, len(group))
                continue
            self._files.append(group[0].model, table)  # type: ignore[union-attr]
