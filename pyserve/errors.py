"""Domain errors of pyserve, with no protocol in them.

Every error carries an :class:`ErrorKind`. Each protocol maps kinds to its own codes in one table:
HTTP in :mod:`pyserve.protocol.http_status` (gRPC will have its own). A kind survives the trip through
the C++ core as a core status code (``csrc/core/types.h`` StatusCode): a backend that raises a
:class:`PyserveError` of kind INVALID_ARGUMENT answers the client's mistake, not a server fault.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, in terms a caller can act on (the names follow gRPC's status codes)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no valid credentials (a bearer token missing or wrong)
    PERMISSION_DENIED = "PERMISSION_DENIED"  # valid credentials that do not allow the call


# Core status codes (csrc/core/types.h StatusCode) <-> kinds. Kinds the core has no code for travel
# through it as INTERNAL: a backend has no business answering NOT_FOUND.
CORE_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_ARGUMENT: 1,
    ErrorKind.UNAVAILABLE: 2,
    ErrorKind.DEADLINE_EXCEEDED: 3,
    ErrorKind.CANCELLED: 4,
    ErrorKind.INTERNAL: 5,
}
KIND_OF_CORE_STATUS: dict[int, ErrorKind] = {code: kind for kind, code in CORE_STATUS.items()}


class PyserveError(Exception):
    """An error with a kind and a message meant for the caller (never a traceback)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def core_status(self) -> int:
        """The core status code of this error's kind; the C++ core reads it off a backend's exception."""
        return CORE_STATUS.get(self.kind, CORE_STATUS[ErrorKind.INTERNAL])

    def __repr__(self) -> str:
        return f"PyserveError({self.kind.name}, {self.message!r})"


def error_from_core(code: int, message: str) -> PyserveError:
    """The PyserveError of a core status code (an unknown code is INTERNAL)."""
    return PyserveError(KIND_OF_CORE_STATUS.get(code, ErrorKind.INTERNAL), message)


def invalid(message: str) -> PyserveError:
    """Shorthand for an INVALID_ARGUMENT error."""
    return PyserveError(ErrorKind.INVALID_ARGUMENT, message)


def not_found(message: str) -> PyserveError:
    """Shorthand for a NOT_FOUND error."""
    return PyserveError(ErrorKind.NOT_FOUND, message)


def unavailable(message: str) -> PyserveError:
    """Shorthand for an UNAVAILABLE error."""
    return PyserveError(ErrorKind.UNAVAILABLE, message)


def unauthenticated(message: str) -> PyserveError:
    """Shorthand for an UNAUTHENTICATED error (the call needs credentials it did not carry)."""
    return PyserveError(ErrorKind.UNAUTHENTICATED, message)


def internal(message: str) -> PyserveError:
    """Shorthand for an INTERNAL error (a fault of the server or the model, not of the caller)."""
    return PyserveError(ErrorKind.INTERNAL, message)
