"""KServe v2 datatypes and their numpy dtypes; the BYTES tensor serialization of the protocol.

BYTES tensors are numpy object arrays of ``bytes`` everywhere in pyserve. On the wire (binary
extension, msgpack) a BYTES tensor is each element as a 4-byte little-endian length followed by its
bytes, in row-major order.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from pyserve.errors import invalid

# KServe v2 datatype -> numpy dtype (little-endian, as on the wire).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

DATATYPES: tuple[str, ...] = tuple(NUMPY_DTYPES)

_BY_KIND_SIZE: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in NUMPY_DTYPES.items() if name != "BYTES"
}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a KServe datatype; INVALID_ARGUMENT naming the datatype if unknown."""
    try:
        return NUMPY_DTYPES[datatype]
    except (KeyError, TypeError):
        raise invalid(
            f"unknown datatype {datatype!r}: expected one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(dtype: np.dtype) -> str:
    """The KServe datatype of a numpy dtype (object, str and bytes dtypes are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_KIND_SIZE[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise invalid(f"numpy dtype {dtype} has no KServe datatype") from None


def as_bytes_array(values: np.ndarray) -> np.ndarray:
    """An object array of ``bytes`` from an array of str, bytes or objects (str encoded as UTF-8)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr.astype(object)
    out = np.empty(arr.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(arr.reshape(-1)):
        flat[i] = v.encode("utf-8") if isinstance(v, str) else bytes(v)
    return out


def serialize_bytes(values: np.ndarray) -> bytes:
    """The wire form of a BYTES tensor: for each element a uint32 LE length, then its bytes."""
    flat = as_bytes_array(values).reshape(-1)
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for v in flat:
        parts.append(pack(len(v)))
        parts.append(v)
    return b"".join(parts)


def deserialize_bytes(buf: bytes | memoryview, shape: tuple[int, ...], name: str = "") -> np.ndarray:
    """Parse the wire form of a BYTES tensor of ``shape``; INVALID_ARGUMENT when it does not match,
    ValueError when numpy cannot make an array of ``shape`` at all (e.g. ``[0, 2**62]``)."""
    count = math.prod(shape)  # Python ints: no int64 overflow for absurd shapes
    mv = memoryview(buf).cast("B")
    out = np.empty(count, dtype=object)
    pos, end = 0, len(mv)
    unpack = struct.Struct("<I").unpack_from
    for i in range(count):
        if pos + 4 > end:
            raise invalid(
                f"tensor {name!r}: BYTES data holds fewer than the {count} elements of shape {list(shape)}"
            )
        (n,) = unpack(mv, pos)
        pos += 4
        if pos + n > end:
            raise invalid(f"tensor {name!r}: BYTES element {i} runs past the end of the data")
        out[i] = bytes(mv[pos : pos + n])
        pos += n
    if pos != end:
        raise invalid(
            f"tensor {name!r}: {end - pos} bytes left over after the {count} elements of shape {list(shape)}"
        )
    return out.reshape(shape)
