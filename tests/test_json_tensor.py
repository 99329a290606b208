"""The C++ JSON tensor decoder (csrc/core/json_tensor.cc, pyserve/protocol/kserve_json.py) against
the reference decoder it replaces (orjson, then numpy: ``kserve._array_from_json`` on the whole
body): the same arrays, bit for bit, or the same refusal with the same message.
"""

from __future__ import annotations

import json
import random
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from pyserve import _core
from pyserve.datatypes import DATATYPES
from pyserve.errors import PyserveError
from pyserve.protocol import kserve, kserve_json


def outcome(body: bytes, reference: bool) -> tuple:
    """What decoding ``body`` gives: each input's dtype, shape and bytes (BYTES: its values), or the
    refusal's kind and message. ``reference``: with the C++ decoder switched off."""
    try:
        if reference:
            with mock.patch.object(kserve_json, "parse", return_value=None):
                req = kserve.decode_request(body)
        else:
            req = kserve.decode_request(body)
    except PyserveError as e:
        return ("refused", e.kind, e.message)
    return tuple(
        (name, str(a.dtype), a.shape, a.tolist() if a.dtype == object else a.tobytes(), a.flags.c_contiguous)
        for name, a in req.inputs.items()
    ) + (req.id, req.parameters)


def body_of(datatype: str, shape: Any, data_text: str, extra: str = "") -> bytes:
    return (f'{{"id": "r"{extra}, "inputs": [{{"name": "x", "datatype": "{datatype}", '
            f'"shape": {json.dumps(shape)}, "data": {data_text}}}]}}').encode()


def assert_same(body: bytes) -> tuple:
    got, want = outcome(body, reference=False), outcome(body, reference=True)
    assert got == want, body[:400]
    return got


# -- the edge cases of the issue, each with what the reference makes of it ---------------------------

EDGES = [
    # (datatype, shape, data, what the reference does: "ok" or a piece of its message)
    ("FP32", [2], "[-0, -0.0]", "ok"),
    ("FP64", [1], "[1e400]", "not valid JSON"),
    ("FP64", [1], "[1e-400]", "ok"),
    ("FP64", [2], "[-1e-400, 4.9e-324]", "ok"),
    ("INT32", [2], "[1.0, 2]", "ok"),
    ("INT32", [2], "[1.5, 2]", "fractions"),
    ("INT64", [1], "[9223372036854775808]", "must lie in"),
    ("INT64", [2], "[9223372036854775807, -9223372036854775808]", "ok"),
    ("UINT64", [2], "[18446744073709551615, 0]", "ok"),
    ("UINT64", [1], "[18446744073709551616]", "integers in [0, 18446744073709551615]"),
    ("INT8", [3], "[127, -128, 128]", "must lie in"),
    ("FP32", [1], "[01]", "not valid JSON"),
    ("FP32", [1], "[1.]", "not valid JSON"),
    ("FP32", [1], "[.5]", "not valid JSON"),
    ("FP32", [1], "[+1]", "not valid JSON"),
    ("FP32", [1], "[0x10]", "not valid JSON"),
    ("FP32", [1], "[1_000]", "not valid JSON"),
    ("FP32", [2], "[1, 2,]", "not valid JSON"),
    ("FP32", [2], "[1 2]", "not valid JSON"),
    ("FP32", [2], " [ 1 ,\n\t2\r ] ", "ok"),
    ("FP32", [1], "[1e99999999999999999999]", "not valid JSON"),
    ("FP32", [1], "[1e-99999999999999999999]", "ok"),
    ("FP32", [1], "[3.4028235e38]", "ok"),
    ("FP32", [1], "[3.5e38]", "cannot hold"),
    ("FP16", [2], "[65504, 65519.99]", "ok"),
    ("FP16", [1], "[65520]", "cannot hold"),
    ("FP16", [3], "[5.960464477539063e-08, 2.98e-08, 1e-8]", "ok"),
    ("FP32", [3], "[NaN, Infinity, -Infinity]", "ok"),
    ("INT32", [1], "[NaN]", "NaN or Infinity"),
    ("FP32", [1], "[nan]", "not valid JSON"),
    ("FP32", [1], "[-NaN]", "not valid JSON"),
    ("BOOL", [2], "[true, false]", "ok"),
    ("BOOL", [2], "[true, 1]", "true/false"),
    ("FP32", [2], "[true, 1.5]", "ok"),
    ("INT32", [2], "[true, 2]", "ok"),
    ("INT32", [2], "[true, false]", "must be integers"),
    ("FP32", [2, 2], "[[1, 2], [3, 4]]", "ok"),
    ("FP32", [3], "[[1, 2], [3]]", "nested lists of equal lengths"),
    ("FP32", [2], "[1, [2]]", "nested lists of equal lengths"),
    ("FP32", [2, 0], "[[], []]", "ok"),
    ("FP32", [1], "[" * 40 + "1" + "]" * 40, "ok"),
    ("FP32", [1], "[" * 70 + "1" + "]" * 70, "nested lists of equal lengths"),
    ("FP32", [1], "[" * 1100 + "1" + "]" * 1100, "not valid JSON"),
    ("FP32", [3], "[1, 2]", "expected 3 elements"),
    ("FP32", [1], '["1"]', "got strings"),
    ("FP32", [1], "[null]", "mixed or non-numeric"),
    ("FP32", [1], "[9007199254740993]", "ok"),
    ("FP32", [2], "[9007199254740993, 0.5]", "ok"),
    ("FP32", [1], "[16777217]", "ok"),
    ("INT64", [2], "[9007199254740993, 1.0]", "ok"),
    ("BYTES", [2], '["a", "b"]', "ok"),
    ("BYTES", [1], "[1]", "must be strings"),
]


