"""Errors become HTTP responses here, with the statuses of :mod:`pyserve.protocol.http_status`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol.http_status import http_status
from pyserve.server import messages
from pyserve.server.messages import Request, Response

log = logging.getLogger("pyserve.server")


def error_response(kind: ErrorKind, message: str) -> Response:
    """The JSON error body ``{"error": message}`` with the status of ``kind``."""
    return messages.error_response(http_status(kind), message)


def unexpected(request: Request) -> Response:
    """Logs the exception being handled and answers a 500 without its details."""
    log.exception("unexpected error in %s %s", request.method, request.path)
    return messages.internal_error()


def endpoint(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Wraps a handler: a PyserveError becomes its status; anything unexpected a logged 500."""

    @functools.wraps(handler)
    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except PyserveError as e:
            return error_response(e.kind, e.message)
        except Exception:
            return unexpected(request)

    return wrapped


def async_endpoint(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """:func:`endpoint` for a handler that awaits."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except PyserveError as e:
            return error_response(e.kind, e.message)
        except Exception:
            return unexpected(request)

    return wrapped
