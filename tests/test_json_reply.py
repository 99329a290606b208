"""The C++ JSON reply writer (csrc/core/json_reply.cc, pyserve/protocol/kserve_reply.py) against the
reference encoder it replaces (orjson over the arrays, ``kserve._reference_body``): the same bytes,
or the same refusal with the same message, for every datatype.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyserve.datatypes import DATATYPES, NUMPY_DTYPES
from pyserve.errors import PyserveError
from pyserve.protocol import InferResponse, RequestedOutput, kserve, kserve_reply

DOC = {"model_name": "m", "model_version": "1", "id": "r\u00e9\n", "parameters": {"k": [1, "v"]}}
NUMERIC = [d for d in DATATYPES if d != "BYTES"]


def both(items: list[tuple[str, Any, bool]], doc: dict | None = None) -> tuple[Any, Any]:
    """(writer, reference): each the (body, json length) or ("refused", message)."""
    doc = DOC if doc is None else doc

    def run(f: Any) -> Any:
        try:
            return f(doc, items)
        except PyserveError as e:
            return ("refused", e.message)

    return run(kserve_reply.encode_response), run(kserve._reference_body)


def assert_same(items: list[tuple[str, Any, bool]], doc: dict | None = None) -> bytes:
    got, want = both(items, doc)
    assert got is not None, "the writer declined"
    assert got == want
    return got[0]


def random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values over the datatype's whole range: every bit pattern for the floats (NaN,
    infinities, subnormals, -0.0 included), plus some round numbers."""
    dtype = NUMPY_DTYPES[datatype]
    count = math.prod(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, count).astype(bool).reshape(shape)
    raw = rng.integers(0, 256, count * dtype.itemsize, dtype=np.uint8).tobytes()
    arr = np.frombuffer(raw, dtype=dtype).copy()
    if dtype.kind == "f" and count:
        with np.errstate(over="ignore"):  # 1e15 and 1e16 are inf in FP16
            arr[: count // 3] = rng.choice([0.0, -0.0, 1.0, 0.1, 1e-5, 1e-6, 1e15, 1e16, 123.5, np.nan, np.inf,
                                            -np.inf, 65504, 6e-8], count // 3)
    return arr.reshape(shape)


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 0), (), (7,), (4, 33)], ids=str)
def test_random_arrays_give_the_reference_bytes(datatype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(hash((datatype, shape)) % 2**32)
    for _ in range(20):
        arr = random_array(datatype, shape, rng)
        body = assert_same([("y", arr, False), ("z", arr[..., ::-1] if arr.ndim else arr, False)])
        doc = kserve.decode_response(body)
        np.testing.assert_array_equal(doc.outputs["y"], arr)  # reads back to the same values


@pytest.mark.parametrize("width", [16, 32, 64])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_float_reads_back_the_same(width: int, data: st.DataObject) -> None:
    arr = data.draw(hnp.arrays(np.dtype(f"f{width // 8}"), st.integers(0, 40),
                               elements=st.floats(width=width, allow_nan=True, allow_infinity=True)))
    body = assert_same([("y", arr, False)])
    parsed = json.loads(body)["outputs"][0]["data"]
    np.testing.assert_array_equal(np.array(parsed, dtype=arr.dtype), arr)


def test_the_float_layout_is_orjsons() -> None:
    values = [1e-7, 1e16, 1.0, 0.1, 1e22, -0.0, 5e-324, 1.7976931348623157e308, 1.2345678901234568e17,
              1e15, 12345.678, 1e-5, 1e-6, 0.0001, 1234567890123456.8, math.nan, math.inf, -math.inf]
    body = assert_same([("y", np.array(values), False)])
    assert b'"data":[1e-7,1e+16,1.0,0.1,1e+22,-0.0,5e-324,1.7976931348623157e+308,1.2345678901234568e+17,' \
           b'1000000000000000.0,12345.678,0.00001,1e-6,0.0001,1234567890123456.8,NaN,Infinity,-Infinity]' in body


def test_integer_extremes() -> None:
    for datatype in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"):
        info = np.iinfo(NUMPY_DTYPES[datatype])
        body = assert_same([("y", np.array([info.min, info.max, 0], dtype=NUMPY_DTYPES[datatype]), False)])
        assert json.loads(body)["outputs"][0]["data"] == [int(info.min), int(info.max), 0]


def test_byte_order_and_layout() -> None:
    arr = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    assert_same([("big", arr, False), ("t", arr.T, False), ("i", np.arange(6, dtype=">i8")[::2], False)])


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.text(), max_size=8), name=st.text(max_size=8))
def test_strings_escape_as_orjson(values: list[str], name: str) -> None:
    try:
        values_bytes = [v.encode() for v in values]
        name.encode()
    except UnicodeEncodeError:
        return  # a lone surrogate: not text a reply can hold
    as_bytes = np.array(values_bytes + [b""], dtype=object)[:-1]
    as_str = np.array(values + [""], dtype=object)[:-1]
    assert_same([(name, as_bytes, False), ("s", as_str, False)])