@pytest.mark.parametrize("datatype,shape,data,expected", EDGES, ids=[f"{d}-{x[:30]}" for d, _, x, _ in EDGES])
def test_edge_cases_decode_as_the_reference_does(datatype: str, shape: list[int], data: str,
                                                  expected: str) -> None:
    got = assert_same(body_of(datatype, shape, data))
    if expected == "ok":
        assert got[0] != "refused", got
    else:
        assert got[0] == "refused" and expected in got[2], got


def test_escaped_and_repeated_keys_decode_as_the_reference_does() -> None:
    for text in [
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "d\\u0061ta": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "data": [2]}]}',
        b'{"inputs": [], "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [3]}]}',
        b'{"\\u0069nputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [3]}]}',
        b'{"inputs": [{"data": [1, 2], "shape": [2], "datatype": "INT8", "name": "x"}]} ',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]} x',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "p": NaN}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, 5]}',
        b'{"inputs": [{"name": "x\\"", "datatype": "FP32", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]',
        b'\xef\xbb\xbf{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
        b'{"inputs": [{"name": "\xff", "datatype": "FP32", "shape": [1], "data": [1]}]}',
    ]:
        assert_same(text)


def test_the_cpp_decoder_takes_the_usual_bodies() -> None:
    """Not everything deferred to the reference: numbers of each datatype are decoded in C++."""
    for datatype, data in [("FP32", "[[0.5, -1e-3], [2, 3]]"), ("FP16", "[[1, 2], [3, 4.5]]"),
                           ("FP64", "[[1, 2], [3, 4]]"), ("INT64", "[[1, -2], [3, 4]]"),
                           ("UINT8", "[[1, 2], [3, 255]]"), ("BOOL", "[[true, false], [true, true]]")]:
        body = body_of(datatype, [2, 2], data)
        skeleton, spans = _core.scan_kserve_request(body)
        assert b'"data": 0' in skeleton and [s[0] for s in spans] == [0, -1]  # the data, then the id
        _, begin, end = spans[0]
        flat = _core.decode_json_tensor(body, begin, end, datatype, 4)
        assert flat is not None and flat.size == 4, datatype
        assert_same(body)


