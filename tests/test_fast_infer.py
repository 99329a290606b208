"""The infer fast path (pyserve.server.fast_infer) against the general path.

A differential test: two ``pyserve serve`` processes over the same repository, one with the fast path
(the default) and one with ``--no-infer-fast-path``, are sent the same corpus of requests (every
encoding and datatype, good and bad inputs, version in the path or not, request ids, parameters,
requested outputs, errors after the submit) on raw keep-alive connections; every answer must be the
same bytes (status line, headers but Date, body), and every ``pyserve_*`` metric must have moved the
same (the duration histograms by their counts). In-process tests check which requests the fast path
takes and that it leaves the others before any side effect.
"""

from __future__ import annotations

import json
import random
import re
import socket
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest import DTYPES, Repo, Server, add_pytypes_and_raiser, encode, run_service
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip("onnx")


def build_repo(repo: Repo) -> None:
    """affine (ONNX, two versions, batching), alltypes (identity, every datatype), numeric (alltypes
    but BYTES), int32s and strings (identity, one INT32 or BYTES input), pytypes (python, every
    datatype, no batching), raiser (python, fails every batch)."""
    repo.onnx("affine", {1: 1.5, 2: 2.5}, config="""
        max_batch_size = 16
        [version_policy]
        all = true
        """)
    repo.identity("alltypes", [(d.lower(), d, [-1]) for d in DTYPES], max_batch_size=8)
    repo.identity("numeric", [(d.lower(), d, [-1]) for d in DTYPES if d != "BYTES"], max_batch_size=8)
    repo.identity("int32s", [("int32", "INT32", [-1])], max_batch_size=8)
    repo.identity("strings", [("bytes", "BYTES", [-1])], max_batch_size=8)
    add_pytypes_and_raiser(repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = Repo(tmp_path_factory.mktemp("fast") / "models")
    build_repo(r)
    return r


@pytest.fixture(scope="module")
def servers(serve_module: Any, repo: Repo) -> tuple[Server, Server]:
    """(fast path on, fast path off) over the same repository."""
    return serve_module([repo.root]), serve_module([repo.root, "--no-infer-fast-path"])


# ---------------------------------------------------------------------------------------------
# The corpus

def samples(protocol: str) -> dict[str, np.ndarray]:
    """One [2, 3] input per datatype (``in_<datatype>``), with edge values."""
    def b(*items: bytes) -> np.ndarray:
        arr = np.empty(len(items), dtype=object)
        arr[:] = list(items)
        return arr

    data = {
        "bool": np.array([True, False, True, True, False, False]),
        "uint8": np.array([0, 255, 1, 2, 3, 4], "<u1"),
        "uint16": np.array([0, 65535, 1, 2, 3, 4], "<u2"),
        "uint32": np.array([0, 2**32 - 1, 1, 2, 3, 4], "<u4"),
        "uint64": np.array([0, 2**64 - 1, 1, 2, 3, 4], "<u8"),
        "int8": np.array([-128, 127, 0, -1, 1, 5], "<i1"),
        "int16": np.array([-32768, 32767, 0, -1, 1, 5], "<i2"),
        "int32": np.array([-2**31, 2**31 - 1, 0, -1, 1, 5], "<i4"),
        "int64": np.array([-2**63, 2**63 - 1, 0, -1, 2**53 + 1, 5], "<i8"),
        "fp16": np.array([65504, -65504, 0.1, -2.5, 6e-8, 0], "<f2"),
        "fp32": np.array([3.4028235e38, -1e-45, 0.1, -2.5, 1.17549435e-38, np.nan], "<f4"),
        "fp64": np.array([1.7976931348623157e308, -5e-324, 0.1, -2.5, 1 / 3, -np.inf], "<f8"),
        "bytes": b("héllo".encode(), b"", b"a b c", "日本".encode(), b"x" * 300, b"0"),
    }
    if protocol != "json":
        data["bytes"][1] = b"\x00\xff\xfe"
    return {f"in_{name}": arr.reshape(2, 3) for name, arr in data.items()}


def _req(path: str, body: bytes, headers: dict[str, str], chunks: random.Random | None = None) -> bytes:
    """A POST of ``body``; in random chunks (Transfer-Encoding: chunked) when ``chunks`` is given."""
    lines = [f"POST {path} HTTP/1.1", "Host: test",
             "Transfer-Encoding: chunked" if chunks else f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if chunks is None:
        return raw + body
    at = 0
    while at < len(body):
        n = min(chunks.randint(1, max(1, len(body) // 2)), len(body) - at)
        raw += b"%x\r\n" % n + body[at:at + n] + b"\r\n"
        at += n
    return raw + b"0\r\n\r\n"


def _infer_req(model: str, protocol: str, inputs: dict[str, np.ndarray], version: str | None = None,
               **doc: Any) -> bytes:
    body, headers = encode(protocol, inputs, **doc)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return _req(path, body, headers)


def _binary_inputs_only(inputs: dict[str, np.ndarray], **doc: Any) -> bytes:
    """A binary-extension body without the ``binary_data_output`` parameter conftest's encoder adds."""
    body, headers = encode("binary", inputs, **doc)
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:length])
    header["parameters"].pop("binary_data_output")
    if not header["parameters"]:
        del header["parameters"]
    new = json.dumps(header).encode()
    return _req("/v2/models/affine/infer", new + body[length:],
                {"Inference-Header-Content-Length": str(len(new)), "Content-Type": "application/octet-stream"})


X = np.arange(8, dtype=np.float32).reshape(2, 4)
X_OK = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
JSON = {"Content-Type": "application/json"}


def corpus() -> dict[str, bytes]:
    """Raw HTTP requests by name: what the fast path takes and what it leaves to the general path."""
    c: dict[str, bytes] = {}
    for protocol in ("json", "binary", "msgpack"):
        for model in ("alltypes", "pytypes"):
            c[f"{model}-{protocol}"] = _infer_req(model, protocol, samples(protocol))
        numeric = {n: a[:1] for n, a in samples(protocol).items() if n != "in_bytes"}
        c[f"numeric-{protocol}"] = _infer_req("numeric", protocol, numeric)
        c[f"numeric-id-{protocol}"] = _infer_req("numeric", protocol, numeric, id="n-1")
        c[f"affine-{protocol}"] = _infer_req("affine", protocol, {"x": X})
        c[f"affine-v1-{protocol}"] = _infer_req("affine", protocol, {"x": X}, version="1")
        c[f"affine-v2-id-{protocol}"] = _infer_req("affine", protocol, {"x": X}, version="2", id="req-7")
        c[f"affine-outputs-{protocol}"] = _infer_req("affine", protocol, {"x": X}, outputs=[{"name": "argmax"}])
        c[f"affine-priority-{protocol}"] = _infer_req("affine", protocol, {"x": X}, parameters={"priority": 1})
        c[f"affine-timeout-{protocol}"] = _infer_req("affine", protocol, {"x": X},
                                                     parameters={"timeout": 10_000_000})
        c[f"affine-classification-{protocol}"] = _infer_req(
            "affine", protocol, {"x": X}, outputs=[{"name": "y", "parameters": {"classification": 2}}])
        c[f"raiser-{protocol}"] = _infer_req("raiser", protocol, {"x": np.ones(3, np.float32)})
        c[f"unknown-output-{protocol}"] = _infer_req("affine", protocol, {"x": X}, outputs=[{"name": "nope"}])
        c[f"bad-shape-{protocol}"] = _infer_req("affine", protocol, {"x": np.ones((1, 5), np.float32)})
        c[f"bad-datatype-{protocol}"] = _infer_req("affine", protocol, {"x": np.ones((1, 4), np.int32)})
        c[f"too-large-batch-{protocol}"] = _infer_req("affine", protocol, {"x": np.ones((17, 4), np.float32)})
        c[f"unknown-model-{protocol}"] = _infer_req("nope", protocol, {"x": X})
        c[f"unknown-version-{protocol}"] = _infer_req("affine", protocol, {"x": X}, version="9")
        c[f"extra-input-{protocol}"] = _infer_req("affine", protocol, {"x": X, "q": X})
    c["binary-json-outputs"] = _binary_inputs_only({"x": X})
    c["binary-mixed-outputs"] = _binary_inputs_only(
        {"x": X}, outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "argmax"}])
    c["json-binary-output"] = _infer_req("affine", "json", {"x": X}, parameters={"binary_data_output": True})
    c["json-binary-output-false"] = _infer_req("affine", "json", {"x": X},
                                               parameters={"binary_data_output": False})
    c["json-binary-output-string"] = _infer_req("affine", "json", {"x": X},
                                                parameters={"binary_data_output": "false"})
    c["json-unknown-parameter"] = _infer_req("affine", "json", {"x": X}, parameters={"color": "red"})
    c["json-no-content-type"] = _req("/v2/models/affine/infer", json.dumps({"inputs": [X_OK]}).encode(), {})
    c["json-charset"] = _req("/v2/models/affine/infer", json.dumps({"inputs": [X_OK]}).encode(),
                             {"Content-Type": "application/json; charset=utf-8"})
    c["json-upper-case-type"] = _req("/v2/models/affine/infer", json.dumps({"inputs": [X_OK]}).encode(),
                                     {"Content-Type": "Application/JSON"})
    c["json-percent-path"] = _req("/v2/models/aff%69ne/infer", json.dumps({"inputs": [X_OK]}).encode(), JSON)
    c["json-query"] = _req("/v2/models/affine/infer?x=1", json.dumps({"inputs": [X_OK]}).encode(), JSON)
    c["json-garbage"] = _req("/v2/models/affine/infer", b"{inputs: ", JSON)
    c["json-not-object"] = _req("/v2/models/affine/infer", b"[1, 2]", JSON)
    c["json-no-inputs"] = _req("/v2/models/affine/infer", b"{}", JSON)
    c["json-non-numeric"] = _req("/v2/models/affine/infer",
                                 json.dumps({"inputs": [{**X_OK, "data": ["a", "b", "c", "d"]}]}).encode(), JSON)
    c["json-nan-token"] = _req("/v2/models/affine/infer",
                               b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], '
                               b'"data": [NaN, Infinity, -Infinity, 1]}]}', JSON)
    c["json-int-given-float"] = _req("/v2/models/alltypes/infer",
                                     b'{"inputs": [{"name": "in_int32", "datatype": "INT32", "shape": [2], '
                                     b'"data": [1.0, 2.5]}]}', JSON)
    c["json-id-not-string"] = _req("/v2/models/affine/infer",
                                   json.dumps({"id": 5, "inputs": [X_OK]}).encode(), JSON)
    body, headers = encode("binary", {"x": X})
    sagemaker = "application/vnd.sagemaker-triton.binary+json;json-header-size="
    c["sagemaker-binary-ok"] = _req("/v2/models/affine/infer", body,
                                    {"Content-Type": sagemaker + headers["Inference-Header-Content-Length"]})
    c["sagemaker-binary-spaced"] = _req("/v2/models/affine/infer", body, {
        "Content-Type": sagemaker.replace(";", "; ") + headers["Inference-Header-Content-Length"]})
    c["sagemaker-binary"] = _req("/v2/models/affine/infer", json.dumps({"inputs": [X_OK]}).encode(),
                                 {"Content-Type": "application/vnd.sagemaker-triton.binary+json;json-header-size=0"})
    c["msgpack-garbage"] = _req("/v2/models/affine/infer", b"\xc1\xc1", {"Content-Type": "application/msgpack"})
    c["msgpack-byte-size"] = _req("/v2/models/affine/infer", msgpack.packb(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": b"\0" * 15}]}),
        {"Content-Type": "application/msgpack"})
    c["msgpack-parameters"] = _req("/v2/models/affine/infer", msgpack.packb(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": b"\0" * 16}],
         "parameters": {"binary_data_output": True}}), {"Content-Type": "application/msgpack"})
    c["http10"] = _req("/v2/models/affine/infer", json.dumps({"inputs": [X_OK]}).encode(), JSON).replace(
        b"HTTP/1.1", b"HTTP/1.0", 1).replace(b"Host: test\r\n", b"Host: test\r\nConnection: keep-alive\r\n", 1)
    c["get-infer"] = b"GET /v2/models/affine/infer HTTP/1.1\r\nHost: test\r\n\r\n"
    c.update(plan_variants())
    return c


