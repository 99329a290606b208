"""The asyncio side of the C++ core: submit tensors to a model version's scheduler, get a future.

Completions come back through one core completion queue per event loop. The loop watches its eventfd
and drains everything queued at each wake-up, so C++ threads never take the GIL once per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pyserve import _core
from pyserve.backends import registry
from pyserve.errors import ErrorKind, PyserveError, error_from_core

if TYPE_CHECKING:
    from pyserve.config import ModelConfig

log = logging.getLogger("pyserve.runtime")

# What ModelRunner.submit_callback's drain calls: (code, message, outputs, queue_us, compute_us).
Completion = Callable[[int, str, "dict[str, np.ndarray] | None", int, int], None]

# Scheduler.flush results (csrc/core/scheduler.h FlushResult).
_FLUSH_RAN_INLINE, _FLUSH_POSTPONED = 1, 2


class CallFuture(asyncio.Future):
    """The future of one request in the core; once done, ``queue_us`` is how long it waited in the
    queue and ``compute_us`` how long the backend call of its batch took, as the core measured them
    (-1: it never queued / never ran). Read by the payload log.

    Cancelling it cancels the request in the core (``_scheduler.cancel(_request_id)``), at once: an
    override of :meth:`cancel` rather than a done callback, which would cost every request a
    closure and a turn of the loop's ready queue when its answer comes."""

    __slots__ = ("queue_us", "compute_us", "_scheduler", "_request_id")

    def cancel(self, msg: Any = None) -> bool:
        """Cancels the future (False when it is done already) and the request in the core's queue;
        a request whose batch is running is answered, and its answer dropped."""
        if not super().cancel(msg):
            return False
        scheduler = getattr(self, "_scheduler", None)  # None: cancelled before it was queued
        if scheduler is not None:
            scheduler.cancel(self._request_id)
        return True


class CompletionPump:
    """Delivers the core's completions to asyncio futures on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.queue = _core.CompletionQueue()
        self.loop.add_reader(self.queue.fileno(), self.drain)
        self._closed = False

    def drain(self) -> None:
        """Completes the futures of every finished request, and calls the callbacks of those queued by
        :meth:`ModelRunner.submit_callback` (called by the loop on wake-up)."""
        for future, code, message, outputs, queue_us, compute_us in self.queue.drain():
            if type(future) is not CallFuture:
                try:
                    future(code, message, outputs, queue_us, compute_us)
                except Exception:  # one caller's fault must not lose the others' answers
                    log.exception("unexpected error in a completion callback")
                continue
            if future.done():  # the caller gave up (cancelled) before the answer came
                continue
            future.queue_us = queue_us
            future.compute_us = compute_us
            if code == 0:
                future.set_result(outputs)
            else:
                future.set_exception(error_from_core(code, message))

    def close(self) -> None:
        """Stops watching the queue; call after every scheduler using it has stopped."""
        if not self._closed:
            self._closed = True
            self.loop.remove_reader(self.queue.fileno())
            self.drain()


def _spec_tuples(specs: Any) -> list[tuple[str, str, list[int], bool]]:
    """The core's tensor specs: (name, datatype, shape, optional)."""
    return [(s.name, s.datatype, list(s.shape), s.optional) for s in specs]


