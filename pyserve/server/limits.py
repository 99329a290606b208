"""What one client may cost the HTTP transport: deadlines, the connection cap, the descriptor limit.

A client that sends its request slowly (slowloris: headers a byte at a time; a body trickled or
stalled) holds a connection and a file descriptor for as long as the server lets it. Each request's
line and headers, then its body, must therefore arrive within a deadline (408 otherwise), and the
open connections are capped below the process's descriptor limit: without a cap, accept() fails with
EMFILE once descriptors run out, asyncio then stops accepting for a second at a time, and every new
client fails, not only the hostile ones (nginx's ``worker_connections`` and ``client_body_timeout``
are the model here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

try:
    import resource
except ImportError:  # not on Windows: no descriptor limit to read or raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger("pyserve.server")

# Descriptors kept for what is not a client connection (model files, log files, threads' pipes, the
# payload log's sink): a quarter of the limit, at most this many.
RESERVED_FDS_MAX = 1024
DEFAULT_MAX_CONNECTIONS_WITHOUT_LIMIT = 10_000


@dataclass(frozen=True)
class TransportLimits:
    """The HTTP transport's limits; every duration in seconds.

    ``header_timeout_s``: a request's line and headers must arrive within this of its first byte.
    ``body_timeout_s``: its body must arrive within this of the end of its headers (0: no deadline).
    ``idle_timeout_s``: a keep-alive connection with no request under way is closed after this.
    ``max_connections``: connections open at once; one more is closed as soon as it is accepted.
    """

    max_body_bytes: int = 64 << 20
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 75.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS_WITHOUT_LIMIT


def raise_fd_limit() -> int | None:
    """Raises this process's soft limit of open files (RLIMIT_NOFILE) to its hard limit, as far as
    the system allows; returns the soft limit then in force (None where there is no such limit).

    Raising never fails the start: a system that refuses (a container's seccomp, macOS's
    OPEN_MAX) leaves the limit as it was, logged at INFO.
    """
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.info("open file limit left at %d (raising it to %d failed: %s)", soft, target, e)
        return soft
    return target


def open_file_limit() -> int | None:
    """This process's soft limit of open files (None where there is none, or it is unlimited)."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections(fd_limit: int | None) -> int:
    """The connection cap for a descriptor limit: the limit less what the rest of the process needs
    (a quarter of it, at most :data:`RESERVED_FDS_MAX`), at least 1."""
    if fd_limit is None or fd_limit <= 0:
        return DEFAULT_MAX_CONNECTIONS_WITHOUT_LIMIT
    return max(1, fd_limit - min(RESERVED_FDS_MAX, fd_limit // 4))