def _x_json(data: str, extra: str = "", datatype: str = "FP32", model: str = "affine", name: str = "x",
            shape: str = "[1, 4]", edit: tuple[bytes, bytes] = (b"", b"")) -> bytes:
    entry = f'{{"name": "{name}", "datatype": "{datatype}", "shape": {shape}, "data": {data}}}'
    body = f'{{"inputs": [{entry}]{extra}}}'
    return _req(f"/v2/models/{model}/infer", body.encode().replace(*edit) if edit[0] else body.encode(), JSON)


def _msgpack_inputs_twice(first: np.ndarray, last: np.ndarray) -> bytes:
    """A msgpack map with the key "inputs" twice (msgpack keeps the last)."""
    def inputs(a: np.ndarray) -> bytes:
        return msgpack.packb([{"name": "x", "datatype": "FP32", "shape": list(a.shape), "data": a.tobytes()}])
    body = b"\x82" + msgpack.packb("inputs") + inputs(first) + msgpack.packb("inputs") + inputs(last)
    return _req("/v2/models/affine/infer", body, {"Content-Type": "application/msgpack"})


def plan_variants() -> dict[str, bytes]:
    """Bodies that share their skeleton (all but the tensors' data) with the one before them, so
    that the fast path decodes them by the plan the first made: other numbers and spellings of
    them, data the C++ decoder declines or refuses, sizes that lie, keys given twice."""
    c: dict[str, bytes] = {}
    for i, data in enumerate(["[1, 2, 3, 4]", "[1e5, 100000, 1.0, -0]", "[ [5.25,\n-6E-1 , 7e+0,8] ]",
                              "[NaN, Infinity, -Infinity, 0]", "[1, 2, 3]", "[1, 2, 3, 4, 5]",
                              "[[1, 2], [3, 4]]", "[true, 2, 3, 4]", "[1e400, 2, 3, 4]", "[1, 2, 3, 4]"]):
        c[f"plan-json-{i}"] = _x_json(data)
    for i, data in enumerate(["[1, 2]", "[1e5, 7]", "[1.0, 7]", "[1.5, 7]", "[NaN, 7]", "[-0, 7]",
                              "[2147483648, 7]", "[-2147483648, 7]", "[1, 2]"]):
        c[f"plan-json-int32-{i}"] = _x_json(data, datatype="INT32", model="int32s", name="in_int32",
                                            shape="[1, 2]")
    for i, rid in enumerate(['"a"', '"b"', '"a\\"b\\\\c\\u00e9"', "5", '"a", "id": "b"']):
        c[f"plan-json-id-{i}"] = _x_json("[1, 2, 3, 4]", f', "id": {rid}')
    for i, params in enumerate(["true", "false", "true, \"binary_data_output\": false", "1"]):
        c[f"plan-json-params-{i}"] = _x_json("[1, 2, 3, 4]",
                                             f', "parameters": {{"binary_data_output": {params}}}')
    c["plan-json-escaped-data-key"] = _x_json("[1, 2, 3, 4]", edit=(b'"data"', b'"\\u0064ata"'))
    c["plan-json-data-twice"] = _x_json("[9, 9, 9, 9]", edit=(b'"data": ', b'"data": [1, 2, 3, 4], "data": '))
    c["plan-json-inputs-twice"] = _x_json("[1, 2, 3, 4]", ', "inputs": []')
    strings = ['"plain"', '"q\\"uote"', '"back\\\\slash"', '"\\u00e9\\n\\t"', '"\\ud800"']
    for i, text in enumerate(strings):
        c[f"plan-json-bytes-{i}"] = _x_json(f"[{text}]", datatype="BYTES", model="strings", name="in_bytes",
                                            shape="[1, 1]")
    for i, x in enumerate([X, X * -3.5, X + 0.25]):
        c[f"plan-binary-{i}"] = _binary_inputs_only({"x": x}, id="b")
    raw = _binary_inputs_only({"x": X}, id="b")
    head, _, body = raw.partition(b"\r\n\r\n")
    longer = head.replace(b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 4))
    c["plan-binary-longer-body"] = longer + b"\r\n\r\n" + body + b"\0" * 4
    shorter = head.replace(b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) - 4))
    c["plan-binary-shorter-body"] = shorter + b"\r\n\r\n" + body[:-4]
    for i, x in enumerate([X, X * -3.5, X + 0.25]):
        c[f"plan-msgpack-{i}"] = _infer_req("affine", "msgpack", {"x": x}, id="m")
    c["plan-msgpack-inputs-twice-0"] = _msgpack_inputs_twice(X, X * 2)
    c["plan-msgpack-inputs-twice-1"] = _msgpack_inputs_twice(X * 3, X * 2)
    c.update(id_variants())
    return c