def test_half_rounding_matches_numpy_on_every_boundary() -> None:
    """FP16 values at and between each half's neighbours (ties to even) round as numpy's cast."""
    halves = np.arange(0, 0x7c00, 7, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = np.concatenate([halves, (halves[:-1] + halves[1:]) / 2, np.nextafter(halves, 0)])
    text = "[" + ", ".join(repr(float(v)) for v in mids) + "]"
    body = body_of("FP16", [mids.size], text)
    got = assert_same(body)
    assert got[0] != "refused"


# -- differential: random data, every datatype ------------------------------------------------------

_INT_EDGES = [0, 1, -1, 127, 128, -128, -129, 255, 256, 32767, 32768, -32769, 65535, 65536, 2**31 - 1, 2**31,
              -(2**31) - 1, 2**32, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
              2**64 - 1, 2**64, 10**30]
_FLOAT_TEXTS = ["-0.0", "0.5", "1.0", "1e0", "1E+2", "2.5e-3", "-3.75", "65504.0", "65520", "3.4028235e38",
                "3.5e38", "1e308", "1e-310", "1e-400", "1.7976931348623157e308", "NaN", "Infinity",
                "-Infinity", "9007199254740993.0", "128.0", "-129.0", "4294967296.0"]


def _leaf() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(_INT_EDGES).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.9g}"),
        st.sampled_from(_FLOAT_TEXTS),
        st.sampled_from(["true", "false"]),
        st.sampled_from(['"1"', "null", "{}", "01", "1.", "[]", "-", "1e", "Nan"]).filter(lambda _: True),
    )


@st.composite
def _nested(draw: st.DrawFn) -> tuple[str, list[int]]:
    """A data array's text and its shape; mostly rectangular, at times ragged, at times odd leaves."""
    dims = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    odd = draw(st.integers(0, 9)) == 0
    plain = draw(st.sampled_from([st.sampled_from(_INT_EDGES[:12]).map(str), st.floats(-1e6, 1e6).map(repr),
                                  st.sampled_from(["true", "false"])]))
    leaf = _leaf() if odd or draw(st.booleans()) else plain

    def build(level: int) -> str:
        if level == len(dims):
            return draw(leaf)
        n = dims[level]
        if draw(st.integers(0, 30)) == 0:
            n = max(0, n + draw(st.sampled_from([-1, 1])))  # ragged
        ws = draw(st.sampled_from(["", " ", "\n  "]))
        return "[" + ws + ("," + ws).join(build(level + 1) for _ in range(n)) + ws + "]"

    return build(0), dims


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datatype=st.sampled_from(DATATYPES), nested=_nested(), shape_off=st.sampled_from([0, 0, 0, 0, 1]))
@example(datatype="FP32", nested=("[1, 2.5]", [2]), shape_off=0)
def test_random_data_decodes_as_the_reference_does(datatype: str, nested: tuple[str, list[int]],
                                                   shape_off: int) -> None:
    text, dims = nested
    shape = [*dims[:-1], dims[-1] + shape_off]
    assert_same(body_of(datatype, shape, text, extra=', "parameters": {"priority": 1}'))


def _decimal_text(negative: bool, m: int, k: int, leading_zeros: int) -> str:
    """The decimal text of ±m / 10**k with k fraction digits (k >= 1) and extra leading zeros."""
    digits = str(m).rjust(k + 1, "0")
    whole, fraction = digits[:-k], digits[-k:]
    return ("-" if negative else "") + ("0" * leading_zeros if whole != "0" else "") + whole + "." + fraction


@settings(max_examples=500, deadline=None)
@given(negative=st.booleans(), k=st.integers(1, 25), leading_zeros=st.sampled_from([0, 0, 0, 1]),
       m=st.one_of(st.integers(0, 2**54), st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 10**15, 10**16 - 1,
                                                           10**16, 10**17 + 3, 0, 1, 5, 15625])),
       datatype=st.sampled_from(["FP64", "FP32", "FP16"]))
@example(negative=False, m=2**53, k=22, leading_zeros=0, datatype="FP64")
@example(negative=True, m=0, k=1, leading_zeros=0, datatype="FP32")
def test_plain_decimals_decode_as_the_reference_does(negative: bool, m: int, k: int, leading_zeros: int,
                                                     datatype: str) -> None:
    """-?digits.digits without an exponent is read by Clinger's fast path (one exact division) when
    its digits make an integer up to 2**53 and it has at most 22 fraction digits, by from_chars
    otherwise: either way the double float() reads, then the reference's rounding to the datatype.
    Leading zeros are not JSON: both refuse them."""
    text = _decimal_text(negative, m, k, leading_zeros)
    got = assert_same(body_of(datatype, [2], f"[{text}, 0.5]"))
    if got[0] != "refused":
        assert np.frombuffer(got[0][3], got[0][1])[0] == np.array(float(text)).astype(got[0][1])


