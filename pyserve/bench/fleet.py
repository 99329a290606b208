"""Where the generators run: in the coordinator's own event loop (one process), or in N worker
processes that each run their share and send their raw samples back through a pipe.

Both fleets deliver ``(process_index, message)`` pairs on one asyncio queue, so the coordinator has a
single code path. Worker processes are started once per run (spawn: no forked event loop) and get
one message per level; the monotonic clock is shared by all processes of a machine, so every process
cuts its windows at the same instants.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from multiprocessing.connection import Connection
from typing import Any, Protocol

from pyserve.bench.loadgen import Generator, LevelPlan, make_session, new_event_loop
from pyserve.bench.payload import Payload

Message = tuple[int, tuple[Any, ...]]


class GeneratorError(Exception):
    """A generator process died or did not start: the measurement is void."""


class Fleet(Protocol):
    """The generators of a run, seen from the coordinator."""

    size: int
    inbox: asyncio.Queue[Message]

    async def start(self) -> None:
        """Get ready to run levels."""

    def run_level(self, plans: list[LevelPlan]) -> None:
        """Start one level; plans[i] goes to process i."""

    def stop_level(self) -> None:
        """Ask every generator to end the level (each answers ``("done",)``)."""

    async def close(self) -> None:
        """Release sessions and processes."""


class LocalFleet:
    """One generator in the coordinator's event loop."""

    size = 1

    def __init__(self, url: str, payload: Payload, limit: int, timeout_s: float) -> None:
        self._args = (url, payload, limit, timeout_s)
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._generator: Generator | None = None
        self._session = None

    async def start(self) -> None:
        url, payload, limit, timeout_s = self._args
        self._session = make_session(limit, timeout_s)
        self._generator = Generator(self._session, url, payload)

    def run_level(self, plans: list[LevelPlan]) -> None:
        assert self._generator is not None
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(
            self._generator.run_level(plans[0], lambda m: self.inbox.put_nowait((0, m)), self._stop)
        )

    def stop_level(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _worker_main(conn: Connection, url: str, payload: Payload, limit: int, timeout_s: float) -> None:
    """Entry point of a worker process: run levels as the coordinator asks, until ``exit``."""
    # Ctrl-C reaches the whole process group: the coordinator handles it and tells us to exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = new_event_loop()
    try:
        loop.run_until_complete(_worker_serve(conn, url, payload, limit, timeout_s))
    finally:
        loop.close()
        conn.close()


async def _worker_serve(conn: Connection, url: str, payload: Payload, limit: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    session = make_session(limit, timeout_s)
    generator = Generator(session, url, payload)
    finished = asyncio.Event()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def on_message() -> None:
        nonlocal stop
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = ("exit",)
        if msg[0] == "level":
            stop = asyncio.Event()
            tasks.append(asyncio.create_task(generator.run_level(msg[1], conn.send, stop)))
        elif msg[0] == "stop":
            stop.set()
        else:
            stop.set()
            loop.remove_reader(conn.fileno())
            finished.set()

    loop.add_reader(conn.fileno(), on_message)
    conn.send(("ready",))  # imports done, loop running: a level sent now starts on time
    try:
        await finished.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await session.close()


class ProcessFleet:
    """N worker processes, each with its own event loop and session."""

    def __init__(self, size: int, url: str, payload: Payload, limit: int, timeout_s: float) -> None:
        self.size = size
        self._args = (url, payload, limit, timeout_s)
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for i in range(self.size):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(theirs, *self._args), daemon=True, name=f"pyserve-bench-{i}")
            proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)
            loop.add_reader(mine.fileno(), self._on_readable, i, mine)
        # Spawned processes take a while to import; a level must not start before they can send.
        ready = 0
        while ready < self.size:
            try:
                index, msg = await asyncio.wait_for(self.inbox.get(), timeout=60.0)
            except asyncio.TimeoutError:
                raise GeneratorError("generator processes did not start within 60 s") from None
            if msg[0] == "died":
                raise GeneratorError(f"generator process {index} died while starting")
            ready += msg[0] == "ready"

    def _on_readable(self, index: int, conn: Connection) -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            msg = ("died",)
        self.inbox.put_nowait((index, msg))

    def run_level(self, plans: list[LevelPlan]) -> None:
        for conn, plan in zip(self._conns, plans):
            conn.send(("level", plan))

    def stop_level(self) -> None:
        for conn in self._conns:
            conn.send(("stop",))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for conn in self._conns:
            try:
                loop.remove_reader(conn.fileno())
                conn.send(("exit",))
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            await loop.run_in_executor(None, proc.join, 10.0)
            if proc.is_alive():
                proc.terminate()
        for conn in self._conns:
            conn.close()


def make_fleet(processes: int, url: str, payload: Payload, limit: int, timeout_s: float) -> Fleet:
    """A local fleet for one process, a process fleet for more."""
    if processes == 1:
        return LocalFleet(url, payload, limit, timeout_s)
    return ProcessFleet(processes, url, payload, limit, timeout_s)
