"""KServe JSON reply bodies written in C++, straight from the output arrays' buffers.

The reference encoder (:func:`pyserve.protocol.kserve.encode_response` on its own) has orjson write
each output array, then patches the tokens of NaN and infinities into the text, and joins the binary
tensors after the JSON: all of it holding the GIL, so that a 60 MiB reply stalls every other client
of the event loop for about a second. Here the C++ core (``csrc/core/json_reply.cc``) writes the
whole body, JSON tensors and binary tensors alike, into one bytes object with the GIL released; only
the few hundred bytes around the tensors (model name, version, id, parameters, the entries of binary
tensors) are written by orjson, as before.

The bytes are the reference's, byte for byte (orjson's float layout, shortest round-trip digits, its
string escapes, NaN/Infinity/-Infinity): tests/test_json_reply.py checks this by differential tests
over random arrays of every datatype, and tests/fuzz/targets.py's ``reply_diff`` target by fuzzing.
Where the writer does not take a reply (a BYTES array that is not an object array of bytes or str, a
string with a lone surrogate) :func:`encode_response` returns None and the reference encodes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from pyserve import _core
from pyserve.datatypes import datatype_of
from pyserve.errors import PyserveError, invalid
from pyserve.protocol import raw_bytes

_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY


def output_array(name: str, values: Any, what: str) -> tuple[np.ndarray, str, np.ndarray]:
    """``(array, datatype, flat)`` of one output's ``values`` (an array or what ``np.asarray`` takes):
    its KServe datatype and its elements flattened row-major (C-contiguous; a copy only when the array
    is not). Raises INVALID_ARGUMENT naming the tensor for a dtype KServe has not."""
    arr = values if type(values) is np.ndarray else np.asarray(values)
    try:
        datatype = datatype_of(arr.dtype)
    except PyserveError as e:
        raise invalid(f"{what} {name!r}: {e.message}") from None
    return arr, datatype, arr.ravel()


def encode_response(doc: dict[str, Any], items: list[tuple[str, Any, bool]],
                    what: str = "output") -> tuple[bytes, int | None] | None:
    """The body of a reply and its JSON length (None when no tensor is binary), as the reference's
    ``_body(doc + outputs)`` writes it; None when the reference must encode this reply.

    ``doc``: the reply's fields before ``outputs`` (model_name, model_version, id, parameters).
    ``items``: (name, array, binary) per output, in order; an array of any KServe datatype, any
    layout or byte order. Raises INVALID_ARGUMENT naming the tensor for a dtype KServe has not, and
    for a BYTES element that is not UTF-8 in a JSON tensor (as the reference does).
    """
    entries: list[Any] = []
    parts: list[Any] = []
    for name, values, binary in items:
        if binary:
            datatype, arr, raw = raw_bytes(name, values)
            entries.append(orjson.dumps({"name": name, "datatype": datatype, "shape": list(arr.shape),
                                         "parameters": {"binary_data_size": len(raw)}}))
            parts.append(raw)
            continue
        arr, datatype, flat = output_array(name, values, what)
        if datatype == "BYTES":
            if flat.dtype.kind != "O":
                return None
        elif not flat.dtype.isnative:
            flat = flat.astype(flat.dtype.newbyteorder("="))
        entries.append((name, datatype, arr.shape, flat))
    head = orjson.dumps(doc, option=_NUMPY_OPT)
    head = head[:-1] + (b',"outputs":[' if len(head) > 2 else b'"outputs":[')
    body = _core.encode_json_reply(head, entries, b"]}", parts)
    if body is None:
        return None
    if type(body) is int:
        raise invalid(
            f"{what} {entries[body][0]!r}: a BYTES element is not UTF-8 text, so it cannot be sent as "
            f"JSON; use binary data (binary_data=true) for it"
        )
    if not parts:
        return body, None
    return body, len(body) - sum(len(p) for p in parts)
