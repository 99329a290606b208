"""The plain request parser (csrc/core/http_request.cc, ``_core.parse_plain_request``) against llhttp.

The transport (pyserve/server/http.py) serves a plain request after one C call and leaves every other
request to llhttp (httptools) and the checks around it. The parser may only decline, never decide
differently: the differential test below feeds the same bytes, cut the same way, to a connection
with the plain parser and to one without, and asks for the same requests served (method, target,
headers, body, version, keep-alive) and the same bytes written back (refusals, 100 Continue).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from http_fakes import FakeTransport
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserve._core import parse_plain_request
from pyserve.server import messages
from pyserve.server.http import Connection, HttpServer
from pyserve.server.limits import TransportLimits
from pyserve.server.router import Router

MAX_BODY = 16


def serve_bytes(chunks: list[bytes], plain: bool) -> tuple[list[tuple], bytes, bool]:
    """(requests served, bytes written, closed) when a connection reads ``chunks``."""

    async def run() -> tuple[list[tuple], bytes, bool]:
        server = HttpServer(None, Router(), TransportLimits(max_body_bytes=MAX_BODY))
        server.parse_plain = plain
        server.date = b"Tue, 01 Dec 2026 00:00:00 GMT"
        conn = Connection(server)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        served: list[tuple] = []

        def record(method: bytes, url: bytes, headers: dict[str, str], body: Any, http10: bool,
                   keep_alive: bool) -> None:
            served.append((bytes(method), bytes(url), dict(headers), bytes(body), http10, keep_alive))
            if not keep_alive:
                conn._stop_reading()  # as an answered request with Connection: close does

        conn._serve = record  # type: ignore[method-assign]
        for chunk in chunks:
            conn.data_received(chunk)
        return served, b"".join(transport.written), transport.closed

    return asyncio.run(run())


# -- the parser itself ---------------------------------------------------------------------------

def test_plain_request_is_parsed_in_one_call() -> None:
    data = (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            b"X-Trailing:  v \t\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    end, method, target, headers, body, http10, keep_alive = parse_plain_request(data, 0, 100)
    assert (method, target, body, http10, keep_alive) == (b"POST", b"/v2/models/m/infer", b"abc", False, True)
    # Lower-case names; leading whitespace skipped, trailing kept (as llhttp gives them).
    assert headers == {"host": "h", "content-type": "application/json", "x-trailing": "v \t",
                       "content-length": "3"}
    assert data[end:].startswith(b"GET / ")
    assert parse_plain_request(data, end, 100)[:3] == (len(data), b"GET", b"/")
    assert parse_plain_request(memoryview(data), end, 100)[0] == len(data)


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    (b"1.1", b"", True), (b"1.1", b"Connection: close\r\n", False),
    (b"1.1", b"Connection: Keep-Alive\r\n", True), (b"1.0", b"", False),
    (b"1.0", b"Connection: keep-alive\r\n", True), (b"1.0", b"Connection: CLOSE\r\n", False),
])
def test_keep_alive_follows_the_version_and_connection(version: bytes, connection: bytes,
                                                        keep_alive: bool) -> None:
    got = parse_plain_request(b"GET / HTTP/" + version + b"\r\nHost: h\r\n" + connection + b"\r\n", 0, 100)
    assert got[5] == (version == b"1.0") and got[6] is keep_alive


NOT_PLAIN = [
    b"GET / HTTP/1.1\r\nHost: h\r\n",  # head not complete
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabc",  # body not complete
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n",  # over max_body_bytes: 413 is llhttp's
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",  # two Hosts: 400 is the transport's
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept: b\r\n\r\n",  # a name twice: llhttp's path joins
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3 \r\n\r\nabc",
    b"GET / HTTP/1.1\nHost: h\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n",  # not ASCII
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n",  # head over 8 KiB
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(40)) + b"\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
]


@pytest.mark.parametrize("data", NOT_PLAIN)
def test_anything_not_plain_is_left_to_llhttp(data: bytes) -> None:
    assert parse_plain_request(data, 0, 100) is None


@pytest.mark.parametrize("data", NOT_PLAIN)
def test_what_is_not_plain_is_served_as_llhttp_serves_it(data: bytes) -> None:
    """Whole, and cut after its head: the same requests served, the same bytes written."""
    head = data.find(b"\r\n\r\n") + 4
    for chunks in ([data], [data[:head], data[head:]] if 4 <= head < len(data) else [data]):
        assert serve_bytes(chunks, True) == serve_bytes(chunks, False)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="start"):
        parse_plain_request(b"GET", 4, 100)
    with pytest.raises(TypeError):
        parse_plain_request("GET / HTTP/1.1\r\n\r\n", 0, 100)


# -- the transport with and without it -----------------------------------------------------------

class NoParser:
    """Stands in for llhttp's parser: raises when fed, so what a connection serves is the plain parser's."""

    def feed_data(self, data: bytes) -> None:
        raise AssertionError(f"llhttp fed {bytes(data)[:80]!r}")


def serve_without_llhttp(*reads: bytes) -> list[tuple]:
    """The requests a connection without llhttp serves from ``reads`` (the last may raise)."""

    async def run() -> list[tuple]:
        conn = Connection(HttpServer(None, Router(), TransportLimits()))
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        conn.parser = NoParser()  # type: ignore[assignment]
        served: list[tuple] = []
        conn._serve = lambda *a: served.append(a)  # type: ignore[method-assign]
        for data in reads:
            conn.data_received(data)
        return served

    return asyncio.run(run())


def test_plain_requests_do_not_reach_llhttp() -> None:
    """A plain request is served without llhttp's parser, one that is not plain still through it."""
    served = serve_without_llhttp(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy"
                                  b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [(s[0], s[1], s[3]) for s in served] == [(b"POST", b"/a", b"xy"), (b"GET", b"/b", b"")]
    with pytest.raises(AssertionError, match="llhttp fed"):
        serve_without_llhttp(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_a_plain_request_over_a_feed_slice_read_at_once_is_served_plain() -> None:
    """A body bigger than the transport's parse slice (8 KiB), read whole: one C call, not llhttp."""
    from pyserve.server.http import FEED_SLICE

    body = b"x" * (FEED_SLICE * 2)
    head = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
    served = serve_without_llhttp(head + body)
    assert len(served) == 1 and served[0][3] == body


def test_plain_requests_stop_being_served_once_reading_is_paused() -> None:
    """A client pipelining more than a connection may owe: the plain parser stops where reading is
    paused and the rest waits (served once answers go out), as with llhttp."""
    from pyserve.server.http import MAX_PIPELINED

    one = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    data = one * (MAX_PIPELINED * 12)  # well over a parse slice (8 KiB)

    async def run(plain: bool) -> tuple[int, int]:
        server = HttpServer(None, Router(), TransportLimits())
        server.parse_plain = plain
        conn = Connection(server)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        served: list[tuple] = []

        def owe(*a: Any) -> None:  # each request's answer still to come
            served.append(a)
            conn._owe(conn_slot())

        from pyserve.server.http import _Slot

        def conn_slot() -> Any:
            return _Slot(False, False)

        conn._serve = owe  # type: ignore[method-assign]
        conn.data_received(data)
        paused = len(served)
        while conn.pending:  # the answers go out: reading resumes, the rest is served
            slot = conn.pending[0]
            slot.resp = messages.Response(b"")
            conn._write_ready()
        return paused, len(served)

    with_plain, without = asyncio.run(run(True)), asyncio.run(run(False))
    assert with_plain[1] == without[1] == MAX_PIPELINED * 12  # none lost
    # No more than llhttp's slices let through before the pause: here the first MAX_PIPELINED.
    assert with_plain[0] == MAX_PIPELINED <= without[0] < MAX_PIPELINED * 12, (with_plain, without)


def test_mixed_plain_and_llhttp_requests_keep_their_order() -> None:
    data = (b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\na"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"
            b"POST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nc")
    for cut in range(1, len(data)):
        for plain in (True, False):
            served, written, _ = serve_bytes([data[:cut], data[cut:]], plain)
            got = [(s[1], s[3]) for s in served]
            assert got == [(b"/1", b"a"), (b"/2", b"b"), (b"/3", b"c")], (cut, plain)
            assert written == b""


_ODD_METHODS = [b"post", b"CONNECT", b"PRI", b"G\x00T", b"TRACE", b"GET\t"]
_ODD_TARGETS = [b"*", b"http://h/x", b"/a b", b"/\x7f", b"/caf\xc3\xa9", b"", b"/a\tb", b"/\x00"]
_ODD_VERSIONS = [b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1", b"HTTP/1.10"]
_ODD_NAMES = [b"Transfer-Encoding", b"Expect", b"Upgrade", b"Proxy-Connection", b"Bad Name", b"X\x00", b"",
              b"X{}", b"Host", b"Content-Length", b"Connection", b"X-A "]
_ODD_VALUES = [b"keep-alive, close", b"upgrade", b"chunked", b"100-continue", b" 3", b"3 ", b"+3", b"-1",
               b"99999999999999999999", b"a\x01b", b"caf\xc3\xa9", b"\x7f", b"a\rb", b"a\nb", b"0x3"]
_ODD_LINES = [b"Expect: 100-continue\r\n", b"Expect: 100-Continue\r\n", b"Transfer-Encoding: chunked\r\n",
              b"Transfer-Encoding: gzip\r\n", b"Upgrade: h2c\r\n", b"Connection: Upgrade\r\n",
              b"Connection: keep-alive, Upgrade\r\n", b"Proxy-Connection: close\r\n", b"Host: i\r\n",
              b"Content-Length: 1\r\n", b"Content-Length: 99\r\n", b"Content-Length: 0\r\n",
              b"Connection: close\r\n", b"Connection: keep-alive\r\n"]
_ODD_EOLS = [b"\n", b"\r", b"\r\r\n", b""]


def _part(draw: st.DrawFn, good: st.SearchStrategy[bytes], odd: list[bytes]) -> bytes:
    """A well-formed part nine times in ten, else an odd one: most generated requests are then plain
    or one step from it, where a difference between the parsers would hide."""
    return draw(st.sampled_from(odd)) if draw(st.integers(0, 9)) == 9 else draw(good)


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    crlf = st.just(b"\r\n")
    method = _part(draw, st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]),
                   _ODD_METHODS)
    target = _part(draw, st.one_of(
        st.sampled_from([b"/", b"/v2/models/m/infer", b"/a?b=c#d", b"/a%20b"]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8)
        .map(lambda t: ("/" + t).encode())),
        _ODD_TARGETS)
    version = _part(draw, st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), _ODD_VERSIONS)
    lines = [method + b" " + target + b" " + version + _part(draw, crlf, _ODD_EOLS)]
    if draw(st.integers(0, 5)):
        lines.append(b"Host: h" + _part(draw, crlf, _ODD_EOLS))
    body = draw(st.binary(max_size=20))
    value_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6).map(str.encode)
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 9)) == 9:
            lines.append(draw(st.sampled_from(_ODD_LINES)))
            continue
        name = _part(draw, st.sampled_from([b"Content-Type", b"content-length", b"Connection", b"X-A", b"x-a",
                                            b"Keep-Alive", b"Accept", b"Inference-Header-Content-Length"]),
                     _ODD_NAMES)
        value = _part(draw, st.one_of(
            st.sampled_from([b"", b"h", b"  v  ", b"\tv\t", b"close", b"Close", b"keep-alive", b"Keep-Alive",
                             b"0", b"3", b"03", b"application/json"]), value_text), _ODD_VALUES)
        if name.lower() == b"content-length" and draw(st.booleans()):
            value = str(len(body)).encode()  # mostly a length that frames the body
        lines.append(name + b":" + draw(st.sampled_from([b" ", b"", b"\t", b"  "])) + value
                     + _part(draw, crlf, _ODD_EOLS))
        if draw(st.integers(0, 20)) == 20:
            lines.append(b" folded\r\n")
    lines.append(_part(draw, crlf, _ODD_EOLS))
    return b"".join(lines) + body


