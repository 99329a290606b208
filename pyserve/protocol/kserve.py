"""KServe v2 (Open Inference Protocol) HTTP JSON and the binary tensor extension, as Triton does them.

A request or response body is a JSON object, optionally followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header then gives the JSON's length. A tensor travels either as
JSON ``data`` (flat or nested lists) or as ``binary_data_size`` bytes after the JSON, in the order of
the tensors that have that parameter. Stock ``tritonclient.http`` encodes and parses these bodies.

Every problem with a body is INVALID_ARGUMENT naming the tensor and what was expected; nothing else
escapes the decoders, whatever the bytes.

Non-finite numbers travel as the tokens ``NaN``, ``Infinity`` and ``-Infinity``, as Triton (rapidjson
with ``kParseNanAndInfFlag``) and Python's ``json`` read and write them. orjson refuses them, so it
stays the fast path and a body it refuses at such a token is parsed again by the standard library;
an array with a non-finite value is written as pre-serialized text with those tokens.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import numpy as np
import orjson

from pyserve.datatypes import NUMPY_DTYPES
from pyserve.errors import PyserveError, invalid
from pyserve.protocol import kserve_json, kserve_reply
from pyserve.protocol import (
    InferRequest,
    InferResponse,
    InputCheck,
    RequestedOutput,
    TensorHeader,
    array_from_raw,
    check_entry,
    ragged_data,
    raw_bytes,
    request_fields,
    wrong_count,
)

__all__ = [
    "decode_request",
    "decode_response",
    "encode_error",
    "encode_request",
    "encode_response",
    "model_metadata",
    "server_metadata",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY
# What numpy infers from JSON values, in words for error messages.
_KIND_WORDS = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers", "U": "strings"}
_NON_FINITE_WORDS = "NaN or Infinity"
# The largest finite value of the float datatypes a JSON number can overflow, as written in messages.
_FLOAT_MAX = {"FP16": "65504", "FP32": "3.4028235e+38"}
# The JSON tokens of NaN, +inf and -inf, indexed by the codes of _non_finite_json.
_TOKENS = np.array([b"NaN", b"Infinity", b"-Infinity"], dtype=object)
# Float tensors up to this many elements are checked for NaN/inf in their JSON text, larger ones with
# np.isfinite, whichever costs less (see _json_tensor).
_TEXT_CHECK_MAX = 16384
# A \u escape of a UTF-16 surrogate: json accepts a lone one, orjson (and UTF-8) do not.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# ---------------------------------------------------------------------------------------- decoding


def decode_request(body: bytes, header_length: int | str | None = None,
                   check: InputCheck | None = None) -> InferRequest:
    """Decode an infer request body; ``header_length`` is the Inference-Header-Content-Length value.

    JSON ``data`` of FP16/FP32/FP64 tensors may hold the tokens NaN, Infinity and -Infinity; in other
    datatypes they are INVALID_ARGUMENT, and so is a finite number too large for the datatype.
    ``check`` is given the inputs' headers (name, datatype, shape, byte size) before any element data
    is decoded, and raises PyserveError to refuse them (the model's checks: see
    :mod:`pyserve.service.input_check`).

    Numeric and BOOL ``data`` of a body without binary tensors is decoded in C++ with the GIL
    released (:mod:`pyserve.protocol.kserve_json`), to the same arrays and refusals as
    ``_array_from_json``, the reference.
    """
    doc = None
    if header_length is None and type(body) in (bytes, bytearray):  # large bodies arrive as bytearray
        doc = kserve_json.parse(body)  # data arrays lifted out, decoded in C++ once checked
    if doc is not None:
        binary = None
        from_json = functools.partial(kserve_json.array_from_json, body=body, fallback=_array_from_json)
    else:
        doc, binary = _split(body, header_length, "request")
        from_json = _array_from_json
    inputs_doc, request_id, parameters = request_fields(doc, _json_type)
    if parameters:
        binary_default = parameters.get("binary_data_output")
        if binary_default is not None and type(binary_default) is not bool:
            # Checked like an output's binary_data: a string "false" must not mean true.
            raise invalid(f"parameters.binary_data_output must be true or false, got {binary_default!r}")
    inputs, input_parameters = _decode_tensors(inputs_doc, binary, "input", check, from_json)
    return InferRequest(
        inputs=inputs,
        id=request_id,
        parameters=parameters,
        outputs=_decode_requested(doc.get("outputs")),
        input_parameters=input_parameters,
    )


def decode_response(body: bytes, header_length: int | str | None = None) -> InferResponse:
    """Decode an infer response body (the client side of :func:`encode_response`).

    The tensors are checked as in :func:`decode_request`: NaN, Infinity and -Infinity are read.
    """
    doc, binary = _split(body, header_length, "response")
    outputs_doc = doc.get("outputs", [])
    if type(outputs_doc) is not list:
        raise invalid(f"response 'outputs' must be a list of tensors, got {_json_type(outputs_doc)}")
    outputs, _ = _decode_tensors(outputs_doc, binary, "output")
    return InferResponse(
        model_name=str(doc.get("model_name", "")),
        model_version=str(doc.get("model_version", "")),
        outputs=outputs,
        id=doc.get("id"),
        parameters=doc.get("parameters"),
    )


def _split(body: bytes, header_length: int | str | None, what: str) -> tuple[dict, memoryview | None]:
    """Parse the JSON part of a body; returns it and the binary part (None when there is none)."""
    if header_length is None:
        header: Any = body
        binary = None
    else:
        header_length = _header_length(header_length)
        if header_length > len(body):
            raise invalid(f"{HEADER_LENGTH} is {header_length}, expected at most the body length {len(body)}")
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        doc = _loads_non_finite(e, what)
        if doc is None:
            hint = ""
            if header_length is None and b"binary_data_size" in body[:4096]:
                hint = f" (a body with binary tensors needs the {HEADER_LENGTH} header)"
            elif header_length is not None:
                # A length that lies cuts the JSON short or runs into the binary part.
                hint = f" (read as the first {header_length} bytes of the body, as {HEADER_LENGTH} says)"
            raise invalid(f"{what} is not valid JSON: {e}{hint}") from None
    if type(doc) is not dict:
        raise invalid(f"{what} must be a JSON object, got {_json_type(doc)}")
    return doc, binary


def _header_length(value: int | str) -> int:
    """The Inference-Header-Content-Length ``value`` (a header's text, or an int) as a byte count.

    Only plain ASCII decimal digits (around them, the blanks RFC 9110 5.5 allows) are read, as a
    Content-Length is (RFC 9110 8.6): Python's ``int()`` would also take ``+37``, ``1_0`` and
    non-ASCII digits, and a length guessed from those splits the body in the wrong place. Raises
    INVALID_ARGUMENT naming the header for anything else, a negative int included."""
    if type(value) is int:
        if value >= 0:
            return value
    elif type(value) is str:
        digits = value.strip(" \t")
        if digits.isascii() and digits.isdigit():
            return int(digits)
    raise invalid(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")


def _loads_non_finite(error: orjson.JSONDecodeError, what: str) -> Any:
    """The document orjson refused with ``error``, when what it refused is NaN/Infinity/-Infinity.

    None when orjson stopped at anything else (the caller reports orjson's error). Otherwise the
    text is parsed again by the standard library, with orjson's rules for everything but those
    tokens: integers beyond 64 bits become floats, a number too large for a double and a lone
    surrogate escape are refused. If that parse fails too, its error (the first problem past the
    tokens) is the 400.
    """
    text, pos = error.doc, error.pos
    # orjson stops at the I of -Infinity; a stop at its sign would match as well.
    if type(text) is not str or not text.startswith(("NaN", "Infinity", "-Infinity"), pos):
        return None
    try:
        doc = json.loads(text, parse_float=_json_float, parse_int=_json_int)
    except (ValueError, RecursionError) as e:
        # json.JSONDecodeError is a ValueError, and so is the refusal of _json_float.
        raise invalid(f"{what} is not valid JSON: {e}") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            orjson.dumps(doc)  # refuses a str holding a lone surrogate, as orjson.loads does
        except orjson.JSONEncodeError:
            raise invalid(f"{what} is not valid JSON: a string has a lone surrogate \\u escape") from None
    return doc


def _json_float(text: str) -> float:
    """A JSON number with a fraction or exponent; refused when a double cannot hold it, as orjson does."""
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
        raise ValueError(f"number {shown} is infinity when parsed as double")
    return value


def _json_int(text: str) -> int | float:
    """A JSON integer; beyond the 64-bit range it becomes a float, as orjson makes it."""
    if len(text) <= 18:  # JSON has no leading zeros: at most 18 digits always fit int64
        return int(text)
    if len(text) <= 20:  # 2**64 - 1 and -2**63 have 20 characters
        value = int(text)
        if -(2**63) <= value < 2**64:
            return value
    return _json_float(text)


def _decode_tensors(
    entries: list, binary: memoryview | None, what: str, check: InputCheck | None = None,
    from_json: Callable[..., np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Decode tensor entries; binary ones take their bytes from ``binary`` in order.

    Every entry's name, datatype, shape and byte size are read and given to ``check`` first; element
    data is decoded only once all of them passed."""
    headers: list[TensorHeader] = []
    sources: list[Any] = []  # per entry: its binary bytes, or its JSON data
    extra_parameters: dict[str, dict] = {}
    seen: set[str] = set()
    offset = 0
    for i, entry in enumerate(entries):
        name, datatype, shape, count = check_entry(entry, i, seen, what, _json_type)
        seen.add(name)
        size = None
        params = entry.get("parameters")
        if params is not None:
            if type(params) is not dict:
                raise invalid(f"{what} {name!r}: 'parameters' must be an object, got {_json_type(params)}")
            size = params.get("binary_data_size")
            if len(params) > (size is not None):
                extra_parameters[name] = {k: v for k, v in params.items() if k != "binary_data_size"}
        if size is not None:
            if type(size) is not int or size < 0:
                raise invalid(
                    f"{what} {name!r}: binary_data_size must be a non-negative integer, got {size!r}"
                )
            if binary is None:
                raise invalid(
                    f"{what} {name!r} has binary_data_size {size} but the body has no binary data "
                    f"(no {HEADER_LENGTH} header)"
                )
            if "data" in entry:
                raise invalid(f"{what} {name!r} has both JSON 'data' and binary_data_size: expected one")
            end = offset + size
            if end > len(binary):
                raise invalid(
                    f"{what} {name!r}: binary_data_size {size} but only {len(binary) - offset} bytes "
                    f"of binary data are left"
                )
            sources.append(binary[offset:end])
            offset = end
        else:
            data = entry.get("data")
            if data is None:
                raise invalid(f"{what} {name!r} has no 'data' and no binary_data_size parameter")
            sources.append(data)
        headers.append(TensorHeader(name, datatype, shape, count, size))
    if binary is not None and offset != len(binary):
        raise invalid(
            f"{len(binary) - offset} bytes of binary data left over: the {what}s' binary_data_size "
            f"add up to {offset}, the body has {len(binary)} after the JSON"
        )
    if check is not None:
        check(headers)
    tensors: dict[str, np.ndarray] = {}
    for h, source in zip(headers, sources):
        if h.nbytes is not None:
            tensors[h.name] = array_from_raw(h.name, h.datatype, h.shape, h.count, source, what)
        else:
            tensors[h.name] = (from_json or _array_from_json)(h.name, h.datatype, h.shape, h.count, source, what)
    return tensors, extra_parameters


def _array_from_json(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any, what: str
) -> np.ndarray:
    """An array from JSON ``data`` (flat or nested lists), checked against the datatype and shape."""
    if type(data) is not list:
        raise invalid(f"{what} {name!r}: 'data' must be a list, got {_json_type(data)}")
    dtype = NUMPY_DTYPES[datatype]
    try:
        # numpy flattens nested lists in C; ragged nesting is a ValueError.
        arr = np.array(data, dtype=object if datatype == "BYTES" else None)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ragged_data(name, datatype, what) from None
    if arr.size != count:
        raise wrong_count(name, shape, count, arr.size, what)
    try:
        if datatype == "BYTES":
            try:
                # BYTES in JSON are strings: one encode per element is unavoidable.
                encoded = [s.encode("utf-8") for s in arr.reshape(-1).tolist()]
            except (AttributeError, UnicodeEncodeError):
                raise invalid(f"{what} {name!r}: BYTES data must be strings") from None
            out = np.empty(count, dtype=object)
            out[:] = encoded
            return out.reshape(shape)
        if count == 0:
            return np.empty(shape, dtype=dtype)
        kind = arr.dtype.kind
        if kind == "f" and dtype.kind in "iu":
            if not np.isfinite(arr).all():
                raise invalid(f"{what} {name!r}: {datatype} data must be integers, got {_NON_FINITE_WORDS}")
            # numpy infers float64 for a list mixing ints above 2**63 with others: parse exactly.
            return _exact_integers(name, datatype, shape, data, arr, what)
        if datatype == "BOOL":
            ok = kind == "b"
        elif dtype.kind == "f":
            ok = kind in "iuf"
        else:
            ok = kind in "iu"
        if not ok:
            expected = "true/false" if datatype == "BOOL" else "numbers" if dtype.kind == "f" else "integers"
            if kind == "f" and not np.isfinite(arr).all():
                got = _NON_FINITE_WORDS
            else:
                got = _KIND_WORDS.get(kind, "values of mixed or non-numeric types")
            raise invalid(f"{what} {name!r}: {datatype} data must be {expected}, got {got}")
        if dtype.kind in "iu" and not np.can_cast(arr.dtype, dtype):
            info = np.iinfo(dtype)
            low, high = int(arr.min()), int(arr.max())
            if low < info.min or high > info.max:
                raise invalid(
                    f"{what} {name!r}: {datatype} data must lie in [{info.min}, {info.max}], "
                    f"got values in [{low}, {high}]"
                )
        if arr.dtype == dtype:
            return arr.reshape(shape)
        if dtype.kind == "f" and dtype.itemsize < arr.dtype.itemsize:
            try:
                # A finite value too large for FP16/FP32 would become inf; NaN and inf stay as they are.
                with np.errstate(over="raise"):
                    return arr.astype(dtype).reshape(shape)
            except FloatingPointError:
                _refuse_overflow(name, datatype, arr, what)
        return arr.astype(dtype, copy=False).reshape(shape)
    except PyserveError:
        raise
    except (ValueError, OverflowError) as e:  # e.g. a zero-size shape with absurd dims
        raise invalid(f"{what} {name!r}: cannot make a tensor of shape {list(shape)}: {e}") from None


def _refuse_overflow(name: str, datatype: str, arr: np.ndarray, what: str) -> NoReturn:
    """Raise the 400 for finite values of ``arr`` that ``datatype`` cannot hold (they would be inf)."""
    with np.errstate(over="ignore"):
        bad = arr[np.isinf(arr.astype(NUMPY_DTYPES[datatype])) & np.isfinite(arr)]
    # A Python int or float: its repr is the number as sent.
    value = f"{bad[0].item()!r}" + (f" and {bad.size - 1} more values" if bad.size > 1 else "")
    raise invalid(
        f"{what} {name!r}: {datatype} cannot hold {value if bad.size else 'a value'}: "
        f"the largest finite {datatype} is {_FLOAT_MAX[datatype]}"
    )


def _exact_integers(
    name: str, datatype: str, shape: tuple[int, ...], data: list, inferred: np.ndarray, what: str
) -> np.ndarray:
    """Integer data numpy inferred as floats, parsed straight into ``datatype``; fractions refused."""
    dtype = NUMPY_DTYPES[datatype]
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            exact = np.array(data, dtype=dtype)
    except (OverflowError, ValueError, TypeError):
        info = np.iinfo(dtype)
        raise invalid(
            f"{what} {name!r}: {datatype} data must be integers in [{info.min}, {info.max}]"
        ) from None
    # A fraction would have been truncated: compare back with the values as numbers.
    if not np.array_equal(exact.astype(np.float64), inferred):
        raise invalid(f"{what} {name!r}: {datatype} data must be integers, got numbers with fractions")
    return exact.reshape(shape)


def _decode_requested(outputs_doc: Any) -> list[RequestedOutput] | None:
    """The requested outputs of a request; None when it names none."""
    if outputs_doc is None:
        return None
    if type(outputs_doc) is not list:
        raise invalid(f"request 'outputs' must be a list, got {_json_type(outputs_doc)}")
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, entry in enumerate(outputs_doc):
        if type(entry) is not dict:
            raise invalid(f"requested output #{i} must be an object, got {_json_type(entry)}")
        name = entry.get("name")
        if type(name) is not str:
            raise invalid(f"requested output #{i} has no 'name': expected a string, got {_json_type(name)}")
        if name in seen:
            raise invalid(f"requested output {name!r} appears twice")
        seen.add(name)
        binary = classification = None
        params = entry.get("parameters")
        if params is not None:
            if type(params) is not dict:
                raise invalid(f"requested output {name!r}: 'parameters' must be an object")
            binary = params.get("binary_data")
            if binary is not None and type(binary) is not bool:
                raise invalid(f"requested output {name!r}: binary_data must be true or false, got {binary!r}")
            classification = params.get("classification")
        requested.append(RequestedOutput(name, binary, classification))
    return requested


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


json_type = _json_type  # public: transports name JSON types in their messages the same way


# ---------------------------------------------------------------------------------------- encoding


# On the loop's thread, replies with at most this many JSON elements go to the C++ writer, larger
# ones to orjson, which formats floats faster than std::to_chars (bench/bench_json_encode.py: at 512
# FP32 values ~15 µs against ~21 µs); replies encoded on a thread (gil_free) always go to the writer.
WRITER_ON_LOOP_MAX_ELEMENTS = 64


def encode_response(
    resp: InferResponse, requested: list[RequestedOutput] | None = None, binary_default: bool = False,
    gil_free: bool = False,
) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON length for Inference-Header-Content-Length.

    ``requested`` None means every output of ``resp``. An output goes binary when its request said
    ``binary_data: true``, or said nothing and ``binary_default`` (the request's
    ``parameters.binary_data_output``) is true. The length is None when no output is binary.
    NaN and infinities in JSON outputs are written as NaN, Infinity and -Infinity, as Triton does.
    The body is written by :mod:`pyserve.protocol.kserve_reply` (C++, GIL released) or by
    :func:`_reference_body`: the same bytes. ``gil_free``: the caller is on a thread and wants the
    event loop left free, so the C++ writer writes it whatever its size; otherwise the writer takes
    replies of at most WRITER_ON_LOOP_MAX_ELEMENTS JSON elements, where it is the faster.
    """
    if requested is None:
        items = [(name, arr, binary_default) for name, arr in resp.outputs.items()]
    else:
        items = []
        for r in requested:
            arr = resp.outputs.get(r.name)
            if arr is None:
                raise invalid(f"requested output {r.name!r} is not an output of model {resp.model_name!r}")
            items.append((r.name, arr, binary_default if r.binary is None else r.binary))
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters is not None:
        doc["parameters"] = resp.parameters
    if gil_free or sum(getattr(a, "size", 1) for _, a, b in items if not b) <= WRITER_ON_LOOP_MAX_ELEMENTS:
        written = kserve_reply.encode_response(doc, items)  # C++, GIL released: the same bytes
        if written is not None:
            return written
    return _reference_body(doc, items)


def _reference_body(doc: dict[str, Any], items: list[tuple[str, Any, bool]]) -> tuple[bytes, int | None]:
    """The reference encoder (orjson over the arrays): the body of ``doc`` with the outputs ``items``
    ((name, array, binary) each) and its JSON length. :mod:`pyserve.protocol.kserve_reply` writes the
    same bytes; this one takes what it does not (BYTES arrays of str dtype, ...)."""
    doc = dict(doc)
    doc["outputs"], parts = _encode_tensors(items, "output")
    return _body(doc, parts)


def encode_request(
    inputs: Mapping[str, Any],
    *,
    binary: bool,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    outputs: Iterable[RequestedOutput] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an infer request (the client side); ``binary`` sends the inputs as binary tensors.

    NaN and infinities in JSON inputs are written as NaN, Infinity and -Infinity.
    """
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["inputs"], parts = _encode_tensors([(n, a, binary) for n, a in inputs.items()], "input")
    if outputs is not None:
        doc["outputs"] = [_requested_doc(o) for o in outputs]
    return _body(doc, parts)


def _requested_doc(output: RequestedOutput) -> dict:
    """A requested output of a request body, with its parameters when it has any."""
    params: dict[str, Any] = {}
    if output.binary is not None:
        params["binary_data"] = output.binary
    if output.classification:
        params["classification"] = output.classification
    return {"name": output.name, "parameters": params} if params else {"name": output.name}


def _encode_tensors(items: list[tuple[str, Any, bool]], what: str) -> tuple[list[dict], list[Any]]:
    """Tensor entries for the JSON and the raw buffers that follow it, in order."""
    entries: list[dict] = []
    parts: list[Any] = []
    for name, arr, binary in items:
        if binary:
            datatype, arr, raw = raw_bytes(name, arr)
            entries.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
            parts.append(raw)
        else:
            entries.append(_json_tensor(name, arr, what))
    return entries, parts


def _body(doc: dict, parts: list[Any]) -> tuple[bytes, int | None]:
    header = orjson.dumps(doc, option=_NUMPY_OPT)
    if not parts:
        return header, None
    # One copy: join takes the arrays' memoryviews as they are.
    return b"".join([header, *parts]), len(header)


def _json_tensor(name: str, values: Any, what: str) -> dict:
    """A JSON tensor entry: data flattened row-major, as Triton sends it."""
    arr, datatype, flat = kserve_reply.output_array(name, values, what)
    if datatype == "BYTES":
        data: Any = _json_strings(name, flat, what)
    elif datatype == "FP16":
        data = flat.astype(np.float32)  # orjson writes the shortest float32 text; FP16 parses it back exactly
    elif not flat.dtype.isnative:
        data = flat.astype(flat.dtype.newbyteorder("="))
    else:
        data = flat
    if flat.dtype.kind == "f":
        # orjson writes NaN and inf as null, which must become NaN, Infinity or -Infinity.
        if data.size <= _TEXT_CHECK_MAX:
            # The n of null is the only n in the text of a float array, and memchr finds it faster
            # than np.isfinite can say the same (two numpy calls). Larger, the extra copy of the
            # text into the header costs more than the isfinite pass.
            text = orjson.dumps(data, option=_NUMPY_OPT)
            # find(), not `b"n" in text`: `in` on bytes first tries the operand as an integer and
            # raises and clears a TypeError (294 against 104 ns here).
            data = orjson.Fragment(_non_finite_json(text, data) if text.find(b"n") >= 0 else text)
        elif not np.logical_and.reduce(np.isfinite(data)):
            data = orjson.Fragment(_non_finite_json(orjson.dumps(data, option=_NUMPY_OPT), data))
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def _non_finite_json(text: bytes, flat: np.ndarray) -> bytes:
    """orjson's JSON ``text`` of the float array ``flat`` with each ``null`` (a NaN or inf) replaced,
    in order, by the token of its value: NaN, Infinity or -Infinity."""
    pieces = text.split(b"null")
    odd = flat[~np.isfinite(flat)]
    # 0: NaN, 1: Infinity, 2: -Infinity
    codes = np.where(np.isnan(odd), 0, np.where(odd > 0, 1, 2))
    out = [b""] * (2 * len(pieces) - 1)
    out[0::2] = pieces
    out[1::2] = _TOKENS[codes].tolist()
    return b"".join(out)


def _json_strings(name: str, flat: np.ndarray, what: str) -> list[str]:
    """BYTES elements as JSON strings; bytes must be UTF-8 (else the tensor must go binary)."""
    if flat.dtype.kind == "U":
        return flat.tolist()
    values = flat.tolist()
    try:
        return [v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v) for v in values]
    except UnicodeDecodeError:
        raise invalid(
            f"{what} {name!r}: a BYTES element is not UTF-8 text, so it cannot be sent as JSON; "
            f"use binary data (binary_data=true) for it"
        ) from None


def encode_error(message: str) -> bytes:
    """The body of an error reply: ``{"error": message}``."""
    return orjson.dumps({"error": message})


# ---------------------------------------------------------------------------------------- metadata


def server_metadata(name: str, version: str, extensions: Iterable[str]) -> dict:
    """The body of ``GET /v2``."""
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_metadata(
    name: str, versions: list[str], platform: str, inputs: Iterable[Any], outputs: Iterable[Any]
) -> dict:
    """The body of ``GET /v2/models/{m}``; tensors are mappings or objects with name/datatype/shape."""
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": [_tensor_metadata(t) for t in inputs],
        "outputs": [_tensor_metadata(t) for t in outputs],
    }


def _tensor_metadata(t: Any) -> dict:
    """A tensor's KServe v2 metadata; ``"optional": true`` added (as in Triton's model config) for an
    input a request may leave out: KServe v2 has no such flag."""
    if isinstance(t, Mapping):
        name, datatype, shape, optional = t["name"], t["datatype"], t["shape"], t.get("optional", False)
    else:
        name, datatype, shape, optional = t.name, t.datatype, t.shape, getattr(t, "optional", False)
    doc = {"name": name, "datatype": datatype, "shape": [int(d) for d in shape]}
    if optional:
        doc["optional"] = True
    return doc
