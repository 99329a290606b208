"""The payload log: the inputs, outputs and errors of each model's calls, kept in Parquet files and
optionally posted as CloudEvents (docs/payload-log.md).

:class:`PayloadLog` is a set of service hooks (:class:`~pyserve.service.hooks.InferHooks`), so it sees
every call whatever protocol carried it. On the event loop's thread a hook only decides whether the
call is logged (the model's ``[payload_log]``: on, sample rate, failures) and appends a tuple of
references (the fields of a :class:`~pyserve.payload_log.record.Capture`) to a bounded queue; when the
queue is full the record is dropped and counted, and the call goes on untouched. A writer thread takes
the queue every ``flush_s`` seconds (sooner when records come fast enough to fill a quarter of it
in that time, and at once when a quarter is there), builds the Arrow columns of the whole batch,
appends them to the model's open Parquet file and hands the records to the CloudEvents sink.

A queued record refers to no object the garbage collector tracks (numbers, strings, the request's
dicts of arrays, the core's timings rather than its future, and the model's config by a small
integer key rather than by reference): the collections that the server's own allocations trigger
visit each record's fields and stop there.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from operator import itemgetter
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

__all__ = ["PayloadLog", "PayloadLogSettings", "next_wait", "require_pyarrow"]

log = logging.getLogger("pyserve.payload_log")

RETENTION_EVERY_S = 60.0  # how often retention runs besides after each rotation
RECENT_FAILURES = 100  # failed calls kept in memory for the dashboard (recent_failures)
MIN_WAIT_S = 0.02  # the shortest wait of the writer between two batches, however fast records come
# The writer builds drained records into Arrow tables once it has gathered BUILD_ROWS of them, or
# BUILD_S seconds after the first (sooner at a flush, a stop, or a file's rotation).
BUILD_ROWS = 4096
BUILD_S = 2.0
MAX_CONFIGS = 1024  # model configs known by key before the older ones are forgotten (reloads)

# A queued record: a tuple of these fields, in this order (see _put). _STARTED_NS is the monotonic
# clock's (one clock read per call on the loop's thread), made wall-clock time by the writer.
(_STARTED_NS, _DURATION_NS, _VERSION, _REQUEST_ID, _PROTOCOL, _STATUS, _ERROR, _SAMPLED, _INPUTS, _OUTPUTS,
 _QUEUE_US, _COMPUTE_US, _CONFIG) = range(_FIELDS := 13)


def require_pyarrow() -> None:
    """Raises ImportError, saying what to install, when pyarrow (the payload log's files) is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ImportError("the payload log writes Parquet files with pyarrow, which is not installed: "
                          "pip install 'pyserve[log]'") from e


def next_wait(wait_s: float, drained: int, queue_size: int, flush_s: float) -> float:
    """Seconds the writer waits before its next batch: ``flush_s``, or less when ``drained`` records
    came in the last ``wait_s`` seconds, enough to fill more than a quarter of ``queue_size`` in
    ``flush_s``; never under MIN_WAIT_S. A quarter, not more: a build, or the GIL held by a busy
    loop, can keep the writer from its next drain for a few tenths of a second (waking when half
    was there, 18,000 records a second on one core overflowed a queue of 10,000 now and then),
    and a full queue must drop nothing the writer could have taken."""
    if not drained:
        return flush_s
    return max(MIN_WAIT_S, min(flush_s, wait_s * queue_size / 4 / drained))


def _wall_offset_ns() -> int:
    """What turns ``time.monotonic_ns()`` into ``time.time_ns()`` now (a wall-clock step between a
    call and its drain, or its build into a file's rows, BUILD_S seconds later at most, shifts its
    logged time by that step)."""
    return time.time_ns() - time.monotonic_ns()