@settings(max_examples=600, deadline=None)
@given(st.lists(_request(), min_size=1, max_size=3), st.binary(max_size=8), st.data())
def test_same_requests_served_with_and_without_the_plain_parser(requests: list[bytes], tail: bytes,
                                                                data: st.DataObject) -> None:
    stream = b"".join(requests) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)]) if b > a]
    assert serve_bytes(chunks, True) == serve_bytes(chunks, False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"Host", b"Content-Type", b"Accept", b"X-Request-Id",
                                            b"Inference-Header-Content-Length", b"Authorization"]),
                          st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)),
                max_size=6),
       st.binary(max_size=MAX_BODY))
def test_well_formed_requests_are_taken_by_the_plain_parser(headers: list[tuple[bytes, str]],
                                                            body: bytes) -> None:
    """The common request (one Host, distinct names, a Content-Length) is plain, and reads as llhttp
    reads it."""
    names = {n for n, _ in headers}
    lines = [b"POST /v2/models/m/infer HTTP/1.1\r\n", b"Host: h\r\n"]
    lines += [n + b": " + v.encode() + b"\r\n" for n, v in dict(headers).items() if n != b"Host"]
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    stream = b"".join(lines) + body
    assert parse_plain_request(stream, 0, MAX_BODY) is not None, (stream, names)
    assert serve_bytes([stream], True) == serve_bytes([stream], False)


