"""Decode plans (pyserve.protocol.request_plans) against the full decoder: a body decoded by a
plan (its skeleton seen before) gives the same arrays, fields and refusals as
``kserve.decode_request``; differential over the JSON decoder's edge cases and random data."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_json_tensor import EDGES, body_of

from pyserve import _core
from pyserve.errors import PyserveError
from pyserve.protocol import kserve, msgpack_codec
from pyserve.protocol.request_plans import RequestPlans


def result(decode: Any, *args: Any) -> tuple:
    """Each input's dtype, shape, bytes (BYTES: values) and the request's other fields; or the
    refusal's kind and message."""
    try:
        req = decode(*args)
    except PyserveError as e:
        return ("refused", e.kind, e.message)
    return tuple((n, str(a.dtype), a.shape, a.tolist() if a.dtype == object else a.tobytes())
                 for n, a in req.inputs.items()) + (req.id, req.parameters, req.outputs, req.input_parameters)


def primer(datatype: str, shape: list[int], extra: str = "") -> bytes:
    """A body the full decoder takes, with the skeleton of ``body_of(datatype, shape, ..., extra)``."""
    count = math.prod(shape)
    value = "false" if datatype == "BOOL" else '"a"' if datatype == "BYTES" else "0"
    return body_of(datatype, shape, "[" + ", ".join([value] * count) + "]", extra)


def planned(datatype: str) -> RequestPlans:
    return RequestPlans({"x": datatype}, None)


@pytest.mark.parametrize("datatype,shape,data,expected", EDGES, ids=[f"{d}-{x[:30]}" for d, _, x, _ in EDGES])
def test_a_planned_body_decodes_as_the_full_decoder(datatype: str, shape: list[int], data: str,
                                                    expected: str) -> None:
    plans = planned(datatype)
    first = primer(datatype, shape)
    assert result(plans.decode_json, first) == result(kserve.decode_request, first)
    body = body_of(datatype, shape, data)
    assert result(plans.decode_json, body) == result(kserve.decode_request, body)


def test_the_usual_body_is_planned_and_its_plan_is_used() -> None:
    plans = planned("FP32")
    first, second = body_of("FP32", [1, 3], "[1, 2, 3]"), body_of("FP32", [1, 3], "[4.5, -1e3, 7]")
    plans.decode_json(first)
    assert len(plans._json) == 1
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kserve, "decode_request", lambda *a: pytest.fail("decoded in full"))
        req = plans.decode_json(second)
    np.testing.assert_array_equal(req.inputs["x"], np.array([[4.5, -1e3, 7]], np.float32))
    assert req.id == "r"


@pytest.mark.parametrize("extra", ['', ', "parameters": {"binary_data_output": true}',
                                   ', "outputs": [{"name": "y", "parameters": {"binary_data": true}}]'])
def test_the_other_fields_come_from_the_plan(extra: str) -> None:
    plans = planned("INT32")
    plans.decode_json(body_of("INT32", [2], "[1, 2]", extra))
    body = body_of("INT32", [2], "[3, 4]", extra)
    assert result(plans.decode_json, body) == result(kserve.decode_request, body)


def test_requests_that_differ_in_their_ids_share_a_plan() -> None:
    """A client that sends a new id with each request (a UUID, a counter) still gets a plan: a
    plain id is lifted out of the skeleton like the data, and each request keeps its own id."""
    plans = planned("FP32")
    ids = ["r", "", "0b8f6c1e-2c7e-4f5a-9d1b-2a3c4d5e6f70", "id with spaces",
           "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"]
    bodies = [json.dumps({"id": i, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],
                                               "data": [k, 2]}]}).encode() for k, i in enumerate(ids)]
    plans.decode_json(bodies[0])
    assert len(plans._json) == 1
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kserve, "decode_request", lambda *a: pytest.fail("decoded in full"))
        got = [plans.decode_json(b) for b in bodies[1:]]
    assert [r.id for r in got] == ids[1:]
    assert [r.inputs["x"].tolist() for r in got] == [[[k, 2]] for k in range(1, len(ids))]
    assert len(plans._json) == 1


