"""Inputs checked against the model before their data is decoded, large bodies decoded off the event
loop, and every client mistake a counted 4xx whatever the shapes, datatypes and parameters
(hypothesis, over JSON, the binary extension and msgpack). In-process: the HTTP handler is called
directly on a started ModelHost."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
from conftest import Repo, toml_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from pyserve.datatypes import DATATYPES, NUMPY_DTYPES
from pyserve.protocol import kserve, msgpack_codec
from pyserve.server import handlers
from pyserve.server.messages import Deferred, Request, Response
from pyserve.service import InferenceService, ModelHost

JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = Repo(tmp_path_factory.mktemp("decode") / "models")
    for name, specs, max_batch_size in [("echo", [("x", "FP32", [4])], 8), ("text", [("s", "BYTES", [-1, -1])], 0),
                                        ("pair", [("a", "INT32", [2]), ("b", "BYTES", [-1])], 4)]:
        repo.config(name, f'backend = "identity"\nmax_batch_size = {max_batch_size}\n'
                    + toml_tensors("inputs", specs) + toml_tensors("outputs", [("o" + n, d, s) for n, d, s in specs]))
    return repo.root


class Service:
    """A started ModelHost and its InferenceService on a private event loop, for sync tests."""

    def __init__(self, models: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors = Counter("errors", "errors", ["model", "kind"], registry=CollectorRegistry())
        self.host = ModelHost(models)
        self.loop.run_until_complete(self.host.start())
        self.service = InferenceService(self.host, self.errors)

    def close(self) -> None:
        self.loop.run_until_complete(self.host.close())
        self.loop.close()

    def count(self, model: str) -> float:
        """Errors answered for ``model``, every kind together."""
        return sum(s.value for m in self.errors.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels["model"] == model)

    def post(self, model: str, body: bytes, headers: dict[str, str]) -> Response:
        """What the infer handler answers for ``body``."""
        return self.loop.run_until_complete(self._post(model, body, headers))

    async def _post(self, model: str, body: bytes, headers: dict[str, str]) -> Response:
        request = Request(SimpleNamespace(service=self.service), "POST", f"/v2/models/{model}/infer", "",
                          {k.lower(): v for k, v in headers.items()}, body)
        request.match_info = {"model": model}
        result = handlers.infer(request)
        if type(result) is Response:
            return result
        while type(result) is Deferred:  # a finish may hand over to another (a reply encoded off the loop)
            await asyncio.wait([result.future])
            result = result.finish(result.future)
        if type(result) is Response:
            return result
        return await result  # type: ignore[misc]


@pytest.fixture(scope="module")
def svc(models: Path) -> Any:
    s = Service(models)
    yield s
    s.close()


def binary_body(entries: list[dict], raws: list[bytes]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": entries}).encode()
    return header + b"".join(raws), {"Inference-Header-Content-Length": str(len(header))}


def bytes_wire(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in items)


# -- 500s that were client mistakes ------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["binary", "msgpack", "json"])
@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**63 - 1], [2**62, 0]])
def test_a_zero_size_bytes_tensor_with_a_huge_dimension_is_a_counted_400(svc: Service, protocol: str,
                                                                          shape: list[int]) -> None:
    # numpy cannot make an empty array of such a shape: that ValueError was a 500, and not counted.
    before = svc.count("text")
    entry = {"name": "s", "datatype": "BYTES", "shape": shape}
    if protocol == "binary":
        body, headers = binary_body([{**entry, "parameters": {"binary_data_size": 0}}], [b""])
        headers.update(JSON)
    elif protocol == "msgpack":
        body, headers = msgpack.packb({"inputs": [{**entry, "data": b""}]}), MSGPACK
    else:
        body, headers = json.dumps({"inputs": [{**entry, "data": []}]}).encode(), JSON
    resp = svc.post("text", body, headers)
    assert resp.status == 400, resp.body
    assert b"cannot make a tensor of shape" in resp.body
    assert svc.count("text") == before + 1


@pytest.mark.parametrize("dim", [2**63, 2**64 - 1, 2**64, 10**30])
def test_a_dimension_beyond_int64_is_refused_naming_it(svc: Service, dim: int) -> None:
    # 2**64 and more reach the decoder as floats (orjson): the message said "got [0, 1.8e+19]".
    body = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [0, dim], "data": []}]})
    resp = svc.post("text", body.encode(), JSON)
    assert resp.status == 400 and b"beyond the largest tensor dimension" in resp.body, resp.body


@pytest.mark.parametrize("key", ["priority", "timeout"])
@pytest.mark.parametrize("value", [2**64, 2**70, -(2**64)])
def test_a_parameter_beyond_64_bits_is_refused_as_the_integer_it_was(svc: Service, key: str, value: int) -> None:
    body = json.dumps({"parameters": {key: value},
                       "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    resp = svc.post("echo", body.encode(), JSON)
    assert resp.status == 400, resp.body
    assert f"parameters.{key}: expected an integer from 0 to" in json.loads(resp.body)["error"]
    assert b"beyond the 64-bit integers" in resp.body


# -- checked before decoding ---------------------------------------------------------------------

@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if any tensor's element data is decoded."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("element data decoded before the inputs were checked")

    # A small refused body is decoded afterwards for the error's hooks (the payload log): not here.
    monkeypatch.setattr(handlers, "DECODE_REFUSED_MAX_BYTES", -1)
    monkeypatch.setattr(kserve, "_array_from_json", refuse)
    monkeypatch.setattr(kserve, "array_from_raw", refuse)
    monkeypatch.setattr(msgpack_codec, "array_from_raw", refuse)


REFUSALS = [  # (model, entries as (name, datatype, shape), the core's words)
    ("echo", [("x", "FP32", [1, 5])], "input 'x': expected shape [-1, 4], got [1, 5]"),
    ("echo", [("x", "FP64", [1, 4])], "input 'x': expected datatype FP32, got FP64"),
    ("echo", [("x", "FP32", [9, 4])], "batch of 9 samples (its first dimension) exceeds max_batch_size 8"),
    ("echo", [("x", "FP32", [0, 4])], "the batch dimension must be at least 1, got 0"),
    ("echo", [("x", "FP32", [1, 4]), ("y", "FP32", [1, 4])], "unexpected input 'y': the model's inputs are x"),
    ("pair", [("b", "BYTES", [1, 1, 1])], "input 'b': expected shape [-1, -1], got [1, 1, 1]"),  # 'a' missing
    ("pair", [("a", "INT32", [2, 2]), ("b", "BYTES", [3, 1])], "input 'b': batch dimension 3 differs from input 'a' (2)"),
    ("text", [("s", "BYTES", [2])], "input 's': expected shape [-1, -1], got [2]"),
]


@pytest.mark.parametrize("protocol", ["json", "binary", "msgpack"])
@pytest.mark.parametrize("model,entries,message", REFUSALS, ids=[m for _, _, m in REFUSALS])
def test_inputs_the_model_refuses_are_refused_before_their_data_is_decoded(
        svc: Service, no_decoding: None, protocol: str, model: str, entries: list, message: str) -> None:
    tensors = []
    for name, datatype, shape in entries:
        count = int(np.prod(shape))
        if datatype == "BYTES":
            tensors.append((name, datatype, shape, [b"a"] * count, bytes_wire([b"a"] * count)))
        else:
            arr = np.ones(count, NUMPY_DTYPES[datatype])
            tensors.append((name, datatype, shape, arr.tolist(), arr.tobytes()))
    if protocol == "json":
        body = json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s,
                                       "data": [v.decode() if type(v) is bytes else v for v in data]}
                                      for n, d, s, data, _ in tensors]}).encode()
        headers = JSON
    elif protocol == "binary":
        body, headers = binary_body([{"name": n, "datatype": d, "shape": s,
                                      "parameters": {"binary_data_size": len(raw)}} for n, d, s, _, raw in tensors],
                                    [raw for *_, raw in tensors])
    else:
        body = msgpack.packb({"inputs": [{"name": n, "datatype": d, "shape": s, "data": raw}
                                         for n, d, s, _, raw in tensors]})
        headers = MSGPACK
    resp = svc.post(model, body, headers)
    assert resp.status == 400, resp.body
    assert message in json.loads(resp.body)["error"]


def test_a_large_body_is_decoded_off_the_event_loop(svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    decode = handlers._decode_infer

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return decode(*args)

    monkeypatch.setattr(handlers, "_decode_infer", spy)
    small = np.ones((1, 4), np.float32)
    large = np.ones((8, 4), np.float32)
    for arr in (small, large):
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(arr.shape),
                                       "data": arr.ravel().tolist()}]}).encode()
        if arr is large:
            body = body[:-1] + b" " * handlers.DECODE_OFF_LOOP_BYTES + b"}"  # large, and still valid
        resp = svc.post("echo", body, JSON)
        assert resp.status == 200, resp.body
        out = json.loads(resp.body)["outputs"][0]
        assert out["name"] == "ox" and out["shape"] == list(arr.shape) and out["data"] == arr.ravel().tolist()
    assert threads[0] == threading.main_thread().name
    assert threads[1].startswith("pyserve-decode")


@pytest.mark.parametrize("large_body", [False, True], ids=["small-body", "large-body"])
def test_large_replies_are_encoded_on_a_decoder_thread(svc: Service, monkeypatch: pytest.MonkeyPatch,
                                                       large_body: bool) -> None:
    threads: list[tuple[str, bool]] = []
    encode = handlers._encode_infer

    def spy(*args: Any) -> Any:
        threads.append((threading.current_thread().name, bool(args[3:] and args[3])))
        return encode(*args)

    monkeypatch.setattr(handlers, "_encode_infer", spy)
    monkeypatch.setattr(handlers, "ENCODE_OFF_LOOP_BYTES", 64)  # 16 FP32 values
    bodies = []
    for rows in (1, 8):  # 16 bytes of output, then 128
        arr = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 3
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(arr.shape),
                                       "data": arr.ravel().tolist()}]}).encode()
        if large_body:
            body = body[:-1] + b" " * handlers.DECODE_OFF_LOOP_BYTES + b"}"
        for headers, outputs in ((JSON, None), (JSON, [{"name": "ox", "parameters": {"binary_data": True}}])):
            if outputs:
                body = body[:-1] + b', "outputs": ' + json.dumps(outputs).encode() + b"}"
            resp = svc.post("echo", body, headers)
            assert resp.status == 200, resp.body
            length = (resp.headers or {}).get("Inference-Header-Content-Length")
            got = kserve.decode_response(resp.body, length).outputs["ox"]
            np.testing.assert_array_equal(got, arr)
            bodies.append(resp.body)
    main = threading.main_thread().name
    assert [(t == main, gil_free) for t, gil_free in threads] == [(True, False)] * 2 + [(False, True)] * 2
    assert threads[-1][0].startswith("pyserve-decode")


def test_a_large_body_the_model_refuses_is_a_counted_400(svc: Service) -> None:
    before = svc.count("echo")
    arr = np.ones((1, 5), np.float32)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5],
                                   "data": arr.ravel().tolist()}]}).encode()
    body = body[:-1] + b" " * handlers.DECODE_OFF_LOOP_BYTES + b"}"
    resp = svc.post("echo", body, JSON)
    assert resp.status == 400 and b"expected shape [-1, 4], got [1, 5]" in resp.body
    assert svc.count("echo") == before + 1


# -- properties: any shape, datatype or parameter is answered, never with a 500 ------------------

# The edges first: a zero-size dimension, and the ends of the 32- and 64-bit integers.
edges = st.sampled_from([0, 1, 4, 2**31, 2**62, 2**63 - 1, 2**63, 2**64])
dims = st.one_of(edges, edges, edges, st.integers(0, 2**64))  # mostly edges
# Mostly the rank of the models' inputs (2), so that the checks past the rank's are reached.
shapes = st.one_of(st.lists(dims, min_size=2, max_size=2), st.lists(dims, min_size=2, max_size=2),
                   st.lists(dims, max_size=3))
integers = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([2**63, 2**63 - 1, -2**63, 2**64, 2**32, -1]))
parameter_values = st.one_of(integers, st.floats(allow_nan=False), st.booleans(), st.text(max_size=5), st.none())
datatypes = st.sampled_from([*DATATYPES, "FP8", "", "int32"])


@st.composite
def requests(draw: Any) -> tuple[str, dict[str, Any], list[tuple[str, str, list[int], bytes]]]:
    model = draw(st.sampled_from(["echo", "text", "pair"]))
    params = draw(st.dictionaries(st.sampled_from(["priority", "timeout", "binary_data_output"]),
                                  parameter_values, max_size=2))
    specs = {"echo": {"x": "FP32"}, "text": {"s": "BYTES"}, "pair": {"a": "INT32", "b": "BYTES"}}[model]
    n = draw(st.integers(1, 2))
    tensors = []
    for name in draw(st.lists(st.sampled_from([*specs, "zz"]), min_size=n, max_size=n, unique=True)):
        raw = draw(st.one_of(st.just(b""), st.binary(max_size=64)))
        # Mostly the model's own datatype, so that the checks past the datatype's are reached.
        datatype = draw(st.one_of(st.just(specs.get(name, "FP32")), datatypes))
        tensors.append((name, datatype, draw(shapes), raw))
    return model, params, tensors


def encoded(protocol: str, params: dict, tensors: list) -> tuple[bytes, dict[str, str]]:
    entries = [{"name": n, "datatype": d, "shape": s} for n, d, s, _ in tensors]
    if protocol == "msgpack":
        doc = {"inputs": [{**e, "data": raw} for e, (*_, raw) in zip(entries, tensors)]}
        if params:
            doc["parameters"] = params
        return msgpack.packb(doc), MSGPACK
    if protocol == "binary":
        for e, (*_, raw) in zip(entries, tensors):
            e["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps({"inputs": entries, **({"parameters": params} if params else {})}).encode()
        return header + b"".join(raw for *_, raw in tensors), {
            **JSON, "Inference-Header-Content-Length": str(len(header))}
    for e, (*_, raw) in zip(entries, tensors):
        e["data"] = list(raw[:8])
    return json.dumps({"inputs": entries, **({"parameters": params} if params else {})}).encode(), JSON


@pytest.mark.parametrize("protocol", ["json", "binary", "msgpack"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_any_request_is_answered_and_every_error_counted(svc: Service, protocol: str, request: Any) -> None:
    model, params, tensors = request
    try:
        body, headers = encoded(protocol, params, tensors)
    except (OverflowError, ValueError):  # msgpack holds integers up to 64 bits: not sendable
        return
    before = svc.count(model)
    resp = svc.post(model, body, headers)
    assert resp.status in (200, 400, 504), (resp.status, resp.body)
    if resp.status == 504:  # only a timeout the request asked for: 1 us may pass before the batch runs
        assert type(params.get("timeout")) is int and 0 < params["timeout"] < 10**6, params
    if resp.status != 200:
        assert json.loads(resp.body)["error"]
        assert svc.count(model) == before + 1


# -- large JSON bodies (decoded off the loop) decode as small ones do ----------------------------

def _padded(doc_text: str) -> bytes:
    """The same document, made larger than a body decoded on the loop's thread with whitespace."""
    from pyserve.server.handlers import DECODE_OFF_LOOP_BYTES

    return doc_text[:-1].encode() + b" " * DECODE_OFF_LOOP_BYTES + b"}"


