"""The private channel between workers: HTTP/1.1 on each worker's Unix socket.

A worker serves its own view (readiness, metrics, model control without fan-out) on its socket
(:func:`pyserve.server.handlers.make_channel_router`); :class:`Siblings` asks the other workers.
The sockets live in the supervisor's directory of mode 0700: only the server's user can connect,
which is why the channel asks for no token (the worker that took the call from outside checked it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httptools

from pyserve.workers.settings import WorkerSettings

# A sibling that does not answer within this is reported as not answering (it may be restarting,
# or stuck in a backend call); model loads can take long, hence the separate control timeout.
QUERY_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 300.0
# The header carrying the original client's address to a sibling (for its logs).
CLIENT_HEADER = "x-pyserve-client"


@dataclass(frozen=True)
class Answer:
    """A sibling's answer: ``status`` is None when it could not be asked (``error`` says why)."""

    worker: int
    status: int | None
    body: bytes = b""
    error: str = ""

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return self.status is not None and 200 <= self.status < 300


class _ResponseParser:
    """httptools callbacks collecting one response's body."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


async def request(path: str, method: str, target: str, body: bytes = b"",
                  headers: dict[str, str] | None = None,
                  timeout_s: float = QUERY_TIMEOUT_S) -> tuple[int, bytes]:
    """One HTTP/1.1 request on the Unix socket ``path``: (status, body). Raises OSError when
    nothing listens there, TimeoutError after ``timeout_s`` seconds, ValueError for a malformed
    answer."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            head = [f"{method} {target} HTTP/1.1", "Host: pyserve-worker", f"Content-Length: {len(body)}",
                    "Connection: close"]
            head += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            collected = _ResponseParser()
            parser = httptools.HttpResponseParser(collected)
            while not collected.complete:
                data = await reader.read(1 << 16)
                if not data:
                    break
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as e:
                    raise ValueError(f"malformed answer: {e}") from None
            if not collected.complete:
                raise ValueError("the answer ended early")
            return parser.get_status_code(), bytes(collected.body)
        finally:
            writer.close()


class Siblings:
    """The other workers of this worker's server, asked over the private channel."""

    def __init__(self, worker: WorkerSettings) -> None:
        self.worker = worker

    async def ask(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None,
                  timeout_s: float = QUERY_TIMEOUT_S) -> list[Answer]:
        """Sends the same request to every sibling at once; their answers in worker order."""
        return list(await asyncio.gather(*(self._ask(i, method, target, body, headers, timeout_s)
                                           for i in self.worker.siblings)))

    async def _ask(self, index: int, method: str, target: str, body: bytes, headers: dict[str, str] | None,
                   timeout_s: float) -> Answer:
        try:
            status, answer = await request(str(self.worker.socket_path(index)), method, target, body, headers,
                                           timeout_s)
        except TimeoutError:
            return Answer(index, None, error=f"no answer within {timeout_s:g} s")
        except (OSError, ValueError) as e:
            # No socket yet (starting, restarting) or refused: the worker is not there to answer.
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            return Answer(index, None, error=f"not answering ({why})")
        return Answer(index, status, answer)