def test_a_plan_holds_no_lifted_id() -> None:
    """A plan made from a body whose plain id was lifted does not keep that id (every body of its
    skeleton brings its own): a long id (up to the body's size) would be held by each of the 16
    plans (3.2 MiB for ids of 200 KiB, measured with tracemalloc), for nothing."""
    plans = planned("FP32")
    long_id = "i" * 200_000
    body = json.dumps({"id": long_id, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
    assert plans.decode_json(body.encode()).id == long_id
    [plan] = plans._json.values()
    assert plan.id is None
    assert plans.decode_json(body.replace(long_id, "short").encode()).id == "short"
    assert plans.decode_json(body.encode()).id == long_id


@pytest.mark.parametrize("id_text", [r'"caf\u00e9"', '"café"', r'"a\"b"', '"tab\there"', "5", "null",
                                     '["a"]',
                                     '"\u0000"', '"del\x7f"', r'"\t"'])
def test_ids_that_are_not_plain_stay_in_the_skeleton(id_text: str) -> None:
    """An id with escapes, non-ASCII or control characters, or not a string, is not lifted: its
    bytes are the skeleton's, and the full decoder reads (or refuses) it as before."""
    plans = planned("FP32")
    entry = '{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}'
    body = ('{"id": %s, "inputs": [%s]}' % (id_text, entry)).encode()
    scanned = _core.scan_kserve_request(body)
    assert scanned is not None and [s[0] for s in scanned[1]] == [0]
    for _ in range(2):  # the second time from its plan, when the first was taken
        assert result(plans.decode_json, body) == result(kserve.decode_request, body)
    duplicate = ('{"id": "a", "inputs": [%s], "id": "b"}' % entry).encode()
    assert _core.scan_kserve_request(duplicate) is None  # orjson keeps the last: the full decoder's
    assert result(plans.decode_json, duplicate) == result(kserve.decode_request, duplicate)


def test_bytes_and_empty_tensors_are_not_planned() -> None:
    for datatype, shape in (("BYTES", [2]), ("FP32", [0])):
        plans = planned(datatype)
        plans.decode_json(primer(datatype, shape))
        assert plans._json == {}


def binary_body(arrays: dict[str, np.ndarray], datatypes: dict[str, str], extra: dict | None = None,
                trailing: bytes = b"") -> tuple[bytes, str]:
    header = json.dumps({**(extra or {}), "inputs": [
        {"name": n, "datatype": datatypes[n], "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
        for n, a in arrays.items()]}).encode()
    return header + b"".join(a.tobytes() for a in arrays.values()) + trailing, str(len(header))


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=20), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_binary_bodies_decode_as_the_full_decoder(values: list[float], seed: int) -> None:
    datatypes = {"a": "FP32", "b": "INT64"}
    plans = RequestPlans(datatypes, None)
    n = len(values)
    first, length = binary_body({"a": np.zeros(n, np.float32), "b": np.zeros(2, np.int64)}, datatypes, {"id": "q"})
    plans.decode_binary(first, length)
    assert len(plans._binary) == 1
    b = np.random.default_rng(seed).integers(-2**62, 2**62, 2)
    body, length = binary_body({"a": np.array(values, np.float32), "b": b}, datatypes, {"id": "q"})
    assert result(plans.decode_binary, body, length) == result(kserve.decode_request, body, length)
    # The same header with bytes left over (another body length): the full decoder's refusal.
    longer, length = binary_body({"a": np.array(values, np.float32), "b": b}, datatypes, {"id": "q"}, b"\0")
    got = result(plans.decode_binary, longer, length)
    assert got == result(kserve.decode_request, longer, length) and got[0] == "refused"


def test_binary_requests_that_differ_in_their_ids_share_a_plan() -> None:
    """As for JSON: the binary header's plain id is lifted, so new ids keep the plan; an id that is
    not plain stays in the header, which is then a skeleton of its own."""
    datatypes = {"a": "FP32"}
    plans = RequestPlans(datatypes, None)
    ids = ["q", "", "7f1d3c", 'say "hi"', "caf\u00e9"]
    bodies = [binary_body({"a": np.full(3, k, np.float32)}, datatypes, {"id": i}) for k, i in enumerate(ids)]
    plans.decode_binary(*bodies[0])
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kserve, "decode_request", lambda *a: pytest.fail("decoded in full"))
        got = [plans.decode_binary(*b) for b in bodies[1:3]]
    assert [r.id for r in got] == ids[1:3] and [r.inputs["a"].tolist() for r in got] == [[1] * 3, [2] * 3]
    for body in bodies[3:]:  # escapes in the id: decoded in full, then planned by their own header
        for _ in range(2):
            assert result(plans.decode_binary, *body) == result(kserve.decode_request, *body)
    assert len(plans._binary) == 3


def test_binary_header_lengths_the_full_decoder_reads() -> None:
    datatypes = {"a": "FP32"}
    plans = RequestPlans(datatypes, None)
    body, length = binary_body({"a": np.ones(3, np.float32)}, datatypes)
    plans.decode_binary(body, length)  # planned
    arabic = "".join(chr(0x660 + int(d)) for d in length)  # the same number in Arabic-Indic digits
    for text in (length, "0" + length, " " + length, length + "x", "-1", str(len(body) + 1), "+" + length, arabic):
        assert result(plans.decode_binary, body, text) == result(kserve.decode_request, body, text), text


def msgpack_body(arrays: dict[str, np.ndarray], datatypes: dict[str, str], **doc: Any) -> bytes:
    return msgpack.packb({**doc, "inputs": [
        {"name": n, "datatype": datatypes[n], "shape": list(a.shape), "data": a.tobytes()} for n, a in arrays.items()]})


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=20), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_msgpack_bodies_decode_as_the_full_decoder(values: list[float], seed: int) -> None:
    datatypes = {"a": "FP32", "b": "INT64"}
    plans = RequestPlans(datatypes, None)
    n = len(values)
    plans.decode_msgpack(msgpack_body({"a": np.zeros(n, np.float32), "b": np.zeros(2, np.int64)}, datatypes, id="q"))
    assert len(plans._msgpack) == 1
    b = np.random.default_rng(seed).integers(-2**62, 2**62, 2)
    body = msgpack_body({"a": np.array(values, np.float32), "b": b}, datatypes, id="q")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(msgpack_codec, "decode_request", lambda *a: pytest.fail("decoded in full"))
        planned_result = result(plans.decode_msgpack, body)
    assert planned_result == result(msgpack_codec.decode_request, body)
    # Another id, the same length: not the plan's bytes around the payloads.
    other = msgpack_body({"a": np.array(values, np.float32), "b": b}, datatypes, id="z")
    assert result(plans.decode_msgpack, other) == result(msgpack_codec.decode_request, other)


