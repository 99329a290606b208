"""HTTP/1.1 on asyncio, with httptools' parser (llhttp, as in Node.js and uvicorn): the transport.

Why not a framework's server: aiohttp spends ~40 us of one core per request (request, stream reader
and writer objects, a task per request) before the handler runs; on a model that computes a batch of
32 in 4 ms that overhead, not the model, bounds the throughput. Here a request is parsed straight
into a :class:`Request`, the handler runs inside ``data_received``, and a response that is not ready
yet (an inference queued in the core) is written from its future's callback: no task, no stream.

What HTTP/1.1 asks of a server is here: keep-alive, pipelining (answers in request order),
``Expect: 100-continue``, chunked request bodies, HEAD, HTTP/1.0 clients, ``Connection: close``,
body and header size limits, idle connections closed, flow control both ways. A client that hangs
up cancels what it had in flight. Shutdown stops accepting, lets every connection finish what it
has begun, then closes them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
import orjson

log = logging.getLogger("pyserve.server")

MAX_HEADER_BYTES = 64 << 10  # request line and headers; more is 431
MAX_PIPELINED = 64  # answers a connection may owe before the server stops reading from it
IDLE_TIMEOUT_S = 75.0  # a connection that sends nothing for this long, owing nothing, is closed
SWEEP_INTERVAL_S = 1.0
LINGER_S = 2.0  # after refusing a request mid-body, how long its remaining bytes are read and dropped
SERVER_NAME = b"pyserve"
RETRY_AFTER_S = "1"  # what a 503 suggests: the queue drains in well under a second


class Request:
    """One parsed request: the whole body is in memory (the size limit bounds it)."""

    __slots__ = ("app", "method", "path", "query_string", "headers", "body", "match_info", "keep_alive")

    def __init__(self, app: Any, method: str, path: str, query_string: str, headers: dict[str, str],
                 body: bytes, keep_alive: bool) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers  # lower-case names; repeated headers joined with ", "
        self.body = body
        self.match_info: dict[str, str] = {}
        self.keep_alive = keep_alive

    @property
    def content_type(self) -> str:
        """The media type of the body, lower case, without parameters ("" when absent)."""
        value = self.headers.get("content-type")
        if not value:
            return ""
        return value.partition(";")[0].strip().lower()

    def content_type_param(self, key: str) -> str | None:
        """A parameter of the Content-Type header (``key`` in lower case), or None."""
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
        return None


class Response:
    """A complete response; ``body`` is bytes-like."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, body: Any = b"", status: int = 200, content_type: str | None = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class Deferred:
    """A response that waits on ``future``: ``finish(future)`` makes it once the future is done.

    ``finish`` must not raise (handlers turn their errors into responses). Cancelling ``future``
    is how a request is abandoned when its client goes away.
    """

    __slots__ = ("future", "finish")

    def __init__(self, future: asyncio.Future, finish: Callable[[asyncio.Future], Response]) -> None:
        self.future = future
        self.finish = finish


Handler = Callable[[Request], "Response | Deferred | Awaitable[Response]"]


def error_response(status: int, message: str) -> Response:
    """The JSON error body ``{"error": message}``; a 503 says when to retry."""
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    return Response(orjson.dumps({"error": message}), status, headers=headers)


def _internal_error() -> Response:
    return error_response(500, "internal server error (see the server log)")