def test_a_fault_while_serving_a_plain_request_is_answered_500_as_on_llhttps_path() -> None:
    """A bug of the server raised while serving a plain request is answered 500 and ends the
    connection, as llhttp's path does (its callbacks' HttpParserCallbackError): it is not raised out
    of data_received, where asyncio would drop the connection without an answer."""

    class Faulty:
        def serve(self, url: bytes, headers: dict[str, str], body: bytes) -> None:
            raise KeyError("a bug")

    async def run(plain: bool) -> tuple[bytes, bool]:
        server = HttpServer(None, Router(), TransportLimits())
        server.parse_plain = plain
        server.date = b"Tue, 01 Dec 2026 00:00:00 GMT"
        server.fast_infer = Faulty()  # type: ignore[assignment]
        conn = Connection(server)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"
                           b"GET /v2/health/live HTTP/1.1\r\nHost: h\r\n\r\n")
        return b"".join(transport.written), transport.closed

    with_plain, without = asyncio.run(run(True)), asyncio.run(run(False))
    assert with_plain == without
    assert with_plain[0].startswith(b"HTTP/1.1 500 ") and with_plain[0].endswith(b'{"error":"%s"}'
                                                                                % messages.INTERNAL_ERROR.encode())
    assert with_plain[1]


# Streams where plain and llhttp-only requests follow each other, with what llhttp skips or reads
# specially between them: every cut (and byte by byte) must serve the same requests.
_MIXED_STREAMS = [
    b"\r\nGET /1 HTTP/1.1\r\nHost: h\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b\r\nx\r\n0\r\nX: y\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nz",
    b"POST /1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    b"GET /2 HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxyGET /2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
]