@pytest.mark.parametrize("doc", [
    {"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": b"\0" * 8}], "parameters": {"k": 1}},
    {"outputs": [{"name": "y"}], "inputs": [{"parameters": {"p": [1, 2]}, "data": b"\1" * 8, "name": "a",
                                             "datatype": "FP32", "shape": [1, 2]}]},
])
def test_msgpack_payloads_are_found_wherever_they_are(doc: dict) -> None:
    plans = RequestPlans({"a": "FP32"}, None)
    plans.decode_msgpack(msgpack.packb(doc))
    assert len(plans._msgpack) == 1
    doc["inputs"][0]["data"] = np.array([1.5, -2], np.float32).tobytes()
    body = msgpack.packb(doc)
    assert result(plans.decode_msgpack, body) == result(msgpack_codec.decode_request, body)
    np.testing.assert_array_equal(plans.decode_msgpack(body).inputs["a"].ravel(), [1.5, -2])


def test_msgpack_bodies_not_planned() -> None:
    plans = RequestPlans({"a": "BYTES", "x": "FP32"}, None)
    packed = msgpack.packb({"inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "data": b"\1\0\0\0z"}]})
    plans.decode_msgpack(packed)
    twice = msgpack.packb({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": b"\0" * 4,
                                       "data ": b"\0" * 4}]})
    plans.decode_msgpack(twice)
    assert len(plans._msgpack) == 1  # BYTES: not planned; the second (one "data" key) is