SAME_BOTH_WAYS = [
    ("FP32", [2, 2], "[[1, 2.5], [3, -4e10]]"),
    ("FP16", [2], "[1, 70000]"),  # overflow: the same message
    ("FP32", [2], "[1, NaN]"),
    ("INT8", [3], "[1, -128, 127]"),
    ("INT8", [2], "[1, 300]"),
    ("INT64", [2], "[1, 9223372036854775808]"),
    ("UINT64", [2], "[1, 18446744073709551615]"),
    ("UINT8", [2], "[1, -1]"),
    ("INT32", [2], "[1, 2.5]"),
    ("INT32", [2], "[1, 2.0]"),
    ("BOOL", [2], "[true, false]"),
    ("BOOL", [2], "[true, 1]"),
    ("BYTES", [2], '["a", "\\u00e9"]'),
    ("FP64", [3], "[1, 2]"),
    ("FP64", [2], '[1, "2"]'),
    ("FP64", [0, 2**62], "[]"),
    ("INT16", [1, 2], "[[1, 2]]"),
]


@pytest.mark.parametrize("datatype,shape,data", SAME_BOTH_WAYS, ids=[f"{d}-{x}" for d, _, x in SAME_BOTH_WAYS])
def test_a_large_json_body_decodes_as_a_small_one(datatype: str, shape: list[int], data: str) -> None:
    from pyserve.errors import PyserveError

    text = ('{"id": "r", "parameters": {"priority": 1}, "outputs": [{"name": "y"}], "inputs": '
            f'[{{"name": "x", "datatype": "{datatype}", "shape": {json.dumps(shape)}, "data": {data}}}]}}')
    results = []
    for body in (text.encode(), _padded(text)):
        try:
            req = kserve.decode_request(body)
        except PyserveError as e:
            results.append(("error", e.kind, e.message))
        else:
            x = req.inputs["x"]
            results.append((x.dtype, x.shape, repr(x.tolist()), req.id, req.parameters,
                            [o.name for o in req.outputs or []]))
    assert results[0] == results[1]