# Request ids the scanner lifts (plain: printable ASCII, no escapes) and ids it must leave in the
# skeleton (escapes, UTF-8, control characters, not a string), each echoed in the reply as sent.
IDS = ['"a"', '""', '"' + "x" * 5000 + '"', '"~!#$%&()*+,-./:;<=>?@[]^_`{|}"', '"\\u0041"', '"q\\"uote"',
       '"back\\\\slash"', '"caf\u00e9"', '"\\ud83d\\ude00"', '"\\t"', '"del\x7f"', "7", "null", "{}",
       '["a"]']


def id_variants() -> dict[str, bytes]:
    """Bodies that differ from the one before them in their id alone (or in where it is, or in the
    keys that look like one), JSON and binary, so that the fast path decodes most by a plan made
    for another id; a binary header whose id changes length moves the tensors' bytes with it."""
    c: dict[str, bytes] = {}
    x_ok = '{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, %d]}'
    for i, rid in enumerate(IDS):
        c[f"plan-json-idv-{i}"] = _x_json(f"[1, 2, 3, {i}]", f', "id": {rid}')
        c[f"plan-json-idv-first-{i}"] = _req("/v2/models/affine/infer",
                                            ('{"id": %s, "inputs": [%s]}' % (rid, x_ok % i)).encode(), JSON)
    for i, doc in enumerate(['{"inputs": [%s], "parameters": {"id": "p"}}',
                             '{"id": "a", "i\\u0064": "b", "inputs": [%s]}', '{"i\\u0064": "b", "inputs": [%s]}',
                             '{"inputs": [%s], "id": "a", "id": "b"}', '{ "id" :"spaced" , "inputs": [%s] }',
                             '{"inputs": [%s]}']):
        c[f"plan-json-idkey-{i}"] = _req("/v2/models/affine/infer", (doc % (x_ok % i)).encode(), JSON)
    inner = '{"id": "inner", "name": "x", "datatype": "FP32", "shape": [1, 4], "data": [4, 3, 2, 1]}'
    c["plan-json-id-in-input"] = _req("/v2/models/affine/infer", ('{"inputs": [%s]}' % inner).encode(), JSON)
    for i, rid in enumerate(["b", "bb", "", "b" * 300, "caf\u00e9", 'q"', "b" * 3]):
        c[f"plan-binary-idv-{i}"] = _binary_inputs_only({"x": X * i}, id=rid)
    return c