def test_msgpack_repeated_inputs_key_decodes_as_the_full_decoder() -> None:
    """A map with "inputs" twice: msgpack keeps the last, so a plan must not read the first's data."""
    def body(first: list[float], last: list[float]) -> bytes:
        def inputs(values: list[float]) -> bytes:
            return msgpack.packb([{"name": "a", "datatype": "FP32", "shape": [2],
                                   "data": np.array(values, np.float32).tobytes()}])
        return b"\x82" + msgpack.packb("inputs") + inputs(first) + msgpack.packb("inputs") + inputs(last)

    plans = RequestPlans({"a": "FP32"}, None)
    plans.decode_msgpack(body([0, 0], [5, 6]))
    other = body([1, 2], [5, 6])  # the same bytes around the first "inputs"' payload
    assert result(plans.decode_msgpack, other) == result(msgpack_codec.decode_request, other)


def test_plans_are_still_made_once_the_plans_are_full() -> None:
    """A client that sent a new skeleton each time (16 used once: a new parameter value, or a new
    id for msgpack, whose ids are not lifted) must not leave a version without plans for good: a
    steady client's body is planned within PLAN_EVERY_WHEN_FULL sightings, in place of the plan used
    longest ago."""
    from pyserve.protocol.request_plans import MAX_MSGPACK_PLANS, MAX_PLANS, PLAN_EVERY_WHEN_FULL

    datatypes = {"a": "FP32"}
    plans = RequestPlans({"a": "FP32", "x": "FP32"}, None)  # body_of's input is x
    for i in range(MAX_PLANS):
        plans.decode_json(body_of("FP32", [2], "[1, 2]", f', "parameters": {{"n": {i}}}'))
        plans.decode_binary(*binary_body({"a": np.ones(2, np.float32)}, datatypes, {"parameters": {"n": i}}))
    for i in range(MAX_MSGPACK_PLANS):
        plans.decode_msgpack(msgpack_body({"a": np.ones(2, np.float32)}, datatypes, id=f"used-once-{i}"))
    steady_json = body_of("FP32", [2], "[1, 2]", ', "parameters": {"n": "steady"}')
    steady_binary = binary_body({"a": np.ones(2, np.float32)}, datatypes, {"parameters": {"n": "steady"}})
    steady_msgpack = msgpack_body({"a": np.ones(2, np.float32)}, datatypes, id="steady")
    for _ in range(PLAN_EVERY_WHEN_FULL):  # planned at the 8th miss at the latest
        plans.decode_json(steady_json)
        plans.decode_binary(*steady_binary)
        plans.decode_msgpack(steady_msgpack)
    sizes = (len(plans._json), len(plans._binary), len(plans._msgpack))
    assert sizes == (MAX_PLANS, MAX_PLANS, MAX_MSGPACK_PLANS)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kserve, "decode_request", lambda *a: pytest.fail("decoded in full"))
        m.setattr(msgpack_codec, "decode_request", lambda *a: pytest.fail("decoded in full"))
        assert plans.decode_json(steady_json).parameters == {"n": "steady"}
        assert plans.decode_binary(*steady_binary).parameters == {"n": "steady"}
        assert plans.decode_msgpack(steady_msgpack).id == "steady"


def test_a_client_of_new_skeletons_neither_pushes_out_a_used_plan_nor_plans_each_body() -> None:
    """Once the plans are full, a client whose every body is a new skeleton (a new parameter value)
    is planned only one body in PLAN_EVERY_WHEN_FULL, in place of the plan used longest ago: a plan
    another client uses between them stays."""
    from pyserve.protocol.request_plans import MAX_PLANS, PLAN_EVERY_WHEN_FULL

    plans = planned("FP32")
    steady = body_of("FP32", [2], "[1, 2]")
    decoded: list[bytes] = []
    made: list[bytes] = []
    real_decode, real_plan = kserve.decode_request, RequestPlans._plan_json
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kserve, "decode_request", lambda body, *a: decoded.append(body) or real_decode(body, *a))
        m.setattr(RequestPlans, "_plan_json", lambda self, body, scanned, id_span, req:
                  made.append(scanned[0]) or real_plan(self, body, scanned, id_span, req))
        plans.decode_json(steady)
        for i in range(400):
            plans.decode_json(body_of("FP32", [2], "[1, 2]", f', "parameters": {{"n": {i}}}'))
            if i % 4 == 0:  # the steady client, between the other's bodies
                plans.decode_json(steady)
    assert decoded.count(steady) == 1  # planned at once, and never pushed out
    assert len(made) <= 1 + MAX_PLANS + 400 // PLAN_EVERY_WHEN_FULL