@settings(max_examples=150, deadline=None)
@given(first=_nested(), second=_nested(),
       types=st.tuples(st.sampled_from(DATATYPES), st.sampled_from(DATATYPES)))
def test_two_inputs_decode_as_the_reference_does(first: tuple[str, list[int]], second: tuple[str, list[int]],
                                                  types: tuple[str, str]) -> None:
    body = (f'{{"inputs": [{{"name": "a", "datatype": "{types[0]}", "shape": {json.dumps(first[1])}, '
            f'"data": {first[0]}}}, {{"data": {second[0]}, "name": "b", "shape": {json.dumps(second[1])}, '
            f'"datatype": "{types[1]}"}}], "outputs": [{{"name": "y"}}]}}').encode()
    assert_same(body)


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_bodies_as_the_server_reads_them_take_the_cpp_path(kind: type) -> None:
    """A large body reaches the decoder as a bytearray (read in pieces): it is scanned as bytes are."""
    real, scanned = kserve_json.parse, []

    def spy(body: Any) -> Any:
        scanned.append(real(body))
        return scanned[-1]

    body = kind(body_of("FP32", [2, 2], "[[1, 2], [3, 4.5]]"))
    with mock.patch.object(kserve_json, "parse", spy):
        req = kserve.decode_request(body)
    assert scanned and scanned[0] is not None
    assert req.inputs["x"].tolist() == [[1, 2], [3, 4.5]]


@pytest.mark.parametrize(("datatype", "data"), [
    ("FP32", "[1, 2]"),  # too few
    ("FP32", "[1, 2, 3, 4]"),  # too many
    ("INT8", "[true, 1, 2, 3]"),  # a wrong count comes before a boolean, as in numpy
    ("INT8", "[NaN, 300, 1, 2, 3]"),  # ... and before a NaN and a value out of range
    ("FP32", "[[1], [2, 3]]"),  # ragged
    ("FP32", "[[1, 2], 3]"),
    ("FP32", "[1, [2, 3]]"),
    ("UINT8", "[[300], [1, 2]]"),  # ragged comes before out of range
    ("BOOL", "[[true], [1, false]]"),
])
def test_ragged_lists_and_wrong_counts_are_refused_without_the_reference_parse(datatype: str,
                                                                                data: str) -> None:
    # The reference's parse of every number holds the GIL: a 60 MiB data array under a small
    # tensor's shape stalled the event loop for seconds. The C++ walk finds these refusals itself.
    body = body_of(datatype, [3], data)
    got = assert_same(body)
    assert got[0] == "refused"
    parsed = AssertionError("the reference parsed the data")
    with mock.patch.object(kserve_json, "_python", side_effect=parsed):
        assert outcome(body, reference=False) == got


_ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.sampled_from(["id", "a"]), inner, max_size=2), max_leaves=4)


@given(st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=8),
                 st.text(max_size=8), _ANY_JSON), st.booleans(), st.booleans(), st.booleans(),
       st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
@example(" a ", True, True, False, (",", ":"))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_lifted_id_is_the_reference_id(request_id: Any, first: bool, ascii_only: bool, with_bytes: bool,
                                         separators: tuple[str, str]) -> None:
    """The scanner lifts a plain string id (printable ASCII, no escapes) out of the body: whatever
    the id (any text, escaped or as UTF-8, numbers, lists, objects holding an "id" key, null),
    before or after the inputs, beside BYTES data that is not lifted, the request is the
    reference's, its id and refusals included."""
    inputs: list[dict] = [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2.5]}]
    if with_bytes:
        inputs.append({"name": "s", "datatype": "BYTES", "shape": [1], "data": ["q"]})
    doc = {"id": request_id, "inputs": inputs} if first else {"inputs": inputs, "id": request_id}
    body = json.dumps(doc, ensure_ascii=ascii_only, separators=separators).encode("utf-8", "surrogatepass")
    assert_same(body)


# -- a plan's skeleton matched in one pass: JsonSkeleton.match against scan-then-decode ---------------