def test_control_characters_quotes_and_unicode() -> None:
    text = "a\"\\\n\r\t\b\f\x00\x1f\x7f\u2028\u00e9\U0001F600/"
    body = assert_same([("n\"\x01", np.array([text.encode(), text], dtype=object), False)])
    assert json.loads(body)["outputs"][0]["data"] == [text, text]


@pytest.mark.parametrize("bad", [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\xe2\x82"])
def test_bytes_that_are_not_utf8_are_refused_as_before(bad: bytes) -> None:
    got, want = both([("ok", np.array([1.0]), False), ("s", np.array([b"x", bad], dtype=object), False)])
    assert got == want
    assert want[0] == "refused" and "'s': a BYTES element is not UTF-8" in want[1]


def test_what_the_writer_does_not_take_goes_to_the_reference() -> None:
    # A str-dtype BYTES array, an object array of other types, a lone surrogate.
    for arr in (np.array(["a", "bc"]), np.array([1, "x"], dtype=object), np.array(["\ud800"], dtype=object)):
        assert kserve_reply.encode_response(DOC, [("s", arr, False)]) is None
    resp = InferResponse(model_name="m", model_version="1", outputs={"s": np.array(["a", "bc"])})
    assert json.loads(kserve.encode_response(resp)[0])["outputs"][0]["data"] == ["a", "bc"]


def test_binary_tensors_with_json_ones() -> None:
    f = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    s = np.array([b"ab", b"", "\u00e9".encode()], dtype=object)
    items = [("f", f, True), ("s", s, True), ("j", f, False), ("t", s, False), ("b", f.astype(">f8"), True)]
    body, length = assert_same(items) and both(items)[0]
    assert length is not None and length < len(body)
    resp = kserve.decode_response(body, length)
    np.testing.assert_array_equal(resp.outputs["f"], f)
    np.testing.assert_array_equal(resp.outputs["b"], f)
    assert resp.outputs["s"].tolist() == [b"ab", b"", "\u00e9".encode()]


def test_encode_response_uses_the_writer_with_the_same_bytes() -> None:
    outputs = {"y": np.arange(5, dtype=np.float16) / 3, "z": np.array([True, False])}
    resp = InferResponse(model_name="m", model_version="2", outputs=outputs, id="i")
    for requested, binary_default in ((None, False), ([RequestedOutput("z", True, None)], False),
                                      ([RequestedOutput("y", None, None)], True)):
        got = kserve.encode_response(resp, requested, binary_default)
        if requested is None:
            items = [(n, a, binary_default) for n, a in outputs.items()]
        else:
            items = [(r.name, outputs[r.name], binary_default if r.binary is None else r.binary) for r in requested]
        doc = {"model_name": "m", "model_version": "2", "id": "i"}
        assert got == kserve._reference_body(doc, items)
        assert got == kserve_reply.encode_response(doc, items)


def test_unknown_dtype_is_refused_naming_the_output() -> None:
    got, want = both([("c", np.array([1 + 2j]), False)])
    assert got == want and want[0] == "refused" and "'c'" in want[1]


def test_threads_write_the_same_bytes() -> None:
    arr = random_array("FP32", (50_000,), np.random.default_rng(1))
    want = kserve._reference_body(DOC, [("y", arr, False)])
    results: list[Any] = []

    def work() -> None:
        for _ in range(5):
            results.append(kserve_reply.encode_response(DOC, [("y", arr, False)]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all(r == want for r in results)


@pytest.mark.parametrize("sizes", [(1,), (200, 70_000), (3, 20_000, 5)], ids=str)
def test_large_msgpack_replies_are_packb_byte_for_byte(sizes: tuple[int, ...]) -> None:
    import msgpack

    from pyserve.protocol import msgpack_codec

    rng = np.random.default_rng(len(sizes))
    outputs: dict[str, Any] = {f"t{i}": rng.standard_normal(n).astype(np.float32) for i, n in enumerate(sizes)}
    outputs["s"] = np.array([b"a", b"\xff", "\u00e9".encode()], dtype=object)
    outputs["big"] = np.arange(20_000, dtype=">i8").reshape(100, 200)  # over the threshold alone
    items = list(outputs.items())
    doc = {"model_name": "m", "model_version": "1", "id": "x", "parameters": {"a": 1}}
    want = msgpack.packb({**doc, "outputs": msgpack_codec._encode_tensors(items)})
    assert msgpack_codec._join_response(doc, items) == want
    resp = InferResponse(model_name="m", model_version="1", outputs=outputs, id="x", parameters={"a": 1})
    assert msgpack_codec.encode_response(resp) == want