def test_a_skeleton_planned_again_pushes_out_no_other_plan() -> None:
    """A planned skeleton whose data the C++ decoder declines (an integer beyond 2**64 in FP64) is
    decoded in full and planned again, in its own place."""
    plans = planned("FP64")
    for i in range(15):
        plans.decode_json(body_of("FP64", [1], "[1]", f', "parameters": {{"n": {i}}}'))
    declined = body_of("FP64", [1], "[1]", ', "parameters": {"n": "x"}')
    plans.decode_json(declined)
    before = list(plans._json)
    assert len(before) == 16
    odd = body_of("FP64", [1], "[18446744073709551616]", ', "parameters": {"n": "x"}')
    for _ in range(20):
        assert result(plans.decode_json, odd) == result(kserve.decode_request, odd)
    assert sorted(plans._json) == sorted(before)


# Number spellings and other tokens a data array may hold, for the property test below: each must
# decode by a plan as the full decoder decodes it (or be refused with its message).
TOKENS = ["0", "1", "-1", "-0", "1.0", "1e5", "100000", "1E+2", "1e-400", "1e400", "2.5", "NaN", "Infinity",
          "-Infinity", "true", "false", "255", "256", "-129", "65504", "65520", "3.4028235e38", "3.5e38",
          "18446744073709551615", "18446744073709551616", "9223372036854775808", "-9223372036854775809",
          "9007199254740993", "0.1", "00", "01", "-", "1.", ".5", "+1", "1e", "0x1", "nan", "null", '"1"',
          "[]", "[1]", "1 2"]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64"]


@st.composite
def data_texts(draw: Any, count: int) -> str:
    """A data array of about ``count`` tokens: flat or in two rows, with blanks between."""
    n = draw(st.sampled_from([count, count, count - 1, count + 1]))
    tokens = [draw(st.sampled_from(TOKENS)) for _ in range(n)]
    blank = draw(st.sampled_from(["", " ", "\n", "\t "]))
    if len(tokens) == count and count % 2 == 0 and draw(st.booleans()):
        half = count // 2
        return "[[" + f",{blank}".join(tokens[:half]) + "],[" + ",".join(tokens[half:]) + "]]"
    return "[" + blank + f",{blank}".join(tokens) + blank + "]"


@given(st.sampled_from(DATATYPES), st.sampled_from([[2], [1, 2], [2, 2], [4]]), st.data())
@settings(max_examples=200, deadline=None)
def test_any_data_under_a_planned_skeleton_decodes_as_the_full_decoder(datatype: str, shape: list[int],
                                                                       data: Any) -> None:
    plans = planned(datatype)
    plans.decode_json(primer(datatype, shape))
    assert len(plans._json) == 1
    body = body_of(datatype, shape, data.draw(data_texts(math.prod(shape))))
    assert result(plans.decode_json, body) == result(kserve.decode_request, body)