def _two_pass(skeleton: bytes, tensors: list[tuple[str, str, tuple]], body: bytes) -> Any:
    """What a plan of ``skeleton`` made of ``body`` before JsonSkeleton: scan_kserve_request, the
    skeleton compared, then decode_json_tensor per span; None where it fell back to the full decoder."""
    scanned = _core.scan_kserve_request(body)
    if scanned is None or scanned[0] != skeleton:
        return None
    spans = scanned[1]
    request_id = kserve_json.lifted_id(body, spans)
    if len(spans) != len(tensors):
        return None  # `"data": 0` in place of an array: the same skeleton, nothing lifted (as decode_json)
    inputs = {}
    for (name, datatype, shape), (_, begin, end) in zip(tensors, spans, strict=True):
        flat = _core.decode_json_tensor(body, begin, end, datatype, int(np.prod(shape)))
        if type(flat) is not np.ndarray:
            return None
        inputs[name] = flat.reshape(shape)
    return inputs, request_id


def _comparable(hit: Any) -> Any:
    if hit is None:
        return None
    inputs, request_id = hit
    return {name: (str(a.dtype), a.shape, a.tobytes()) for name, a in inputs.items()}, request_id


def _plan_body(first: str, second: str, request_id: str | None, ws: str) -> bytes:
    id_part = "" if request_id is None else f'"id":{ws}{json.dumps(request_id)},{ws}'
    return (f'{{{id_part}"inputs":{ws}[{{"name":"a","datatype":"A","shape":[2,2],"data":{ws}{first}}},'
            f'{ws}{{"data":{second}{ws},"name":"b","shape":[3],"datatype":"B"}}],'
            f'"outputs":[{{"name":"y"}}]}}{ws}').encode()


_TYPICAL_FLOATS = st.one_of(
    st.floats(-1e6, 1e6).map(repr),  # 17 digits, exponents for small ones (8e-05)
    st.floats(-1e6, 1e6).map(lambda f: repr(round(f, 5))),  # the peers harness's body
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.9g}"),
    st.integers(-(2**20), 2**20).map(str),
)
_FLOAT_LEAVES = st.one_of(_TYPICAL_FLOATS, _TYPICAL_FLOATS, _TYPICAL_FLOATS, st.sampled_from(
    ["-0", "0", "-0.0", "1e-400", "1e400", "8e-05", "1E+3", "0.1e1", "3.5e38", "1e-320", "9007199254740993"]))
_INT_LEAVES = st.one_of(st.integers(-100, 100).map(str), st.integers(-100, 100).map(str),
                        st.sampled_from(_INT_EDGES).map(str), st.sampled_from(["-0", "1.0", "1e2", "1.5"]))
_BAD_LEAVES = st.sampled_from(["01", "1.", "-", "NaN", "true", "1e", ".5", "+1", "1ee2", '"1"', "null"])


@st.composite
def _data_text(draw: st.DrawFn, count: int, datatype: str) -> str:
    """A data array of ``count`` leaves for ``datatype``, flat or nested in two rows; at times of
    other leaves (other types', malformed), at times ragged or of a wrong count."""
    typed = _FLOAT_LEAVES if datatype.startswith("FP") else _INT_LEAVES
    leaf = st.one_of(typed, _leaf(), _BAD_LEAVES) if draw(st.integers(0, 4)) == 0 else typed
    leaves = [draw(leaf) for _ in range(count + draw(st.sampled_from([0] * 8 + [-1, 1])))]
    ws = draw(st.sampled_from(["", "", " ", "\n\t", " \r "]))
    if count % 2 == 0 and draw(st.booleans()):
        # Two rows, at times of unequal lengths with the right count: ragged only in the structure.
        cut = len(leaves) // 2 if draw(st.integers(0, 3)) else draw(st.integers(0, len(leaves)))
        rows = [leaves[:cut], leaves[cut:]]
        return "[" + ws + f",{ws}".join("[" + f",{ws}".join(r) + "]" for r in rows) + ws + "]"
    return "[" + ws + f",{ws}".join(leaves) + ws + "]"


