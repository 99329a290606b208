"""A real ``pyserve serve`` subprocess: inference over JSON, the binary extension and msgpack, every
datatype, errors and their statuses, the queue and request parameters, metrics, stock tritonclient,
pyserve.client, the demo repository, ``--model`` and a broken config.

Requests are encoded and replies decoded by conftest's own wire helpers, not by pyserve's codecs.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import requests
from conftest import (
    DTYPES,
    GATE_MODEL,
    Gate,
    Repo,
    Server,
    add_pytypes_and_raiser,
    decode,
    encode,
    from_raw,
    gate_config,
    infer,
    model_stats,
    onnx_affine_bytes,
    run_onnx,
    wait_until,
    wire_datatype,
)
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip("onnx")

MAX_BODY = 1 << 20
PROTOCOLS = ("json", "binary", "msgpack")


def metrics(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics as {(name, labels): value}."""
    resp = requests.get(url + "/metrics", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


OUTCOMES = ("success", "failure", "timeout", "rejected", "cancelled")


def outcome_deltas(before: dict, after: dict, model: str) -> dict[str, float]:
    """How each ``pyserve_requests_total`` outcome series of ``model`` grew (the ones that did);
    every outcome must be exported."""
    exported = {dict(ls)["outcome"] for (n, ls), _ in after.items()
                if n == "pyserve_requests_total" and dict(ls)["model"] == model}
    assert exported == set(OUTCOMES), exported
    deltas = {o: metric(after, "pyserve_requests_total", model=model, outcome=o)
              - metric(before, "pyserve_requests_total", model=model, outcome=o) for o in OUTCOMES}
    return {o: d for o, d in deltas.items() if d}


# ---------------------------------------------------------------------------------------------
# The shared server

def _alltypes_specs() -> list[tuple[str, str, list[int]]]:
    return [(d.lower(), d, [-1]) for d in DTYPES]


def build_main_repo(repo: Repo) -> None:
    """affine (ONNX, batching), alltypes (identity), pytypes (python), gate (python, blocking)."""
    repo.onnx("affine", {1: 1.5}, config="""
        max_batch_size = 16
        [dynamic_batching]
        max_queue_delay_us = 10000
        """)
    repo.identity("alltypes", _alltypes_specs(), max_batch_size=8)
    add_pytypes_and_raiser(repo)
    repo.python("gate", GATE_MODEL.format(scale=2.0), gate_config(1, """
        [dynamic_batching]
        max_queue_size = 3
        priority_levels = 2
        default_priority_level = 2
        """))


@pytest.fixture(scope="module")
def main_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("main") / "models")
    build_main_repo(repo)
    return repo


@pytest.fixture(scope="module")
def server(serve_module: Any, main_repo: Repo) -> Server:
    return serve_module([main_repo.root, "--max-body-bytes", MAX_BODY])


@pytest.fixture
def gate(server: Server, main_repo: Repo) -> Iterator[Gate]:
    """The gate of the ``gate`` model, left open (and the model idle) after each test."""
    g = Gate(main_repo.root / "gate" / "gate.lock")
    yield g
    g.open()
    wait_until(lambda: model_stats(server.url, "gate")["in_flight"] == 0, what="gate model idle")


