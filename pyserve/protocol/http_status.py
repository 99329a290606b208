"""Error kinds as HTTP statuses and back: the one table of the HTTP protocol (server and client)."""

from __future__ import annotations

from pyserve.errors import ErrorKind

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.PERMISSION_DENIED: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.CANCELLED: 499,  # nginx's "client closed request": nobody reads it, but logs do
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE_EXCEEDED: 504,
}
_KIND_OF_STATUS: dict[int, ErrorKind] = {status: kind for kind, status in HTTP_STATUS.items()}
_KIND_OF_STATUS[431] = ErrorKind.PAYLOAD_TOO_LARGE  # request headers too large
_KIND_OF_STATUS[429] = ErrorKind.UNAVAILABLE  # too many requests: retry later, as a 503


def http_status(kind: ErrorKind) -> int:
    """The HTTP status a server answers for ``kind``."""
    return HTTP_STATUS[kind]


def kind_of_status(status: int | None) -> ErrorKind:
    """The ErrorKind of an HTTP error status; None (no reply at all) is UNAVAILABLE.

    Statuses outside the table fall back by class: other 4xx are INVALID_ARGUMENT, the rest INTERNAL.
    """
    if status is None:
        return ErrorKind.UNAVAILABLE
    kind = _KIND_OF_STATUS.get(status)
    if kind is not None:
        return kind
    return ErrorKind.INVALID_ARGUMENT if 400 <= status < 500 else ErrorKind.INTERNAL
