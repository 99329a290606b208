"""One model-control call at a time across the workers of a ``--workers`` server.

Each control call is applied by the worker that takes it, then forwarded to every sibling
(:func:`pyserve.workers.routes.fan_out`). Two calls taken at once by two workers (``stable`` to
version 1 on one, to version 2 on the other) would each reach the other worker last, and the two
workers would then disagree for good, each routing ``stable`` to a different version. So the worker
that takes a call holds this lock, an ``fcntl`` lock on a file of the supervisor's runtime
directory, from before it applies the call until every sibling has answered: the calls are applied
everywhere in one order, the order of the control journal. Forwarded calls and the journal's
replay do not take it (the caller holds it).

The lock belongs to an open file: closing it releases it, also when the process dies (a worker
killed while it holds the lock does not hold up the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

LOCK_FILE = "control-call.lock"


# Waiting polls the lock (no thread blocks on it: waiters must not take the threads the holder's
# own calls need), from this interval up to the last.
POLL_S = (0.005, 0.01, 0.02, 0.05, 0.1)


@contextlib.asynccontextmanager
async def control_lock(runtime_dir: Path) -> AsyncIterator[None]:
    """Holds the server-wide control lock while the block runs; the event loop serves meanwhile.
    Raises OSError when the lock file cannot be opened."""
    fd = os.open(Path(runtime_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        tries = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(POLL_S[min(tries, len(POLL_S) - 1)])
                tries += 1
        yield
    finally:
        os.close(fd)  # releases the lock, if taken
