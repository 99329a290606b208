"""The KServe JSON/binary and msgpack codecs: round trips, Triton compatibility, errors, fuzzing."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserve.datatypes import DATATYPES, NUMPY_DTYPES
from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol import InferResponse, RequestedOutput, kserve, msgpack_codec

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample(datatype: str, shape: tuple[int, ...] = (2, 3), text: bool = False) -> np.ndarray:
    """A tensor of ``datatype`` with edge values (extremes, fractions, empty and non-UTF-8 strings)."""
    n = math.prod(shape)
    if datatype == "BYTES":
        values = [f"s{i}é".encode() for i in range(n)]
        if n:
            values[0] = b"" if text else b"\xff\x00bin"
        out = np.empty(n, dtype=object)
        out[:] = values
        return out.reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        return (np.arange(n) % 3 == 0).reshape(shape)
    if dtype.kind in "iu":
        arr = (np.arange(n) % 7).astype(dtype)
        info = np.iinfo(dtype)
        arr[: min(n, 2)] = [info.max, info.min][: min(n, 2)]
        return arr.reshape(shape)
    return (np.linspace(-1.5, 2.25, n) + 0.1).astype(dtype).reshape(shape)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    assert np.array_equal(got, want)


def fail(fn, *args, **kwargs) -> str:
    """The message of the INVALID_ARGUMENT error ``fn`` raises."""
    with pytest.raises(PyserveError) as info:
        fn(*args, **kwargs)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    return info.value.message


def body_of(doc: dict, *raw: bytes) -> tuple[bytes, int | None]:
    header = orjson.dumps(doc)
    return (header + b"".join(raw), len(header)) if raw else (header, None)


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("shape", [(2, 3), (0, 4), ()])
@pytest.mark.parametrize("binary", [False, True])
def test_kserve_round_trip_every_datatype(datatype: str, shape: tuple[int, ...], binary: bool) -> None:
    arr = sample(datatype, shape, text=not binary)
    body, hl = kserve.encode_request({"x": arr}, binary=binary, request_id="r-1", parameters={"p": 2})
    assert (hl is not None) == binary
    req = kserve.decode_request(body, hl)
    assert req.id == "r-1" and req.parameters == {"p": 2} and req.outputs is None
    assert_same(req.inputs["x"], arr)

    resp = InferResponse("m", "3", {"y": arr}, id="r-1")
    body, hl = kserve.encode_response(resp, None, binary_default=binary)
    out = kserve.decode_response(body, hl)
    assert (out.model_name, out.model_version, out.id) == ("m", "3", "r-1")
    assert_same(out.outputs["y"], arr)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("shape", [(2, 3), (0,), ()])
def test_msgpack_round_trip_every_datatype(datatype: str, shape: tuple[int, ...]) -> None:
    arr = sample(datatype, shape)
    body = msgpack_codec.encode_request({"x": arr}, request_id="q", parameters={"k": "v"}, outputs=["y"])
    req = msgpack_codec.decode_request(body)
    assert req.id == "q" and req.parameters == {"k": "v"}
    assert req.outputs == [RequestedOutput("y")]
    assert_same(req.inputs["x"], arr)

    out = msgpack_codec.decode_response(
        msgpack_codec.encode_response(
            InferResponse("m", "1", {"y": arr, "z": arr}, parameters={"a": 1}), req.outputs
        )
    )
    assert list(out.outputs) == ["y"] and out.parameters == {"a": 1} and out.id is None
    assert_same(out.outputs["y"], arr)


def test_binary_inputs_are_zero_copy_views() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, hl = kserve.encode_request({"x": arr}, binary=True)
    got = kserve.decode_request(body, hl).inputs["x"]
    assert not got.flags.owndata and not got.flags.writeable
    got = msgpack_codec.decode_request(msgpack_codec.encode_request({"x": arr})).inputs["x"]
    assert not got.flags.owndata


def test_non_contiguous_and_big_endian_arrays_encode_in_row_major_order() -> None:
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    strided = base[:, ::2]
    big = base.astype(">i4")
    for binary in (False, True):
        body, hl = kserve.encode_request({"s": strided, "b": big}, binary=binary)
        req = kserve.decode_request(body, hl)
        assert_same(req.inputs["s"], np.ascontiguousarray(strided))
        assert np.array_equal(req.inputs["b"], base) and req.inputs["b"].dtype == np.dtype("<i4")
    req = msgpack_codec.decode_request(msgpack_codec.encode_request({"s": strided}))
    assert_same(req.inputs["s"], np.ascontiguousarray(strided))


def test_str_arrays_are_bytes_tensors() -> None:
    text = np.array([["héllo", "w"]])
    want = np.array([["héllo".encode(), b"w"]], dtype=object)
    for binary in (False, True):
        body, hl = kserve.encode_request({"t": text}, binary=binary)
        assert_same(kserve.decode_request(body, hl).inputs["t"], want)
    assert_same(msgpack_codec.decode_request(msgpack_codec.encode_request({"t": text})).inputs["t"], want)


def test_nested_and_flat_json_data_give_the_same_tensor() -> None:
    nested = {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]}]}
    flat = {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]}]}
    want = np.array([[1, 2], [3, 4]], dtype=np.int64)
    assert_same(kserve.decode_request(orjson.dumps(nested), None).inputs["a"], want)
    assert_same(kserve.decode_request(orjson.dumps(flat), None).inputs["a"], want)
    words = {"inputs": [{"name": "w", "shape": [1, 2], "datatype": "BYTES", "data": [["a", "ü"]]}]}
    assert_same(
        kserve.decode_request(orjson.dumps(words)).inputs["w"], np.array([[b"a", "ü".encode()]], dtype=object)
    )


def test_json_numbers_convert_to_the_declared_datatype() -> None:
    doc = {
        "inputs": [
            {"name": "f", "shape": [3], "datatype": "FP16", "data": [1, 0.5, -2.25]},
            {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            {"name": "u", "shape": [1], "datatype": "UINT64", "data": [2**64 - 1]},
        ]
    }
    inputs = kserve.decode_request(orjson.dumps(doc)).inputs
    assert_same(inputs["f"], np.array([1, 0.5, -2.25], dtype=np.float16))
    assert_same(inputs["b"], np.array([True, False]))
    assert_same(inputs["u"], np.array([2**64 - 1], dtype=np.uint64))


def test_requested_outputs_choose_outputs_and_their_encoding() -> None:
    outs = {"a": np.arange(3, dtype=np.float32), "b": np.array([1, 2], dtype=np.int64), "c": np.ones(1)}
    doc = {"inputs": [], "outputs": [{"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}]}
    req = kserve.decode_request(orjson.dumps(doc))
    assert req.outputs == [RequestedOutput("b", True), RequestedOutput("a", None)]
    body, hl = kserve.encode_response(InferResponse("m", "1", outs), req.outputs, binary_default=False)
    header = orjson.loads(body[:hl])
    assert [o["name"] for o in header["outputs"]] == ["b", "a"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert header["outputs"][1]["data"] == [0.0, 1.0, 2.0]
    assert body[hl:] == outs["b"].tobytes()
    # binary_data_output (the default) decides for outputs whose request says nothing.
    body, hl = kserve.encode_response(
        InferResponse("m", "1", outs), [RequestedOutput("a")], binary_default=True
    )
    assert body[hl:] == outs["a"].tobytes()
    body, hl = kserve.encode_response(InferResponse("m", "1", outs), [RequestedOutput("a", False)], True)
    assert hl is None and orjson.loads(body)["outputs"][0]["data"] == [0.0, 1.0, 2.0]
    assert "'zz'" in fail(
        kserve.encode_response, InferResponse("m", "1", outs), [RequestedOutput("zz")], False
    )
    assert "'zz'" in fail(
        msgpack_codec.encode_response, InferResponse("m", "1", outs), [RequestedOutput("zz")]
    )


def test_response_echoes_id_and_parameters_only_when_given() -> None:
    arr = np.zeros(1, dtype=np.float32)
    doc = orjson.loads(kserve.encode_response(InferResponse("m", "2", {"y": arr}), None, False)[0])
    assert doc["model_name"] == "m" and doc["model_version"] == "2"
    assert "id" not in doc and "parameters" not in doc
    resp = InferResponse("m", "2", {"y": arr}, id="abc", parameters={"seq": 1})
    doc = orjson.loads(kserve.encode_response(resp, None, False)[0])
    assert doc["id"] == "abc" and doc["parameters"] == {"seq": 1}
    doc = msgpack.unpackb(msgpack_codec.encode_response(resp, None))
    assert (
        doc["id"] == "abc" and doc["parameters"] == {"seq": 1} and doc["outputs"][0]["data"] == arr.tobytes()
    )


def test_input_parameters_pass_through_without_binary_data_size() -> None:
    raw = np.ones(2, dtype=np.float32).tobytes()
    doc = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8, "k": 1}},
            {"name": "b", "shape": [1], "datatype": "INT8", "data": [1]},
        ]
    }
    req = kserve.decode_request(*body_of(doc, raw))
    assert req.input_parameters == {"a": {"k": 1}}


def test_error_body_and_metadata() -> None:
    assert orjson.loads(kserve.encode_error("model 'x' not found")) == {"error": "model 'x' not found"}
    assert kserve.server_metadata("pyserve", "0.1", ["binary_tensor_data"]) == {
        "name": "pyserve",
        "version": "0.1",
        "extensions": ["binary_tensor_data"],
    }
    meta = kserve.model_metadata(
        "m",
        ["1", "2"],
        "onnxruntime_onnx",
        [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        [{"name": "y", "datatype": "INT64", "shape": [-1]}],
    )
    assert meta == {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
    }


# ------------------------------------------------------------------------- Triton compatibility

TRITON_TYPES = ["FP32", "INT64", "BOOL", "FP16", "BYTES"]


@pytest.mark.parametrize("datatype", TRITON_TYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_decodes_tritonclient_requests(datatype: str, binary: bool) -> None:
    arr = sample(datatype, (2, 3), text=not binary)
    tin = triton.InferInput("in0", list(arr.shape), datatype)
    tin.set_data_from_numpy(arr, binary_data=binary)
    outputs = [triton.InferRequestedOutput("out0", binary_data=binary)]
    body, hl = triton.InferenceServerClient.generate_request_body([tin], outputs=outputs, request_id="7")
    req = kserve.decode_request(body, hl)
    assert req.id == "7"
    assert req.outputs == [RequestedOutput("out0", binary)]
    assert_same(req.inputs["in0"], arr)
    # Without requested outputs tritonclient asks for binary outputs with binary_data_output.
    body, hl = triton.InferenceServerClient.generate_request_body([tin])
    assert kserve.decode_request(body, hl).parameters == {"binary_data_output": True}


@pytest.mark.parametrize("datatype", TRITON_TYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_parses_responses(datatype: str, binary: bool) -> None:
    arr = sample(datatype, (2, 3), text=not binary)
    body, hl = kserve.encode_response(InferResponse("m", "1", {"out0": arr}), None, binary)
    result = triton.InferenceServerClient.parse_response_body(body, header_length=hl)
    got = result.as_numpy("out0")
    if datatype == "BYTES" and not binary:  # tritonclient gives JSON strings as str
        got = np.array([s.encode() for s in got.reshape(-1)], dtype=object).reshape(got.shape)
    assert_same(got, arr)
    assert result.get_response()["model_name"] == "m"


# ---------------------------------------------------------------- non-finite numbers and overflow

FLOAT_TYPES = ["FP16", "FP32", "FP64"]
NAN, INF = float("nan"), float("inf")


def assert_same_nan(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, shape and values; NaN where ``want`` has NaN, and each inf with its sign."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got, want)
    assert np.array_equal(got, want, equal_nan=True), (got, want)


def json_text(*tensors: tuple[str, str, list[int], str], key: str = "inputs", **top: str) -> bytes:
    """A body written as text, so that it can hold the tokens orjson cannot write: one tensor per
    ``(name, datatype, shape, data text)``; ``top`` adds top-level members as JSON text."""
    entries = ", ".join(
        f'{{"name": "{n}", "datatype": "{d}", "shape": {list(s)}, "data": {data}}}'
        for n, d, s, data in tensors
    )
    members = "".join(f'"{k}": {v}, ' for k, v in top.items())
    return f'{{{members}"{key}": [{entries}]}}'.encode()


@pytest.mark.parametrize("datatype", FLOAT_TYPES)
def test_json_nan_and_infinity_tokens_decode_for_float_tensors(datatype: str) -> None:
    dtype = NUMPY_DTYPES[datatype]
    tensors = (
        ("flat", datatype, [5], "[NaN, Infinity, -Infinity, 1.5, -0.25]"),
        ("nested", datatype, [2, 3], "[[NaN, 2, -Infinity], [Infinity, -3, NaN]]"),
        ("finite", datatype, [2], "[1, 2.5]"),
    )
    req = kserve.decode_request(json_text(*tensors, id='"nf-1"', parameters='{"priority": 1}'))
    assert req.id == "nf-1" and req.parameters == {"priority": 1}
    assert_same_nan(req.inputs["flat"], np.array([NAN, INF, -INF, 1.5, -0.25], dtype))
    assert_same_nan(req.inputs["nested"], np.array([[NAN, 2, -INF], [INF, -3, NAN]], dtype))
    assert_same_nan(req.inputs["finite"], np.array([1, 2.5], dtype))
    # A reply as pyserve.client decodes it.
    body = json_text(*tensors, key="outputs", model_name='"m"', model_version='"1"')
    out = kserve.decode_response(body, None)
    assert out.model_name == "m"
    assert_same_nan(out.outputs["nested"], np.array([[NAN, 2, -INF], [INF, -3, NAN]], dtype))


def test_json_non_finite_tokens_beside_binary_tensors() -> None:
    raw32 = np.array([NAN, -INF, INF, 2], dtype=np.float32)
    raw_int = np.array([7, -7], dtype=np.int32)
    header = (
        b'{"inputs": ['
        b'{"name": "b", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}, '
        b'{"name": "j", "datatype": "FP64", "shape": [2, 2], "data": [[-Infinity, 1], [NaN, Infinity]]}, '
        b'{"name": "i", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}}, '
        b'{"name": "h", "datatype": "FP16", "shape": [1], "data": [-Infinity]}]}'
    )
    body = header + raw32.tobytes() + raw_int.tobytes()
    for hl in (len(header), str(len(header))):
        req = kserve.decode_request(body, hl)
        assert_same_nan(req.inputs["b"], raw32)
        assert_same_nan(req.inputs["j"], np.array([[-INF, 1], [NAN, INF]]))
        assert_same_nan(req.inputs["i"], raw_int)
        assert_same_nan(req.inputs["h"], np.array([-INF], np.float16))
    # Without the header length the binary tensors are still refused, with the hint.
    assert "needs the Inference-Header-Content-Length header" in fail(kserve.decode_request, body, None)

    # A reply with the same mix: JSON tensors get the tokens, binary ones their raw bytes.
    outs = {"j": req.inputs["j"], "b": raw32, "h": req.inputs["h"]}
    requested = [RequestedOutput("j", False), RequestedOutput("b", True), RequestedOutput("h", False)]
    body, hl = kserve.encode_response(InferResponse("m", "1", outs), requested)
    assert hl is not None and body[hl:] == raw32.tobytes()
    assert b'"data":[-Infinity,1.0,NaN,Infinity]' in body[:hl] and b'"data":[-Infinity]' in body[:hl]
    result = triton.InferenceServerClient.parse_response_body(body, header_length=hl)
    for got in (kserve.decode_response(body, hl).outputs, {n: result.as_numpy(n) for n in outs}):
        for name, want in outs.items():
            assert_same_nan(got[name], want)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d not in FLOAT_TYPES + ["BYTES"]])
def test_json_non_finite_refused_for_integer_and_bool_tensors(datatype: str, token: str) -> None:
    first = "true" if datatype == "BOOL" else "1"
    cases = ((f"[{first}, {token}]", [2]), (f"[[{first}], [{token}]]", [2, 1]), (f"[{token}]", [1]))
    for data, shape in cases:
        # A float tensor before it holds NaN too: the tokens are accepted, only not for this datatype.
        body = json_text(("ok", "FP32", [1], "[NaN]"), ("x", datatype, shape, data))
        message = fail(kserve.decode_request, body)
        assert f"input 'x': {datatype} data must be" in message and "got NaN or Infinity" in message, message
    body = json_text(("x", datatype, [1], f"[{token}]"), key="outputs")
    assert "output 'x'" in fail(kserve.decode_response, body)


def test_json_non_finite_refused_for_bytes_tensors() -> None:
    message = fail(kserve.decode_request, json_text(("s", "BYTES", [2], '["a", NaN]')))
    assert "input 's'" in message and "strings" in message


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "shown"),
    [
        ("FP32", [1], "[1e39]", "1e+39"),
        ("FP32", [2], "[1, -3.5e38]", "-3.5e+38"),
        ("FP32", [2, 1], "[[1e300], [2]]", "1e+300"),
        ("FP16", [1], "[70000]", "70000"),
        ("FP16", [2, 1], "[[0.5], [-65520.0]]", "-65520.0"),
        ("FP16", [2], "[65536, 1]", "65536"),
        ("FP16", [3], "[NaN, 1e5, Infinity]", "100000.0"),  # parsed by the fallback
        ("FP32", [3], "[-Infinity, 5e38, -5e38]", "5e+38 and 1 more values"),
    ],
)
def test_json_numbers_too_large_for_the_datatype_are_refused(
    datatype: str, shape: list[int], data: str, shown: str
) -> None:
    message = fail(kserve.decode_request, json_text(("big", datatype, shape, data)))
    assert f"input 'big': {datatype} cannot hold {shown}" in message, message
    assert ("65504" if datatype == "FP16" else "3.4028235e+38") in message
    reply = json_text(("big", datatype, shape, data), key="outputs")
    assert "output 'big'" in fail(kserve.decode_response, reply)


def test_json_numbers_at_the_limits_are_kept() -> None:
    f32_max = float(np.finfo(np.float32).max)
    body = json_text(
        ("h", "FP16", [5], "[65504, -65504, 65519, 1e-10, NaN]"),
        ("f", "FP32", [4], f"[{f32_max!r}, {-f32_max!r}, Infinity, 1e-50]"),
        ("d", "FP64", [3], "[1.7976931348623157e308, -Infinity, 5e-324]"),
    )
    inputs = kserve.decode_request(body).inputs
    # 65519 rounds to 65504, as in C; numbers too small for the datatype become 0.
    assert_same_nan(inputs["h"], np.array([65504, -65504, 65504, 0, NAN], np.float16))
    assert_same_nan(inputs["f"], np.array([f32_max, -f32_max, INF, 0], np.float32))
    assert_same_nan(inputs["d"], np.array([1.7976931348623157e308, -INF, 5e-324]))


def test_json_numbers_beyond_a_double_are_refused_with_or_without_tokens() -> None:
    for data in ("[1e400, 1]", "[NaN, -1e400]", "[Infinity, 1" + "0" * 400 + "]"):
        message = fail(kserve.decode_request, json_text(("d", "FP64", [2], data)))
        assert "request is not valid JSON" in message and "infinity when parsed as double" in message, message
        assert len(message) < 200


def test_json_fallback_keeps_orjson_numbers() -> None:
    """With NaN in the body the standard library parses it: integers still give what orjson gives."""
    body = json_text(
        ("nan", "FP32", [1], "[NaN]"),
        ("big", "FP64", [3], "[18446744073709551616, -9223372036854775809, 1]"),
        ("u", "UINT64", [2], "[18446744073709551615, 0]"),
        ("i", "INT64", [2], "[-9223372036854775808, 9223372036854775807]"),
    )
    inputs = kserve.decode_request(body).inputs
    assert_same_nan(inputs["big"], np.array([2.0**64, -(2.0**63), 1]))
    assert_same_nan(inputs["u"], np.array([2**64 - 1, 0], np.uint64))
    assert_same_nan(inputs["i"], np.array([-(2**63), 2**63 - 1], np.int64))
    same_without_nan = kserve.decode_request(body.replace(b"[NaN]", b"[0]")).inputs
    assert_same_nan(same_without_nan["big"], inputs["big"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"{nope", "line 1 column 2"),  # no token: orjson's message, as before
        (b'{"inputs": [], "x": nan}', "line 1 column 21"),
        (b'{"inputs": [], "x": Inf}', "line 1 column 21"),
        (b'{"inputs": [], "x": +Infinity}', "line 1 column 21"),
        (b'{"inputs": [], "x": -NaN}', "line 1 column 21"),
        (b'{"inputs": [], "x": [NaN, 1,]}', "line 1 column 29"),  # the first problem past the token
        (b'{"inputs": [], "x": NaN', "line 1 column 24"),
        (b'{"inputs": [], "x": NaNa}', "line 1 column 24"),
        (b"{NaN: 1}", "line 1 column 2"),
        (b'{"inputs": [], "x": NaN, "y": "\\ud800"}', "surrogate"),
        (b'{"inputs": [], "x": NaN, "y": "\\ud83d"}', "surrogate"),
        (b'{"inputs": [], "x": NaN, "y": "\x01"}', "line 1 column 32"),
        (b'{"inputs": [], "x": NaN, "y": ' + b"[" * 5000 + b"]" * 5000 + b"}", "recursion"),
        (b'{"inputs": [], "x": NaN, "y": "\xff"}', "UTF-8"),
    ],
)
def test_invalid_json_is_still_refused_with_a_clear_message(text: bytes, expected: str) -> None:
    for decode, what in ((kserve.decode_request, "request"), (kserve.decode_response, "response")):
        message = fail(decode, text, None)
        assert message.startswith(f"{what} is not valid JSON: ") and expected in message, message


def test_json_tokens_outside_an_object_or_in_strings() -> None:
    assert "must be a JSON object, got a number" in fail(kserve.decode_request, b"NaN")
    # In a string NaN is text: orjson parses it, BYTES keep it.
    got = kserve.decode_request(json_text(("s", "BYTES", [2], '["NaN", "-Infinity"]'))).inputs["s"]
    assert got.tolist() == [b"NaN", b"-Infinity"]
    # A paired surrogate escape is a valid string, with or without the fallback.
    req = kserve.decode_request(json_text(("x", "FP32", [1], "[NaN]"), id='"\\ud83d\\ude00 \\\\ud800"'))
    assert req.id == "\U0001f600 \\ud800"


def non_finite_sample(datatype: str, size: int) -> np.ndarray:
    """``size`` numbers with NaN, +inf and -inf among them, shaped (size // 4, 4)."""
    arr = np.linspace(-2.5, 2.5, size).astype(NUMPY_DTYPES[datatype])
    arr[[0, 5, size // 2, size - 1]] = [NAN, INF, -INF, -INF]
    arr[size // 3] = -0.0
    return arr.reshape(size // 4, 4)


@pytest.mark.parametrize("datatype", FLOAT_TYPES)
@pytest.mark.parametrize("size", [8, 20000])  # checked in the JSON text, and with np.isfinite
def test_non_finite_outputs_are_written_as_tokens(datatype: str, size: int) -> None:
    arr = non_finite_sample(datatype, size)
    body, hl = kserve.encode_response(InferResponse("m", "1", {"y": arr}), None, False)
    assert hl is None and b"null" not in body
    assert body.count(b"NaN") == 1 and body.count(b"-Infinity") == 2 and body.count(b"Infinity") == 3
    # Python's json reads what it would write itself (tritonclient parses replies with it).
    doc = json.loads(body)
    got = np.array(doc["outputs"][0]["data"], NUMPY_DTYPES[datatype]).reshape(doc["outputs"][0]["shape"])
    assert_same_nan(got, arr)
    assert_same_nan(kserve.decode_response(body, hl).outputs["y"], arr)
    assert_same_nan(triton.InferenceServerClient.parse_response_body(body).as_numpy("y"), arr)
    # The client side: a request with the tensor as JSON.
    body, hl = kserve.encode_request({"x": arr}, binary=False)
    assert hl is None and b"null" not in body
    assert_same_nan(kserve.decode_request(body, hl).inputs["x"], arr)


def test_non_finite_output_text_is_what_python_json_writes() -> None:
    values = [1.5, NAN, INF, -INF, -0.0, 3e38]
    arr = np.array(values, np.float32)
    body, _ = kserve.encode_response(InferResponse("m", "1", {"y": arr}), None, False)
    assert b'"data":' + json.dumps(values, separators=(",", ":")).encode() in body
    # Finite arrays take the fast path: orjson's own text.
    finite = np.array([1.5, -0.0, 3e38], np.float32)
    body, _ = kserve.encode_response(InferResponse("m", "1", {"y": finite}), None, False)
    assert b'"data":' + orjson.dumps(finite, option=orjson.OPT_SERIALIZE_NUMPY) + b"}" in body


def test_non_finite_outputs_of_strided_and_big_endian_arrays() -> None:
    base = non_finite_sample("FP64", 24)
    strided, big = base[:, ::2], base.astype(">f8")
    body, hl = kserve.encode_response(InferResponse("m", "1", {"s": strided, "b": big}), None, False)
    out = kserve.decode_response(body, hl).outputs
    assert_same_nan(out["s"], np.ascontiguousarray(strided))
    assert_same_nan(out["b"], base)


@pytest.mark.parametrize("datatype", FLOAT_TYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_non_finite_requests_decode(datatype: str, binary: bool) -> None:
    arr = non_finite_sample(datatype, 16)
    tin = triton.InferInput("in0", list(arr.shape), datatype)
    tin.set_data_from_numpy(arr, binary_data=binary)
    body, hl = triton.InferenceServerClient.generate_request_body([tin])
    assert (b"NaN" in body) != binary
    assert_same_nan(kserve.decode_request(body, hl).inputs["in0"], arr)


@FUZZ
@given(st.data())
def test_fuzz_float_json_round_trip_with_non_finite(data: st.DataObject) -> None:
    datatype = data.draw(st.sampled_from(FLOAT_TYPES))
    width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
    values = data.draw(st.lists(st.floats(width=width), max_size=24))
    arr = np.array(values, NUMPY_DTYPES[datatype])
    body, hl = kserve.encode_response(InferResponse("m", "1", {"y": arr}), None, False)
    assert_same_nan(kserve.decode_response(body, hl).outputs["y"], arr)
    want = np.array(json.loads(body)["outputs"][0]["data"], NUMPY_DTYPES[datatype]) if values else arr
    assert_same_nan(want, arr)
    body, hl = kserve.encode_request({"x": arr}, binary=False)
    assert_same_nan(kserve.decode_request(body, hl).inputs["x"], arr)


@FUZZ
@given(st.data())
def test_fuzz_kserve_mutated_non_finite_bodies(data: st.DataObject) -> None:
    """Bodies that take the standard-library fallback, mutated: a result or a 400, never a crash."""
    body, hl = kserve.encode_request(
        {"x": non_finite_sample("FP32", 8), "y": sample("INT64"), "s": sample("BYTES", text=True)},
        binary=False,
        request_id="i",
    )
    if data.draw(st.booleans()):  # keep the tokens, break what follows them
        body = body.replace(b"NaN", data.draw(st.sampled_from([b"NaN", b"-NaN", b"NaN,", b"Inf", b"1e999"])))
    body = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    decodes_or_refuses(kserve.decode_request, bytes(body[:cut]), hl)
    decodes_or_refuses(kserve.decode_request, bytes(body), hl)
    decodes_or_refuses(kserve.decode_response, bytes(body), hl)


# ---------------------------------------------------------------------------------------- errors

FP32_IN = {"name": "x", "shape": [2, 3], "datatype": "FP32"}


@pytest.mark.parametrize(
    ("doc", "raw", "expected"),
    [
        ({"outputs": []}, None, ["'inputs'"]),
        ({"inputs": {}}, None, ["'inputs'", "list"]),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, None, ["#0", "'name'"]),
        ({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}, None, ["'x'", "'shape'"]),
        ({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}, None, ["'x'", "'datatype'"]),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]},
            None,
            ["'x'", "'FP8'", "FP32"],
        ),
        (
            {"inputs": [{"name": "x", "shape": [2, -1], "datatype": "FP32", "data": [1]}]},
            None,
            ["'x'", "non-negative", "[2, -1]"],
        ),
        (
            {"inputs": [{"name": "x", "shape": "2", "datatype": "FP32", "data": [1]}]},
            None,
            ["'x'", "'shape'"],
        ),
        (
            {"inputs": [{**FP32_IN, "data": [1, 2, 3, 4, 5]}]},
            None,
            ["'x'", "expected 6 elements for shape [2, 3], got 5"],
        ),
        ({"inputs": [{**FP32_IN, "data": [[1, 2, 3], [4, 5]]}]}, None, ["'x'", "nested lists"]),
        ({"inputs": [{**FP32_IN, "data": ["a"] * 6}]}, None, ["'x'", "numbers", "strings"]),
        ({"inputs": [{**FP32_IN, "data": 3}]}, None, ["'x'", "list"]),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]},
            None,
            ["'x'", "true/false"],
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]},
            None,
            ["'x'", "integers"],
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]},
            None,
            ["'x'", "[0, 255]", "300"],
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]},
            None,
            ["'x'", "strings"],
        ),
        ({"inputs": [{**FP32_IN}]}, None, ["'x'", "no 'data'"]),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2},
            None,
            ["duplicate", "'x'"],
        ),
        (
            {"inputs": [{**FP32_IN, "parameters": {"binary_data_size": 20}}]},
            b"\0" * 20,
            ["'x'", "expected 24 bytes for FP32 shape [2, 3], got 20"],
        ),
        (
            {"inputs": [{**FP32_IN, "parameters": {"binary_data_size": 24}}]},
            b"\0" * 30,
            ["6 bytes", "left over"],
        ),
        (
            {"inputs": [{**FP32_IN, "parameters": {"binary_data_size": 24}}]},
            b"\0" * 10,
            ["'x'", "24", "only 10"],
        ),
        (
            {"inputs": [{**FP32_IN, "parameters": {"binary_data_size": "24"}}]},
            b"\0" * 24,
            ["'x'", "binary_data_size", "non-negative integer"],
        ),
        (
            {
                "inputs": [
                    {"name": "s", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}
                ]
            },
            b"\0" * 8,
            ["'s'", "expected at least 12 bytes", "[3]"],
        ),
        ({"id": 5, "inputs": []}, None, ["'id'", "string"]),
        ({"parameters": [], "inputs": []}, None, ["'parameters'", "object"]),
        (
            {"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            None,
            ["'y'", "binary_data", "true or false"],
        ),
        ({"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}, None, ["'y'", "twice"]),
    ],
)
def test_kserve_errors_name_the_tensor_and_the_expectation(
    doc: dict, raw: bytes | None, expected: list[str]
) -> None:
    body, hl = body_of(doc, raw) if raw is not None else body_of(doc)
    message = fail(kserve.decode_request, body, hl)
    for part in expected:
        assert part in message, (part, message)


def test_kserve_framing_errors() -> None:
    assert "not valid JSON" in fail(kserve.decode_request, b"{nope", None)
    assert "JSON object" in fail(kserve.decode_request, b"[1]", None)
    assert "expected at most the body length 2" in fail(kserve.decode_request, b"{}", 5)
    assert "integer" in fail(kserve.decode_request, b"{}", "x")
    doc = {"inputs": [{**FP32_IN, "parameters": {"binary_data_size": 24}}]}
    assert "no Inference-Header-Content-Length" in fail(kserve.decode_request, orjson.dumps(doc), None)


# Binary tensors whose declared sizes are wrong while their sum is the binary part's length: only a
# decoder that cuts each tensor at its own binary_data_size (and checks it against the shape) sees it.
# Cutting by shape instead would read every tensor as a valid one made of the wrong bytes.
# Each tensor: (name, datatype, shape, declared binary_data_size, true size).
@pytest.mark.parametrize(
    ("tensors", "raw", "expected"),
    [
        (  # 'a' is FP32 [2], 8 bytes, but claims 12; 'b' (INT32 [2]) claims the 4 left
            [("a", "FP32", [2], 12, 8), ("b", "INT32", [2], 4, 8)],
            np.array([1.5, -2], "<f4").tobytes() + np.array([7, 9], "<i4").tobytes(),
            "input 'a': expected 8 bytes for FP32 shape [2], got 12",
        ),
        (  # 'a' claims too few
            [("a", "FP32", [2], 4, 8), ("b", "INT32", [2], 12, 8)],
            np.array([1.5, -2], "<f4").tobytes() + np.array([7, 9], "<i4").tobytes(),
            "input 'a': expected 8 bytes for FP32 shape [2], got 4",
        ),
        (  # the middle one of three is wrong, the first is right
            [("a", "UINT8", [3], 3, 3), ("m", "INT16", [2], 6, 4), ("z", "INT16", [1], 0, 2)],
            b"\1\2\3" + np.array([5, 6], "<i2").tobytes() + np.array([8], "<i2").tobytes(),
            "input 'm': expected 4 bytes for INT16 shape [2], got 6",
        ),
        (  # BYTES first: 'abc' is 7 bytes on the wire (a 4-byte length, then 3), it claims 8
            [("s", "BYTES", [1], 8, 7), ("u", "UINT8", [3], 2, 3)],
            b"\3\0\0\0abc" + b"\4\5\6",
            "tensor 's': 1 bytes left over after the 1 elements of shape [1]",
        ),
    ],
    ids=["first-too-large", "first-too-small", "middle", "bytes-first"],
)
def test_binary_data_size_of_a_tensor_that_is_not_the_last_is_checked(
    tensors: list[tuple[str, str, list[int], int, int]], raw: bytes, expected: str
) -> None:
    def entries(right: bool) -> list[dict]:
        return [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": true if right else size}}
                for n, d, s, size, true in tensors]

    assert sum(size for *_, size, _ in tensors) == sum(true for *_, true in tensors) == len(raw)
    assert fail(kserve.decode_request, *body_of({"inputs": entries(False)}, raw)) == expected
    # The client decodes a reply the same way.
    reply = body_of({"model_name": "m", "outputs": entries(False)}, raw)
    assert fail(kserve.decode_response, *reply) == expected.replace("input '", "output '")
    # With the right sizes the same bytes decode, each tensor from its own slice.
    decoded = kserve.decode_request(*body_of({"inputs": entries(True)}, raw)).inputs
    pos = 0
    for name, datatype, _, _, true in tensors:
        arr = decoded[name]
        got = arr[0] if datatype == "BYTES" else arr.tobytes()
        assert got == (raw[pos + 4:pos + true] if datatype == "BYTES" else raw[pos:pos + true]), name
        pos += true


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": b"\0" * 4}]},
            ["'x'", "expected 8 bytes for FP32 shape [2], got 4"],
        ),
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]},
            ["'x'", "raw little-endian bytes"],
        ),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "F32", "data": b""}]}, ["'x'", "'F32'"]),
        (
            {"inputs": [{"name": "x", "shape": [-2], "datatype": "FP32", "data": b""}]},
            ["'x'", "non-negative"],
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "data": b""}]}, ["'x'", "'shape'"]),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": b"\0" * 4}] * 2},
            ["duplicate", "'x'"],
        ),
        (
            {"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "data": b"\5\0\0\0ab"}]},
            ["'s'", "past the end"],
        ),
        ({"inputs": [], "outputs": ["y", 3]}, ["#1"]),
        ({"id": 1, "inputs": []}, ["'id'"]),
        ({"outputs": []}, ["'inputs'"]),
    ],
)
def test_msgpack_errors_name_the_tensor_and_the_expectation(doc: dict, expected: list[str]) -> None:
    message = fail(msgpack_codec.decode_request, msgpack.packb(doc))
    for part in expected:
        assert part in message, (part, message)


