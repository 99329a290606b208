"""Large replies through the real server: encoded on a decoder thread (the JSON writer releasing the
GIL), answered over HTTP in order with the small ones, the same values for JSON, binary and msgpack."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from conftest import Repo, decode, encode, infer, toml_tensors

from pyserve.server.handlers import ENCODE_OFF_LOOP_BYTES


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serve_module) -> str:  # type: ignore[no-untyped-def]
    repo = Repo(tmp_path_factory.mktemp("reply") / "models")
    repo.identity("echo", [("x", "FP32", [-1])])
    # A small request with a large reply: the body is decoded on the loop, the reply encoded off it.
    repo.python("tile", TILE_MODEL.format(times=TIMES), 'backend = "python"\n'
                + toml_tensors("inputs", [("x", "FP32", [-1])]) + toml_tensors("outputs", [("y", "FP32", [-1])]))
    return serve_module([repo.root]).url


TIMES = ENCODE_OFF_LOOP_BYTES // 16 + 1  # 4 FP32 values tiled this many times: a reply over the threshold
TILE_MODEL = """
import numpy as np

class Model:
    def infer(self, inputs):
        return {{"y": np.tile(inputs["x"], {times})}}
"""


@pytest.mark.parametrize("protocol", ["json", "binary", "msgpack"])
def test_a_small_request_with_a_large_reply(server: str, protocol: str) -> None:
    x = np.array([1.5, np.nan, -np.inf, 1e-7], np.float32)
    for _ in range(3):
        _, outputs = decode(infer(server, "tile", protocol, {"x": x}))
        np.testing.assert_array_equal(outputs["y"], np.tile(x, TIMES))


@pytest.mark.parametrize("protocol", ["json", "binary", "msgpack"])
def test_large_and_small_replies(server: str, protocol: str) -> None:
    large = np.random.default_rng(0).standard_normal(ENCODE_OFF_LOOP_BYTES // 4 + 1).astype(np.float32)
    large[:3] = [np.nan, np.inf, -np.inf]
    for arr in (large, large[:7], large):
        _, outputs = decode(infer(server, "echo", protocol, {"in_x": arr}, id="r"))
        np.testing.assert_array_equal(outputs["out_x"], arr)


def test_pipelined_requests_are_answered_in_order(server: str) -> None:
    """A large reply finished off the loop keeps its place among the answers of one connection."""
    large = np.arange(ENCODE_OFF_LOOP_BYTES // 4 + 1, dtype=np.float32)
    host, port = server.removeprefix("http://").split(":")
    requests = b""
    for i, arr in enumerate((large, large[:3], large, large[:1], large[:4], large[:2])):
        body, headers = encode("json", {"in_x" if i < 4 else "x": arr}, id=str(i))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        model = "echo" if i < 4 else "tile"
        requests += (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                     ).encode() + body
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(requests + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    ids = [received.find(f'"id":"{i}"'.encode()) for i in range(6)]
    assert received.count(b"HTTP/1.1 200") == 7 and all(i > 0 for i in ids) and ids == sorted(ids)
