"""Wire protocol types shared by the KServe JSON/binary codec and the msgpack codec.

The codecs are pure functions from bytes to these types and back: no aiohttp, no model lookup. The
server handlers and the client both use them. The helpers at the bottom turn raw tensor bytes into
arrays (zero copy) and arrays into raw bytes (zero copy where the array allows), the one place both
codecs agree on the layout of a tensor on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from pyserve.datatypes import DATATYPES, NUMPY_DTYPES, datatype_of, deserialize_bytes, serialize_bytes
from pyserve.errors import PyserveError, invalid

__all__ = [
    "InferRequest",
    "InferResponse",
    "InputCheck",
    "RequestedOutput",
    "TensorHeader",
    "array_from_raw",
    "check_entry",
    "check_shape",
    "ragged_data",
    "raw_bytes",
    "request_fields",
    "wrong_count",
]


@dataclass(slots=True)
class RequestedOutput:
    """One output the request asked for; ``binary`` is its ``binary_data`` parameter (None: default).

    ``classification`` is its ``classification`` parameter as the wire gave it (Triton's
    classification extension: the top K classes instead of the tensor); None or 0 when absent. The
    service checks it (:func:`pyserve.classification.check_class_count`)."""

    name: str
    binary: bool | None = None
    classification: Any = None


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request. BYTES inputs are object arrays of ``bytes``."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: all outputs
    # Per input parameters other than the transport's own ``binary_data_size``; only inputs that
    # have some are present.
    input_parameters: dict[str, dict] = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    """An inference result ready to encode. BYTES outputs are object arrays of ``bytes`` (or str)."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] | None = None