class ModelRunner:
    """One loaded model version: its core scheduler and the backend it calls.

    ``backend`` is what the backend registry made for this version: a callable taking a batch (dict of
    numpy arrays) and returning a dict of numpy arrays, or a ``_core.IdentityBackend``.
    """

    def __init__(
        self,
        config: ModelConfig,
        version: str,
        backend: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | _core.IdentityBackend,
        pump: CompletionPump,
    ) -> None:
        self.config = config
        self.output_names = frozenset(o.name for o in config.outputs)
        self.output_specs = {o.name: o for o in config.outputs}
        self.last_inference_ms = 0  # when the service last answered a request of this version
        self.version = version
        self.backend = backend
        self._pump = pump
        self._loop = pump.loop
        db = config.dynamic_batching
        # Work-conserving batching: once per loop iteration, after the handlers that ran have queued
        # their requests, tell the core nothing more is on its way, so an idle instance does not wait
        # out max_queue_delay_us for company that is not coming (a lone client pays nothing).
        self._dispatch_when_idle = db.dispatch_when_idle
        self._flush_scheduled = False
        # Only backends of steady cost may run on the loop's thread (the registry says which).
        self._inline_ok = registry.get(config.backend).inline_ok
        options = _core.SchedulerOptions(
            model_name=config.name,
            model_version=version,
            inputs=_spec_tuples(config.inputs),
            outputs=_spec_tuples(config.outputs),
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=list(db.preferred_batch_sizes),
            max_queue_delay_us=db.max_queue_delay_us,
            max_queue_size=db.max_queue_size,
            default_timeout_us=db.default_timeout_us,
            priority_levels=db.priority_levels,
            default_priority_level=db.default_priority_level,
            instance_count=config.instance_count,
            submitter_flushes=self._dispatch_when_idle,
        )
        try:
            self._scheduler = _core.Scheduler(options, backend, pump.queue)
        except _core.CoreError as e:
            raise error_from_core(*e.args) from None
        self._stopped = False
        self._background = False  # a request queued this turn must not run inline (submit(inline=False))

    def _flush(self) -> None:
        # A cheap batch with every instance idle runs right here, on the loop's thread; its answers
        # are then delivered at once, without a wake-up of the loop. For a costly model the core
        # puts the flush off while requests keep coming, so that batches fill.
        result = self._scheduler.flush(self._inline_ok and not self._background)
        if result == _FLUSH_POSTPONED:
            self._loop.call_soon(self._flush)
            return
        self._flush_scheduled = False
        self._background = False
        if result == _FLUSH_RAN_INLINE:
            self._pump.drain()

    def submit(
        self, inputs: dict[str, np.ndarray], *, priority: int = 0, timeout_us: int = 0, inline: bool = True
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queues one request; the future resolves to its outputs or raises PyserveError.

        Invalid input and a full queue raise at once (INVALID_ARGUMENT, UNAVAILABLE). Cancelling the
        future cancels the request if it is still queued. ``inline=False``: the batch holding this
        request runs on an instance thread, never on the event loop's (background work such as a
        shadow's mirrored requests must not hold up the loop's other calls).
        """
        future = CallFuture(loop=self._loop)
        try:
            request_id = self._scheduler.submit(inputs, future, priority, timeout_us)
        except _core.CoreError as e:
            raise self._refused(inputs, error_from_core(*e.args)) from None
        future._scheduler, future._request_id = self._scheduler, request_id  # for CallFuture.cancel
        if not inline:
            self._background = True  # until this turn's flush has dispatched it
        if self._dispatch_when_idle and not self._flush_scheduled:
            self._first_of_turn()
        return future

    def submit_callback(self, inputs: dict[str, np.ndarray], callback: Completion) -> int:
        """Queues one request without a future: the completion drain calls ``callback(code, message,
        outputs, queue_us, compute_us)`` on the loop's thread once it is answered (``code`` 0 and the
        outputs, or a core status code and its message with ``outputs`` None; ``queue_us`` and
        ``compute_us`` as :class:`CallFuture` has them), possibly before this returns (a cheap batch
        run inline). The infer fast path's form of :meth:`submit`: no future, no done callback, no
        turn of the loop's ready queue per answer. Returns the request's id for :meth:`cancel`;
        raises PyserveError as :meth:`submit` does (nothing queued, the callback never called)."""
        try:
            request_id = self._scheduler.submit(inputs, callback, 0, 0)
        except _core.CoreError as e:
            raise self._refused(inputs, error_from_core(*e.args)) from None
        if self._dispatch_when_idle and not self._flush_scheduled:
            self._first_of_turn()
        return request_id

    def cancel(self, request_id: int) -> None:
        """Cancels a request of :meth:`submit_callback` still queued (its callback is then called with
        the core's CANCELLED status); one whose batch runs is answered as usual."""
        self._scheduler.cancel(request_id)

    def _first_of_turn(self) -> None:
        # The first request of this loop turn: if the model is cheap and idle it runs now, and its
        # answer is in before the caller awaits it (a lone client pays no loop turn). Requests later
        # in the turn gather for the flush scheduled below.
        if self._scheduler.flush(self._inline_ok and not self._background) == _FLUSH_RAN_INLINE:
            self._pump.drain()
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)  # runs after this iteration's other handlers

    def _refused(self, inputs: dict[str, np.ndarray], error: PyserveError) -> PyserveError:
        """``error`` (the core's refusal of ``inputs``), saying where the limit comes from when a request
        exceeds a max_batch_size that pyserve filled in (the client did not ask for it)."""
        limit = self.config.max_batch_size
        if (error.kind is ErrorKind.INVALID_ARGUMENT and "max_batch_size" in self.config.auto_completed
                and any(np.ndim(a) and np.shape(a)[0] > limit for a in inputs.values())):
            return PyserveError(error.kind, error.message + (
                f"; max_batch_size {limit} is pyserve's default for a model whose first dimension is "
                "dynamic: set max_batch_size in the model's config (0: requests of any size, no batching) "
                "or start the server with --default-max-batch-size"))
        return error

    async def infer(
        self, inputs: dict[str, np.ndarray], *, priority: int = 0, timeout_us: int = 0
    ) -> dict[str, np.ndarray]:
        """Runs one request and returns its outputs."""
        return await self.submit(inputs, priority=priority, timeout_us=timeout_us)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the core's statistics for this version."""
        return self._scheduler.stats()

    async def stop(self, drain: bool = True) -> None:
        """Stops accepting; finishes (drain) or fails every queued request, then closes the backend."""
        if self._stopped:
            return
        self._stopped = True
        await self._loop.run_in_executor(None, self._scheduler.stop, drain)
        self._pump.drain()
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
