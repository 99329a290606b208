"""A fault while answering never leaves a pipelined request unanswered.

The transport (pyserve/server/http.py) writes answers in the order the requests came. An answer whose
bytes cannot be made (a handler's header that is not Latin-1), or a fast-path call whose answering
raises (pyserve/server/fast_infer.py ``_Call.completed``), used to leave its slot empty: the next
answer then went to that request, or the connection waited for good. Each is answered 500 now.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from http_fakes import FakeTransport

from pyserve.server import messages
from pyserve.server.fast_infer import _Call
from pyserve.server.http import Connection, HttpServer
from pyserve.server.limits import TransportLimits
from pyserve.server.router import Router

PIPELINE = (b"GET /bad HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")


def _answers(written: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each answer in ``written`` (Content-Length framed)."""
    answers = []
    while written:
        head, _, rest = written.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (line.partition(b": ") for line in lines[1:])
                      if k.lower() == b"content-length")
        answers.append((int(lines[0].split()[1]), rest[:length]))
        written = rest[length:]
    return answers


def _serve(router: Router, data: bytes, plain: bool) -> list[tuple[int, bytes]]:
    async def run() -> bytes:
        server = HttpServer(None, router, TransportLimits())
        server.parse_plain = plain
        conn = Connection(server)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(data)
        await asyncio.sleep(0)  # the coroutine handler's turn
        await asyncio.sleep(0)
        return b"".join(transport.written)

    return _answers(asyncio.run(run()))


@pytest.mark.parametrize("plain", [True, False])
@pytest.mark.parametrize("kind", ["now", "awaited"])
def test_an_answer_that_cannot_be_written_is_answered_500_in_its_place(plain: bool, kind: str) -> None:
    bad = messages.Response(b"{}", headers={"X-Note": "caf\u00e9 \u20ac"})  # the euro is not Latin-1

    async def awaited(request: Any) -> messages.Response:
        return bad

    router = Router()
    router.add("GET", "/bad", (lambda request: bad) if kind == "now" else awaited)
    router.add("GET", "/ok", lambda request: messages.Response(b'"ok"'))
    answers = _serve(router, PIPELINE, plain)
    assert answers == [(500, b'{"error":"%s"}' % messages.INTERNAL_ERROR.encode()), (200, b'"ok"')]


def test_a_body_that_is_not_bytes_is_answered_500() -> None:
    router = Router()
    router.add("GET", "/bad", lambda request: messages.Response({"not": "bytes"}))
    router.add("GET", "/ok", lambda request: messages.Response(b'"ok"'))
    assert [s for s, _ in _serve(router, PIPELINE, True)] == [500, 200]


class _FaultyFast:
    """A FastInfer whose answering raises, as a bug in recording a failure would."""

    def _finish(self, call: _Call, outputs: dict[str, Any]) -> messages.Response:
        raise KeyError("a bug")

    def _failed(self, call: _Call, e: Exception) -> messages.Response:
        raise KeyError("a bug")


@pytest.mark.parametrize("code", [0, 5])
def test_a_fast_path_call_whose_answering_raises_is_answered_500(code: int) -> None:
    runner = SimpleNamespace(config=SimpleNamespace(name="m"))
    call = _Call(_FaultyFast(), runner, SimpleNamespace(id=None), None, "json", ())  # type: ignore[arg-type]
    answered: list[Any] = []
    call.on_answer = answered.append
    call.completed(code, "failed", {} if code == 0 else None, 1, 2)
    assert len(answered) == 1 and answered[0].status == 500
    assert answered[0].body == b'{"error":"%s"}' % messages.INTERNAL_ERROR.encode()
    assert call.done() and call.timings() == (1, 2)


def test_a_body_of_any_buffer_is_framed_by_its_bytes() -> None:
    """Content-Length counts the body's bytes: a buffer of 4-byte items (an array, a memoryview of
    one) says 12 for three items, not 3, or the client would read the rest as the next answer."""
    import numpy as np

    data = np.arange(3, dtype=np.float32)
    router = Router()
    router.add("GET", "/bad", lambda request: messages.Response(data, content_type="application/octet-stream"))
    router.add("GET", "/ok", lambda request: messages.Response(memoryview(data)))
    assert _serve(router, PIPELINE, True) == [(200, data.tobytes()), (200, data.tobytes())]