def _transposed(records: list[tuple]) -> list[tuple]:
    """The fields of ``records`` (tuples of _FIELDS items), one tuple per field. Not ``zip(*records)``:
    that makes an iterator per record, all alive at once, and thousands of them start collections of
    the garbage collector's young generation, which then walk the server's other new objects too."""
    return [tuple(map(itemgetter(i), records)) for i in range(_FIELDS)]


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
            # Imported and used now, not at the first write: the server freezes what start-up built
            # out of the collector's generations (pyserve.server.app), and these modules
            # (pyarrow.compute's hundreds of functions, pandas) would otherwise be walked by every
            # full collection.
            import pyserve.payload_log.files
            import pyserve.payload_log.table

            try:
                pyserve.payload_log.table.warm_up()
            except Exception:  # noqa: BLE001 - the writer says what is wrong with each batch, as before
                log.warning("payload log: pyarrow's set-up for writing failed; the writer will try at its "
                            "first batch", exc_info=True)
        self.settings = settings
        self._model_config = model_config
        self._queue: collections.deque[tuple] = collections.deque()  # records, fields as _put orders them
        self._max = settings.queue_size
        # The queue's depth at which the loop wakes the writer at once (a burst after a quiet spell
        # would otherwise fill the queue before the writer's next turn): once per filling. 0 for a
        # queue of 1 to 3 (the first record wakes it): a depth of 1 is never reached by a queue of 1.
        self._wake_at = settings.queue_size // 4
        self._wake = threading.Event()
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
        self.writer_cpu_seconds = Counter(
            "pyserve_payload_log_writer_cpu_seconds", "CPU time of the payload log's writer thread: taking "
            "records off the queue, building and writing their files, handing them to the sink and the "
            "drift monitor.", registry=registry)
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
        # (consumer, wants): the calls of the model configs it wants are handed to it as Captures.
        self._consumers: tuple[tuple[Callable[[list[Capture]], None], Callable[[ModelConfig], bool]], ...] = ()
        self._failures = RecentFailures(RECENT_FAILURES)
        # A model config by a key that records hold instead of a reference (see the module's note):
        # id(config) -> key on the loop's thread; key -> config for the writer, holding the config
        # (so its id is not reused while known). The previous generation is kept when a new one
        # starts, for the records queued meanwhile.
        self._config_keys: dict[int, int] = {}
        self._configs: dict[int, ModelConfig] = {}
        self._old_configs: dict[int, ModelConfig] = {}
        self._next_key = 0
        # Drained records not yet built into tables, a list per drain: at most
        # BUILD_ROWS records or build_s seconds (never longer than a file stays open) before a build.
        self._gathered: list[list[tuple]] = []
        self._gathered_rows = 0
        self._gathered_until = 0.0
        self._build_s = min(BUILD_S, settings.rotate_s)

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
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            # The process exits without them (the writer is a daemon thread): said, not silent.
            log.error("payload log: the writer did not finish within %g s of the stop: %d queued records and "
                      "the open files' records are lost (their temporary files are removed at the next start)",
                      timeout_s, len(self._queue))
        if self._sink is not None:
            self._sink.close(self.settings.sink_timeout_s)

    def flush(self) -> None:
        """Blocks (up to 30 s) until what is queued now is written and every open file published."""
        done = threading.Event()
        self._flush_requests.append(done)
        self._wake.set()
        done.wait(30)

    def add_consumer(self, consumer: Callable[[list[Capture]], None],
                     wants: Callable[[ModelConfig], bool] = lambda config: True) -> None:
        """Hands the records of each batch the writer thread takes off the queue to ``consumer``, on the
        writer thread, before they are written (the drift monitor's feed): those of the models whose
        config ``wants`` (Captures are built only for them). It must only queue what it needs
        (references) and return; an exception is logged and the records are still written."""
        self._consumers = (*self._consumers, (consumer, wants))

    def remove_consumer(self, consumer: Callable[[list[Capture]], None]) -> None:
        """Stops handing records to ``consumer``."""
        # ==: bound methods are made anew at each access
        self._consumers = tuple(c for c in self._consumers if c[0] != consumer)

    def recent_failures(self, limit: int = RECENT_FAILURES) -> list[dict]:
        """The last failed calls the writer thread has taken (at most :data:`RECENT_FAILURES`),
        newest first, as short dicts (:class:`~pyserve.payload_log.failures.RecentFailures`). Any thread."""
        return self._failures.newest(limit)

    # -- hooks (event loop thread: references only) ------------------------------------------------
    def quiet(self, runner: ModelRunner) -> bool:
        """True when ``runner``'s model keeps no payload log: its calls may take the fast path."""
        return not runner.config.payload_log.enabled

    def observes(self, runner: ModelRunner) -> bool:
        """Always True: :meth:`after_response` only queues references to the answer, so logged
        calls take the HTTP fast path too (:meth:`pyserve.service.InferenceService.fast_observers`)."""
        return True

    def after_response(self, ctx: CallContext, runner: ModelRunner, request: InferRequest,
                       response: InferResponse) -> None:
        config = runner.config
        settings = config.payload_log
        rate = settings.sample_rate
        if not settings.enabled or (rate < 1.0 and self._random() >= rate):
            return
        # _put, written out for the common case (it runs for every call logged).
        queue = self._queue
        depth = len(queue)
        if depth >= self._max:
            self._dropped(config.name, "dropped").inc()
            return
        if depth == self._wake_at:
            self._wake.set()
        inputs, outputs = request.inputs, response.outputs
        limit = settings.max_tensor_bytes
        if limit:  # the queue must not keep a large body alive: only its datatype and shape are logged
            for arr in inputs.values():
                if arr.nbytes > limit:
                    inputs = _within(inputs, limit)
                    break
            for arr in outputs.values():
                if arr.nbytes > limit:
                    outputs = _within(outputs, limit)
                    break
        key = self._config_keys.get(id(config))
        if key is None:
            key = self._config_key(config)
        started_ns = ctx.started_ns
        queue_us, compute_us = ctx.timings()
        queue.append((started_ns, time.monotonic_ns() - started_ns, runner.version, ctx.request_id, ctx.protocol, OK,
                      None, True, inputs, outputs, queue_us, compute_us, key))

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
        queue = self._queue
        depth = len(queue)
        if depth >= self._max:
            self._dropped(config.name, "dropped").inc()
            return
        if depth == self._wake_at:
            self._wake.set()
        limit = config.payload_log.max_tensor_bytes
        if limit:  # the queue must not keep a large body alive: only its datatype and shape are logged
            inputs, outputs = _within(inputs, limit), _within(outputs, limit)
        key = self._config_keys.get(id(config))
        if key is None:
            key = self._config_key(config)
        now_ns = time.monotonic_ns()
        if ctx is None:
            duration_ns = duration_ns or 0
            queue.append((now_ns - duration_ns, duration_ns, version, None, "", status, error, sampled,
                          inputs, outputs, None, None, key))
            return
        if duration_ns is None:
            duration_ns = now_ns - ctx.started_ns
        # The core's timings are read now (the call is answered): the queue holds no future.
        queue_us, compute_us = ctx.timings()
        queue.append((now_ns - duration_ns, duration_ns, version, ctx.request_id, ctx.protocol, status, error, sampled,
                      inputs, outputs, queue_us, compute_us, key))

    def _config_key(self, config: ModelConfig) -> int:
        """The key of a config not seen yet (event loop thread)."""
        if len(self._configs) >= MAX_CONFIGS:  # configs reloaded many times: a new generation
            self._old_configs, self._configs, self._config_keys = self._configs, {}, {}
        key = self._next_key
        self._next_key += 1
        self._configs[key] = config  # before the id's entry: the writer finds every key it is given
        self._config_keys[id(config)] = key
        return key

    def _config(self, key: int) -> ModelConfig:
        """The config of a key that a queued record holds (writer thread)."""
        config = self._configs.get(key)
        return config if config is not None else self._old_configs[key]

    def _capture(self, record: tuple, wall_offset_ns: int) -> Capture:
        """A queued record as a :class:`Capture` (``wall_offset_ns``: :func:`_wall_offset_ns`)."""
        config = self._config(record[_CONFIG])
        return Capture(record[_STARTED_NS] + wall_offset_ns, record[_DURATION_NS], config.name,
                       *record[_VERSION:_CONFIG], config.payload_log, config.max_batch_size > 0, config.inputs,
                       config.outputs)

    # -- the writer thread -----------------------------------------------------------------------
    def _written(self, model: str, rows: int) -> None:
        self.records_total.labels(model, "written").inc(rows)

    def _lost(self, model: str, rows: int) -> None:
        self.records_total.labels(model, "lost").inc(rows)

    def _run(self) -> None:
        next_retention = time.time() + RETENTION_EVERY_S
        flush_s = self.settings.flush_s
        wait = flush_s
        last_drain = time.monotonic()
        while True:
            # flush_s, less when records came fast; or woken (a filling queue, a flush, a stop)
            self._wake.wait(wait)
            stopping = self._stop.is_set()
            if not stopping:  # once stopping, no more waits: the last records are taken at once
                self._wake.clear()
            started = time.monotonic()
            cpu_started = time.thread_time()
            try:
                # The rate over the time that really passed since the last drain (a wake-up may
                # have come before the wait was over).
                wait = next_wait(started - last_drain, self._drain(), self._max, flush_s)
                last_drain = started
                if self._files is not None:
                    now = time.time()
                    flushes = []
                    while self._flush_requests:
                        flushes.append(self._flush_requests.popleft())
                    if flushes or stopping:
                        self._build()
                        self._files.close_all()
                    else:
                        self._rotate(now)
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
                wait = flush_s
            self.writer_cpu_seconds.inc(time.thread_time() - cpu_started)
            if stopping and not self._queue:
                return
            wait = max(MIN_WAIT_S, wait - (time.monotonic() - started))

    def _drain(self) -> int:
        """Writes (and sends) what is queued now; returns how many records that was."""
        queue = self._queue
        n = len(queue)
        if not n:
            return 0
        popleft = queue.popleft
        records = [popleft() for _ in range(n)]
        offset = _wall_offset_ns()
        self._hand_over(records, offset)
        if self._sink is not None:
            self._send([self._capture(r, offset) for r in records])
        if self._files is not None:
            # Gathered, built into Arrow columns once there are enough: a build has a fixed cost
            # (~0.5 ms: some tens of Arrow arrays) that a batch of a few records would pay per record.
            if not self._gathered:
                self._gathered_until = time.monotonic() + self._build_s
            self._gathered.append(records)
            self._gathered_rows += n
            if self._gathered_rows >= BUILD_ROWS:
                self._build()
        return n

    def _rotate(self, now: float) -> None:
        """Builds the gathered records when due (BUILD_S) or when a file is due, so that it gets every
        record drained before its rotation; then closes the files due at ``now`` (writer thread)."""
        assert self._files is not None
        if self._gathered and (time.monotonic() >= self._gathered_until or self._files.due(now)):
            self._build()
        self._files.rotate_due(now)

    def _build(self) -> None:
        """Builds the gathered records into tables and appends them to their files (writer thread)."""
        gathered = self._gathered
        if not gathered:
            return
        self._gathered, self._gathered_rows = [], 0
        self._append(gathered[0] if len(gathered) == 1 else [r for records in gathered for r in records],
                     _wall_offset_ns())

    def _hand_over(self, records: list[tuple], offset: int) -> None:
        """The batch's failed calls to the recent-failures ring, and to each consumer the calls it
        wants, as Captures made only for them (writer thread)."""
        try:
            self._failures.add([self._capture(r, offset) for r in records if r[_STATUS] != OK])
        except Exception:  # noqa: BLE001 - the dashboard's preview must never cost a record
            log.exception("payload log: cannot keep the recent failures")
        for consumer, wants in self._consumers:
            try:
                wanted = {key: wants(self._config(key)) for key in {r[_CONFIG] for r in records}}
                captures = [self._capture(r, offset) for r in records if wanted[r[_CONFIG]]]
                if captures:
                    consumer(captures)
            except Exception:  # noqa: BLE001 - a consumer's fault must not lose the records
                log.exception("payload log: a consumer of the records failed")

    def _send(self, captures: list[Capture]) -> None:
        from pyserve.payload_log.table import decode

        assert self._sink is not None
        for capture in captures:
            try:
                self._sink.put(capture, *decode(capture))
            except Exception:  # noqa: BLE001 - one odd record must not lose the others
                log.exception("payload log: cannot send a record of model %r", capture.model)
                self.sink_events_total.labels(capture.model, "failed").inc(2)

    def _append(self, records: list[tuple], wall_offset_ns: int) -> None:
        from pyserve.payload_log.table import Layout, Records, build_table, layout_key

        # The records' fields transposed into columns at C speed; grouped by config key (the same for
        # every call of one model config: one group, as a rule), one layout looked up per group.
        fields = _transposed(records)
        keys = fields[_CONFIG]
        if keys.count(keys[0]) == len(keys):
            groups = {keys[0]: fields}
        else:
            rows: dict[int, list[tuple]] = {}
            for r in records:
                rows.setdefault(r[_CONFIG], []).append(r)
            groups = {key: _transposed(group) for key, group in rows.items()}
        for key, group in groups.items():
            config = self._config(key)
            lkey = layout_key(config)
            layout = self._layouts.get(lkey)
            if layout is None:
                if len(self._layouts) > 1000:  # configs reloaded many times: forget the old ones
                    self._layouts.clear()
                layout = self._layouts[lkey] = Layout(config)
            try:
                started = group[_STARTED_NS]
                times = np.fromiter(started, np.int64, len(started)) + wall_offset_ns
                table = build_table(layout, Records(times, *group[_DURATION_NS:_CONFIG]))
            except Exception:  # noqa: BLE001 - one odd batch must not stop the writer
                log.exception("payload log: cannot build the records of model %r", config.name)
                self._lost(config.name, len(group[0]))
                continue
            self._files.append(config.name, table)  # type: ignore[union-attr]