# ---------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client: the exact bytes of every answer

class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def exchange(self, raw: bytes) -> tuple[bytes, list[bytes], bytes]:
        """Sends one request; returns (status line, header lines without Date, body)."""
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(self.buf) < length:
            self._read()
        body, self.buf = self.buf[:length], self.buf[length:]
        status, *headers = head.split(b"\r\n")
        return status, [h for h in headers if not h.lower().startswith(b"date:")], body

    def _read(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def pyserve_metrics(server: Server) -> dict[tuple[str, frozenset], float]:
    """The ``pyserve_*`` samples that do not depend on timing: counters, gauges, and the duration
    histograms' counts (their sums and buckets are times)."""
    client = RawClient(server.port)
    try:
        _, _, body = client.exchange(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
    finally:
        client.close()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if not s.name.startswith("pyserve_"):
                continue
            if "_seconds" in s.name and not s.name.endswith("_count"):
                continue
            if s.name.endswith(("_created", "_timestamp_seconds", "_last_inference_ms")):
                continue
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def deltas(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)
            if after.get(k, 0.0) != before.get(k, 0.0)}


def test_fast_and_general_paths_give_the_same_bytes_and_metrics(servers: tuple[Server, Server]) -> None:
    fast, general = servers
    before = [pyserve_metrics(s) for s in servers]
    clients = [RawClient(s.port) for s in servers]
    try:
        for round_ in (1, 2):  # the second time, bodies seen before decode by their plans
            for name, raw in corpus().items():
                got_fast, got_general = (c.exchange(raw) for c in clients)
                assert got_fast == got_general, (name, round_)
    finally:
        for c in clients:
            c.close()
    moved = [deltas(b, pyserve_metrics(s)) for b, s in zip(before, servers)]
    assert moved[0] == moved[1]
    assert moved[0], "the corpus moved no metric"


def test_pipelined_requests_are_answered_in_order(servers: tuple[Server, Server]) -> None:
    """Fast and general answers interleaved on one connection, sent at once: in request order."""
    fast, _ = servers
    c = corpus()
    names = ["affine-json", "unknown-model-json", "affine-v2-id-msgpack", "json-percent-path", "raiser-json",
             "binary-json-outputs", "alltypes-msgpack"]
    expected = []
    client = RawClient(fast.port)
    try:
        for n in names:
            expected.append(client.exchange(c[n]))
        client.sock.sendall(b"".join(c[n] for n in names))
        got = []
        for _ in names:
            got.append(client.exchange(b""))
    finally:
        client.close()
    assert got == expected


# ---------------------------------------------------------------------------------------------
# Which requests the fast path takes, in-process

async def answer_of(result: Any) -> Any:
    """The Response of ``FastInfer.serve``'s result once answered: a Response already, a Pending
    answered by the completion drain, or a Deferred (a large reply encoded off the loop)."""
    import asyncio

    from pyserve.server.messages import Deferred, Pending

    if isinstance(result, Pending):
        answered = asyncio.get_running_loop().create_future()
        result.on_answer = answered.set_result
        result = await answered
    while isinstance(result, Deferred):
        await asyncio.wait([result.future])
        result = result.finish(result.future)
    return result


def reply_outputs(resp: Any) -> dict[str, dict]:
    """The output tensors of an infer reply (JSON, binary or msgpack) by name: datatype, shape, data."""
    if resp.content_type == "application/msgpack":
        return {o["name"]: o for o in msgpack.unpackb(resp.body)["outputs"]}
    length = (resp.headers or {}).get("Inference-Header-Content-Length")
    doc = json.loads(resp.body[:int(length)] if length else resp.body)
    return {o["name"]: o for o in doc["outputs"]}


def _split(raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for h in lines:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return line.split()[1].encode(), headers, body


TAKEN = ["numeric-json", "numeric-binary", "numeric-id-msgpack", "alltypes-json", "alltypes-binary",
         "alltypes-msgpack", "pytypes-json", "affine-json", "affine-binary",
         "affine-msgpack", "affine-v1-json", "affine-v2-id-binary", "affine-outputs-json", "affine-outputs-binary",
         "affine-outputs-msgpack", "raiser-json", "binary-json-outputs", "binary-mixed-outputs",
         "json-binary-output", "json-binary-output-false", "json-no-content-type", "json-nan-token",
         "sagemaker-binary-ok",
         "affine-v2-id-json", "msgpack-parameters",
         # bodies with a skeleton seen before: by its plan (or in full, when the C++ decoder declines)
         "plan-json-1", "plan-json-2", "plan-json-3", "plan-json-int32-1", "plan-json-int32-2",
         "plan-json-id-2", "plan-json-escaped-data-key", "plan-json-bytes-1", "plan-binary-1",
         "plan-msgpack-1", "plan-msgpack-inputs-twice-1", "plan-json-idv-1", "plan-json-idv-2",
         "plan-json-idv-4", "plan-json-idv-7", "plan-json-idv-first-3", "plan-json-idkey-4", "plan-json-id-in-input",
         "plan-binary-idv-1", "plan-binary-idv-3", "plan-binary-idv-4"]
LEFT = ["affine-priority-json", "affine-timeout-msgpack", "affine-classification-json", "unknown-output-json",
        "bad-shape-json", "bad-datatype-binary", "too-large-batch-json", "unknown-model-json",
        "unknown-version-msgpack", "extra-input-json", "json-binary-output-string", "json-unknown-parameter",
        "json-charset", "json-upper-case-type", "json-percent-path", "json-query", "json-garbage",
        "json-not-object", "json-no-inputs", "json-non-numeric", "json-int-given-float", "json-id-not-string",
        "sagemaker-binary", "sagemaker-binary-spaced", "msgpack-garbage", "msgpack-byte-size",
        "too-large-batch-msgpack", "plan-json-4", "plan-json-8", "plan-json-int32-3", "plan-json-int32-6",
        "plan-binary-longer-body", "plan-binary-shorter-body", "plan-json-idv-11", "plan-json-idv-13",
        "plan-json-idkey-0"]


@pytest.fixture(scope="module")
def taken(repo: Repo) -> dict[str, bool]:
    """For each corpus request: whether the fast path took it (in-process, over the same models)."""
    from pyserve.server.fast_infer import FastInfer

    async def body(service: Any, errors: Any) -> dict[str, bool]:
        fast = FastInfer(service)
        out = {}
        for name, raw in corpus().items():
            if name in ("http10", "get-infer"):
                continue
            url, headers, payload = _split(raw)
            result = fast.serve(url, headers, payload)
            out[name] = result is not None
            if result is not None:
                await answer_of(result)
        return out

    return run_service(repo.root, body)


@pytest.mark.parametrize("name", TAKEN)
def test_the_common_requests_take_the_fast_path(taken: dict[str, bool], name: str) -> None:
    assert taken[name] is True


@pytest.mark.parametrize("name", LEFT)
def test_the_others_are_left_to_the_general_path(taken: dict[str, bool], name: str) -> None:
    assert taken[name] is False


def test_a_model_with_a_traffic_policy_or_an_acting_hook_is_left_to_the_general_path(repo: Repo) -> None:
    from pyserve.server.fast_infer import FastInfer
    from pyserve.service import CallContext
    from pyserve.service.hooks import InferHooks

    url, headers, payload = _split(corpus()["affine-json"])

    class Logging(InferHooks):
        def after_response(self, ctx: Any, runner: Any, request: Any, response: Any) -> None:
            pass

    async def body(service: Any, errors: Any) -> tuple[bool, bool, bool]:
        fast = FastInfer(service)
        plain = fast.serve(url, headers, payload) is not None
        await answer_of(fast.serve(url, headers, payload))
        service.host.traffic._policies["affine"] = object()  # any policy: split, alias, shadow, rollout
        with_policy = fast.serve(url, headers, payload) is not None
        del service.host.traffic._policies["affine"]
        service.add_hooks(Logging())  # a hook that is not quiet and does not say it only observes
        with_hook = fast.serve(url, headers, payload) is not None
        return plain, with_policy, with_hook

    assert run_service(repo.root, body) == (True, False, False)


def test_what_serves_a_target_follows_the_loads_and_unloads_of_its_versions(repo: Repo) -> None:
    """The fast path keeps what serves a target (runner, observers, plans) between requests only
    while no entry of the registry changes: the next request after an unload, a load or a reload of
    a version is served by what serves the target now, or left to the general path."""
    from pyserve.server.fast_infer import FastInfer

    url, headers, payload = _split(corpus()["affine-json"])  # no version: the newest
    v1_url, _, _ = _split(corpus()["affine-v1-json"])

    async def body(service: Any, errors: Any) -> list[Any]:
        fast = FastInfer(service)
        models = service.host.repository

        async def served_by(target: bytes = url) -> str | None:
            result = fast.serve(target, headers, payload)
            return None if result is None else json.loads((await answer_of(result)).body)["model_version"]

        seen = [await served_by(), await served_by(v1_url)]
        await models.unload_version("affine", 2)
        seen.append(await served_by())
        await models.load_version("affine", 2)
        seen.append(await served_by())
        reloaded = service.runner("affine", "2")
        await models.load_version("affine", 2)  # swapped for a new runner: the old one is stopped
        seen.append(await served_by())
        assert service.runner("affine", "2") is not reloaded
        await models.unload("affine")
        seen += [await served_by(), await served_by(v1_url)]
        return seen

    assert run_service(repo.root, body) == ["2", "1", "1", "2", "2", None, None]


def test_observing_hooks_ride_the_fast_path_and_see_what_the_general_path_shows(repo: Repo) -> None:
    """A hook that only observes (the payload log) does not send the call to the general path: the
    fast path calls its after_response with the call's context and answer, as complete() does."""
    from pyserve.server.fast_infer import FastInfer
    from pyserve.service import CallContext
    from pyserve.service.hooks import InferHooks

    url, headers, payload = _split(corpus()["affine-json"])
    seen: list[tuple] = []

    class Observer(InferHooks):
        def observes(self, runner: Any) -> bool:
            return True

        def after_response(self, ctx: Any, runner: Any, request: Any, response: Any) -> None:
            assert isinstance(ctx, CallContext)  # hooks may use all of it (deadline_ns, cancel)
            assert (ctx.routing_key, ctx.timeout_us, ctx.priority, ctx.deadline_ns) == (None, 0, 0, 0)
            seen.append((ctx.protocol, ctx.request_id, ctx.timings(), ctx.started_ns, runner.version,
                         sorted(request.inputs), response.model_name, response.id, dict(response.outputs)))

    async def body(service: Any, errors: Any) -> Any:
        fast = FastInfer(service)
        service.add_hooks(Observer())
        result = fast.serve(url, headers, payload)
        assert result is not None  # taken by the fast path
        return await answer_of(result)

    answer = run_service(repo.root, body)
    assert answer.status == 200 and len(seen) == 1
    protocol, rid, (queue_us, compute_us), started_ns, version, inputs, model, response_id, seen_outputs = seen[0]
    assert (protocol, version, inputs, model) == ("http+json", "2", ["x"], "affine")
    assert queue_us >= 0 and compute_us >= 0  # the core's timings, for the payload log
    assert started_ns > 0 and response_id == rid == json.loads(payload).get("id")
    outputs = reply_outputs(answer)
    assert seen_outputs.keys() == outputs.keys()
    assert all(np.array_equal(seen_outputs[k].ravel(), outputs[k]["data"]) for k in outputs)


def test_small_numeric_replies_are_written_by_the_lean_writers(repo: Repo) -> None:
    """Without the general path's encoder, the common replies are still answered (and the
    differential test above says with the same bytes)."""
    from pyserve.server import handlers
    from pyserve.server.fast_infer import FastInfer

    c = corpus()

    async def body(service: Any, errors: Any) -> list[int]:
        fast = FastInfer(service)
        statuses = []
        for name in ("numeric-json", "numeric-id-msgpack", "affine-json", "affine-v2-id-msgpack"):
            with pytest.MonkeyPatch.context() as m:
                m.setattr(handlers, "_encode_infer", lambda *a: pytest.fail("the general encoder"))
                statuses.append((await answer_of(fast.serve(*_split(c[name])))).status)
        return statuses

    assert run_service(repo.root, body) == [200, 200, 200, 200]


def test_decode_plans_are_kept_per_version_whatever_the_target(repo: Repo) -> None:
    """The targets that name one version (its number spelled with leading zeros, or none for the
    newest) share its plans: their memory is bounded by the versions, not by the spellings. And
    targets seen once (1,024 unknown models, first) do not leave the later ones unremembered, each
    request parsing its target and making new plans, for good."""
    from pyserve.server import fast_infer
    from pyserve.server.fast_infer import FastInfer

    _, headers, payload = _split(corpus()["affine-json"])

    async def body(service: Any, errors: Any) -> tuple[int, bool]:
        fast = FastInfer(service)
        for i in range(fast_infer.MAX_TARGETS):
            assert fast.serve(b"/v2/models/unknown-%d/infer" % i, headers, payload) is None
        urls = [b"/v2/models/affine/infer", b"/v2/models/affine/versions/2/infer",
                b"/v2/models/affine/versions/002/infer"]
        for url in urls:
            await answer_of(fast.serve(url, headers, payload))
        remembered = all(url in fast._targets for url in urls)
        return len({id(fast._targets[url].plans()) for url in urls if url in fast._targets}), remembered

    assert run_service(repo.root, body) == (1, True)


def test_a_target_not_asked_for_again_keeps_no_plans_of_a_reloaded_version(repo: Repo) -> None:
    """A target keeps its decode plans by weak reference: once its version is reloaded (a new
    runner), the old runner's plans go with it, even if that target is never asked for again."""
    import gc
    import weakref

    from pyserve.server.fast_infer import FastInfer

    v1_url, headers, payload = _split(corpus()["affine-v1-binary"])

    async def body(service: Any, errors: Any) -> tuple[bool, bool]:
        fast = FastInfer(service)
        await answer_of(fast.serve(v1_url, headers, payload))
        await answer_of(fast.serve(v1_url, headers, payload))  # decoded by the plan made above
        old = weakref.ref(fast._targets[v1_url].plans())
        await service.host.repository.load_version("affine", 1)
        gc.collect()
        return old() is None, fast.serve(v1_url, headers, payload) is not None

    assert run_service(repo.root, body) == (True, True)


@pytest.mark.parametrize("protocol", ["json", "binary", "msgpack"])
def test_a_reloaded_model_is_not_decoded_by_the_plans_of_its_old_config(tmp_path: Any, protocol: str) -> None:
    """Plans made for FP32 [2], then the model reloaded as INT32 [3]: the body planned before is
    refused (left to the general path, which answers the error), the new one answered as INT32."""
    from pyserve.server.fast_infer import FastInfer
    from pyserve.service.control import ModelControl

    models = Repo(tmp_path / "models")
    models.identity("flip", [("x", "FP32", [2])], max_batch_size=4)
    old = _split(_infer_req("flip", protocol, {"in_x": np.array([[1.5, 2.5]], np.float32)}))
    new = _split(_infer_req("flip", protocol, {"in_x": np.array([[1, 2, 3]], np.int32)}))

    async def body(service: Any, errors: Any) -> tuple[list[str], bool, str]:
        fast = FastInfer(service)
        datatypes = []
        for _ in range(2):  # the second by the plan
            outputs = reply_outputs(await answer_of(fast.serve(*old)))
            datatypes.append(outputs["out_x"]["datatype"])
        models.identity("flip", [("x", "INT32", [3])], max_batch_size=4)
        await ModelControl(service.host).load("flip")
        refused = fast.serve(*old) is None
        outputs = reply_outputs(await answer_of(fast.serve(*new)))
        return datatypes, refused, outputs["out_x"]["datatype"]

    assert run_service(models.root, body) == (["FP32", "FP32"], True, "INT32")


def test_long_targets_are_not_remembered(repo: Repo) -> None:
    """A request target can be up to 64 KiB long (the header limit): remembering 1,024 of them held
    over 100 MiB for good. Targets longer than MAX_TARGET_BYTES are parsed each time instead."""
    from pyserve.server.fast_infer import FastInfer

    _, headers, payload = _split(corpus()["affine-json"])

    async def body(service: Any, errors: Any) -> tuple[int, bool]:
        fast = FastInfer(service)
        for i in range(20):
            url = b"/v2/models/unknown-%d-%s/infer" % (i, b"a" * 60_000)
            assert fast.serve(url, headers, payload) is None  # unknown model: the general path's 404
        taken = fast.serve(b"/v2/models/affine/infer", headers, payload) is not None
        return max(map(len, fast._targets)), taken

    longest, taken = run_service(repo.root, body)
    assert longest < 60_000 and taken  # none of the long ones


@pytest.mark.parametrize("target, expected", [
    (b"/v2/models/m/infer", ("m", None)),
    (b"/v2/models/m/versions/3/infer", ("m", "3")),
    (b"/v2/models/m/versions/alias/infer", ("m", "alias")),
    (b"/v2/models//infer", None),
    (b"/v2/models/m/versions//infer", None),
    (b"/v2/models/m/infer/", None),
    (b"/v2/models/m", None),
    (b"/v2/models/m/ready", None),
    (b"/v2/models/a%20b/infer", None),
    (b"/v2/models/m/infer?x", None),
    (b"/v2/models/m/infer#f", None),
    (b"/v2/models/\xc3\xa9/infer", None),
    (b"http://host/v2/models/m/infer", None),
])
def test_parse_target(target: bytes, expected: Any) -> None:
    from pyserve.server.fast_infer import parse_target

    assert parse_target(target) == expected


def test_lean_msgpack_replies_write_what_packb_writes_and_keep_few_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """The msgpack replies joined from pieces made once are the general encoder's bytes, for any
    shapes, ids and outputs; the pieces kept stay under MAX_REPLY_PIECES however many shapes come."""
    from types import SimpleNamespace

    from pyserve.protocol import InferRequest, InferResponse, msgpack_codec
    from pyserve.server import fast_infer

    monkeypatch.setattr(fast_infer, "MAX_REPLY_PIECES", 8)
    runner = SimpleNamespace(config=SimpleNamespace(name="m\u00e9"), version="3")
    for rows in range(1, 40):
        y = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
        outputs = {"y": y, "label": np.arange(rows, dtype=np.int64), "scalar": np.full((), rows, dtype=np.float64)}
        for request_id in (None, "", f"req-{rows}", "x" * 40):
            resp = fast_infer._msgpack_reply(runner, InferRequest({}, request_id), outputs)
            expected = msgpack_codec.encode_response(InferResponse("m\u00e9", "3", outputs, request_id))
            assert resp is not None and resp.body == expected, (rows, request_id)
            assert len(fast_infer._MSGPACK_PIECES) <= 8
    assert fast_infer._msgpack_reply(runner, InferRequest({}), {"y": y.T}) is None  # not C-contiguous
    assert fast_infer._msgpack_reply(runner, InferRequest({}), {"y": y.astype(">f4")}) is None  # byte order


_NUMERIC = [dtype for datatype, dtype in DTYPES.items() if datatype != "BYTES"]


@st.composite
def _outputs(draw: Any) -> dict[str, np.ndarray]:
    """Outputs of any numeric datatype and shape (0-d, empty, a few elements), some transposed (not
    C-contiguous) or big-endian, which the lean writers must write as the general encoder or leave."""
    outputs = {}
    for name in draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=4, unique=True)):
        dtype = draw(st.sampled_from(_NUMERIC))
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        arr = np.frombuffer(draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)),
                                           max_size=dtype.itemsize * int(np.prod(shape)))),
                            np.uint8 if dtype.kind == "b" else dtype).reshape(shape)
        arr = arr.astype(bool) if dtype.kind == "b" else arr
        layout = draw(st.sampled_from(["as is", "transposed", "big-endian"]))
        outputs[name] = (arr if layout == "as is" else arr.T if layout == "transposed"
                         else arr.astype(arr.dtype.newbyteorder(">")))
    return outputs


