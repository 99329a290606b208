"""Errors become HTTP statuses here and nowhere else."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol.kserve import encode_error

log = logging.getLogger("pyserve.server")

RETRY_AFTER_S = "1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(kind: ErrorKind, message: str) -> web.Response:
    """The JSON error body ``{"error": message}`` with the status of ``kind``."""
    headers = {"Retry-After": RETRY_AFTER_S} if kind is ErrorKind.UNAVAILABLE else None
    return web.Response(
        status=kind.http_status, body=encode_error(message), content_type="application/json", headers=headers
    )


def endpoint(handler: Handler) -> Handler:
    """Wraps a handler: a PyserveError becomes its status; anything unexpected a logged 500."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except PyserveError as e:
            return error_response(e.kind, e.message)
        except web.HTTPRequestEntityTooLarge as e:
            return error_response(ErrorKind.PAYLOAD_TOO_LARGE, f"request body too large: {e.text}")
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            return error_response(ErrorKind.INTERNAL, "internal server error (see the server log)")

    return wrapped