def test_msgpack_framing_errors() -> None:
    assert "not valid msgpack" in fail(msgpack_codec.decode_request, b"\xc1")
    assert "not valid msgpack" in fail(msgpack_codec.decode_request, msgpack.packb({"inputs": []}) + b"\0")
    assert "map" in fail(msgpack_codec.decode_request, msgpack.packb([1, 2]))


# --------------------------------------------------------------------------------------- fuzzing


def decodes_or_refuses(fn, *args) -> None:
    """``fn`` gives a result or a PyserveError, never another exception."""
    try:
        fn(*args)
    except PyserveError as e:
        assert e.kind is ErrorKind.INVALID_ARGUMENT


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
shapes = st.lists(st.integers(-1, 2**63 - 1) | st.sampled_from([0, 1, 2, 3]), max_size=4) | json_values
tensor_docs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b"]) | json_values,
        "shape": shapes,
        "datatype": st.sampled_from(DATATYPES) | json_values,
    },
    optional={
        "data": json_values | st.lists(st.integers(0, 3), max_size=6),
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 40) | json_values}),
    },
)
request_docs = st.fixed_dictionaries(
    {"inputs": st.lists(tensor_docs, max_size=3) | json_values},
    optional={
        "id": json_values,
        "parameters": json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": json_values}), max_size=2) | json_values,
    },
)