@given(_outputs(), st.sampled_from(["m", 'm"\\\u00e9\u2028']), st.one_of(st.none(), st.text(max_size=20)),
       st.sampled_from([None, {"binary_data_output": True}, {"binary_data_output": False}]),
       st.sampled_from(["http+json", "http+binary", "http+msgpack"]), st.data())
@example({"a": np.zeros((), bool), "b": np.zeros((0,), bool)}, "m", None, None, "http+json", None)
@settings(max_examples=300, deadline=None)
def test_lean_replies_write_what_the_general_encoder_writes(outputs: dict[str, np.ndarray], model: str,
                                                            request_id: str | None, parameters: Any,
                                                            protocol: str, data: Any) -> None:
    """Every reply a lean writer takes is the general encoder's bytes (body, content type, headers),
    whatever the outputs requested and which go binary: an empty JSON output beside a binary one
    (no JSON element at all) included, which the lean writer once answered 500."""
    from types import SimpleNamespace

    from pyserve.protocol import InferRequest, InferResponse, RequestedOutput
    from pyserve.server import fast_infer, handlers

    names = list(outputs)
    if data is None:  # the explicit example: "a" binary, "b" (empty) as JSON
        requested: Any = [RequestedOutput("a", True, None), RequestedOutput("b", None, None)]
    elif data.draw(st.booleans()):
        chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        requested = [RequestedOutput(n, data.draw(st.sampled_from([None, True, False])), None)
                     for n in chosen]
    else:
        requested = None
    if requested is not None:
        outputs = {r.name: outputs[r.name] for r in requested}
    runner = SimpleNamespace(config=SimpleNamespace(name=model), version="3")
    req = InferRequest({}, request_id, parameters, requested)
    for _ in range(2):  # the pieces made, then the pieces kept
        lean = fast_infer._lean_reply(runner, req, outputs, protocol)
        if lean is None:
            return  # left to the general encoder
        general = handlers._encode_infer(req, InferResponse(model, "3", outputs, request_id), protocol)
        assert (lean.status, lean.content_type, lean.headers, lean.body) == (
            general.status, general.content_type, general.headers, general.body)
    # A plan's reply form (a request without an id), where there is one, writes the same bytes for
    # these outputs and refuses outputs of another shape, dtype or layout, or missing.
    form = fast_infer.reply_form(runner, req, outputs, protocol)
    if form is None:
        return
    assert request_id is None and all(isinstance(a, np.ndarray) for a in outputs.values())
    made = form.reply(outputs)
    assert made is not None
    assert (made.status, made.content_type, made.headers, made.body) == (
        general.status, general.content_type, general.headers, general.body)
    name = form.names[data.draw(st.integers(0, len(form.names) - 1))] if data is not None else form.names[0]
    arr = outputs[name]
    changes = [arr.reshape(1, *arr.shape), np.zeros(arr.shape, np.int16 if arr.dtype == np.int8 else np.int8)]
    if arr.ndim == 2 and min(arr.shape) > 1:
        changes.append(np.asfortranarray(arr))  # the same shape and dtype, not C-contiguous
    for other in [*changes, None]:  # None: the output missing
        changed = {k: v for k, v in outputs.items() if k != name}
        if other is not None:
            changed[name] = other
        assert form.reply(changed) is None, (name, None if other is None else (other.shape, other.dtype))