def assert_still_serving(url: str) -> None:
    """A good request right after a bad one is answered correctly."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    _, out = decode(infer(url, "affine", "json", {"x": x}))
    # affine version 1: scale 1.5 per column times (1, 1.25, 1.5, 1.75), bias 1 (see Repo.onnx).
    weights = np.array([1.5 * (1 + 0.25 * i) for i in range(4)], np.float32)
    np.testing.assert_array_equal(out["y"], x * weights + np.float32(1.0))


def sample_input(rows: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32) * 10


# ---------------------------------------------------------------------------------------------
# Numbers and datatypes

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_same_numbers_as_onnxruntime_in_process(server: Server, main_repo: Repo, protocol: str) -> None:
    x = sample_input(5, seed=1)
    expected = run_onnx(main_repo.root / "affine" / "1" / "model.onnx", x)
    doc, out = decode(infer(server.url, "affine", protocol, {"x": x}))
    assert doc["model_name"] == "affine" and doc["model_version"] == "1"
    assert set(out) == {"y", "argmax"}
    assert out["y"].dtype == np.float32 and out["argmax"].dtype == np.int64
    np.testing.assert_array_equal(out["y"], expected["y"])
    np.testing.assert_array_equal(out["argmax"], expected["argmax"])


def datatype_samples(protocol: str) -> dict[str, np.ndarray]:
    """Two rows of three elements per datatype, with the extremes of each type."""
    def b(*values: bytes) -> np.ndarray:
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr

    data = {
        "bool": np.array([True, False, True, False, False, True]),
        "uint8": np.array([0, 255, 7, 128, 1, 254], "<u1"),
        "uint16": np.array([0, 65535, 7, 32768, 1, 2], "<u2"),
        "uint32": np.array([0, 2**32 - 1, 7, 2**31, 1, 2], "<u4"),
        "uint64": np.array([0, 2**64 - 1, 7, 2**63, 1, 2**53 + 1], "<u8"),
        "int8": np.array([-128, 127, 0, -1, 1, 5], "<i1"),
        "int16": np.array([-32768, 32767, 0, -1, 1, 5], "<i2"),
        "int32": np.array([-2**31, 2**31 - 1, 0, -1, 1, 5], "<i4"),
        "int64": np.array([-2**63, 2**63 - 1, 0, -1, 2**53 + 1, 5], "<i8"),
        "fp16": np.array([65504, -65504, 0.1, -2.5, 6e-8, 0], "<f2"),
        "fp32": np.array([3.4028235e38, -1e-45, 0.1, -2.5, 1.17549435e-38, 0], "<f4"),
        "fp64": np.array([1.7976931348623157e308, -5e-324, 0.1, -2.5, 1 / 3, 0], "<f8"),
        "bytes": b("héllo".encode(), b"", b"a b c", "日本".encode(), b"x" * 300, b"0"),
    }
    if protocol != "json":  # JSON has no NaN, no infinity, and carries BYTES as UTF-8 text
        data["fp32"][5] = np.inf
        data["fp64"][5] = np.nan
        data["bytes"][1] = b"\x00\xff\xfe"
    return {f"in_{name}": arr.reshape(2, 3) for name, arr in data.items()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["alltypes", "pytypes"], ids=["identity", "python"])
def test_every_datatype_round_trips(server: Server, model: str, protocol: str) -> None:
    inputs = datatype_samples(protocol)
    doc, out = decode(infer(server.url, model, protocol, inputs))
    assert set(out) == {"out_" + name[3:] for name in inputs}
    for name, sent in inputs.items():
        got = out["out_" + name[3:]]
        assert got.dtype == sent.dtype, name
        assert got.shape == (2, 3), name
        if sent.dtype.kind == "f":
            np.testing.assert_array_equal(got, sent, err_msg=name)  # NaN equals NaN here
            assert (np.signbit(got) == np.signbit(sent)).all(), name
        else:
            assert got.tolist() == sent.tolist(), name


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_id_is_echoed(server: Server, protocol: str) -> None:
    doc, _ = decode(infer(server.url, "affine", protocol, {"x": sample_input(1)}, id=f"req-{protocol}-7"))
    assert doc["id"] == f"req-{protocol}-7"
    doc, _ = decode(infer(server.url, "affine", protocol, {"x": sample_input(1)}))
    assert "id" not in doc


def test_requested_outputs_only(server: Server) -> None:
    x = sample_input(2)
    doc, out = decode(infer(server.url, "affine", "json", {"x": x}, outputs=[{"name": "argmax"}]))
    assert set(out) == {"argmax"}
    # A mix of binary and JSON outputs in one reply.
    body, headers = encode("json", {"x": x}, outputs=[{"name": "y", "parameters": {"binary_data": True}},
                                                      {"name": "argmax"}])
    resp = requests.post(server.url + "/v2/models/affine/infer", data=body, headers=headers, timeout=10)
    _, out2 = decode(resp)
    assert "Inference-Header-Content-Length" in resp.headers
    np.testing.assert_array_equal(out2["argmax"], out["argmax"])
    assert out2["y"].shape == (2, 4)


# ---------------------------------------------------------------------------------------------
# Errors: each answers its status, names what was wrong, and the server keeps serving

X_OK = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}


def _json(doc: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def _binary(entry: dict, raw: bytes, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [entry]}).encode()
    length = len(header) if header_length is None else header_length
    return header + raw, {"Inference-Header-Content-Length": str(length)}


def _msgpack(doc: Any) -> tuple[bytes, dict[str, str]]:
    return msgpack.packb(doc), {"Content-Type": "application/msgpack"}


BAD_REQUESTS = {
    "not-json": ((b"{inputs: ", {"Content-Type": "application/json"}), ["not valid JSON"]),
    "not-an-object": (_json([1, 2]), ["JSON object"]),
    "no-inputs": (_json({}), ["inputs"]),
    "missing-input": (_json({"inputs": [{**X_OK, "name": "z"}]}), ["'x'"]),
    "shape": (_json({"inputs": [{**X_OK, "shape": [1, 5], "data": [1, 2, 3, 4, 5]}]}),
              ["'x'", "[-1, 4]", "[1, 5]"]),
    "rank": (_json({"inputs": [{**X_OK, "shape": [4]}]}), ["'x'", "[-1, 4]"]),
    "datatype": (_json({"inputs": [{**X_OK, "datatype": "INT32"}]}), ["'x'", "FP32", "INT32"]),
    "extra-input": (_json({"inputs": [X_OK, {**X_OK, "name": "q"}]}), ["'q'", "inputs are x"]),
    "unknown-datatype": (_json({"inputs": [{**X_OK, "datatype": "FLOAT"}]}), ["'x'", "FLOAT", "FP32"]),
    "element-count": (_json({"inputs": [{**X_OK, "data": [1, 2, 3]}]}), ["'x'", "4 elements", "got 3"]),
    "non-numeric-data": (_json({"inputs": [{**X_OK, "data": ["a", "b", "c", "d"]}]}), ["'x'", "numbers"]),
    "binary-byte-size": (_binary({"name": "x", "datatype": "FP32", "shape": [1, 4],
                                  "parameters": {"binary_data_size": 12}}, b"\0" * 12),
                         ["'x'", "16 bytes", "got 12"]),
    "binary-size-past-end": (_binary({"name": "x", "datatype": "FP32", "shape": [1, 4],
                                      "parameters": {"binary_data_size": 16}}, b"\0" * 8), ["'x'", "16"]),
    "header-length": (_binary({"name": "x", "datatype": "FP32", "shape": [1, 4],
                               "parameters": {"binary_data_size": 16}}, b"\0" * 16, header_length=10**6),
                      ["Inference-Header-Content-Length"]),
    "msgpack-garbage": ((b"\xc1\xc1", {"Content-Type": "application/msgpack"}), ["msgpack"]),
    "msgpack-byte-size": (_msgpack({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                                "data": b"\0" * 15}]}), ["'x'", "16 bytes", "got 15"]),
    "msgpack-data-list": (_msgpack({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                                "data": [1, 2, 3, 4]}]}), ["'x'", "raw"]),
    "batch-too-large": (_json({"inputs": [{**X_OK, "shape": [17, 4], "data": [0] * 68}]}),
                        ["max_batch_size 16"]),
    "unknown-output": (_json({"inputs": [X_OK], "outputs": [{"name": "nope"}]}), ["'nope'", "argmax, y"]),
    "bad-priority": (_json({"inputs": [X_OK], "parameters": {"priority": 9}}), ["priority", "from 0 to 1", "9"]),
    "huge-priority": (_json({"inputs": [X_OK], "parameters": {"priority": 2**40}}), ["priority", "from 0 to 1"]),
    "float-priority": (_json({"inputs": [X_OK], "parameters": {"priority": 1.0}}), ["priority", "integer"]),
    "bad-timeout": (_json({"inputs": [X_OK], "parameters": {"timeout": -5}}), ["timeout", "from 0 to", "-5"]),
    # Past the core's int64 nanoseconds: must not overflow into a deadline already passed (504).
    "huge-timeout": (_json({"inputs": [X_OK], "parameters": {"timeout": 2**62}}), ["timeout", "from 0 to"]),
    "bool-timeout": (_json({"inputs": [X_OK], "parameters": {"timeout": True}}), ["timeout", "integer"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_input_is_400_naming_the_problem(server: Server, case: str) -> None:
    (body, headers), needles = BAD_REQUESTS[case]
    resp = requests.post(server.url + "/v2/models/affine/infer", data=body, headers=headers, timeout=10)
    assert resp.status_code == 400, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    message = resp.json()["error"]
    for needle in needles:
        assert needle in message, (needle, message)
    assert_still_serving(server.url)


def test_bytes_and_identity_shape_errors_name_the_tensor(server: Server) -> None:
    # Every input given (the model's checks come before the data's), the BYTES one with a number.
    body, _ = encode("json", datatype_samples("json"))
    bad = json.loads(body)
    for entry in bad["inputs"]:
        if entry["name"] == "in_bytes":
            entry["data"] = [3] * len(entry["data"])
    resp = requests.post(server.url + "/v2/models/alltypes/infer", json=bad, timeout=10)
    assert resp.status_code == 400 and "'in_bytes'" in resp.json()["error"]
    # Inputs of one request must agree on the batch size.
    inputs = datatype_samples("json")
    inputs["in_int8"] = inputs["in_int8"][:1]
    body, headers = encode("json", inputs)
    resp = requests.post(server.url + "/v2/models/alltypes/infer", data=body, headers=headers, timeout=10)
    assert resp.status_code == 400, resp.text
    assert "'in_int8'" in resp.json()["error"] and "batch dimension 1" in resp.json()["error"]
    # Bytes that are not UTF-8 cannot go back as JSON text: 400 naming the output, not a 500.
    inputs = datatype_samples("binary")
    body, headers = encode("binary", inputs)
    doc = json.loads(body[:int(headers["Inference-Header-Content-Length"])])
    del doc["parameters"]  # outputs as JSON
    header = json.dumps(doc).encode()
    body = header + body[int(headers["Inference-Header-Content-Length"]):]
    resp = requests.post(server.url + "/v2/models/alltypes/infer", data=body, timeout=10,
                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert resp.status_code == 400, resp.text
    assert "'out_bytes'" in resp.json()["error"] and "binary" in resp.json()["error"]
    assert_still_serving(server.url)


def test_garbage_bodies_never_cause_500(server: Server) -> None:
    rng = np.random.default_rng(3)
    bodies = [rng.bytes(n) for n in (1, 7, 100, 4000)] + [
        b"", b"null", b"[]", b'{"inputs": null}', b'{"inputs": [null]}', b'{"inputs": [{"name": 5}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": "1,4", "data": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4], "data": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2], [3]]}]}',
        b'{"inputs": [' + json.dumps(X_OK).encode() + b"], \"id\": 5}",
    ]
    for content_type in ("application/json", "application/msgpack"):
        for body in bodies:
            for model in ("affine", "alltypes", "pytypes"):
                resp = requests.post(f"{server.url}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": content_type}, timeout=10)
                assert resp.status_code == 400, (model, content_type, body[:60], resp.text)
    assert_still_serving(server.url)


@pytest.mark.parametrize("path", [
    "/v2/models/nope/infer", "/v2/models/affine/versions/2/infer", "/v2/models/affine/versions/x/infer",
    "/v2/models/nope", "/v2/models/affine/versions/9", "/v2/models/nope/ready",
    "/v2/models/affine/versions/9/ready",
])
def test_unknown_model_or_version_is_404(server: Server, path: str) -> None:
    body, headers = encode("json", {"x": sample_input(1)})
    if path.endswith("/infer"):
        resp = requests.post(server.url + path, data=body, headers=headers, timeout=10)
    else:
        resp = requests.get(server.url + path, timeout=10)
    assert resp.status_code == 404, resp.text
    message = resp.json()["error"]
    if "nope" in path:
        assert "'nope'" in message
    else:
        assert "version" in message and "serving: 1" in message
    assert_still_serving(server.url)


def test_body_over_the_limit_is_413(server: Server) -> None:
    before = metric(metrics(server.url), "pyserve_infer_errors_total", model="affine", kind="payload_too_large")
    x = np.zeros((MAX_BODY // 16 + 1, 4), np.float32)  # one row over the limit in binary form
    for protocol in ("binary", "msgpack", "json"):
        resp = infer(server.url, "affine", protocol, {"x": x})
        assert resp.status_code == 413, (protocol, resp.status_code, resp.text[:200])
        assert "too large" in resp.json()["error"]
    # Refused by the transport before the handler ran, and still counted against the model.
    after = metric(metrics(server.url), "pyserve_infer_errors_total", model="affine", kind="payload_too_large")
    assert after - before == 3
    # The limit is the largest body accepted: JSON padded with spaces to exactly the limit passes.
    body, headers = encode("json", {"x": sample_input(1)})
    for size, status in ((MAX_BODY, 200), (MAX_BODY + 1, 413)):
        resp = requests.post(server.url + "/v2/models/affine/infer", data=body.ljust(size), headers=headers,
                             timeout=10)
        assert resp.status_code == status, (size, resp.text[:200])
    assert_still_serving(server.url)


def test_full_queue_is_503_with_retry_after(server: Server, gate: Gate) -> None:
    before = metrics(server.url)
    one = {"x": np.ones((1, 1), np.float32)}
    with ThreadPoolExecutor(4) as pool, gate:
        running = pool.submit(infer, server.url, "gate", "json", one)
        wait_until(lambda: model_stats(server.url, "gate")["in_flight"] == 1, what="first request running")
        queued = [pool.submit(infer, server.url, "gate", "json", one) for _ in range(3)]  # max_queue_size 3
        wait_until(lambda: model_stats(server.url, "gate")["queue_depth"] == 3, what="queue full")
        refused = infer(server.url, "gate", "json", one)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert "full" in refused.json()["error"]
        # A model that is overloaded does not stop the others.
        assert_still_serving(server.url)
        gate.open()
        for future in [running, *queued]:
            _, out = decode(future.result(timeout=30))
            assert out["y"].tolist() == [[2.0]]
    assert outcome_deltas(before, metrics(server.url), "gate") == {"success": 4, "rejected": 1}
    # The queue drained: accepted again.
    _, out = decode(infer(server.url, "gate", "json", one))
    assert out["y"].tolist() == [[2.0]]


def test_priority_parameter_is_honoured(server: Server, gate: Gate) -> None:
    one = {"x": np.ones((1, 1), np.float32)}
    with ThreadPoolExecutor(4) as pool, gate:
        first = pool.submit(infer, server.url, "gate", "json", one)
        wait_until(lambda: model_stats(server.url, "gate")["in_flight"] == 1, what="first request running")
        low = pool.submit(infer, server.url, "gate", "json", one, id="low")  # default level 2
        wait_until(lambda: model_stats(server.url, "gate")["queue_depth"] == 1, what="low queued")
        high = pool.submit(infer, server.url, "gate", "msgpack", one, id="high", parameters={"priority": 1})
        wait_until(lambda: model_stats(server.url, "gate")["queue_depth"] == 2, what="high queued")
        gate.open()
        seq = {}
        for name, future in (("first", first), ("low", low), ("high", high)):
            _, out = decode(future.result(timeout=30))
            seq[name] = int(out["seq"][0, 0])
    # Queued later but with the higher priority: executed before the low-priority one.
    assert seq["first"] < seq["high"] < seq["low"], seq


def test_timeout_parameter_is_honoured(server: Server, gate: Gate) -> None:
    before = metrics(server.url)
    one = {"x": np.ones((1, 1), np.float32)}
    with ThreadPoolExecutor(4) as pool, gate:
        first = pool.submit(infer, server.url, "gate", "json", one)
        wait_until(lambda: model_stats(server.url, "gate")["in_flight"] == 1, what="first request running")
        short = pool.submit(infer, server.url, "gate", "json", one, parameters={"timeout": 1000})  # 1 ms
        patient = pool.submit(infer, server.url, "gate", "binary", one, parameters={"timeout": 60_000_000})
        wait_until(lambda: model_stats(server.url, "gate")["queue_depth"] == 2, what="both queued")
        time.sleep(0.01)  # the 1 ms deadline must have passed before the instance is free again
        gate.open()
        assert first.result(timeout=30).status_code == 200
        late = short.result(timeout=30)
        assert late.status_code == 504, late.text
        assert "timed out" in late.json()["error"]
        _, out = decode(patient.result(timeout=30))
        assert out["y"].tolist() == [[2.0]]
    assert outcome_deltas(before, metrics(server.url), "gate") == {"success": 2, "timeout": 1}


# ---------------------------------------------------------------------------------------------
# Metrics

def _pipelined(url: str, requests_: list[tuple[str, bytes, dict[str, str]]]) -> list[tuple[int, bytes]]:
    """Sends every (path, body, headers) POST on one connection in one write, then reads the answers
    in order: (status, body)."""
    parsed = urllib.parse.urlsplit(url)
    def one(path: str, body: bytes, headers: dict[str, str]) -> bytes:
        lines = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
        return b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n%s\r\n%s" % (
            path.encode(), len(body), lines, body)

    raw = b"".join(one(*r) for r in requests_)
    answers: list[tuple[int, bytes]] = []
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(raw)
        buf = b""
        while len(answers) < len(requests_):
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            assert found is not None, head
            length = int(found.group(1))
            while len(buf) < length:
                chunk = sock.recv(1 << 16)
                assert chunk, "the server closed the connection"
                buf += chunk
            answers.append((int(head[9:12]), buf[:length]))
            buf = buf[length:]
    return answers


def test_metrics_show_batches_under_concurrent_load(server: Server, main_repo: Repo) -> None:
    n = 48
    xs = [sample_input(1, seed=i) for i in range(n)]
    # Pipelined on one connection in one write: the server reads them in one turn of its loop, so the
    # core batches them however loaded the machine is (concurrent connections may each be read in a
    # turn of their own on a busy machine, and a cheap model then runs each request alone).
    before = metrics(server.url)
    replies = _pipelined(server.url, [("/v2/models/affine/infer", *encode("msgpack", {"x": x})) for x in xs])
    after = metrics(server.url)
    expected = run_onnx(main_repo.root / "affine" / "1" / "model.onnx", np.concatenate(xs))
    for i, (status, body) in enumerate(replies):
        assert status == 200
        tensors = msgpack.unpackb(body)["outputs"]
        out = {t["name"]: from_raw(t["datatype"], t["shape"], t["data"]) for t in tensors}
        np.testing.assert_array_equal(out["y"][0], expected["y"][i])  # each request got its own row back

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model="affine", **labels) - metric(before, name, model="affine", **labels)

    batches = delta("pyserve_batches_total")
    assert delta("pyserve_samples_total") == n
    assert delta("pyserve_requests_total", outcome="success") == n
    assert 1 <= batches < n, batches
    assert delta("pyserve_batch_size_count") == batches
    assert delta("pyserve_batch_size_sum") == n
    # Some batch held more than one sample: not every batch falls in the le=1 bucket.
    assert delta("pyserve_batch_size_bucket", le="1.0") < batches
    for hist, count in (("pyserve_request_duration_seconds", n), ("pyserve_queue_duration_seconds", n),
                        ("pyserve_compute_duration_seconds", batches)):
        assert delta(hist + "_count") == count, hist
        assert delta(hist + "_sum") > 0, hist
        assert delta(hist + "_bucket", le="+Inf") == count, hist
        # Bucket bounds in seconds, written as people write them (1e-05, not 9.999999999999999e-06).
        bounds = {dict(ls)["le"] for (name, ls), _ in after.items() if name == hist + "_bucket"}
        assert {"0.001", "+Inf"} <= bounds, bounds
        assert all(b == "+Inf" or float(b) == float(f"{float(b):.6g}") for b in bounds), bounds
        # Buckets are cumulative: nondecreasing in le.
        rows = sorted((float(dict(ls)["le"]), v) for (name, ls), v in after.items()
                      if name == hist + "_bucket" and dict(ls).get("model") == "affine")
        assert [v for _, v in rows] == sorted(v for _, v in rows), hist


# ---------------------------------------------------------------------------------------------
# Clients

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_stock_tritonclient(server: Server, main_repo: Repo, binary: bool) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("affine") and client.is_model_ready("affine", "1")
        assert not client.is_model_ready("nope")
        meta = client.get_server_metadata()
        assert meta["name"] == "pyserve" and "binary_tensor_data" in meta["extensions"]
        model_meta = client.get_model_metadata("affine")
        assert model_meta["versions"] == ["1"]
        assert model_meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        index = client.get_model_repository_index()
        assert {(r["name"], r["state"]) for r in index} >= {("affine", "READY"), ("gate", "READY")}

        x = sample_input(3, seed=5)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("y", "argmax")]
        result = client.infer("affine", [inp], outputs=outs, request_id="triton-1", model_version="1",
                              priority=1, timeout=10_000_000)
        expected = run_onnx(main_repo.root / "affine" / "1" / "model.onnx", x)
        np.testing.assert_array_equal(result.as_numpy("y"), expected["y"])
        np.testing.assert_array_equal(result.as_numpy("argmax"), expected["argmax"])
        assert result.get_response()["id"] == "triton-1"

        inputs = datatype_samples("binary" if binary else "json")
        tensors = []
        for name, arr in inputs.items():
            t = httpclient.InferInput(name, list(arr.shape), wire_datatype(arr))
            t.set_data_from_numpy(arr, binary_data=binary)
            tensors.append(t)
        result = client.infer("pytypes", tensors)
        for t in tensors:
            got = result.as_numpy("out_" + t.name()[3:])
            sent = inputs[t.name()]
            if sent.dtype.kind == "f":
                np.testing.assert_array_equal(got, sent)
            else:
                assert got.tolist() == sent.tolist(), t.name()

        bad = httpclient.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32), binary_data=binary)
        with pytest.raises(Exception) as err:
            client.infer("affine", [bad])
        assert "[-1, 4]" in str(err.value)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["msgpack", "binary", "json"])
def test_pyserve_client_sync(server: Server, main_repo: Repo, protocol: str) -> None:
    from pyserve.client import InferenceClient, InferenceServerError

    x = sample_input(4, seed=9)
    expected = run_onnx(main_repo.root / "affine" / "1" / "model.onnx", x)
    with InferenceClient(server.url, protocol=protocol) as client:
        assert client.is_live() and client.is_ready()
        assert client.model_ready("affine") and not client.model_ready("nope")
        assert client.server_metadata()["name"] == "pyserve"
        assert client.model_metadata("affine")["platform"] == "onnxruntime_onnx"
        out = client.infer("affine", {"x": x}, version=1, request_id="c1")
        np.testing.assert_array_equal(out["y"], expected["y"])
        np.testing.assert_array_equal(out["argmax"], expected["argmax"])
        only = client.infer("affine", {"x": x}, outputs=["argmax"])
        assert set(only) == {"argmax"}
        with pytest.raises(InferenceServerError) as err:
            client.infer("affine", {"x": x[:, :3]})
        assert err.value.status == 400 and "'x'" in err.value.message
        with pytest.raises(InferenceServerError) as err:
            client.infer("affine", {"x": x}, version=7)
        assert err.value.status == 404
        # Still usable after errors (kept-alive connection).
        np.testing.assert_array_equal(client.infer("affine", {"x": x})["y"], expected["y"])


def test_pyserve_client_async(server: Server, main_repo: Repo) -> None:
    from pyserve.client import AsyncInferenceClient, InferenceServerError

    xs = [sample_input(2, seed=20 + i) for i in range(12)]
    path = main_repo.root / "affine" / "1" / "model.onnx"

    async def main() -> None:
        async with AsyncInferenceClient(server.url, protocol="msgpack") as client:
            assert await client.is_live() and await client.is_ready()
            assert await client.model_ready("affine")
            assert (await client.model_metadata("affine"))["name"] == "affine"
            assert (await client.server_metadata())["name"] == "pyserve"
            results = await asyncio.gather(*(client.infer("affine", {"x": x}) for x in xs))
            for x, out in zip(xs, results):
                np.testing.assert_array_equal(out["y"], run_onnx(path, x)["y"])
            with pytest.raises(InferenceServerError) as err:
                await client.infer("nope", {"x": xs[0]})
            assert err.value.status == 404
        async with AsyncInferenceClient(server.url, protocol="json") as client:
            out = await client.infer("pytypes", datatype_samples("json"))
            assert out["out_uint64"].tolist() == datatype_samples("json")["in_uint64"].tolist()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Other ways to start the server

@pytest.mark.slow
def test_demo_repository_when_no_repo_is_given(serve: Any, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    home = tmp_path / "home"
    server = serve([], env={"PYSERVE_HOME": str(home)})
    digits = home / "demo" / "repository" / "digits"
    samples = np.load(digits / "samples.npz")
    assert samples["x"].shape == (16, 64)
    # samples.npz holds the true labels of held-out images; the model gets (at least) 15 of 16 right,
    # and the server must give exactly the model's own predictions.
    expected = run_onnx(digits / "1" / "model.onnx", samples["x"])
    assert np.sum(expected["label"] == samples["label"]) >= 15
    # The golden outputs saved at training (scikit-learn's own answers) are what is served.
    assert expected["label"].tolist() == samples["predicted_label"].tolist()
    np.testing.assert_allclose(expected["probabilities"], samples["probabilities"], atol=1e-5)
    for protocol in PROTOCOLS:
        _, out = decode(infer(server.url, "digits", protocol, {"x": samples["x"]}))
        assert out["label"].tolist() == expected["label"].tolist(), protocol
        np.testing.assert_array_equal(out["probabilities"], expected["probabilities"])
        # One sample at a time (batched with nothing else) gives the same label.
        _, one = decode(infer(server.url, "digits", protocol, {"x": samples["x"][5:6]}))
        assert one["label"].tolist() == [expected["label"][5]]
    text = np.array([["hello wide world"], ["日本 語"]], dtype=object)
    text[0, 0], text[1, 0] = text[0, 0].encode(), text[1, 0].encode()
    _, out = decode(infer(server.url, "textstats", "binary", {"text": text}))
    assert out["characters"].tolist() == [[16], [4]] and out["words"].tolist() == [[3], [2]]


def test_single_file_and_a_broken_config(serve: Any, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "models")
    repo.onnx("good", {1: 3.0})
    repo.onnx("broken", {1: 1.0}, config='max_batch_size = "eight"\n')
    single = tmp_path / "single.onnx"
    single.write_bytes(onnx_affine_bytes(0.5, 2.0))
    server = serve([repo.root, "--model", f"single={single}", "--max-batch-size", "8",
                    "--max-queue-delay-us", "500"], wait_ready=False)
    # Strict readiness: one model failed, so the server is not ready, but it is live and serves the others.
    assert requests.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 503
    index = {r["name"]: r for r in requests.post(server.url + "/v2/repository/index", timeout=5).json()}
    assert index["good"]["state"] == "READY" and index["single"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE"
    reason = index["broken"]["reason"]
    assert str(Path("broken") / "config.toml") in reason, reason
    assert "max_batch_size" in reason and "'eight'" in reason, reason
    resp = infer(server.url, "broken", "json", {"x": sample_input(1)})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert "max_batch_size" in resp.json()["error"]
    assert requests.get(server.url + "/v2/models/broken/ready", timeout=5).status_code == 503

    x = sample_input(6, seed=4)
    _, out = decode(infer(server.url, "single", "binary", {"x": x}))
    np.testing.assert_array_equal(out["y"], run_onnx(single, x)["y"])
    meta = requests.get(server.url + "/v2/models/single", timeout=5).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    config = requests.get(server.url + "/v2/models/single/config", timeout=5).json()
    assert config["max_batch_size"] == 8 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    _, out = decode(infer(server.url, "good", "msgpack", {"x": x}))
    np.testing.assert_array_equal(out["y"], run_onnx(repo.root / "good" / "1" / "model.onnx", x)["y"])


# ---------------------------------------------------------------------------------------------
# Faults, disconnects, error counts

def test_backend_exception_is_a_500_without_the_traceback(server: Server) -> None:
    before = metrics(server.url)
    resp = infer(server.url, "raiser", "json", {"x": np.ones(3, np.float32)})
    assert resp.status_code == 500
    # Counted as a failure of the model's queue and as an internal error answer, nothing else.
    assert outcome_deltas(before, metrics(server.url), "raiser") == {"failure": 1}
    assert metric(metrics(server.url), "pyserve_infer_errors_total", model="raiser", kind="internal") \
        - metric(before, "pyserve_infer_errors_total", model="raiser", kind="internal") == 1
    error = resp.json()["error"]
    assert "ValueError: bad luck" in error and "model 'raiser'" in error
    assert "Traceback" not in error and ".py" not in error, error
    assert "bad luck" in server.log()  # the traceback went to the server's log instead
    assert_still_serving(server.url)


def test_client_that_goes_away_cancels_its_queued_request(server: Server, gate: Gate) -> None:
    import socket

    before = model_stats(server.url, "gate")
    scrape = metrics(server.url)
    one = {"x": np.ones((1, 1), np.float32)}
    with ThreadPoolExecutor(1) as pool, gate:
        first = pool.submit(infer, server.url, "gate", "json", one)
        wait_until(lambda: model_stats(server.url, "gate")["in_flight"] == 1, what="first request running")
        body, headers = encode("json", one)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"POST /v2/models/gate/infer HTTP/1.1\r\nHost: x\r\n{head}"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_until(lambda: model_stats(server.url, "gate")["queue_depth"] == 1, what="second queued")
        # The connection is closed: the handler is cancelled and with it the queued request.
        wait_until(lambda: model_stats(server.url, "gate")["requests_cancelled"]
                   == before["requests_cancelled"] + 1, what="request cancelled")
    assert first.result(timeout=30).status_code == 200
    after = model_stats(server.url, "gate")
    assert after["requests_succeeded"] == before["requests_succeeded"] + 1
    assert after["batches_executed"] == before["batches_executed"] + 1  # the cancelled one never ran
    assert outcome_deltas(scrape, metrics(server.url), "gate") == {"success": 1, "cancelled": 1}


def test_error_answers_are_counted_by_model_and_kind(server: Server) -> None:
    before = metrics(server.url)
    assert infer(server.url, "affine", "json", {"x": np.ones((1, 3), np.float32)}).status_code == 400
    assert requests.post(server.url + "/v2/models/nope/infer", data=b"{}", timeout=10).status_code == 404
    after = metrics(server.url)

    def delta(**labels: str) -> float:
        return (metric(after, "pyserve_infer_errors_total", **labels)
                - metric(before, "pyserve_infer_errors_total", **labels))

    assert delta(model="affine", kind="invalid_argument") == 1
    assert delta(model="", kind="not_found") == 1  # unknown names are not labels


def test_stats_of_one_version(server: Server) -> None:
    rows = requests.get(server.url + "/v2/models/affine/versions/1/stats?format=pyserve", timeout=10).json()["model_stats"]
    assert [r["version"] for r in rows] == ["1"] and rows[0]["name"] == "affine"
    assert requests.get(server.url + "/v2/models/affine/versions/9/stats", timeout=10).status_code == 404