@pytest.mark.parametrize("stream", _MIXED_STREAMS)
def test_mixed_streams_cut_anywhere_are_served_as_llhttp_serves_them(stream: bytes) -> None:
    for cut in range(len(stream) + 1):
        chunks = [c for c in (stream[:cut], stream[cut:]) if c]
        assert serve_bytes(chunks, True) == serve_bytes(chunks, False), cut
    bytewise = [stream[i:i + 1] for i in range(len(stream))]
    assert serve_bytes(bytewise, True) == serve_bytes(bytewise, False)


def test_a_body_limit_beyond_64_bits_still_serves_plain_requests() -> None:
    """--max-body-bytes takes any integer >= 1: one over the C parser's unsigned 64-bit limit must
    not make every request fail (OverflowError out of data_received, the connection dropped)."""

    async def run(plain: bool) -> list[tuple]:
        server = HttpServer(None, Router(), TransportLimits(max_body_bytes=10 ** 20))
        server.parse_plain = plain
        conn = Connection(server)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        served: list[tuple] = []
        conn._serve = lambda *a: served.append(a)  # type: ignore[method-assign]
        conn.data_received(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy"
                           b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        return served

    with_plain, without = asyncio.run(run(True)), asyncio.run(run(False))
    assert [(s[0], s[1], bytes(s[3])) for s in with_plain] == [(b"POST", b"/a", b"xy"), (b"GET", b"/b", b"")]
    assert with_plain == without