_NUMERIC = [d for d in DATATYPES if d != "BYTES"]
_COMMON = st.sampled_from(["FP32", "FP32", "FP64", "INT64", "INT32"])
_USUAL = st.one_of(_COMMON, _COMMON, _COMMON, st.sampled_from(_NUMERIC))
_PLAIN_ID = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=6)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(types=st.tuples(_USUAL, _USUAL), request_id=st.one_of(st.none(), _PLAIN_ID),
       new_id=st.one_of(st.none(), _PLAIN_ID, _PLAIN_ID, _PLAIN_ID, st.text(max_size=6)),
       ws=st.sampled_from(["", " "]),
       data=st.data())
@example(types=("FP32", "FP32"), request_id=None, new_id=None, ws="", data=None)
def test_a_skeleton_matches_what_scan_then_decode_takes(types: tuple[str, str], request_id: str | None,
                                                        new_id: str | None, ws: str, data: Any) -> None:
    """Whatever the new body's data (plain numbers of every form, exponents, 17 digits, integers at
    every range edge, words, malformed leaves, ragged or nested lists, whitespace) and id (plain,
    escaped, UTF-8), and at times a changed byte outside the data, JsonSkeleton.match gives what
    scanning the body, comparing its skeleton and decoding each span gave: the same arrays, byte
    for byte, and id, or nothing where that path fell back to the full decoder."""
    tensors = [("a", types[0], (2, 2)), ("b", types[1], (3,))]
    plan_body = _plan_body("[1, 2, 3, 4]", "[5, 6, 7]", request_id, ws)
    plan_body = plan_body.replace(b'"A"', f'"{types[0]}"'.encode()).replace(b'"B"', f'"{types[1]}"'.encode())
    skeleton, spans = _core.scan_kserve_request(plan_body)
    matcher = _core.JsonSkeleton(plan_body, spans, tensors)
    if data is None:  # the example: the plan's own body
        body = plan_body
    else:
        first, second = data.draw(_data_text(4, types[0])), data.draw(_data_text(3, types[1]))
        body_id = request_id if new_id is None or request_id is None else new_id
        body = _plan_body(first, second, body_id, ws)
        body = body.replace(b'"A"', f'"{types[0]}"'.encode()).replace(b'"B"', f'"{types[1]}"'.encode())
        if data.draw(st.integers(0, 9)) == 0:  # a byte changed anywhere
            at = data.draw(st.integers(0, len(body) - 1))
            body = body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at + 1:]
    want = _comparable(_two_pass(skeleton, tensors, body))
    event("decoded" if want is not None else "left to the full decoder")
    assert _comparable(matcher.match(body)) == want, body[:300]
    if data is None:
        assert want is not None