def test_the_plan_that_goes_is_the_one_used_longest_ago_whenever_it_was_used() -> None:
    """Hits move their plan last from the first plan on, not only once the plans are full: a plan
    used after each of the other skeletons until the plans filled up is not the one that goes, in
    any encoding (it was: hits were ordered only once full, so it stayed first and went first)."""
    from pyserve.protocol.request_plans import MAX_MSGPACK_PLANS, MAX_PLANS, PLAN_EVERY_WHEN_FULL

    datatypes = {"a": "FP32"}
    arrays = {"a": np.zeros(2, np.float32)}

    def json_body(tag: str) -> bytes:
        return body_of("FP32", [2], "[1, 2]", f', "parameters": {{"n": "{tag}"}}')

    def bin_body(tag: str) -> tuple[bytes, str]:
        return binary_body(arrays, datatypes, {"parameters": {"n": tag}})

    def msgpack_of(tag: str) -> bytes:
        return msgpack_body(arrays, datatypes, id=tag)

    cases = [("json", lambda p: p.decode_json, json_body, lambda p: p._json, MAX_PLANS, planned("FP32")),
             ("binary", lambda p: lambda b: p.decode_binary(*b), bin_body, lambda p: p._binary, MAX_PLANS,
              RequestPlans(datatypes, None)),
             ("msgpack", lambda p: p.decode_msgpack, msgpack_of, lambda p: p._msgpack, MAX_MSGPACK_PLANS,
              RequestPlans(datatypes, None))]
    for encoding, decoder, body, held, limit, plans in cases:
        decode = decoder(plans)
        decode(body("kept"))
        for i in range(limit - 1):  # the plans fill up; "kept" used after every other but the last
            decode(body(f"once-{i}"))
            if i < limit - 2:
                decode(body("kept"))
        assert len(held(plans)) == limit, encoding
        for i in range(PLAN_EVERY_WHEN_FULL):  # one new skeleton planned, in place of "once-0"
            decode(body(f"new-{i}"))
        decoded = []
        with pytest.MonkeyPatch.context() as m:
            for module in (kserve, msgpack_codec):
                m.setattr(module, "decode_request", lambda *a: decoded.append(a))
            decode(body("kept"))
        assert decoded == [], f"{encoding}: the plan used last but one was pushed out"


def test_bodies_that_cannot_be_planned_do_not_take_the_turns_of_those_that_can() -> None:
    """Once the plans are full, a new skeleton is planned at every PLAN_EVERY_WHEN_FULL-th miss:
    bodies that can never be planned (BYTES) must not count as misses, or a steady pattern of them
    (here 7 between each body of a new steady client) keeps that client from its turn for good."""
    from pyserve.protocol.request_plans import MAX_PLANS, PLAN_EVERY_WHEN_FULL

    plans = RequestPlans({"x": "FP32", "s": "BYTES"}, None)
    for i in range(MAX_PLANS):
        plans.decode_json(body_of("FP32", [2], "[1, 2]", f', "parameters": {{"n": {i}}}'))
    assert len(plans._json) == MAX_PLANS
    steady = body_of("FP32", [2], "[1, 2]", ', "parameters": {"n": "steady"}')
    text = b'{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}'
    for _ in range(2 * PLAN_EVERY_WHEN_FULL):
        plans.decode_json(steady)
        for _ in range(PLAN_EVERY_WHEN_FULL - 1):
            plans.decode_json(text)
    assert any(b'"steady"' in skeleton for skeleton in plans._json)


ANY_ID = st.one_of(st.none(), st.text(max_size=6), st.integers(), st.lists(st.text(max_size=2)))


@given(st.lists(st.tuples(ANY_ID, st.booleans(), st.booleans(), st.booleans(), st.integers(-9, 9)),
                min_size=2, max_size=8))
@settings(max_examples=150, deadline=None)
def test_any_ids_in_any_place_decode_as_the_full_decoder(bodies: list[tuple]) -> None:
    """Bodies that differ in their id (any text, escaped or as UTF-8, or not a string; before or after
    the inputs; or none), JSON and binary, in any order: each decodes as the full decoder decodes
    it, by a plan made for another id or in full."""
    plans, binary_plans = planned("FP32"), RequestPlans({"x": "FP32"}, None)
    for rid, first, ascii_only, binary, k in bodies:
        entry: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [2]}
        if binary:
            entry["parameters"] = {"binary_data_size": 8}
        else:
            entry["data"] = [k, 1.5]
        doc = {"id": rid, "inputs": [entry]} if first else {"inputs": [entry], "id": rid}
        if rid is None:
            del doc["id"]
        text = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        if binary:
            body, length = text + np.array([k, 1.5], np.float32).tobytes(), str(len(text))
            got = result(binary_plans.decode_binary, body, length)
            assert got == result(kserve.decode_request, body, length)
        else:
            assert result(plans.decode_json, text) == result(kserve.decode_request, text)
