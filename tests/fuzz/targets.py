"""Fuzz targets (atheris, libFuzzer's engine for Python): every request decoder, and the HTTP request
path from raw bytes to the answers written. Each target takes one input's bytes; anything raised
other than pyserve's own :class:`~pyserve.errors.PyserveError` is a finding, and so is an answer the
HTTP path writes that is not a well-formed response, or a 500 (a server fault).

    python tests/fuzz/run.py json -max_total_time=600      # longer runs: see run.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from http_fakes import FakeTransport  # tests/, put on sys.path by run.py

from pyserve.config import TensorSpec
from pyserve.errors import PyserveError
import numpy as np

from pyserve.datatypes import DATATYPES, NUMPY_DTYPES
from pyserve.protocol import kserve, kserve_json, kserve_reply, msgpack_codec
from pyserve.server.http import Connection, HttpServer
from pyserve.server.limits import TransportLimits
from pyserve.server.messages import Request, Response, error_response
from pyserve.server.router import Router
from pyserve.service.input_check import InputCheck

# A model as the decoders' checks see it: x FP32 [-1, 4] and s BYTES [-1, -1], batching up to 8.
CHECK = InputCheck(SimpleNamespace(  # type: ignore[arg-type]
    inputs=(TensorSpec("x", "FP32", (4,)), TensorSpec("s", "BYTES", (-1,))), max_batch_size=8,
    auto_completed=()))


def _decoded(decode: Callable[[], Any]) -> None:
    try:
        decode()
    except PyserveError:
        pass  # the decoders' one way to refuse a body


def fuzz_json(data: bytes) -> None:
    """KServe JSON bodies, with and without the model's checks."""
    _decoded(lambda: kserve.decode_request(data))
    _decoded(lambda: kserve.decode_request(data, None, CHECK))


def _outcome(data: bytes, cpp: bool) -> Any:
    """Each input's dtype, shape and bytes, or the refusal's message; ``cpp`` False: the reference
    decoder alone (kserve_json switched off)."""
    parse = kserve_json.parse
    if not cpp:
        kserve_json.parse = lambda body: None  # type: ignore[assignment]
    try:
        req = kserve.decode_request(data)
    except PyserveError as e:
        return e.message
    finally:
        kserve_json.parse = parse  # type: ignore[assignment]
    return [(n, a.dtype.str, a.shape, a.tolist() if a.dtype == object else a.tobytes())
            for n, a in req.inputs.items()]


def fuzz_json_diff(data: bytes) -> None:
    """KServe JSON bodies decoded with the C++ tensor decoder and by the reference decoder alone: the
    same arrays (bit for bit) or the same refusal."""
    cpp, reference = _outcome(data, True), _outcome(data, False)
    assert cpp == reference, (data[:300], cpp, reference)