class Router:
    """Paths to handlers. A segment ``{name}`` captures one path segment into ``match_info``.

    Patterns are tried in the order they were added: add the hot path (infer) first.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Routes ``method`` ("*" for any) on ``pattern`` to ``handler``; GET routes answer HEAD too."""
        methods = [method, "HEAD"] if method == "GET" else [method]
        if "{" not in pattern:
            table = self._exact.setdefault(pattern, {})
        else:
            regex = re.compile("".join(
                f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
                for part in re.split(r"({[^}/]+})", pattern)) + r"\Z")
            for row_regex, row_table in self._patterns:
                if row_regex.pattern == regex.pattern:
                    table = row_table
                    break
            else:
                table = {}
                self._patterns.append((regex, table))
        for m in methods:
            table.setdefault(m, handler)

    def resolve(self, method: str, path: str) -> tuple[Handler | None, dict[str, str], list[str]]:
        """The handler and captures for ``method path``; no handler: the methods the path allows."""
        table = self._exact.get(path)
        captures: dict[str, str] = {}
        if table is None:
            for regex, row_table in self._patterns:
                match = regex.match(path)
                if match is not None:
                    table = row_table
                    captures = match.groupdict()
                    if "%" in path:
                        captures = {k: unquote(v) for k, v in captures.items()}
                    break
            else:
                return None, captures, []
        handler = table.get(method) or table.get("*")
        return handler, captures, ([] if handler else sorted(table))


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class HttpServer:
    """Listens and serves ``router``'s handlers; one :class:`Connection` per client."""

    def __init__(self, app: Any, router: Router, max_body_bytes: int) -> None:
        self.app = app
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.closing = False
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode()
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Event = asyncio.Event()

    async def listen(self, host: str, port: int) -> None:
        """Starts accepting connections on ``host:port``."""
        self._listener = await self.loop.create_server(lambda: Connection(self), host, port, backlog=1024)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    @property
    def sockets(self) -> list[Any]:
        """The listening sockets."""
        return list(self._listener.sockets) if self._listener is not None else []

    def _sweep(self) -> None:
        # A coarse clock for idle checks and the Date header, so a request never calls either.
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode()
        for conn in list(self.connections):
            conn.close_if_idle(self.now - IDLE_TIMEOUT_S)
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def forget(self, conn: Connection) -> None:
        """Called by a connection once it is closed."""
        self.connections.discard(conn)
        if self.closing and not self.connections:
            self._all_closed.set()

    async def shutdown(self, timeout_s: float) -> bool:
        """Stops accepting, lets connections finish what they began; True if all did in time."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.close_when_done()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)
            except TimeoutError:
                pass
        done = not self.connections
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        return done


class _Slot:
    """An answer a connection owes, in request order; ``data`` is set once it is ready."""

    __slots__ = ("data", "future", "close")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.future: asyncio.Future | None = None
        self.close = False


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs handlers, writes answers in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[_Slot] = deque()
        self.last_active = server.now
        self.in_message = False
        self.closing = False  # no more requests are read; close once every answer is written
        self.reading_paused = False
        self.writing_paused = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._host_count = 0
        self.http10 = False
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._refused = False  # this message was answered early (413, 431): skip the rest of it
        self._linger = False  # close by half-closing first: the client may still be sending

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        if self.server.closing:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True
        for slot in self.pending:
            if slot.future is not None and not slot.future.done():
                slot.future.cancel()  # an inference still queued is cancelled in the core
        self.pending.clear()
        self.server.forget(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = self.server.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A protocol switch (h2c, websocket) is not offered: the request was answered in
            # HTTP/1.1 and whatever follows it is not HTTP/1.1, so the connection ends.
            self._stop_reading()
        except httptools.HttpParserError as e:
            if not self._refused:
                self._refuse(400, f"malformed HTTP request: {e}")
            self._stop_reading()

    # eof_received is left to asyncio's default (close): over TCP a client that hangs up and one
    # that only half-closes look the same, and a client that hangs up must cancel its requests.

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading its requests until it catches up.
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if len(self.pending) < MAX_PIPELINED:
            self._resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._host_count = 0
        self._body = []
        self._body_bytes = 0
        self._refused = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            if not self._refused:
                self._refuse(431, f"request headers over {MAX_HEADER_BYTES} bytes")
            return
        key = name.decode("latin-1").lower()
        if key == "host":
            self._host_count += 1
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body_bytes:
            self._refuse(413, f"request body too large: {length} bytes, the limit is {self.server.max_body_bytes}")
            return
        if self._headers.get("expect", "").lower() == "100-continue" and self.parser.get_http_version() == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self.server.max_body_bytes:  # chunked bodies announce no length
            self._refuse(413, f"request body too large: over the limit of {self.server.max_body_bytes} bytes")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self._refused or self.closing:
            return
        parser = self.parser
        keep_alive = parser.should_keep_alive() and not self.server.closing
        http10 = parser.get_http_version() == "1.0"
        self.http10 = http10  # its keep-alive is opt-in, so the answer must say it is kept
        if not http10 and self._host_count != 1:  # RFC 9112 3.2: exactly one Host, or 400
            self._refuse(400, "an HTTP/1.1 request must have exactly one Host header, got "
                         f"{self._host_count}")
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        method = parser.get_method().decode("ascii", "replace")
        url = self._url
        if url.startswith(b"/") and b"?" not in url and b"#" not in url:
            path, query = url.decode("utf-8", "replace"), ""  # the common case, without parse_url
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._answer_now(error_response(400, f"invalid URL {url!r}"), False, False)
                return
            path = (parsed.path or b"/").decode("utf-8", "replace")
            query = (parsed.query or b"").decode("utf-8", "replace")
        request = Request(self.server.app, method, path, query, self._headers, body, keep_alive)
        self._dispatch(request)

    # -- answering -------------------------------------------------------------------------------
    def _dispatch(self, request: Request) -> None:
        server = self.server
        handler, captures, allowed = server.router.resolve(request.method, request.path)
        head = request.method == "HEAD"
        if handler is None:
            if allowed:
                resp = error_response(
                    405, f"method {request.method} not allowed on {request.path} "
                    f"(allowed: {', '.join(allowed)})")
                resp.headers = {**(resp.headers or {}), "Allow": ", ".join(allowed)}
            else:
                resp = error_response(404, f"no such endpoint: {request.path}")
            self._answer_now(resp, request.keep_alive, head)
            return
        request.match_info = captures
        try:
            result = handler(request)
        except Exception:  # handlers turn their own errors into responses; this is a bug
            log.exception("unexpected error in %s %s", request.method, request.path)
            result = _internal_error()
        if type(result) is Response:
            self._answer_now(result, request.keep_alive, head)
            return
        keep_alive = request.keep_alive
        if type(result) is Deferred:
            future, finish = result.future, result.finish
            if future.done():  # ran inline: answer without a loop turn
                self._answer_now(finish(future), keep_alive, head)
                return
        else:  # a coroutine: rare endpoints (model control) that await
            future = asyncio.ensure_future(result)  # type: ignore[arg-type]
            finish = self._task_response
        slot = _Slot()
        slot.future = future
        slot.close = not keep_alive
        self.pending.append(slot)
        future.add_done_callback(lambda f: self._fill(slot, finish, f, head))
        if not keep_alive:
            self._stop_reading()
        elif len(self.pending) >= MAX_PIPELINED:
            self._pause_reading()

    def _task_response(self, task: asyncio.Future) -> Response:
        exc = task.exception()
        if exc is None:
            return task.result()
        log.error("unexpected error in a handler", exc_info=exc)
        return _internal_error()

    def _fill(self, slot: _Slot, finish: Callable[[asyncio.Future], Response], future: asyncio.Future,
              head: bool) -> None:
        if future.cancelled() or self.transport is None:
            return  # the connection is gone
        try:
            resp = finish(future)
        except Exception:
            log.exception("unexpected error while answering")
            resp = _internal_error()
        slot.data = self._encode(resp, not slot.close, head)
        self._write_ready()

    def _answer_now(self, resp: Response, keep_alive: bool, head: bool) -> None:
        if not self.pending and self.transport is not None:
            self.transport.write(self._encode(resp, keep_alive, head))
            if not keep_alive:
                self._close_after_writes()
            return
        slot = _Slot()
        slot.close = not keep_alive
        slot.data = self._encode(resp, keep_alive, head)
        self.pending.append(slot)
        self._write_ready()
        if not keep_alive:
            self._stop_reading()

    def _write_ready(self) -> None:
        """Writes the answers that are ready, in order, up to the first one still pending."""
        pending = self.pending
        transport = self.transport
        while pending and pending[0].data is not None:
            slot = pending.popleft()
            if transport is None:
                return
            transport.write(slot.data)
            if slot.close:
                self._close_after_writes()
                return
        if not pending and self.closing:
            self._close_after_writes()
        elif len(pending) < MAX_PIPELINED and not self.writing_paused:
            self._resume_reading()

    def _encode(self, resp: Response, keep_alive: bool, head: bool) -> bytes:
        body = resp.body
        status = resp.status
        parts = [b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Length: %d\r\n"
                 % (status, _REASONS.get(status, b"Unknown"), SERVER_NAME, self.server.date, len(body))]
        if resp.content_type:
            parts.append(b"Content-Type: %s\r\n" % resp.content_type.encode("latin-1"))
        if resp.headers:
            for k, v in resp.headers.items():
                parts.append(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")))
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif self.http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if not head and len(body):
            parts.append(body)
        return b"".join(parts)

    def _refuse(self, status: int, message: str) -> None:
        """Answers the message being read with an error before its end, then ends the connection."""
        self._refused = True
        self._linger = True
        self._answer_now(error_response(status, message), False, False)

    # -- connection state ------------------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        """No more requests from this client: close once every owed answer is written."""
        self.closing = True
        if not self.pending:
            self._close_after_writes()

    def _close_after_writes(self) -> None:
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if self._linger and transport.can_write_eof():
            # Closing with unread request bytes makes the kernel reset the connection, and the
            # client may lose the answer that explains the refusal. Half-close, drop what still
            # arrives (data_received ignores it), close a little later.
            self._linger = False
            transport.write_eof()
            self.server.loop.call_later(LINGER_S, transport.close)
            return
        transport.close()  # flushes what is buffered first

    def close_when_done(self) -> None:
        """Shutdown: finish the request being read and the answers owed, then close."""
        if not self.in_message:
            self._stop_reading()
        # A request still arriving is served (answered with Connection: close) and then ends it.

    def close_if_idle(self, before: float) -> None:
        """Closes the connection if it owes nothing and sent nothing since ``before``."""
        if not self.pending and self.last_active < before:
            self._close_after_writes()

    def abort(self) -> None:
        """Drops the connection at once (what is owed is lost: only after the shutdown timeout)."""
        if self.transport is not None:
            self.transport.abort()
