"""What handlers see and return: a parsed request, a response, a response still on its way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pyserve.security.tls import ClientCertificate

RETRY_AFTER_S = "1"  # what a 503 suggests: the queue drains in well under a second


class Request:
    """One parsed request: the whole body is in memory (the size limit bounds it)."""

    __slots__ = ("app", "method", "path", "query_string", "headers", "body", "match_info", "peer", "client_cert")

    def __init__(self, app: Any, method: str, path: str, query_string: str, headers: dict[str, str],
                 body: bytes, peer: str = "", client_cert: ClientCertificate | None = None) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers  # lower-case names; repeated headers joined with ", "
        self.body = body
        self.match_info: dict[str, str] = {}
        self.peer = peer  # the client's address, "host:port" ("" when unknown): who, in audit logs
        self.client_cert = client_cert  # the connection's verified client certificate (mTLS), or None

    @property
    def content_type(self) -> str:
        """The media type of the body, lower case, without parameters ("" when absent)."""
        value = self.headers.get("content-type")
        if not value:
            return ""
        return value.partition(";")[0].strip().lower()

    def content_type_param(self, key: str) -> str | None:
        """A parameter of the Content-Type header (``key`` in lower case), or None."""
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
        return None


class Response:
    """A complete response; ``body`` is bytes-like."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, body: Any = b"", status: int = 200, content_type: str | None = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class Deferred:
    """A response that waits on ``future``: ``finish(future)`` makes it once the future is done.

    ``finish`` must not raise (handlers turn their errors into responses); it may return another
    Deferred, answered the same way (a large reply encoded on a thread). Cancelling ``future``
    is how a request is abandoned when its client goes away.
    """

    __slots__ = ("future", "finish")

    def __init__(self, future: asyncio.Future, finish: Callable[[asyncio.Future], Response | Deferred]) -> None:
        self.future = future
        self.finish = finish


class Pending:
    """An answer to come without a future: its maker calls ``on_answer(resp)`` once, with a
    :class:`Response` or a :class:`Deferred` (a large reply encoded off the loop). The connection
    sets ``on_answer``; :meth:`done` and :meth:`cancel` are a future's (the connection cancels what
    a client that hung up still waits for). The infer fast path's calls are Pending: no asyncio
    future, done callback and loop turn per answer (``pyserve.server.fast_infer``)."""

    __slots__ = ()
    on_answer: Callable[[Response | Deferred], None] | None

    def done(self) -> bool:
        """True once answered or cancelled."""
        raise NotImplementedError

    def cancel(self) -> bool:
        """Abandons the answer (False when it is done already)."""
        raise NotImplementedError


Handler = Callable[[Request], Response | Deferred | Awaitable[Response]]


def error_response(status: int, message: str) -> Response:
    """The JSON error body ``{"error": message}``; a 503 says when to retry."""
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    return Response(orjson.dumps({"error": message}), status, headers=headers)


INTERNAL_ERROR = "internal server error (see the server log)"  # all a client learns of a fault


def internal_error() -> Response:
    """A 500 that tells the client no more than to look in the log."""
    return error_response(500, INTERNAL_ERROR)
