"""Domain errors of pyserve. Every error carries a kind; the server maps kinds to HTTP statuses in
one table (pyserve.server.errors), clients map statuses back to kinds."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, in terms a caller can act on. The value is the HTTP status."""

    INVALID_ARGUMENT = 400
    NOT_FOUND = 404
    PAYLOAD_TOO_LARGE = 413
    CANCELLED = 499
    INTERNAL = 500
    UNAVAILABLE = 503
    DEADLINE_EXCEEDED = 504

    @property
    def http_status(self) -> int:
        """The HTTP status the server answers for this kind."""
        return self.value


class PyserveError(Exception):
    """An error with a kind and a message meant for the caller."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"PyserveError({self.kind.name}, {self.message!r})"


def invalid(message: str) -> PyserveError:
    """Shorthand for an INVALID_ARGUMENT error."""
    return PyserveError(ErrorKind.INVALID_ARGUMENT, message)


def not_found(message: str) -> PyserveError:
    """Shorthand for a NOT_FOUND error."""
    return PyserveError(ErrorKind.NOT_FOUND, message)


def unavailable(message: str) -> PyserveError:
    """Shorthand for an UNAVAILABLE error."""
    return PyserveError(ErrorKind.UNAVAILABLE, message)
