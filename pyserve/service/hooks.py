"""Hooks around each inference call: where payload logging and shadow traffic attach.

A hook runs on the event loop's thread, inside the call: it must only look at what it is given and
hand any real work (writing, sending, comparing) to a queue or a task of its own. A hook that raises
is logged and does not change the call's answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyserve.errors import PyserveError
    from pyserve.protocol import InferRequest, InferResponse
    from pyserve.runtime import ModelRunner
    from pyserve.service.context import CallContext


class InferHooks:
    """Base class of hooks: override the methods you need; each default does nothing.

    ``runner`` is the loaded model version serving the call (``runner.config.name``,
    ``runner.version``); None in :meth:`on_error` when the model or version was not found."""

    def quiet(self, runner: ModelRunner) -> bool:
        """True when :meth:`before_request` and :meth:`after_response` would do nothing for a call
        served by ``runner``, so a transport may serve the call without calling them (the HTTP fast
        path, :mod:`pyserve.server.fast_infer`; :meth:`on_error` is called on every path alike). The
        default, False, is always safe: override it only with a check that cannot miss. Hooks that
        override neither method are never asked. Transports keep the answer of this and of
        :meth:`observes` for a runner while its model has no traffic policy: a hook whose answer
        changes for another reason says so with ``InferenceService.hooks_changed()``."""
        return False

    def observes(self, runner: ModelRunner) -> bool:
        """True when, for a call served by ``runner``, :meth:`before_request` does nothing and
        :meth:`after_response` only observes the answer (it changes neither the request nor the
        response, and a call's answer does not wait for it): the HTTP fast path then serves the call
        and calls :meth:`after_response` itself, with a :class:`CallContext` (``protocol``,
        ``request_id``, ``started_ns``, ``future``) and an :class:`InferResponse` (the requested
        outputs) as the general path makes them. That context is the fast path's own record of the
        call (a CallContext subclass that also holds the request): a hook that keeps something
        past the call should keep the fields it needs, not the context. The default, False, is
        always safe."""
        return False

    def before_request(self, ctx: CallContext, runner: ModelRunner, request: InferRequest) -> None:
        """Called once the request is decoded and checked, just before it is queued in the core."""

    def after_response(self, ctx: CallContext, runner: ModelRunner, request: InferRequest,
                       response: InferResponse) -> None:
        """Called with the answer, before it is encoded and sent."""

    def on_error(self, ctx: CallContext | None, model_name: str, runner: ModelRunner | None,
                 request: InferRequest | None, error: PyserveError) -> None:
        """Called for every call answered with an error, including those refused before the model's
        queue (bad input, unknown model or version, a body too large for the transport); ``request``
        is None when it could not be decoded, ``ctx`` when the transport refused it."""