@FUZZ
@given(st.binary(max_size=300), st.none() | st.integers(-3, 400))
def test_fuzz_kserve_random_bytes(body: bytes, hl: int | None) -> None:
    decodes_or_refuses(kserve.decode_request, body, hl)
    decodes_or_refuses(kserve.decode_response, body, hl)


@FUZZ
@given(request_docs, st.binary(max_size=48), st.booleans())
def test_fuzz_kserve_structured(doc: dict, raw: bytes, with_binary: bool) -> None:
    body, hl = body_of(doc, raw) if with_binary else body_of(doc)
    decodes_or_refuses(kserve.decode_request, body, hl)


@FUZZ
@given(st.data())
def test_fuzz_kserve_mutated_valid_bodies(data: st.DataObject) -> None:
    datatype = data.draw(st.sampled_from(DATATYPES))
    body, hl = kserve.encode_request(
        {"x": sample(datatype, text=True), "y": sample("FP32")},
        binary=data.draw(st.booleans()),
        request_id="i",
    )
    body = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    decodes_or_refuses(kserve.decode_request, bytes(body[:cut]), hl)
    decodes_or_refuses(kserve.decode_request, bytes(body), hl)


msgpack_tensor_docs = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b"]) | json_values,
        "shape": shapes,
        "datatype": st.sampled_from(DATATYPES) | json_values,
        "data": st.binary(max_size=40) | json_values,
    },
    optional={"parameters": json_values},
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"inputs": st.lists(msgpack_tensor_docs, max_size=3) | json_values},
        optional={"id": json_values, "parameters": json_values, "outputs": json_values},
    )
)
def test_fuzz_msgpack_structured(doc: dict) -> None:
    decodes_or_refuses(msgpack_codec.decode_request, msgpack.packb(doc))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_msgpack_random_bytes(body: bytes) -> None:
    decodes_or_refuses(msgpack_codec.decode_request, body)
    decodes_or_refuses(msgpack_codec.decode_response, body)