def _reply(data: bytes) -> list[tuple[str, Any, bool]]:
    """Output tensors made of fuzz bytes: per tensor a byte picks the datatype (and binary or JSON),
    a byte the name's length, then the name's bytes, a byte the data's length in elements, then the
    data's bytes reinterpreted as that datatype (every float bit pattern) or, for BYTES, split at
    each 0xff (so that elements may be any bytes, UTF-8 or not)."""
    items: list[tuple[str, Any, bool]] = []
    pos = 0
    while pos + 3 <= len(data) and len(items) < 4:
        datatype = DATATYPES[data[pos] % len(DATATYPES)]
        binary = data[pos] >= 128
        n = data[pos + 1] % 16
        name = data[pos + 2:pos + 2 + n].decode("utf-8", "replace")
        pos += 2 + n
        count = data[pos] % 64 if pos < len(data) else 0
        pos += 1
        if datatype == "BYTES":
            raw = data[pos:pos + count]
            arr = np.array(raw.split(b"\xff") + [b""], dtype=object)[:-1]
            pos += count
        else:
            dtype = NUMPY_DTYPES[datatype]
            raw = data[pos:pos + count * dtype.itemsize]
            raw = raw[:len(raw) // dtype.itemsize * dtype.itemsize]
            pos += len(raw)
            arr = np.frombuffer(raw, dtype=dtype)
            if datatype == "BOOL":
                arr = arr.view(np.uint8) % 2 == 1  # numpy bools are 0 or 1
        items.append((name, arr.reshape(2, -1) if arr.size % 2 == 0 and arr.size else arr, binary))
    return items


def fuzz_reply_diff(data: bytes) -> None:
    """KServe replies written by the C++ reply writer and by the reference encoder: the same bytes,
    or the same refusal."""
    items = _reply(data)
    doc = {"model_name": "m", "model_version": "1"}
    outcomes = []
    for encode in (kserve_reply.encode_response, kserve._reference_body):
        try:
            outcomes.append(encode(doc, items))
        except PyserveError as e:
            outcomes.append(e.message)
    if outcomes[0] is not None:  # None: the writer declined, the reference writes it
        assert outcomes[0] == outcomes[1], (data[:300], outcomes)


def fuzz_binary(data: bytes) -> None:
    """Binary extension bodies: the first two bytes give Inference-Header-Content-Length."""
    if len(data) < 2:
        return
    header_length = int.from_bytes(data[:2], "little") % (len(data) - 1)
    body = data[2:]
    _decoded(lambda: kserve.decode_request(body, header_length, CHECK))
    _decoded(lambda: kserve.decode_request(body, str(header_length)))


def fuzz_msgpack(data: bytes) -> None:
    """msgpack bodies, with and without the model's checks."""
    _decoded(lambda: msgpack_codec.decode_request(data))
    _decoded(lambda: msgpack_codec.decode_request(data, CHECK))


# -- the HTTP request path ---------------------------------------------------------------------

def _infer(request: Request) -> Response:
    """Decodes the body as the infer handler does (its protocol chosen by the content type)."""
    try:
        if request.content_type == "application/msgpack":
            msgpack_codec.decode_request(request.body, CHECK)
        else:
            kserve.decode_request(request.body, request.headers.get("inference-header-content-length"), CHECK)
    except PyserveError as e:
        return error_response(400, e.message)
    return Response(b"{}")


_loop = asyncio.new_event_loop()
_router = Router()
_router.add("POST", "/v2/models/{model}/infer", _infer)
_router.add("GET", "/v2/health/live", lambda request: Response(b'{"live": true}'))


async def _make_server() -> HttpServer:
    return HttpServer(None, _router, TransportLimits(max_body_bytes=1 << 16, max_connections=4))


_server = _loop.run_until_complete(_make_server())


def fuzz_http(data: bytes) -> None:
    """Raw bytes into one connection, in up to three reads (split where the first byte says); every
    answer written must be a well-formed HTTP/1.1 response, none a 500."""
    conn = Connection(_server)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    cut = data[0] if data else 0
    for piece in (data[1:cut + 1], data[cut + 1:cut * 2 + 1], data[cut * 2 + 1:]):
        if piece:
            conn.data_received(piece)
    conn.sweep(_server.now + 10**6)  # every deadline passed: 408s, idle closes
    conn.connection_lost(None)
    # The loop never runs: drop the timers the connection set (lingering closes), or they pile up.
    _loop._scheduled.clear()  # type: ignore[attr-defined]
    for answer in transport.written:
        if answer.startswith(b"HTTP/1.1 100 Continue"):
            continue
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        status = int(answer[9:12])
        assert 200 <= status < 500 or status in (501, 505), answer[:300]


TARGETS: dict[str, Callable[[bytes], None]] = {
    "json": fuzz_json,
    "json_diff": fuzz_json_diff,
    "reply_diff": fuzz_reply_diff,
    "binary": fuzz_binary,
    "msgpack": fuzz_msgpack,
    "http": fuzz_http,
}
