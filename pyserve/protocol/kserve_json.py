"""KServe JSON request bodies with their tensors' ``data`` decoded in C++, straight into arrays.

The reference decoder (:func:`pyserve.protocol.kserve.decode_request` on its own) makes a Python
object of every number of a body with orjson, then an array of them with numpy: about 14 µs for 512
numbers, and for a 60 MiB body over a second holding the GIL, so that even on a decoder thread it
stalls the event loop. Here the C++ core (``csrc/core/json_tensor.cc``, GIL released) first lifts
each input's ``data`` array out of the body, orjson parses what is left (names, datatypes, shapes,
parameters: a few hundred bytes), the model's input check runs on those headers, and then each
``data`` array is parsed by ``std::from_chars`` into a buffer of the tensor's datatype.

The result is exactly the reference decoder's, arrays and refusals alike: wherever it could differ
(any refusal, a boolean among numbers, a ragged or empty list, an integer beyond 2**53 in FP32 data,
an underflow, escaped keys...), the C++ side declines, and the reference decodes that tensor or the
whole body, with its messages. tests/test_json_tensor.py checks this by differential tests, and
tests/fuzz/targets.py's ``json_diff`` target by fuzzing.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
import orjson

from pyserve import _core
from pyserve.protocol import ragged_data, wrong_count

# The entry of the request id's span in what _core.scan_kserve_request gives (kIdEntry in
# csrc/core/json_tensor.h); the data spans' entries are the inputs' indexes.
ID_ENTRY = -1


def lifted_id(text: bytes | bytearray, spans: list[tuple[int, int, int]]) -> str | None:
    """The request id ``_core.scan_kserve_request`` lifted out of ``text`` (its span, last in
    ``spans``, is taken off the list), or None when it lifted none. A lifted id is printable ASCII
    without escapes: its text is the id."""
    if spans and spans[-1][0] == ID_ENTRY:
        _, begin, end = spans.pop()
        return text[begin:end].decode("ascii")
    return None


class DataSpan(NamedTuple):
    """Where an input's ``data`` array lies in the body: ``body[begin:end]`` (byte offsets)."""

    begin: int
    end: int


def parse(body: bytes | bytearray) -> dict | None:
    """The request document, each liftable ``data`` array of its inputs left as a :class:`DataSpan`
    into ``body`` (read by :func:`array_from_json`); None when the body is to be decoded by the
    reference decoder as a whole (nothing lifted, or a body the scanner or orjson does not take)."""
    scanned = _core.scan_kserve_request(body)
    if scanned is None:
        return None
    skeleton, spans = scanned
    request_id = lifted_id(body, spans)
    if not spans:
        return None
    try:
        doc = orjson.loads(skeleton)
    except orjson.JSONDecodeError:
        return None  # the reference says what is wrong, where, in the body as sent
    inputs = doc.get("inputs") if type(doc) is dict else None
    if type(inputs) is not list:
        return None
    for entry, begin, end in spans:
        inputs[entry]["data"] = DataSpan(begin, end)  # the scanner lifts data of objects only
    if request_id is not None:
        doc["id"] = request_id
    return doc


def array_from_json(name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any, what: str,
                    *, body: bytes | bytearray, fallback: Any) -> np.ndarray:
    """The array of one input's ``data``: decoded in C++ when it is a :class:`DataSpan` the C++
    decoder takes, else by ``fallback`` (the reference's ``_array_from_json``, same arguments) on
    the data as Python values. Raises what ``fallback`` raises (INVALID_ARGUMENT naming the input);
    ragged lists and a wrong element count, which the C++ walk finds, with the reference's messages."""
    if type(data) is not DataSpan:
        return fallback(name, datatype, shape, count, data, what)
    # Each element takes two characters or more ("1,"): a larger count (which may not fit an
    # int64) cannot be in the span, and no array is allocated for it.
    fits = 0 < count <= (data.end - data.begin) // 2 + 1
    flat = _core.decode_json_tensor(body, data.begin, data.end, datatype, count) if fits else None
    if flat is None:
        return fallback(name, datatype, shape, count, _python(body, data), what)
    if type(flat) is int:
        # Refused for its structure alone, as the reference refuses it, without the reference's
        # parse of every number holding the GIL (seconds, for a 60 MiB body of a small tensor).
        if flat < 0:
            raise ragged_data(name, datatype, what)
        raise wrong_count(name, shape, count, flat, what)
    # count > 0 elements: any shape with that product is one numpy can make.
    return flat.reshape(shape)


def _python(body: bytes | bytearray, span: DataSpan) -> list:
    """The data array as the reference parsed it: orjson, or Python's json where it holds NaN or
    Infinity (the scanner lifted only numbers, booleans and those tokens, a double holding each)."""
    text = memoryview(body)[span.begin:span.end]
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(bytes(text), parse_int=_int_as_orjson)


def _int_as_orjson(text: str) -> int | float:
    """A JSON integer as orjson reads it: beyond the 64-bit range, a float."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)
