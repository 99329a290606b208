"""The sync and async clients against a small fake server (aiohttp + the codecs) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from aiohttp import web

from pyserve.client import AsyncInferenceClient, InferenceClient, InferenceServerError
from pyserve.protocol.http_status import kind_of_status
from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol import InferResponse, kserve, msgpack_codec

PROTOCOLS = ["msgpack", "json", "binary"]
SEEN = web.AppKey("seen", list)  # what the fake server decoded, one dict per infer request


# ------------------------------------------------------------------------------ the fake server


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=kserve.encode_error(message), content_type="application/json", headers=headers
    )


async def _infer(request: web.Request) -> web.Response:
    """Echo the inputs as outputs; some model names answer errors instead."""
    model = request.match_info["model"]
    version = request.match_info.get("version", "1")
    if model == "busy":
        return _json_error(503, "model 'busy' is overloaded", **{"Retry-After": "2"})
    if model == "broken":
        return _json_error(500, "backend crashed")
    if model == "slow":
        await asyncio.sleep(0.5)
    elif model != "echo":
        return _json_error(404, f"unknown model {model!r}")
    body = await request.read()
    is_msgpack = request.content_type == msgpack_codec.CONTENT_TYPE
    header_length = request.headers.get(kserve.HEADER_LENGTH)
    try:
        req = msgpack_codec.decode_request(body) if is_msgpack else kserve.decode_request(body, header_length)
    except PyserveError as e:
        return _json_error(400, e.message)
    request.app[SEEN].append(
        {
            "msgpack": is_msgpack,
            "header_length": header_length,
            "id": req.id,
            "parameters": req.parameters,
            "version": version,
            "outputs": req.outputs,
        }
    )
    resp = InferResponse(model, version, req.inputs, id=req.id)
    if is_msgpack:
        return web.Response(
            body=msgpack_codec.encode_response(resp, req.outputs), content_type=msgpack_codec.CONTENT_TYPE
        )
    binary_default = bool(req.parameters.get("binary_data_output", False))
    out, length = kserve.encode_response(resp, req.outputs, binary_default)
    headers = {} if length is None else {kserve.HEADER_LENGTH: str(length)}
    return web.Response(
        body=out,
        headers=headers,
        content_type="application/json" if length is None else "application/octet-stream",
    )


async def _model_ready(request: web.Request) -> web.Response:
    status = {"echo": 200, "loading": 503}.get(request.match_info["model"], 404)
    return web.Response(status=status)


async def _model_metadata(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    if model != "echo":
        return _json_error(404, f"unknown model {model!r}")
    meta = kserve.model_metadata(
        "echo",
        ["1", "2"],
        "python",
        [{"name": "x", "datatype": "FP32", "shape": [-1]}],
        [{"name": "x", "datatype": "FP32", "shape": [-1]}],
    )
    return web.json_response(meta)


def _app() -> web.Application:
    app = web.Application()
    app[SEEN] = []
    app.router.add_get("/v2/health/live", _ok)
    app.router.add_get("/v2/health/ready", _ok)
    app.router.add_get("/v2", _server_metadata)
    app.router.add_get("/v2/models/{model}", _model_metadata)
    app.router.add_get("/v2/models/{model}/versions/{version}", _model_metadata)
    app.router.add_get("/v2/models/{model}/ready", _model_ready)
    app.router.add_post("/v2/models/{model}/infer", _infer)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", _infer)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.Response()


async def _server_metadata(request: web.Request) -> web.Response:
    return web.json_response(kserve.server_metadata("fake", "0", ["x"]))


class FakeServer:
    """The fake server on its own event loop thread, so that the sync client can block on it."""

    def __init__(self) -> None:
        self.app = _app()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.app, shutdown_timeout=1)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def seen(self) -> list[dict]:
        return self.app[SEEN]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    yield fake
    fake.stop()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------- the tests


def sample_inputs() -> dict[str, np.ndarray]:
    return {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
        "i64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
        "b": np.array([True, False, True]),
        "h": np.array([0.5, -1.25], dtype=np.float16),
        "s": np.array([b"caf\xc3\xa9", b""], dtype=object),
        "u": np.array([["x", "yz"]]),  # str arrays go as BYTES
    }


def check_echo(outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    assert set(outputs) == set(inputs)
    for name, arr in inputs.items():
        want = arr
        if arr.dtype.kind == "U":
            want = np.vectorize(lambda v: v.encode(), otypes=[object])(arr)
        assert outputs[name].shape == want.shape, name
        assert outputs[name].dtype == want.dtype, name
        assert np.array_equal(outputs[name], want), name


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sync_infer_round_trip(server: FakeServer, protocol: str) -> None:
    inputs = sample_inputs()
    with InferenceClient(server.url, protocol=protocol) as client:
        outputs = client.infer("echo", inputs, request_id="r7", parameters={"priority": 1})
        check_echo(outputs, inputs)
        conn = client._conn
        outputs = client.infer("echo", {"x": inputs["f32"], "y": inputs["b"]}, version=2, outputs=["y"])
        assert list(outputs) == ["y"] and np.array_equal(outputs["y"], inputs["b"])
        assert client._conn is conn  # the connection was kept alive
    first, second = server.seen[-2:]
    assert first["id"] == "r7" and first["parameters"]["priority"] == 1
    # binary asks for binary outputs the way tritonclient does; json asks for JSON outputs.
    assert first["parameters"].get("binary_data_output") == (True if protocol == "binary" else None)
    assert first["msgpack"] == (protocol == "msgpack")
    assert (first["header_length"] is not None) == (protocol == "binary")
    assert second["version"] == "2" and [o.name for o in second["outputs"]] == ["y"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_infer_round_trip(server: FakeServer, protocol: str) -> None:
    inputs = sample_inputs()

    async def main() -> tuple[dict, dict]:
        async with AsyncInferenceClient(server.url, protocol=protocol) as client:
            a, b = await asyncio.gather(
                client.infer("echo", inputs, request_id="a1"),
                client.infer("echo", {"x": inputs["i64"]}, version="2", outputs=["x"]),
            )
            return a, b

    a, b = asyncio.run(main())
    check_echo(a, inputs)
    check_echo(b, {"x": inputs["i64"]})


def test_health_and_metadata(server: FakeServer) -> None:
    with InferenceClient(server.url) as client:
        assert client.is_live() is True and client.is_ready() is True
        assert client.model_ready("echo") is True
        assert client.model_ready("loading") is False
        assert client.model_ready("nope") is False
        assert client.model_metadata("echo")["versions"] == ["1", "2"]
        assert client.model_metadata("echo", version=2)["inputs"][0]["name"] == "x"
        assert client.server_metadata() == {"name": "fake", "version": "0", "extensions": ["x"]}
        with pytest.raises(InferenceServerError) as info:
            client.model_metadata("nope")
        assert info.value.kind is ErrorKind.NOT_FOUND and "'nope'" in info.value.message

    async def main() -> list:
        async with AsyncInferenceClient(server.url) as client:
            return [
                await client.is_live(),
                await client.is_ready(),
                await client.model_ready("loading"),
                (await client.model_metadata("echo"))["name"],
                (await client.server_metadata())["name"],
            ]

    assert asyncio.run(main()) == [True, True, False, "echo", "fake"]


@pytest.mark.parametrize(
    ("model", "status", "kind", "message"),
    [
        ("nope", 404, ErrorKind.NOT_FOUND, "unknown model 'nope'"),
        ("busy", 503, ErrorKind.UNAVAILABLE, "model 'busy' is overloaded"),
        ("broken", 500, ErrorKind.INTERNAL, "backend crashed"),
    ],
)
def test_server_errors_map_to_kinds(
    server: FakeServer, model: str, status: int, kind: ErrorKind, message: str
) -> None:
    x = {"x": np.zeros(2, dtype=np.float32)}
    with InferenceClient(server.url) as client, pytest.raises(InferenceServerError) as info:
        client.infer(model, x)
    assert (info.value.status, info.value.kind, info.value.message) == (status, kind, message)
    assert isinstance(info.value, PyserveError)

    async def main() -> None:
        async with AsyncInferenceClient(server.url, protocol="binary") as client:
            await client.infer(model, x)

    with pytest.raises(InferenceServerError) as info:
        asyncio.run(main())
    assert (info.value.status, info.value.kind, info.value.message) == (status, kind, message)


def test_bad_request_is_invalid_argument_with_server_message(server: FakeServer) -> None:
    # A BYTES element that is not UTF-8 cannot travel as JSON: the client refuses it before sending.
    with InferenceClient(server.url, protocol="json") as client, pytest.raises(PyserveError) as info:
        client.infer("echo", {"s": np.array([b"\xff"], dtype=object)})
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT and "'s'" in info.value.message
    # The server's 400 comes back with its message (a msgpack body the server cannot parse).
    with InferenceClient(server.url) as client:
        status, headers, body = client._request(
            "POST", "/v2/models/echo/infer", b"\xc1", {"Content-Type": msgpack_codec.CONTENT_TYPE}
        )
        error = client._error(status, headers, body)
    assert error.status == 400 and error.kind is ErrorKind.INVALID_ARGUMENT
    assert "not valid msgpack" in error.message


def test_stale_kept_alive_connection_is_retried_once(server: FakeServer) -> None:
    with InferenceClient(server.url) as client:
        assert client.is_live()
        stale = client._conn
        # As if the server had closed the idle connection: the next send fails on this socket.
        stale.sock.shutdown(socket.SHUT_RDWR)
        out = client.infer("echo", {"x": np.arange(3, dtype=np.int32)})
        assert np.array_equal(out["x"], np.arange(3, dtype=np.int32))
        assert client._conn is not stale


def test_retry_after_is_read_from_503(server: FakeServer) -> None:
    with InferenceClient(server.url) as client, pytest.raises(InferenceServerError) as info:
        client.infer("busy", {"x": np.zeros(1, dtype=np.float32)})
    assert info.value.retry_after == 2.0


def test_connection_refused_is_unavailable() -> None:
    url = closed_port_url()
    with InferenceClient(url) as client, pytest.raises(InferenceServerError) as info:
        client.is_live()
    assert info.value.kind is ErrorKind.UNAVAILABLE and info.value.status is None
    assert "cannot reach the server at " + url in info.value.message

    async def main() -> None:
        async with AsyncInferenceClient(url) as client:
            await client.infer("echo", {"x": np.zeros(1, dtype=np.float32)})

    with pytest.raises(InferenceServerError) as info:
        asyncio.run(main())
    assert info.value.kind is ErrorKind.UNAVAILABLE and url in info.value.message


def test_timeout_is_deadline_exceeded(server: FakeServer) -> None:
    x = {"x": np.zeros(1, dtype=np.float32)}
    with InferenceClient(server.url, timeout_s=0.1) as client, pytest.raises(InferenceServerError) as info:
        client.infer("slow", x)
    assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED

    async def main() -> None:
        async with AsyncInferenceClient(server.url, timeout_s=0.1) as client:
            await client.infer("slow", x)

    with pytest.raises(InferenceServerError) as info:
        asyncio.run(main())
    assert info.value.kind is ErrorKind.DEADLINE_EXCEEDED


def test_kind_of_status() -> None:
    assert kind_of_status(400) is ErrorKind.INVALID_ARGUMENT
    assert kind_of_status(413) is ErrorKind.PAYLOAD_TOO_LARGE
    assert kind_of_status(429) is ErrorKind.UNAVAILABLE
    assert kind_of_status(405) is ErrorKind.INVALID_ARGUMENT
    assert kind_of_status(502) is ErrorKind.INTERNAL
    assert kind_of_status(None) is ErrorKind.UNAVAILABLE


def test_bad_arguments_are_refused_early() -> None:
    with pytest.raises(ValueError, match="protocol"):
        InferenceClient(protocol="grpc")
    with pytest.raises(ValueError, match="url"):
        InferenceClient("ftp://host")


def test_stock_tritonclient_works_against_the_codecs(server: FakeServer) -> None:
    """The same server handlers serve tritonclient.http unchanged (binary and JSON tensors)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_model_ready("echo")
        x = triton.InferInput("x", [2, 2], "FP32")
        x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(2, 2))
        s = triton.InferInput("s", [2], "BYTES")
        s.set_data_from_numpy(np.array([b"a", b"bc"], dtype=object), binary_data=False)
        result = client.infer("echo", [x, s], request_id="5")
        assert result.get_response()["id"] == "5"
        assert np.array_equal(result.as_numpy("x"), np.arange(4, dtype=np.float32).reshape(2, 2))
        assert result.as_numpy("s").tolist() == [b"a", b"bc"]
        result = client.infer("echo", [x, s], outputs=[triton.InferRequestedOutput("s", binary_data=False)])
        assert result.as_numpy("s").tolist() == ["a", "bc"] and result.as_numpy("x") is None
    finally:
        client.close()
