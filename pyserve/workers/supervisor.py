"""The parent of a ``--workers`` server: reserves the port, starts the workers, restarts a worker that
dies, and passes signals on (SIGTERM/SIGINT: drain and stop every worker; SIGHUP: reload the token and
TLS files in each).

The parent binds the port with SO_REUSEPORT but never listens on it: the reservation makes an address
in use fail at once, before N workers load their models, and turns ``--port 0`` into one port
that every worker binds too. A socket that does not listen takes no connections: the kernel
spreads them over the workers' listening sockets only (Linux ``socket(7)``, SO_REUSEPORT).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyserve.workers import counters
from pyserve.workers.settings import WorkerSettings

if TYPE_CHECKING:
    from pyserve.server.app import ServerSettings

log = logging.getLogger("pyserve.workers")

# Waits before restarting a worker that died: doubled for each death in a row, up to the last; a
# worker that served STABLE_S seconds before it died is restarted after the first again.
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_S = 60.0
# sun_path of Linux's sockaddr_un is 108 bytes, the terminating NUL included (unix(7)).
MAX_SOCKET_PATH = 107
EXIT_REFUSED = 2  # pyserve.cli.EXIT_REFUSED: a worker refused to start
# The workers' exit is also polled this often (waitpid): a worker's sentinel pipe does not close
# while a process it forked without exec still holds the pipe's write end.
POLL_S = 1.0


@dataclass
class _Worker:
    index: int
    process: Any = None  # multiprocessing.Process
    listening: Any = None  # multiprocessing.Event, set by the worker once it accepts connections
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    ever_listened: bool = False
    restart_at: float | None = None  # when a dead worker is started again
    history: list[int] = field(default_factory=list)  # the pids it had


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, not listening: the port stays this
    server's while its workers bind it too. Raises OSError (socket.gaierror for a name that does not
    resolve; EADDRINUSE, EADDRNOTAVAIL, EACCES) as a listener's bind would, EADDRINUSE included when
    the port is held by another server of the same user that set SO_REUSEPORT too (a second
    ``pyserve serve --workers`` on the port of a running or draining one)."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    # SO_REUSEPORT lets any socket of the same user share the port, so bind once without it first:
    # that bind fails while anything holds the port. The window between the two binds is the only
    # time another server could slip in.
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        address = probe.getsockname()  # --port 0: the port the kernel chose
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def run(settings: ServerSettings, count: int, log_level: str) -> int:
    """Serves ``settings`` with ``count`` worker processes until SIGTERM or SIGINT; the exit status
    (0 when every worker stopped cleanly; a worker's status when one could not start, which stops
    the others). Raises OSError when the port cannot be reserved, or ENAMETOOLONG when the temporary
    folder's path is too long for the channel's Unix sockets."""
    reserved = reserve_port(settings.host, settings.port)
    port = reserved.getsockname()[1]
    runtime_dir = Path(tempfile.mkdtemp(prefix="pyserve-workers-"))  # mode 0700: the channel's guard
    try:
        longest = WorkerSettings(count - 1, count, runtime_dir).socket_path(count - 1)
        if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
            raise OSError(errno.ENAMETOOLONG, f"the workers' channel sockets ({longest}) would have paths "
                          f"longer than the {MAX_SOCKET_PATH} bytes a Unix socket allows: set TMPDIR to a "
                          "shorter folder")
        supervisor = Supervisor(dataclasses.replace(settings, port=port), count, runtime_dir, log_level)
        return supervisor.run()
    finally:
        reserved.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)


class Supervisor:
    """Starts ``count`` workers of ``settings`` and keeps them running (module docstring)."""

    def __init__(self, settings: ServerSettings, count: int, runtime_dir: Path, log_level: str) -> None:
        self.settings = settings
        self.count = count
        self.runtime_dir = runtime_dir
        self.log_level = log_level
        # spawn, not fork: a worker starts from a clean interpreter (no parent's locks or threads).
        self.context = multiprocessing.get_context("spawn")
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.status = 0
        self._signals: list[int] = []

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            log.info("starting %d workers on %s:%d (SO_REUSEPORT)", self.count, self.settings.host,
                     self.settings.port)
            for w in self.workers:
                self._start(w)
            while True:
                self._handle_signals()
                if self.stopping and not any(self._alive(w) for w in self.workers):
                    break
                now = time.monotonic()
                waits = [w.restart_at - now for w in self.workers if w.restart_at is not None]
                timeout = max(0.0, min([*waits, POLL_S]))
                sentinels = [w.process.sentinel for w in self.workers if self._alive(w)]
                multiprocessing.connection.wait([wake_r, *sentinels], timeout)
                try:
                    while wake_r.recv(512):
                        pass
                except BlockingIOError:
                    pass
                self._reap()
                self._restart_due()
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
        log.info("all workers stopped")
        return self.status

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("%s: stopping the %d workers", signal.Signals(sig).name, self.count)
                self.stopping = True
                for w in self.workers:
                    if w.restart_at is not None:
                        # Dead, reaped and counted already; its restart will not come. Left as it
                        # was, the next reap would take its old exit status for a failed stop.
                        w.process = None
                    w.restart_at = None
            self._forward(sig)

    def _forward(self, sig: int) -> None:
        """Sends ``sig`` to every live worker (a second SIGTERM cuts their drain grace short);
        SIGHUP only to those that listen: one still starting has no handler for it yet (it would
        die of it), and reads the token and TLS files as it starts anyway."""
        for w in self.workers:
            if sig == signal.SIGHUP and not (w.listening is not None and w.listening.is_set()):
                continue
            if self._alive(w):
                try:
                    os.kill(w.process.pid, sig)
                except ProcessLookupError:
                    pass

    @staticmethod
    def _alive(w: _Worker) -> bool:
        return w.process is not None and w.process.exitcode is None

    def _start(self, w: _Worker) -> None:
        w.listening = self.context.Event()
        w.process = self.context.Process(
            target=worker_main, name=f"pyserve-worker-{w.index}",
            args=(self.settings, WorkerSettings(w.index, self.count, self.runtime_dir), self.log_level,
                  w.listening))
        w.process.start()
        w.started_at = time.monotonic()
        w.restart_at = None
        w.history.append(w.process.pid)
        log.info("worker %d started (pid %d)", w.index, w.process.pid)

    def _reap(self) -> None:
        for w in self.workers:
            if w.process is None or w.process.exitcode is None or w.restart_at is not None:
                continue
            code = w.process.exitcode
            self._retire_counters(w)
            # What a worker killed with SIGKILL had unpacked is never deleted by itself.
            shutil.rmtree(WorkerSettings(w.index, self.count, self.runtime_dir).unpack_dir(w.index),
                          ignore_errors=True)
            listened = w.listening.is_set()
            w.ever_listened |= listened
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
            if self.stopping:
                # Only a worker that failed its own shutdown (status 1: a backend that did not return)
                # makes the server's status non-zero; one killed by a signal (the one passed on, before
                # its handler was installed; or a crash just before the stop) had nothing to finish.
                if code > 0:
                    self.status = self.status or (1 if code < 0 else code)
                    log.warning("worker %d (pid %d) %s while stopping", w.index, w.process.pid, how)
                w.process = None
                continue
            if not w.ever_listened:
                # The first start failed (bad settings, no model could load): restarting would fail again.
                log.error("worker %d (pid %d) %s before it started serving; stopping the server",
                          w.index, w.process.pid, how)
                self.status = code if code > 0 else 1
                self.stopping = True
                w.process = None
                self._forward(signal.SIGTERM)
                continue
            served = time.monotonic() - w.started_at
            w.deaths_in_a_row = 0 if served >= STABLE_S and listened else w.deaths_in_a_row + 1
            backoff = RESTART_BACKOFF_S[min(max(w.deaths_in_a_row - 1, 0), len(RESTART_BACKOFF_S) - 1)]
            log.warning("worker %d (pid %d) %s after %.0f s; restarting it in %.0f s", w.index, w.process.pid,
                        how, served, backoff)
            w.restart_at = time.monotonic() + backoff

    def _retire_counters(self, w: _Worker) -> None:
        """Keeps the exited worker's last saved counts in the retired totals, before it starts again
        (pyserve.workers.counters)."""
        try:
            counters.retire(self.runtime_dir, w.index)
        except (OSError, ValueError) as e:
            log.error("worker %d: its last counts could not be kept in the retired totals (%s): the "
                      "counters of /metrics drop by them once it restarts", w.index, e)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.restart_at is not None and w.restart_at <= now and not self.stopping:
                self._start(w)


def worker_main(settings: ServerSettings, worker: WorkerSettings, log_level: str, listening: Any) -> None:
    """A worker process: serves ``settings`` as worker ``worker`` until SIGTERM/SIGINT (or until its
    parent is gone); sets ``listening`` once it accepts connections. Exits 2 when it refuses to
    start (the reason on stderr), as ``pyserve serve`` does."""
    from pyserve.errors import PyserveError
    from pyserve.server.app import run

    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s [worker {worker.index}]: %(message)s")
    unpack_dir = worker.unpack_dir(worker.index)
    unpack_dir.mkdir(mode=0o700, exist_ok=True)
    artifacts = dataclasses.replace(settings.artifacts, unpack_dir=unpack_dir)
    try:
        run(dataclasses.replace(settings, worker=worker, artifacts=artifacts), on_listening=listening.set)
    except PyserveError as e:
        print(f"pyserve serve: worker {worker.index}: {e.message}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    except OSError as e:
        print(f"pyserve serve: worker {worker.index}: start-up failed: {e}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
