"""The inference service: where a request meets a model, with no protocol in it.

A transport decodes a request into an :class:`~pyserve.protocol.InferRequest`, then:

1. :meth:`InferenceService.runner` resolves the model and version (NOT_FOUND, UNAVAILABLE), before the
   body is decoded, so an unknown model costs no decoding;
2. :meth:`InferenceService.submit` checks the requested outputs, applies the request's parameters
   (``priority``, ``timeout``), runs the ``before_request`` hooks and queues the request in the core;
3. :meth:`InferenceService.complete`, once the core answered, selects the requested outputs, runs the
   ``after_response`` hooks and returns the :class:`~pyserve.protocol.InferResponse` to encode;
4. :meth:`InferenceService.failed` records every error answered (counted per model and kind; the
   ``on_error`` hooks), including those the transport met before the service saw the request.

Steps 2 and 3 are split so a transport can answer from the core future's callback without a task per
request; :meth:`InferenceService.infer` runs them in one ``await`` for in-process callers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyserve.backends import registry as backends
from pyserve.classification import check_class_count, classify
from pyserve.config import ModelConfig, TensorSpec
from pyserve.errors import ErrorKind, PyserveError, internal, invalid, not_found
from pyserve.protocol import InferRequest, InferResponse
from pyserve.release import TrafficPolicy
from pyserve.repository import version_number
from pyserve.repository.registry import ModelEntry
from pyserve.runtime import ModelRunner
from pyserve.service.context import CallContext
from pyserve.service.hooks import InferHooks
from pyserve.service.input_check import InputCheck

if TYPE_CHECKING:
    from prometheus_client import Counter

    from pyserve.service.host import ModelHost

log = logging.getLogger("pyserve.service")

# The core's timeout is in ns in an int64: a larger timeout would overflow to a deadline in the past.
MAX_TIMEOUT_US = (2**63 - 1) // 1000


@dataclass(frozen=True)
class ModelMetadata:
    """What ``GET /v2/models/{m}`` shows: the names of the served versions, the platform (Triton's
    name of the backend), the tensors with full shapes (-1: variable; the batch dimension first,
    as -1, when the model batches) and the aliases of the model's traffic policy (alias -> version;
    those naming the version asked for, when one is)."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # alias -> version it names
    # KServe's ``parameters``: the provenance of a version served from an artifact (pyserve.artifact).
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class VersionStatistics:
    """The core's statistics of one model version (``stats``: what ``ModelRunner.stats()`` returns),
    and when it last answered a request (ms since the Unix epoch; 0 for never)."""

    name: str
    version: str
    stats: dict
    last_inference_ms: int


def _full_shapes(specs: Iterable[TensorSpec], batching: bool) -> tuple[TensorSpec, ...]:
    if not batching:
        return tuple(specs)
    return tuple(dataclasses.replace(s, shape=(-1, *s.shape)) for s in specs)


def _parameter(params: dict, key: str, maximum: int) -> int:
    """The integer request parameter ``key`` (0 when absent), within 0..``maximum``."""
    value = params.get(key, 0)
    if type(value) is float and value.is_integer() and abs(value) >= 2**63:
        # A JSON integer beyond 64 bits, which the JSON parser read as a float: say what it was.
        raise invalid(f"parameters.{key}: expected an integer from 0 to {maximum}, got {value:.0f}, "
                      "beyond the 64-bit integers")
    if type(value) is not int or not 0 <= value <= maximum:
        raise invalid(f"parameters.{key}: expected an integer from 0 to {maximum}, got {value!r}")
    return value


class FastRoute:
    """What serves one model and version (``version`` None: the newest) on a transport's fast path,
    kept between calls by :meth:`InferenceService.fast_route`: the runner by weak reference, the
    observers to call, and the generation they were looked up in. Transports may subclass it to keep
    their own per-target state beside it."""

    __slots__ = ("generation", "name", "observers", "runner", "version")

    def __init__(self, name: str, version: str | None) -> None:
        self.name = name
        self.version = version
        self.runner: Callable[[], ModelRunner | None] = lambda: None
        self.observers: tuple[tuple[Callable[..., None], InferHooks], ...] = ()
        self.generation = -1


