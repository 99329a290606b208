"""The msgpack infer protocol: the KServe request and response shapes, tensors as raw bytes.

Request body (``Content-Type: application/msgpack``)::

    {"id"?, "parameters"?, "inputs": [{"name", "datatype", "shape", "data": <bin>}],
     "outputs"?: [name | {"name": name, "parameters"?: {"classification"?: K}}]}

``data`` is the tensor's raw little-endian bytes (BYTES tensors: the length-prefixed serialization of
pyserve.datatypes). The reply is ``{"model_name", "model_version", "id"?, "parameters"?,
"outputs": [{"name", "datatype", "shape", "data": <bin>}]}``. Numbers never travel as lists, so a
tensor costs one memcpy on each side. Bad bodies are INVALID_ARGUMENT naming what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import numpy as np

from pyserve import _core
from pyserve.errors import invalid
from pyserve.protocol import (
    InferRequest,
    InferResponse,
    InputCheck,
    RequestedOutput,
    TensorHeader,
    array_from_raw,
    check_entry,
    raw_bytes,
    request_fields,
)

__all__ = ["CONTENT_TYPE", "decode_request", "decode_response", "encode_request", "encode_response"]

CONTENT_TYPE = "application/msgpack"

# Names, ids and parameter strings are short; a bigger string is a malformed or hostile body.
_MAX_STR_LEN = 1 << 20


def decode_request(body: bytes, check: InputCheck | None = None) -> InferRequest:
    """Decode a msgpack infer request; tensors are zero-copy views of the unpacked ``bin`` data.
    ``check`` is given the inputs' headers before any tensor is decoded (as in
    :func:`pyserve.protocol.kserve.decode_request`)."""
    doc = _unpack(body, "request")
    inputs_doc, request_id, parameters = request_fields(doc, _msgpack_type)
    inputs, input_parameters = _decode_tensors(inputs_doc, "input", check)
    return InferRequest(
        inputs=inputs,
        id=request_id,
        parameters=parameters,
        outputs=_decode_requested(doc.get("outputs")),
        input_parameters=input_parameters,
    )


def decode_response(body: bytes) -> InferResponse:
    """Decode a msgpack infer reply (the client side of :func:`encode_response`)."""
    doc = _unpack(body, "response")
    outputs_doc = doc.get("outputs", [])
    if type(outputs_doc) is not list:
        raise invalid(f"response 'outputs' must be a list of tensors, got {type(outputs_doc).__name__}")
    outputs, _ = _decode_tensors(outputs_doc, "output")
    return InferResponse(
        model_name=str(doc.get("model_name", "")),
        model_version=str(doc.get("model_version", "")),
        outputs=outputs,
        id=doc.get("id"),
        parameters=doc.get("parameters"),
    )


def encode_response(resp: InferResponse, requested: list[RequestedOutput] | None = None) -> bytes:
    """Encode a reply holding the ``requested`` outputs (None: all of ``resp.outputs``)."""
    if requested is None:
        items: Iterable[tuple[str, Any]] = resp.outputs.items()
    else:
        items = []
        for r in requested:
            arr = resp.outputs.get(r.name)
            if arr is None:
                raise invalid(f"requested output {r.name!r} is not an output of model {resp.model_name!r}")
            items.append((r.name, arr))
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.parameters is not None:
        doc["parameters"] = resp.parameters
    if sum(_nbytes(v) for _, v in items) > JOIN_MIN_BYTES:
        return _join_response(doc, items)
    doc["outputs"] = _encode_tensors(items)
    return msgpack.packb(doc)


# Replies whose tensors hold more than this are packed as pieces and joined with the GIL released
# (pyserve._core.join_buffers): packb copies a 56 MiB tensor in ~0.3 s holding the GIL.
JOIN_MIN_BYTES = 64 << 10


def _nbytes(values: Any) -> int:
    return values.nbytes if type(values) is np.ndarray else 0


def _join_response(doc: dict[str, Any], items: Iterable[tuple[str, Any]]) -> bytes:
    """``msgpack.packb({**doc, "outputs": _encode_tensors(items)})``, byte for byte, without a copy
    of the tensors' bytes under the GIL: the maps are packed around each tensor's raw bytes (a bin
    header before them, as msgpack's spec has it), and the pieces joined in C++."""
    items = list(items)
    head = reply_head(doc, len(items))
    pieces: list[Any] = []
    for name, values in items:
        datatype, arr, raw = raw_bytes(name, values)
        pieces += [head + entry_head(name, datatype, arr.shape, len(raw)), raw]
        head = b""
    return _core.join_buffers(pieces)


def reply_head(fields: Mapping[str, Any], outputs: int) -> bytes:
    """The packed bytes of a reply before its first tensor's entry: the map of ``fields`` (in their
    order) and ``outputs``, up to the header of the ``outputs`` array of ``outputs`` entries, as
    packb writes ``{**fields, "outputs": [...]}``."""
    packer = msgpack.Packer()
    head = [packer.pack_map_header(len(fields) + 1)]
    for key, value in fields.items():
        head += [packer.pack(key), packer.pack(value)]
    head += [packer.pack("outputs"), packer.pack_array_header(outputs)]
    return b"".join(head)


def entry_head(name: str, datatype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The packed bytes of one tensor's entry before its data: the map ``{"name", "datatype",
    "shape", "data"}`` up to the bin header of ``nbytes`` bytes of data, as packb writes the entry
    before the bytes themselves."""
    packer = msgpack.Packer()
    # bin 8 / bin 16 / bin 32: the smallest that holds nbytes, as packb writes it.
    bin_header = (b"\xc4" + nbytes.to_bytes(1, "big") if nbytes < 1 << 8 else
                  b"\xc5" + nbytes.to_bytes(2, "big") if nbytes < 1 << 16 else
                  b"\xc6" + nbytes.to_bytes(4, "big"))
    return b"".join([packer.pack_map_header(4), packer.pack("name"), packer.pack(name),
                     packer.pack("datatype"), packer.pack(datatype), packer.pack("shape"),
                     packer.pack(list(shape)), packer.pack("data"), bin_header])


def encode_request(
    inputs: Mapping[str, Any],
    *,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    outputs: Iterable[str] | None = None,
) -> bytes:
    """Encode an infer request (the client side of :func:`decode_request`)."""
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["inputs"] = _encode_tensors(inputs.items())
    if outputs is not None:
        doc["outputs"] = list(outputs)
    return msgpack.packb(doc)


def _encode_tensors(items: Iterable[tuple[str, Any]]) -> list[dict]:
    entries = []
    for name, values in items:
        # raw is a memoryview over the array for numeric data: packb copies it once into the body.
        datatype, arr, raw = raw_bytes(name, values)
        entries.append({"name": name, "datatype": datatype, "shape": list(arr.shape), "data": raw})
    return entries


def _unpack(body: bytes, what: str) -> dict:
    try:
        doc = msgpack.unpackb(body, raw=False, max_str_len=min(len(body), _MAX_STR_LEN), max_ext_len=0)
    except Exception as e:  # msgpack raises many types (ValueError, FormatError, StackError, ...)
        detail = str(e) or type(e).__name__  # some msgpack errors carry no message
        raise invalid(f"{what} is not valid msgpack ({len(body)} bytes): {detail}") from None
    if type(doc) is not dict:
        raise invalid(f"{what} must be a msgpack map, got {type(doc).__name__}")
    return doc


def _msgpack_type(value: Any) -> str:
    return "a map" if type(value) is dict else type(value).__name__


def _decode_tensors(
    entries: list, what: str, check: InputCheck | None = None
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Decode tensor entries; every header goes to ``check`` before any data is decoded."""
    headers: list[TensorHeader] = []
    datas: list[bytes] = []
    extra_parameters: dict[str, dict] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        name, datatype, shape, count = check_entry(entry, i, seen, what, _msgpack_type)
        seen.add(name)
        data = entry.get("data")
        if type(data) is not bytes:
            raise invalid(
                f"{what} {name!r}: 'data' must be the raw little-endian bytes of the tensor "
                f"(msgpack bin), got {type(data).__name__}"
            )
        params = entry.get("parameters")
        if params is not None:
            if type(params) is not dict:
                raise invalid(f"{what} {name!r}: 'parameters' must be a map, got {type(params).__name__}")
            if params:
                extra_parameters[name] = params
        headers.append(TensorHeader(name, datatype, shape, count, len(data)))
        datas.append(data)
    if check is not None:
        check(headers)
    tensors = {h.name: array_from_raw(h.name, h.datatype, h.shape, h.count, data, what)
               for h, data in zip(headers, datas)}
    return tensors, extra_parameters


def _decode_requested(outputs_doc: Any) -> list[RequestedOutput] | None:
    if outputs_doc is None:
        return None
    if type(outputs_doc) is not list:
        raise invalid(f"request 'outputs' must be a list of names, got {type(outputs_doc).__name__}")
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, entry in enumerate(outputs_doc):
        name = entry.get("name") if type(entry) is dict else entry
        if type(name) is not str:
            raise invalid(
                f"requested output #{i} must be a name or a map with a 'name' string, got {entry!r:.80}"
            )
        if name in seen:
            raise invalid(f"requested output {name!r} appears twice")
        seen.add(name)
        params = entry.get("parameters") if type(entry) is dict else None
        if params is not None and type(params) is not dict:
            raise invalid(f"requested output {name!r}: 'parameters' must be a map, got {type(params).__name__}")
        requested.append(RequestedOutput(name, None, params.get("classification") if params else None))
    return requested
