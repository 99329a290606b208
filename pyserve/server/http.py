"""HTTP/1.1 on asyncio, with httptools' parser (llhttp, as in Node.js and uvicorn): the transport.

Plain requests (a request line, a few header lines and a Content-Length body, whole in one read:
most requests) are parsed by one C++ call (``_core.parse_plain_request``) instead of llhttp's
callbacks into Python, one per header line; anything else, errors included, is llhttp's
(docs/core.md, "Plain HTTP requests").

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

What a slow or hostile client may cost is bounded (:mod:`pyserve.server.limits`): a request's headers,
then its body, must arrive within their deadlines (408 and the connection closed otherwise), and a
connection over the cap is closed as soon as it is accepted, before anything is read from it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from ssl import SSLContext
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from pyserve import _core
from pyserve.security.tls import ClientCertificate, client_certificate
from pyserve.server.limits import TransportLimits
from pyserve.server.messages import (
    INTERNAL_ERROR,
    Deferred,
    Pending,
    Request,
    Response,
    error_response,
    internal_error,
)
from pyserve.server.router import Router

if TYPE_CHECKING:
    from pyserve.server.fast_infer import FastInfer

log = logging.getLogger("pyserve.server")

MAX_HEADER_BYTES = 64 << 10  # request line and headers; more is 431
MAX_PIPELINED = 64  # answers a connection may owe before the server stops reading from it
SWEEP_INTERVAL_S = 1.0  # how often deadlines are checked: they are met to within this
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a client that connects and never completes its TLS handshake
# A TLS connection being closed waits this long for the client's close_notify: not asyncio's 30 s,
# which a client that never answers would make every shutdown wait.
TLS_SHUTDOWN_TIMEOUT_S = 2.0
LINGER_S = 2.0  # after refusing a request mid-body, how long its remaining bytes are read and dropped
# The parser runs over a read in pieces of this size, so that a client pipelining many cheap
# requests stops being parsed (and answered) once the server stops reading from it.
FEED_SLICE = 8 << 10
SERVER_NAME = b"pyserve"
# The largest body limit handed to the plain parser (``_core.parse_plain_request`` takes a C
# unsigned 64-bit one): --max-body-bytes may be larger.
PLAIN_MAX_BODY_BYTES = (1 << 63) - 1

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# HTTP parsing, not model access (which goes through pyserve.service): the core's parser of plain requests.
parse_plain_request = _core.parse_plain_request
# The Content-Type lines of the server's own answers, made once.
_CONTENT_TYPE_LINES = {t: b"Content-Type: %s\r\n" % t.encode() for t in (
    "application/json", "application/octet-stream", "application/msgpack", "text/plain; charset=utf-8",
    "text/html; charset=utf-8", "text/plain; version=0.0.4; charset=utf-8")}
# What an answer that cannot be written is replaced by (Connection._encode).
_INTERNAL_ERROR = internal_error()


def _split_url(url: bytes) -> tuple[str, str]:
    """The percent-decoded path and the query of a request target (HttpParserInvalidURLError)."""
    # find(), not `b"?" in url`: on bytes, `in` first tries the operand as an integer and raises and
    # clears a TypeError (about 1,800 instructions each in CPython 3.11, callgrind).
    if url.startswith(b"/") and url.find(b"?") < 0 and url.find(b"#") < 0:
        path, query = url.decode("utf-8", "replace"), ""  # the common case, without parse_url
    else:
        parsed = httptools.parse_url(url)
        path = (parsed.path or b"/").decode("utf-8", "replace")
        query = (parsed.query or b"").decode("utf-8", "replace")
    return (unquote(path) if "%" in path else path), query


class HttpServer:
    """Listens and serves ``router``'s handlers; one :class:`Connection` per client."""

    def __init__(self, app: Any, router: Router, limits: TransportLimits,
                 on_refused: Callable[[str, str, int], None] | None = None) -> None:
        self.app = app
        self.router = router
        # Told (method, path, status) of each request refused before its handler ran (413, 431...).
        self.on_refused = on_refused
        # The infer fast path (pyserve.server.fast_infer), tried before the router; None: off.
        self.fast_infer: FastInfer | None = None
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
        # The plain parser's limit is a C unsigned 64-bit: a larger limit (no bound worth the name)
        # reads the same there, as it takes no Content-Length over 18 digits anyway.
        self.plain_max_body_bytes = min(limits.max_body_bytes, PLAIN_MAX_BODY_BYTES)
        # Plain requests (most) parsed by one C call rather than llhttp's callbacks; False: all by llhttp.
        self.parse_plain = True
        # Counters for /metrics (pyserve.metrics.TransportCollector): connections closed at once
        # for being over the cap; requests answered 408 for headers or a body that came too slowly.
        self.connections_refused = 0
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.closing = False
        # Draining (SIGTERM's grace): still serving, but each answer says Connection: close, so a
        # kept-alive client (a pool, a proxy) opens its next connection where the load balancer
        # sends it now, rather than losing a request sent as the grace ends and idle ones close.
        self.draining = False
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode()
        # Each status's first lines (status line, Server, Date), made once per Date (a second).
        self.status_lines: dict[int, bytes] = {}
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Event = asyncio.Event()

    async def bind(self, host: str, port: int, ssl: SSLContext | None = None, reuse_port: bool = False) -> None:
        """Binds ``host:port`` without accepting yet: connections are refused until :meth:`listen`.
        With ``ssl``, connections speak TLS (:mod:`pyserve.security.tls`); with ``reuse_port``, the
        socket sets SO_REUSEPORT, so that the kernel spreads connections over every process
        listening on the port (``--workers``). Raises OSError (address in use, not available,
        permission denied) at once."""
        tls = ssl is not None  # the timeouts may only be given with ssl
        self._listener = await self.loop.create_server(
            lambda: Connection(self), host, port, backlog=1024, start_serving=False, ssl=ssl,
            reuse_port=reuse_port or None,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls else None,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT_S if tls else None)

    async def bind_unix(self, path: str) -> None:
        """Binds the Unix socket ``path`` (replacing a stale one) without accepting yet; OSError when
        it cannot."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self._listener = await self.loop.create_unix_server(
            lambda: Connection(self), path, backlog=1024, start_serving=False)

    async def listen(self) -> None:
        """Starts accepting connections on the bound address."""
        assert self._listener is not None, "bind() first"
        await self._listener.start_serving()
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def close(self) -> None:
        """Releases the address of a server that never listened (start-up failed)."""
        if self._listener is not None:
            self._listener.close()

    @property
    def sockets(self) -> list[Any]:
        """The listening sockets."""
        return list(self._listener.sockets) if self._listener is not None else []

    def _sweep(self) -> None:
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL_S, self._sweep)  # first: never lost
        # A coarse clock for idle checks and the Date header, so a request never calls either.
        self.now = time.monotonic()
        date = formatdate(usegmt=True).encode()
        if date != self.date:
            self.date = date
            self.status_lines = {}
        for conn in list(self.connections):
            conn.sweep(self.now)

    def status_line(self, status: int) -> bytes:
        """The first lines of an answer of ``status``: status line, Server and Date."""
        line = b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n" % (
            status, _REASONS.get(status, b"Unknown"), SERVER_NAME, self.date)
        if status in _REASONS:  # a handler's odd status is not remembered
            self.status_lines[status] = line
        return line

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
    """An answer a connection owes, in request order; ``resp`` is set once it is ready.

    It is encoded when written, so a shutdown that begins meanwhile still gets its
    ``Connection: close`` onto the last answer.
    """

    __slots__ = ("resp", "head", "future", "close", "http10", "nbytes")

    def __init__(self, close: bool, http10: bool, nbytes: int = 0) -> None:
        self.resp: Response | None = None
        self.head = False  # answering a HEAD request: no body
        self.future: asyncio.Future | Pending | None = None
        self.close = close  # the connection ends after this answer
        self.http10 = http10
        self.nbytes = nbytes  # request body bytes held until the answer is written


class Connection(asyncio.Protocol):
    """One client connection: parses requests, runs handlers, writes answers in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[_Slot] = deque()
        self.pending_bytes = 0
        self.last_active = server.now
        self.in_message = False
        self.in_head = True  # between requests or reading one's request line and headers
        self.head_bytes = 0  # bytes received while in_head: bounds what the parser buffers
        self.message_started = server.now
        self.body_started = server.now  # when this request's headers ended: its body's deadline runs
        self.closing = False  # no more requests are read; close once every answer is written
        self.reading_paused = False
        self.writing_paused = False
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._host_count = 0
        self._head_size = 0
        self._body: bytes | bytearray = b""
        self._refused = False  # this message was answered early (413, 431, ...): skip the rest
        self.peer = ""
        self.client_cert: ClientCertificate | None = None
        self._upgrade = False
        self._http10 = False  # the request being read is HTTP/1.0 (set once its headers are read)
        self._linger = False  # close by half-closing first: the client may still be sending
        self._backlog: memoryview | None = None  # read but not yet parsed (reading is paused)
        self._feeding = False
        self._swept_buffered = 0  # write buffer size at the last sweep

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            # Over the cap: closed before anything is read or parsed (the client sees the
            # connection end at once, and may retry). Never added, so connection_lost's forget()
            # finds nothing.
            server.connections_refused += 1
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
        self.client_cert = client_certificate(transport)  # once per connection: None without TLS
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

    # eof_received is left to asyncio's default (close): over TCP a client that hangs up and one
    # that only half-closes look the same, and a client that hangs up must cancel its requests.

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # refused or ending: what still arrives is dropped
        self.last_active = self.server.now
        if self._backlog is None:
            if len(data) <= FEED_SLICE:
                self._parse(data)  # the common case: one request, or a few small ones
                return
            # Whole plain requests of any size first (a body over FEED_SLICE read at once), until
            # reading is paused; what is left is parsed a piece at a time below.
            rest = self._serve_plain(data)
            if not rest:
                return
            self._backlog = memoryview(rest)
        else:
            self._backlog = memoryview(bytes(self._backlog) + data)
        self._feed_backlog()

    def _feed_backlog(self) -> None:
        """Parses what was read, a piece at a time, until done or reading is paused."""
        if self._feeding:
            return  # called back from inside the parser: the loop below goes on by itself
        self._feeding = True
        try:
            while self._backlog is not None and not self.closing and not self.reading_paused:
                backlog = self._backlog
                self._backlog = backlog[FEED_SLICE:] if len(backlog) > FEED_SLICE else None
                self._parse(backlog[:FEED_SLICE])
        finally:
            self._feeding = False

    def _parse(self, data: bytes | memoryview) -> None:
        data = self._serve_plain(data)
        if not data:
            return
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            # One of our callbacks raised: a bug of the server, not of the request.
            log.error("unexpected error while handling a request", exc_info=e.__context__ or e)
            if not self.closing:
                self._refuse(500, INTERNAL_ERROR)
            return
        except httptools.HttpParserUpgrade:
            # A protocol switch (h2c, websocket) is not offered: the request was answered in
            # HTTP/1.1 with Connection: close, and whatever follows it is not HTTP/1.1.
            self._linger = True
            self._stop_reading()
            return
        except httptools.HttpParserError as e:
            if not self.closing:
                self._refuse(400, f"malformed HTTP request: {e}")
            return
        if self.in_head and self.head_bytes > MAX_HEADER_BYTES and not self.closing:
            # The parser buffers a header line until it ends: refuse before it grows without bound.
            self._refuse(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading its requests until it catches up.
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._maybe_resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.message_started = self.server.now
        self._url = []
        self._headers = {}
        self._host_count = 0
        self._head_size = 0
        self._body = b""
        self._upgrade = False
        # After a refusal the connection is ending: the rest of the buffer is never served.
        self._refused = self.closing

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        key = name.decode("latin-1").lower()
        if key == "host":
            self._host_count += 1
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self.body_started = self.server.now
        if self._refused:
            return
        if self._head_size > MAX_HEADER_BYTES:
            self._refuse(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")
            return
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._refuse(505, f"HTTP/{version} is not supported: this server speaks HTTP/1.1")
            return
        self._http10 = version == "1.0"  # read once: on_message_complete needs it too
        if version == "1.1" and self._host_count != 1:  # RFC 9112 3.2
            self._refuse(400, f"an HTTP/1.1 request must have exactly one Host header, got {self._host_count}")
            return
        headers = self._headers
        coding = headers.get("transfer-encoding")
        if coding is not None and coding.replace(" ", "").lower() != "chunked":
            self._refuse(501, f"Transfer-Encoding {coding!r} is not supported (only chunked)")
            return
        length = headers.get("content-length", "").lstrip("0")
        limit = self.server.max_body_bytes
        if len(length) > 20 or (length.isdigit() and int(length) > limit):
            self._refuse(413, f"request body too large: {length} bytes, the limit is {limit}")
            return
        self._upgrade = parser.should_upgrade()
        if self._upgrade and (length or coding):
            # llhttp hands the bytes after an upgrade request's headers to the new protocol, so
            # its body would be lost: refuse rather than answer a request without its body.
            self._refuse(400, "a request with Upgrade and a body is not supported: send it without Upgrade")
            return
        if (headers.get("expect", "").lower() == "100-continue" and version == "1.1"
                and not self.pending and (length or coding)):
            # Only with nothing owed: a 100 must not overtake an earlier request's answer (the
            # client then sends its body after its own short wait, as RFC 9110 allows).
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        got = self._body
        if len(got) + len(body) > self.server.max_body_bytes:  # chunked bodies announce no length
            self._refuse(413, f"request body too large: over the limit of {self.server.max_body_bytes} bytes")
            return
        if not got:
            self._body = body  # one piece, the common case: no copy
        elif type(got) is bytes:
            self._body = bytearray(got) + body  # many pieces (chunked): one growing buffer
        else:
            got += body

    def on_message_complete(self) -> None:
        self.in_message = False
        self.in_head = True
        if self._refused or self.closing:
            return
        parser = self.parser
        body = self._body
        self._body = b""
        url = b"".join(self._url) if len(self._url) != 1 else self._url[0]
        self._serve(parser.get_method(), url, self._headers, body, self._http10,
                    parser.should_keep_alive() and not self._upgrade)

    def _serve_plain(self, data: bytes | memoryview) -> bytes | memoryview:
        """Serves the plain requests at the start of ``data`` (:func:`pyserve._core.parse_plain_request`:
        one C call each instead of llhttp's callbacks) and returns the rest: for llhttp (a request
        that is not plain, or not all read yet) or, once reading is paused, for later; empty when
        nothing is left to read (all taken, or the connection ends). Between messages only (llhttp
        holds the start of one it is reading), and only with ``HttpServer.parse_plain``."""
        if self.in_message or not self.server.parse_plain:
            return data
        pos = 0
        end = len(data)
        limit = self.server.plain_max_body_bytes
        while pos < end:
            plain = parse_plain_request(data, pos, limit)
            if plain is None:
                break
            pos, method, url, headers, body, http10, keep_alive = plain
            try:
                self._serve(method, url, headers, body, http10, keep_alive)
            except Exception:
                # A bug of the server, not of the request: answered 500 as llhttp's path answers it
                # (HttpParserCallbackError), not raised out of data_received, where asyncio would
                # drop the connection and the answers it still owes.
                log.exception("unexpected error while handling a request")
                if not self.closing:
                    self._refuse(500, INTERNAL_ERROR)
                return b""
            if self.closing:
                return b""  # Connection: close, or the server is ending: the rest is never read
            if self.reading_paused:
                break  # answers owed pile up: the caller keeps the rest for later
        return memoryview(data)[pos:] if pos else data

    def _serve(self, method: bytes, url: bytes, headers: dict[str, str], body: bytes | bytearray,
               http10: bool, keep_alive: bool) -> None:
        """Serves one complete request (``headers``: lower-case names)."""
        server = self.server
        close = not keep_alive or server.closing or server.draining
        fast = server.fast_infer
        if fast is not None and method == b"POST":
            result = fast.serve(url, headers, body)
            if result is not None:
                self._respond(result, _Slot(close, http10, len(body)), False)
                return
        try:
            path, query = _split_url(url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, f"invalid URL {url[:200]!r}")
            return
        request = Request(server.app, method.decode("ascii", "replace"), path, query, headers, body,
                          self.peer, self.client_cert)
        self._dispatch(request, _Slot(close, http10, len(body)))

    # -- answering -------------------------------------------------------------------------------
    def _dispatch(self, request: Request, slot: _Slot) -> None:
        handler, captures, allowed = self.server.router.resolve(request.method, request.path)
        head = request.method == "HEAD"
        if handler is None:
            if allowed:
                resp = error_response(405, f"method {request.method} not allowed on {request.path} "
                                           f"(allowed: {', '.join(allowed)})")
                resp.headers = {**(resp.headers or {}), "Allow": ", ".join(allowed)}
            else:
                resp = error_response(404, f"no such endpoint: {request.path[:200]}")
            self._answer(resp, slot, head)
            return
        request.match_info = captures
        try:
            result = handler(request)
        except Exception:  # handlers turn their own errors into responses; this is a bug
            log.exception("unexpected error in %s %s", request.method, request.path)
            result = internal_error()
        self._respond(result, slot, head)

    def _respond(self, result: Response | Deferred | Any, slot: _Slot, head: bool) -> None:
        """Answers with a handler's result: a Response now, a Deferred or a coroutine once done."""
        if type(result) is Response:
            self._answer(result, slot, head)
            return
        if type(result) is Deferred:
            future, finish = result.future, result.finish
            if future.done():  # ran inline: answer without a loop turn
                result = finish(future)
                if type(result) is Response:
                    self._answer(result, slot, head)
                    return
                future, finish = result.future, result.finish  # a Deferred again: encoded off the loop
        elif isinstance(result, Pending):  # the infer fast path: answered by a call, not a future
            slot.future = result
            # on_answer is a slot of Pending's subclasses (one of its own would clash with theirs).
            result.on_answer = functools.partial(self._fill_answer, slot, head)  # type: ignore[misc]
            self._owe(slot)
            return
        else:  # a coroutine: rare endpoints (model control) that await
            future = asyncio.ensure_future(result)  # type: ignore[arg-type]
            finish = self._task_response
        slot.future = future
        # A partial (called in C), not a lambda: one Python frame less per answer.
        future.add_done_callback(functools.partial(self._fill, slot, finish, head))
        self._owe(slot)

    def _owe(self, slot: _Slot) -> None:
        """Queues the answer still to come of ``slot`` behind those owed."""
        self.pending.append(slot)
        self.pending_bytes += slot.nbytes
        if slot.close:
            self._stop_reading()
        elif len(self.pending) >= MAX_PIPELINED or self.pending_bytes > self.server.max_body_bytes:
            self._pause_reading()  # bounds what one client can have waiting

    def _task_response(self, task: asyncio.Future) -> Response:
        exc = task.exception()
        if exc is None:
            return task.result()
        log.error("unexpected error in a handler", exc_info=exc)
        return internal_error()

    def _fill(self, slot: _Slot, finish: Callable[[asyncio.Future], Response | Deferred], head: bool,
              future: asyncio.Future) -> None:
        if future.cancelled() or self.transport is None:
            return  # the connection is gone
        try:
            resp = finish(future)
        except Exception:
            log.exception("unexpected error while answering")
            resp = internal_error()
        self._fill_answer(slot, head, resp)

    def _fill_answer(self, slot: _Slot, head: bool, resp: Response | Deferred) -> None:
        """Writes ``resp``, the answer of ``slot``, once those before it are written."""
        if self.transport is None:
            return  # the connection is gone
        if type(resp) is Deferred:  # the answer is made off the loop (a large reply's encoding)
            slot.future = resp.future
            resp.future.add_done_callback(functools.partial(self._fill, slot, resp.finish, head))
            return
        slot.resp, slot.head = resp, head
        self._write_ready()

    def _answer(self, resp: Response, slot: _Slot, head: bool) -> None:
        """Answers now, or queues the answer behind those still owed."""
        if not self.pending and self.transport is not None:
            self.last_active = self.server.now
            self.transport.write(self._encode(resp, slot, head))
            if slot.close:
                self._close_after_writes()
            return
        slot.resp, slot.head = resp, head
        self.pending.append(slot)
        self.pending_bytes += slot.nbytes
        if slot.close:
            self.closing = True  # read nothing more; _write_ready closes after this answer
        elif len(self.pending) >= MAX_PIPELINED:
            self._pause_reading()
        self._write_ready()

    def _write_ready(self) -> None:
        """Writes the answers that are ready, in order, up to the first one still pending."""
        pending = self.pending
        transport = self.transport
        if transport is None:
            return
        self.last_active = self.server.now  # a long request answered just now is not idle
        while pending and pending[0].resp is not None:
            slot = pending.popleft()
            self.pending_bytes -= slot.nbytes
            transport.write(self._encode(slot.resp, slot, slot.head))  # type: ignore[arg-type]
            if slot.close:
                self._close_after_writes()
                return
        if not pending and self.closing:
            self._close_after_writes()
        elif self.reading_paused:  # checked here too: most answers find reading going on
            self._maybe_resume_reading()

    def _encode(self, resp: Response, slot: _Slot, head: bool) -> bytes:
        """The bytes of ``resp``, the answer of ``slot``; a 500 in its place when it cannot be
        written (a handler's header that is not Latin-1, a body that is not bytes): a bug, answered,
        never a gap that would hand the next answer to this request."""
        try:
            body = resp.body
            if type(body) is not bytes:  # any buffer: Content-Length counts bytes, not its items
                body = memoryview(body).cast("B")
            server = self.server
            start = server.status_lines.get(resp.status)
            if start is None:
                start = server.status_line(resp.status)
            parts = [start]
            if resp.headers:
                for k, v in resp.headers.items():
                    parts.append(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")))
            content_type = resp.content_type
            if content_type:
                line = _CONTENT_TYPE_LINES.get(content_type)
                if line is None:
                    line = b"Content-Type: %s\r\n" % content_type.encode("latin-1")
                parts.append(line)
            if slot.close:
                parts.append(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            elif slot.http10:  # HTTP/1.0 keep-alive is opt-in: confirm it
                parts.append(b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body))
            else:
                parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
            if not head and len(body):
                parts.append(body)
            return b"".join(parts)
        except Exception:
            if resp is _INTERNAL_ERROR:
                raise  # the fallback itself failed: nothing sensible is left to write
            log.exception("unexpected error while writing an answer (status %s)", resp.status)
            return self._encode(_INTERNAL_ERROR, slot, head)

    def _refuse(self, status: int, message: str) -> None:
        """Answers the message being read with an error before its end, then ends the connection."""
        self._refused = True
        self._linger = True
        self._answer(error_response(status, message), _Slot(True, False), False)
        if self.server.on_refused is not None and self.in_message and not self.in_head:
            try:
                method = self.parser.get_method().decode("ascii", "replace")
                path, _ = _split_url(b"".join(self._url))
            except httptools.HttpParserError:
                return  # not even a request line: nothing to count it against
            self.server.on_refused(method, path, status)

    # -- connection state ------------------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (self.reading_paused and self.transport is not None and not self.closing
                and not self.writing_paused and len(self.pending) < MAX_PIPELINED
                and self.pending_bytes <= self.server.max_body_bytes):
            self.reading_paused = False
            self._feed_backlog()  # what was read before the pause comes first
            if not self.reading_paused and self.transport is not None:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        """No more requests from this client: close once every owed answer is written."""
        self.closing = True
        if not self.pending:
            self._close_after_writes()

    def _close_after_writes(self) -> None:
        self.closing = True
        self._backlog = None
        transport = self.transport
        if transport is None:
            return
        if self._linger and transport.can_write_eof():
            # Closing with unread request bytes makes the kernel reset the connection, and the
            # client may lose the answer that explains the refusal. Half-close, drop what still
            # arrives (data_received ignores it), close a little later.
            self._linger = False
            transport.write_eof()
            self.server.loop.call_later(LINGER_S, self._end_linger)
            return
        transport.close()  # flushes what is buffered first

    def _end_linger(self) -> None:
        if self.transport is not None:
            # A client that does not read its answer in time does not get to hold the socket.
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()

    def close_when_done(self) -> None:
        """Shutdown: answer what was read (the last answer says Connection: close), then close.

        With nothing owed, a request still arriving is served, answered with Connection: close,
        and ends the connection; with answers owed, nothing more is read.
        """
        if self.pending:
            self._linger = True  # the client may be sending requests that will not be read
            self.closing = True
            self.pending[-1].close = True
        elif not self.in_message:
            self._close_after_writes()

    def sweep(self, now: float) -> None:
        """Closes the connection if it is idle too long; answers 408 and closes it if a request's
        headers, or its body, take longer to arrive than their deadline."""
        if self.pending or self.transport is None:
            return
        buffered = self.transport.get_write_buffer_size()
        if buffered != self._swept_buffered:  # the client reads, however slowly: not idle
            self._swept_buffered = buffered
            self.last_active = now
        limits = self.server.limits
        # Not while the server itself has stopped reading (the client does not read its answers),
        # nor once the connection is ending (a 408 or a refusal was written already).
        if self.in_message and not self.reading_paused and not self.closing and not self._refused:
            if self.in_head and self.message_started < now - limits.header_timeout_s:
                self.server.header_timeouts += 1
                self._timed_out(f"request line and headers not received within {limits.header_timeout_s:g} s")
                return
            if (not self.in_head and limits.body_timeout_s > 0
                    and self.body_started < now - limits.body_timeout_s):
                self.server.body_timeouts += 1
                self._timed_out(f"request body not received within {limits.body_timeout_s:g} s")
                return
        if self.last_active < now - limits.idle_timeout_s:
            if buffered:
                self.transport.abort()  # it does not read what it was sent: close() would wait forever
            else:
                self._close_after_writes()

    def _timed_out(self, message: str) -> None:
        """Answers 408 to the request still arriving, and ends the connection (RFC 9110 15.5.9)."""
        if self.transport is not None and self.transport.get_write_buffer_size():
            self.transport.abort()  # it does not read what it was sent: a 408 would wait forever
            return
        self._refuse(408, message)

    def abort(self) -> None:
        """Drops the connection at once (what is owed is lost: only after the shutdown timeout)."""
        if self.transport is not None:
            self.transport.abort()