class InferenceService:
    """Runs inference calls on the models of a :class:`~pyserve.service.host.ModelHost`.

    ``errors`` counts calls answered with an error, labelled ``model`` (``""`` for a name that is not a
    model, so unknown names cannot grow the label set) and ``kind`` (the ErrorKind, lower case).
    ``hooks`` run around each call (see :mod:`pyserve.service.hooks`)."""

    def __init__(self, host: ModelHost, errors: Counter | None = None, hooks: Iterable[InferHooks] = ()) -> None:
        self.host = host
        self._errors = errors
        self._hooks: tuple[InferHooks, ...] = ()
        # Bumped by hooks_changed: a transport keeps what fast_observers answered while it and
        # ModelEntry.generation stay the same (and the model has no traffic policy).
        self.hooks_generation = 0
        # Per hook point, (method, hooks) of the hooks that do something there: a method left as
        # InferHooks' no-op is never called (each call runs on the loop's thread, for every request).
        self._before: tuple[tuple[Callable[..., None], InferHooks], ...] = ()
        self._after: tuple[tuple[Callable[..., None], InferHooks], ...] = ()
        self._on_error: tuple[tuple[Callable[..., None], InferHooks], ...] = ()
        self._input_checks: weakref.WeakKeyDictionary[ModelRunner, InputCheck] = weakref.WeakKeyDictionary()
        # The runner of the last input_check() and its check, the runner by weak reference (an
        # unloaded version must not be kept alive by it).
        self._last_check: tuple[Callable[[], ModelRunner | None], InputCheck | None] = (lambda: None, None)
        for h in hooks:
            self.add_hooks(h)

    def input_check(self, runner: ModelRunner) -> InputCheck:
        """The check of ``runner``'s inputs that a transport gives its decoder, so that a request the
        model refuses is refused from its tensors' headers, before their data is decoded
        (:mod:`pyserve.service.input_check`)."""
        last_runner, check = self._last_check
        if last_runner() is runner:  # the same version as the last call, as a rule: no weakref made
            return check  # type: ignore[return-value]
        check = self._input_checks.get(runner)
        if check is None:
            check = self._input_checks[runner] = InputCheck(runner.config)
        self._last_check = (weakref.ref(runner), check)
        return check

    def plain(self, runner: ModelRunner) -> bool:
        """True when a call served by ``runner`` needs nothing of the service but the core (see
        :meth:`fast_observers`: no traffic policy, and no hook but quiet ones)."""
        return self.fast_observers(runner) == ()

    def fast_route(self, route: FastRoute) -> ModelRunner | None:
        """The runner serving ``route``'s model and version on a transport's fast path, with the
        observers it must call in ``route.observers`` (:meth:`fast_observers`); None when the call
        is the general path's (an unknown or unready model or version, a traffic policy, a hook that
        acts). What it looked up is kept in ``route`` while no registry entry changed
        (``ModelEntry.generation``) and no hook did (:meth:`hooks_changed`): one dict lookup of the
        model's traffic policy per call instead of the registry's and the hooks' lookups. A new
        runner is held by a new ``route.runner`` (a weak reference: an unloaded version is never
        kept alive by a route), which is how a transport knows to renew what it keeps per runner."""
        name = route.name
        try:
            if self.host.traffic.get(name) is not None:
                return None  # a split, alias, shadow or rollout (set a moment ago, maybe)
        except PyserveError:
            return None  # a refused policy file: the general path answers it
        generation = ModelEntry.generation + self.hooks_generation  # both only grow
        if route.generation == generation:
            runner = route.runner()
            if runner is not None:
                return runner
        try:
            runner = self.runner(name, route.version)
        except PyserveError:
            return None  # 404 / 503: the general path answers and counts it
        observers = self.fast_observers(runner)
        if observers is None:
            return None
        route.runner, route.observers, route.generation = weakref.ref(runner), observers, generation
        return runner

    def fast_observers(self, runner: ModelRunner) -> tuple[tuple[Callable[..., None], InferHooks], ...] | None:
        """The ``after_response`` hooks a transport must call itself to serve a call of ``runner``
        (a version :meth:`runner` resolved) without the service's loops; None when the call needs
        the general path. That is when the model has a traffic policy (split, alias, shadow or
        rollout; a refused policy file counts as one), or a hook with a ``before_request`` or
        ``after_response`` is neither :meth:`~InferHooks.quiet` for it nor one that only
        :meth:`~InferHooks.observes` (the payload log). Otherwise a transport may queue the call
        with ``runner.submit`` itself, answer from its outputs (setting
        ``runner.last_inference_ms``), call each observer as ``call(ctx, runner, request,
        response)`` with the answer, and record errors with :meth:`failed`
        (:mod:`pyserve.server.fast_infer`): what :meth:`submit` and :meth:`complete` do for a call
        without classification and without parameters."""
        try:
            if self.host.traffic.get(runner.config.name) is not None:
                return None
        except PyserveError:  # UNAVAILABLE for a refused policy file: the general path says so
            return None
        for _, hooks in self._before:
            if not (hooks.quiet(runner) or hooks.observes(runner)):
                return None
        observers = []
        for entry in self._after:
            hooks = entry[1]
            if hooks.quiet(runner):
                continue
            if not hooks.observes(runner):
                return None
            observers.append(entry)
        return tuple(observers)

    def add_hooks(self, hooks: InferHooks) -> None:
        """Adds hooks that run around every later call."""
        self._hooks = (*self._hooks, hooks)

        def point(name: str) -> tuple[tuple[Callable[..., None], InferHooks], ...]:
            return tuple((getattr(h, name), h) for h in self._hooks
                         if hasattr(h, name) and getattr(type(h), name, None) is not getattr(InferHooks, name))

        self._before, self._after, self._on_error = point("before_request"), point("after_response"), point("on_error")
        self.hooks_changed()

    def hooks_changed(self) -> None:
        """Says that what :meth:`fast_observers` answers may have changed for some runner: hooks were
        added, or a hook's :meth:`~InferHooks.quiet` or :meth:`~InferHooks.observes` now answers
        otherwise than before for a reason other than the runner and the model's traffic policy
        (on which transports keep what it answered: :attr:`hooks_generation`)."""
        self.hooks_generation += 1

    # -- the call --------------------------------------------------------------------------------
    def runner(self, name: str, version: str | None = None) -> ModelRunner:
        """The runner serving ``name`` at ``version``: a version number, or an alias of the model's
        traffic policy; the newest version when None or "" (no weighted split: see :meth:`route`).

        NOT_FOUND for an unknown model, version or alias, UNAVAILABLE for a model that is not ready."""
        if version and version_number(version) is None:
            policy = self.host.traffic.get(name)
            if policy is not None:
                return self.host.registry.version(name, str(self._resolve(name, policy, version)))
        return self.host.registry.version(name, version)

    def route(self, name: str, version: str | None, ctx: CallContext,
              resolved: ModelRunner | None = None) -> ModelRunner:
        """The runner that serves one infer call: as :meth:`runner`, except that a call naming no
        version follows the model's weighted split, by ``ctx.routing_key`` (else ``ctx.request_id``,
        else a random key). ``resolved``: what :meth:`runner` answered for this call in the same turn
        of the event loop (a transport's check before decoding), kept unless the split decides;
        an alias is so resolved once per call, and a move meanwhile never splits a call."""
        if version:
            return resolved if resolved is not None else self.runner(name, version)
        policy = self.host.traffic.get(name)
        picked = policy.pick(ctx.routing_key or ctx.request_id) if policy is not None else None
        if picked is None and resolved is not None:
            return resolved
        return self.host.registry.version(name, str(picked) if picked is not None else None)

    def routing_header(self, name: str) -> str | None:
        """The request header (lower case) whose value is model ``name``'s routing key, if its
        traffic policy names one; transports copy its value into ``CallContext.routing_key``."""
        return self.host.traffic.routing_header(name)

    def _resolve(self, name: str, policy: TrafficPolicy, alias: str) -> int:
        try:
            return policy.resolve(alias)
        except PyserveError as e:
            if e.kind is not ErrorKind.NOT_FOUND:
                raise
            entry = self.host.registry.entry(name)
            served = ", ".join(str(v) for v in sorted(entry.versions)) or "none"
            aliases = ", ".join(sorted(policy.aliases)) or "none"
            raise not_found(f"model '{name}' has no version or alias {alias[:80]!r} "
                            f"(serving: {served}; aliases: {aliases})") from None

    def submit(self, runner: ModelRunner, request: InferRequest, ctx: CallContext) -> asyncio.Future:
        """Queues ``request`` on ``runner``; the future resolves to the core's outputs (a dict of arrays).

        Raises INVALID_ARGUMENT at once for an output the model does not have, a bad ``priority``
        or ``timeout`` parameter, or inputs the model refuses; UNAVAILABLE when its queue is full.
        The caller records such errors with :meth:`failed`."""
        if request.outputs is not None:
            declared = runner.output_names
            for r in request.outputs:
                if r.name not in declared:
                    raise invalid(f"requested output '{r.name}' is not an output of model "
                                  f"'{runner.config.name}' (outputs: {', '.join(sorted(declared))})")
                k = r.classification
                # Absent (None) or the integer 0: the tensor itself, as in Triton. Anything else is
                # checked: false, 0.0, "" or [] are not "no classification" but a wrong K.
                if k is not None and not (type(k) is int and k == 0):
                    r.classification = check_class_count(k, r.name)
        params = request.parameters
        if params:
            ctx.priority = _parameter(params, "priority", runner.config.dynamic_batching.priority_levels)
            ctx.timeout_us = _parameter(params, "timeout", MAX_TIMEOUT_US)
        if self._before:
            self._run_hooks(self._before, "before_request", ctx, runner, request)
        future = runner.submit(request.inputs, priority=ctx.priority, timeout_us=ctx.timeout_us)
        ctx.future = future
        return future

    def complete(self, runner: ModelRunner, request: InferRequest, ctx: CallContext,
                 done: asyncio.Future) -> InferResponse:
        """The response of a call whose core future ``done`` is done; raises its PyserveError.

        Only the requested outputs are kept (every output when the request names none); an output
        requested with ``classification = K`` becomes its top K classes, as BYTES ``"score:index[:label]"``
        (Triton's classification extension, :func:`pyserve.classification.classify`): INVALID_ARGUMENT
        when the output's datatype cannot be ranked."""
        outputs = done.result()
        if request.outputs is not None:
            outputs = self.requested_outputs(runner, request, outputs)
        runner.last_inference_ms = time.time_ns() // 1_000_000
        response = InferResponse(runner.config.name, runner.version, outputs, request.id, None)
        if self._after:  # _run_hooks written out: one frame and one tuple less for every answer
            for call, hooks in self._after:
                try:
                    call(ctx, runner, request, response)
                except Exception:
                    log.exception("after_response hook %s failed", type(hooks).__name__)
        return response

    @staticmethod
    def requested_outputs(runner: ModelRunner, request: InferRequest, outputs: dict) -> dict:
        """The outputs ``request`` names (``request.outputs``, not None), in its order, from the core's
        ``outputs`` (name -> array); one requested with ``classification = K`` becomes its top K
        classes, as BYTES ``"score:index[:label]"`` (Triton's classification extension,
        :func:`pyserve.classification.classify`): INVALID_ARGUMENT when its datatype cannot be ranked."""
        selected = {}
        for r in request.outputs:
            if r.classification:
                spec = runner.output_specs[r.name]
                selected[r.name] = classify(outputs[r.name], r.classification,
                                            runner.config.max_batch_size > 0, spec.labels, output=r.name)
            else:
                selected[r.name] = outputs[r.name]
        return selected

    def failed(self, model_name: str, error: PyserveError, ctx: CallContext | None = None,
               runner: ModelRunner | None = None, request: InferRequest | None = None) -> None:
        """Records a call answered with ``error``: counted, and passed to the ``on_error`` hooks."""
        if self._errors is not None:
            known = model_name in self.host.registry.models
            self._errors.labels(model_name if known else "", error.kind.name.lower()).inc()
        if self._on_error:
            self._run_hooks(self._on_error, "on_error", ctx, model_name, runner, request, error)

    async def infer(self, name: str, version: str | None, request: InferRequest,
                    ctx: CallContext | None = None) -> InferResponse:
        """Runs one call in-process; raises PyserveError (recorded like any transport's)."""
        ctx = ctx or CallContext("inprocess", request.id)
        runner = None
        try:
            runner = self.route(name, version, ctx)
            future = self.submit(runner, request, ctx)
            try:
                await future  # a caller that gives up cancels the request
            except PyserveError:
                pass  # complete() raises it, as for every transport
            return self.complete(runner, request, ctx, future)
        except PyserveError as e:
            self.failed(name, e, ctx, runner, request)
            raise
        except Exception as e:  # a bug, not the caller's mistake: still an error answered
            self.failed(name, internal(f"{type(e).__name__}: {e}"), ctx, runner, request)
            raise

    @staticmethod
    def _run_hooks(calls: tuple[tuple[Callable[..., None], InferHooks], ...], point: str, *args: Any) -> None:
        for call, hooks in calls:
            try:
                call(*args)
            except Exception:
                log.exception("%s hook %s failed", point, type(hooks).__name__)

    # -- what a model is -------------------------------------------------------------------------
    def metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """The metadata of a model (``version`` None: every served version listed)."""
        entry = self.host.registry.entry(name)
        runner = self.runner(name, version)
        config = runner.config
        versions = tuple(str(v) for v in sorted(entry.versions)) if version is None else (runner.version,)
        batching = config.max_batch_size > 0
        policy = self.host.traffic.policy_or_none(name)
        aliases = {a: str(policy.resolve(a)) for a in sorted(policy.aliases)} if policy is not None else {}
        if version is not None:
            aliases = {a: v for a, v in aliases.items() if v == runner.version}
        return ModelMetadata(name, versions, backends.get(config.backend).platform,
                             _full_shapes(config.inputs, batching), _full_shapes(config.outputs, batching),
                             aliases, self.host.provenance(name, runner.version) or {})

    def config(self, name: str, version: str | None = None) -> ModelConfig:
        """The config serving ``name`` at ``version``."""
        return self.runner(name, version).config

    def platform(self, config: ModelConfig) -> str:
        """Triton's platform name of the backend of ``config`` (``onnxruntime_onnx``), as metadata
        shows it."""
        return backends.get(config.backend).platform

    def ready(self, name: str, version: str | None = None) -> None:
        """Returns when the model (version) is ready; NOT_FOUND / UNAVAILABLE otherwise."""
        self.runner(name, version)

    def statistics(self, name: str | None = None, version: str | None = None) -> list[VersionStatistics]:
        """The statistics of one version, of every served version of a model (``version`` None), or
        of every served version of every model (``name`` None), in model then version order.

        NOT_FOUND / UNAVAILABLE as :meth:`runner` for one model (a model that serves no version is
        UNAVAILABLE, as for every other call on it)."""
        if name is None:
            entries = [e for _, e in sorted(self.host.registry.models.items())]
            runners = [r for e in entries for _, r in sorted(e.versions.items())]
        else:
            entry = self.host.registry.entry(name)
            newest = self.runner(name, version)  # NOT_FOUND / UNAVAILABLE
            runners = [newest] if version is not None else [r for _, r in sorted(entry.versions.items())]
        return [VersionStatistics(r.config.name, r.version, r.stats(), r.last_inference_ms) for r in runners]