@FUZZ
@given(st.data())
def test_fuzz_msgpack_mutated_valid_bodies(data: st.DataObject) -> None:
    datatype = data.draw(st.sampled_from(DATATYPES))
    body = bytearray(
        msgpack_codec.encode_request({"x": sample(datatype), "y": sample("INT8")}, outputs=["z"])
    )
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    decodes_or_refuses(msgpack_codec.decode_request, bytes(body[:cut]))
    decodes_or_refuses(msgpack_codec.decode_request, bytes(body))


@pytest.mark.parametrize("value", ["1_0", "+37", "-1", "0x25", " ", "", "37, 37", "3.7e1", "\u0663\u0667",
                                   -1])
def test_header_length_that_is_not_a_plain_decimal_is_refused(value: str | int) -> None:
    # Python's int() reads "1_0" as 10, "+37" as 37 and Arabic-Indic digits as digits: a lying or
    # garbled Inference-Header-Content-Length must be a 400 that names it, never a guess.
    header = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}'
    message = fail(kserve.decode_request, header + b"\0" * 4, value)
    assert "Inference-Header-Content-Length must be a non-negative integer" in message
    assert repr(value) in message


def test_header_length_in_plain_decimal_is_read() -> None:
    header = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], '
              b'"parameters": {"binary_data_size": 4}}]}')
    body = header + np.float32(2.5).tobytes()
    for value in (str(len(header)), f" {len(header)}\t", len(header)):
        assert kserve.decode_request(body, value).inputs["x"].tolist() == [2.5]


@pytest.mark.parametrize("lie", [-1, 1])
def test_a_header_length_that_lies_says_so(lie: int) -> None:
    header = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], '
              b'"parameters": {"binary_data_size": 4}}]}')
    message = fail(kserve.decode_request, header + b"\0" * 4, len(header) + lie)
    assert "not valid JSON" in message
    said = f"read as the first {len(header) + lie} bytes of the body, as Inference-Header-Content-Length says"
    assert said in message