class TensorHeader(NamedTuple):
    """What a request says of one tensor before its data is decoded: ``count`` is the element count
    of ``shape``; ``nbytes`` the size of its raw data (binary extension, msgpack), None for JSON
    ``data`` (whose size follows from the shape)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int
    nbytes: int | None


# Given every input's header before any element data is decoded; raises PyserveError to refuse.
InputCheck = Callable[[list[TensorHeader]], None]


def request_fields(doc: dict, type_name: Callable[[Any], str]) -> tuple[list, str | None, dict]:
    """The ``inputs`` list, the ``id`` and the ``parameters`` of a decoded request document, checked.

    ``type_name`` names a value's type in the words of the wire format, for the messages.
    """
    inputs_doc = doc.get("inputs")
    if inputs_doc is None:
        raise invalid("request has no 'inputs': expected a list of input tensors")
    if type(inputs_doc) is not list:
        raise invalid(f"request 'inputs' must be a list of tensors, got {type_name(inputs_doc)}")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise invalid(f"request 'id' must be a string, got {type_name(request_id)}")
    parameters = doc.get("parameters")
    if parameters is None:
        parameters = {}
    elif type(parameters) is not dict:
        raise invalid(f"request 'parameters' must be {type_name({})}, got {type_name(parameters)}")
    return inputs_doc, request_id, parameters


def check_entry(
    entry: Any, index: int, seen: Any, what: str, type_name: Callable[[Any], str]
) -> tuple[str, str, tuple[int, ...], int]:
    """The name, datatype, shape and element count of one tensor entry of a request or reply.

    ``seen``: the names decoded so far (a name may appear once). ``type_name`` names a value's type
    in the words of the wire format (JSON "object", msgpack "map") for the messages.
    """
    if type(entry) is not dict:
        raise invalid(f"{what} #{index} must be {type_name({})}, got {type_name(entry)}")
    name = entry.get("name")
    if type(name) is not str:
        raise invalid(f"{what} #{index} has no 'name': expected a string, got {type_name(name)}")
    if name in seen:
        raise invalid(f"duplicate {what} {name!r}: each {what} may appear once")
    datatype = entry.get("datatype")
    if datatype is None:
        raise invalid(f"{what} {name!r} has no 'datatype'")
    if type(datatype) is not str or datatype not in NUMPY_DTYPES:
        raise invalid(f"{what} {name!r}: unknown datatype {datatype!r}, expected one of {', '.join(DATATYPES)}")
    if "shape" not in entry:
        raise invalid(f"{what} {name!r} has no 'shape'")
    shape, count = check_shape(entry["shape"], name, what)
    return name, datatype, shape, count


MAX_DIM = 2**63 - 1  # a tensor dimension is an int64, in numpy, in the core and in Triton


def check_shape(shape: Any, name: str, what: str = "input") -> tuple[tuple[int, ...], int]:
    """Validate a wire shape (a list of non-negative ints); returns it as a tuple and its element count."""
    if type(shape) is not list:
        raise invalid(f"{what} {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    for d in shape:
        # bool is an int subclass: refuse it, a shape of [true] is a client bug.
        if type(d) is float and d.is_integer() and d > MAX_DIM:
            # A JSON integer beyond 64 bits, which the JSON parser read as a float.
            raise invalid(f"{what} {name!r}: shape dimension {d:.0f} is beyond the largest tensor dimension, "
                          f"{MAX_DIM}")
        if type(d) is not int or d < 0:
            raise invalid(f"{what} {name!r}: 'shape' must be a list of non-negative integers, got {shape!r:.200}")
        if d > MAX_DIM:
            raise invalid(f"{what} {name!r}: shape dimension {d} is beyond the largest tensor dimension, {MAX_DIM}")
    # Python ints: no overflow however large the dims.
    return tuple(shape), math.prod(shape)


def array_from_raw(
    name: str, datatype: str, shape: tuple[int, ...], count: int, buf: Any, what: str = "input"
) -> np.ndarray:
    """An array of ``shape`` over raw little-endian tensor bytes ``buf`` (zero copy; maybe read-only).

    BYTES data are the length-prefixed serialization. Any mismatch between the size of ``buf`` and
    the shape is INVALID_ARGUMENT naming the tensor, the expected and the actual size.
    """
    dtype = NUMPY_DTYPES[datatype]
    nbytes = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
    if datatype == "BYTES":
        # Each element takes at least its 4-byte length; checking first bounds the element count
        # by the data size before anything is allocated for it.
        if count * 4 > nbytes:
            raise invalid(
                f"{what} {name!r}: expected at least {count * 4} bytes of BYTES data for shape "
                f"{list(shape)} ({count} elements), got {nbytes}"
            )
        try:
            return deserialize_bytes(buf, shape, name)
        except ValueError as e:  # a zero-size shape whose other dims numpy cannot hold: [0, 2**62]
            raise invalid(f"{what} {name!r}: cannot make a tensor of shape {list(shape)}: {e}") from None
    expected = count * dtype.itemsize
    if expected != nbytes:
        raise invalid(
            f"{what} {name!r}: expected {expected} bytes for {datatype} shape {list(shape)}, got {nbytes}"
        )
    try:
        return np.frombuffer(buf, dtype=dtype).reshape(shape)
    except (ValueError, OverflowError) as e:  # e.g. more than 64 dims
        raise invalid(f"{what} {name!r}: cannot make a tensor of shape {list(shape)}: {e}") from None


def raw_bytes(name: str, values: Any) -> tuple[str, np.ndarray, Any]:
    """The datatype, the array and the raw wire bytes of a tensor.

    Numeric arrays give a memoryview over C-contiguous little-endian data (no copy when the array
    already is); BYTES (object, str or bytes arrays) give the length-prefixed serialization.
    """
    arr = values if type(values) is np.ndarray else np.asarray(values)
    try:
        datatype = datatype_of(arr.dtype)
    except PyserveError as e:
        raise invalid(f"tensor {name!r}: {e.message}") from None
    if datatype == "BYTES":
        return datatype, arr, serialize_bytes(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    elif not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    # A byte view: bytes.join and msgpack take it as is, and its length is the byte size.
    return datatype, arr, memoryview(arr.reshape(-1)).cast("B")


def ragged_data(name: str, datatype: str, what: str) -> PyserveError:
    """The INVALID_ARGUMENT error for JSON ``data`` of tensor ``name`` whose nested lists are not of
    equal lengths (numpy makes no array of them): one message for every decoder of it."""
    kind = "strings" if datatype == "BYTES" else "numbers"
    return invalid(f"{what} {name!r}: 'data' must be a flat list or nested lists of equal lengths of {kind}")


def wrong_count(name: str, shape: tuple[int, ...], count: int, got: int, what: str) -> PyserveError:
    """The INVALID_ARGUMENT error for JSON ``data`` of tensor ``name`` holding ``got`` elements where
    its ``shape`` has ``count``."""
    return invalid(f"{what} {name!r}: expected {count} elements for shape {list(shape)}, got {got}")