def test_a_skeleton_takes_the_usual_bodies_in_one_pass() -> None:
    """The bodies clients send (flat and nested float data as numpy's tolist() and round() write it,
    token ids) match; a body that differs outside its data, or is cut short, does not."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    for datatype, data, shape in [("FP32", x.ravel().tolist(), (2, 64)), ("FP32", x.tolist(), (2, 64)),
                                  ("FP32", np.round(x, 5).ravel().tolist(), (2, 64)),
                                  ("FP64", x.astype(np.float64).ravel().tolist(), (2, 64)),
                                  ("INT64", rng.integers(0, 50000, 128).tolist(), (2, 64)),
                                  ("INT32", rng.integers(-9, 9, 128).tolist(), (2, 64))]:
        def body(values: Any, request_id: str = "r1", name: str = "x", datatype: str = datatype,
                 shape: tuple = shape) -> bytes:
            return json.dumps({"id": request_id, "inputs": [{"name": name, "shape": list(shape),
                                                             "datatype": datatype, "data": values}]}).encode()

        primer = body(data)
        _, spans = _core.scan_kserve_request(primer)
        matcher = _core.JsonSkeleton(primer, spans, [("x", datatype, shape)])
        values = (x[::-1] if datatype.startswith("FP") else np.asarray(data)[::-1]).tolist()
        inputs, request_id = matcher.match(body(values, "r2"))
        assert request_id == "r2"
        want = kserve.decode_request(body(values, "r2")).inputs["x"]
        assert inputs["x"].dtype == want.dtype and inputs["x"].shape == shape
        assert inputs["x"].tobytes() == want.tobytes()
        assert matcher.match(body(values, "r2", name="z")) is None
        assert matcher.match(body(values)[:-1]) is None
        assert matcher.match(body(values) + b"x") is None


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_a_skeleton_reads_long_runs_of_digits(datatype: str) -> None:
    """Runs of digits past eight are read eight at a time: fractions of 9 to 22 digits whose digits
    make an integer up to 2**53 (one exact division) or beyond it (from_chars), long integers, each
    the value float() reads (as the reference's numpy makes it)."""
    texts = ["0.0000000012345678", "0.0000000000000001", "123.0000000000001", "0.1234567890123456",
             "9007199254.740992", "9007199254.740993", "1.2345678901234567890123", "0.000000000000000000001",
             "12345678901234567", "9007199254740993", "-98765432.123456789", "0.30471707880496979",
             "-0.0000000000000000", "1234567812345678.5"]
    body = body_of(datatype, [len(texts)], "[" + ", ".join(texts) + "]")
    _, spans = _core.scan_kserve_request(body)
    matcher = _core.JsonSkeleton(body, spans, [("x", datatype, (len(texts),))])
    inputs, _ = matcher.match(body)
    want = np.array([float(t) for t in texts]).astype({"FP64": np.float64, "FP32": np.float32}[datatype])
    assert inputs["x"].tobytes() == want.tobytes()
    assert inputs["x"].tobytes() == kserve.decode_request(body).inputs["x"].tobytes()


def _hostile_number(rng: random.Random, datatype: str) -> str:
    """A JSON number (or a near miss) for ``datatype``: integers at the range edges of every integer
    datatype and of doubles, 16 to 40 digits, fractions with many leading zeros, exponents of many
    digits or at a double's and a float's limits, subnormals, -0."""
    if rng.random() < 0.15:
        return rng.choice(["-0", "-0.0", "-0e0", "0e99999999999999999999", "1e-320", "-1e-320", "4.9e-324",
                           "2.4e-324", "1e-400", "1e309", "3.4028235e38", "3.4028236e38", "3.40282357e38",
                           "7e-46", "1.4e-45", "1e0000000000000000000001", "1E+0", "00", "-01", "1.", "-",
                           "-.5", "1e", "NaN", "-Infinity", "true", "1.0", "2e1"])
    if rng.random() < 0.3:
        edge = rng.choice([2**7, 2**8, 2**15, 2**16, 2**31, 2**32, 2**53, 2**63, 2**64,
                           10**17, 10**18, 10**19])
        return str(rng.choice([1, -1]) * (edge + rng.randint(-2, 1)))
    if not datatype.startswith("FP"):
        return str(rng.randint(-(10 ** rng.randint(1, 20)), 10 ** rng.randint(1, 20)))
    digits = rng.choice([1, 1, 2, 8, 9, 15, 16, 17, 18, 19, 20, 25, 40])
    text = ("-" if rng.random() < 0.4 else "") + str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    if rng.random() < 0.3:
        text = text.replace(text.lstrip("-"), "0")
    if text.lstrip("-") == "0" or rng.random() < 0.6:
        zeros = "0" * rng.choice([0, 0, 1, 7, 8, 9, 17, 30, 330])
        fraction = zeros + str(rng.randint(0, 10 ** rng.randint(1, 30)))
        text += "." + fraction
    if rng.random() < 0.3:
        exponent = rng.choice([0, 1, 22, 23, 37, 38, 39, 45, 46, 300, 307, 308, 309, 323, 324, 400])
        text += rng.choice("eE") + rng.choice(["", "+", "-"]) + "0" * rng.choice([0, 0, 3]) + str(exponent)
    return text


def test_a_skeleton_matches_scan_then_decode_on_hostile_numbers_nesting_ids_and_cuts() -> None:
    """What the strategies above rarely make: one to three tensors of every numeric datatype, long
    digit runs, leading-zero fractions, many-digit exponents, integers at 2**53, 2**63 and 2**64,
    nesting up to 40 levels (the plain reader stops at 8, the scanner at 32), tabs and CRs, `[]`,
    `[[]]`, `[[1],[]]`, `"data": 0`, ids of every printable ASCII byte or of bytes >= 0x80, and bodies
    cut at every byte: JsonSkeleton.match gives what scan-then-decode gives, or None where it
    gives none."""
    rng = random.Random(7)
    numeric = [d for d in DATATYPES if d != "BYTES"]
    counted = {"decoded": 0, "none": 0}
    for _ in range(150):
        tensors = [(f"t{i}", rng.choice(numeric), rng.choice([(1,), (2,), (3,), (2, 2), (9,)]))
                   for i in range(rng.choice([1, 1, 2, 3]))]
        request_id, ws = rng.choice([None, "r1"]), rng.choice(["", " ", "\t"])  # the skeleton's whitespace

        def body_of_data(datas: list[str], request_id: str | None, ws: str = ws,
                         tensors: list = tensors) -> bytes:
            entries = ",".join(f'{{"name":"{n}","datatype":"{d}","shape":{list(s)},"data":{ws}{data}{ws}}}'
                               for (n, d, s), data in zip(tensors, datas, strict=True))
            id_part = b"" if request_id is None else b'"id":"' + request_id.encode("latin-1") + b'",'
            return b"{" + id_part + f'"inputs":[{entries}]}}'.encode()

        plan_body = body_of_data(["[" + ",".join(["1"] * int(np.prod(s))) + "]" for _, _, s in tensors],
                                 request_id)
        skeleton, spans = _core.scan_kserve_request(plan_body)
        matcher = _core.JsonSkeleton(plan_body, spans, tensors)
        for _ in range(30):
            datas = []
            for _, datatype, shape in tensors:
                count = int(np.prod(shape)) + (rng.choice([-1, 1]) if rng.random() < 0.05 else 0)
                leaves = [_hostile_number(rng, datatype) if rng.random() < 0.2 else str(rng.randint(0, 9))
                          for _ in range(count)]
                inner = rng.choice(["", " ", "\t", "\r\n "])
                data = "[" + inner + f",{inner}".join(leaves) + inner + "]"
                data = "[" * (levels := rng.choice([0, 0, 1, 7, 8, 31, 32, 40])) + data + "]" * levels
                if rng.random() < 0.03:
                    data = rng.choice(["[]", "[[]]", "[[1],[]]", "[[],[1]]", "0", "[1,]", "[[1,2],[3]]"])
                datas.append(data)
            printable = "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(0, 5)))
            new_id = None if request_id is None else printable.replace('"', "").replace("\\", "")
            if new_id is not None and rng.random() < 0.1:
                new_id += chr(rng.randint(0x7F, 0xFF))  # DEL or a byte >= 0x80: not lifted
            body = body_of_data(datas, new_id)
            for cut in [body] + ([body[:n] for n in range(len(body))] if rng.random() < 0.02 else []):
                want = _comparable(_two_pass(skeleton, tensors, cut))
                counted["none" if want is None else "decoded"] += 1
                assert _comparable(matcher.match(cut)) == want, cut[:400]
    assert counted["decoded"] > 800, counted  # the data decoded often enough to compare values


def test_a_skeleton_refuses_plans_that_do_not_fit_their_body() -> None:
    """JsonSkeleton's arguments are checked: a tensor per data span, a count that does not overflow,
    a numeric datatype (ValueError, the message names what is wrong)."""
    body = body_of("FP32", [2], "[1, 2]")
    _, spans = _core.scan_kserve_request(body)
    with pytest.raises(ValueError, match="overflows"):
        _core.JsonSkeleton(body, spans, [("x", "FP32", (2**40, 2**40))])
    with pytest.raises(ValueError, match="2 tensors for 1 data spans"):
        _core.JsonSkeleton(body, spans, [("x", "FP32", (2,)), ("y", "FP32", (2,))])
    with pytest.raises(ValueError, match="numeric datatype"):
        _core.JsonSkeleton(body, spans, [("x", "BYTES", (2,))])
    with pytest.raises(ValueError, match="unknown datatype"):
        _core.JsonSkeleton(body, spans, [("x", "FP8", (2,))])
    skeleton = _core.JsonSkeleton(body, spans, [("x", "FP32", (2,))])
    assert skeleton.match(b"{}") is None and skeleton.match(body[:-1]) is None
