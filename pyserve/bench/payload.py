"""The request the generator sends: input tensors from the model's metadata or a user file, encoded
ONCE per run in the chosen protocol (KServe v2 JSON, binary tensor extension, msgpack).

This module is deliberately independent of pyserve's own codecs: the bench can target any KServe v2
server, and a bug in pyserve's codecs must not hide behind the same bug in its load generator.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgpack
import numpy as np

from pyserve.datatypes import as_bytes_array, numpy_dtype, serialize_bytes

# Content type of msgpack bodies (the JSON structure, tensor data as raw little-endian bytes).
MSGPACK_CONTENT_TYPE = "application/msgpack"
# The binary tensor extension: the JSON header's length in bytes, the tensors follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"


class PayloadError(ValueError):
    """Input data that does not fit the model; the message names the input."""


@dataclasses.dataclass(frozen=True)
class Payload:
    """One encoded infer request, reused for every send."""

    body: bytes
    headers: dict[str, str]
    samples: int  # samples per request (the batch dim), for samples/s


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input from the model metadata; -1 marks a variable dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def input_specs(metadata: dict[str, Any]) -> list[InputSpec]:
    """The inputs of a KServe v2 model metadata reply."""
    try:
        return [
            InputSpec(str(i["name"]), str(i["datatype"]), tuple(int(d) for d in i["shape"]))
            for i in metadata["inputs"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise PayloadError(f"model metadata has no usable 'inputs' list ({e!r})") from None


def request_shape(spec: InputSpec, shapes: dict[str, tuple[int, ...]], batch_size: int) -> tuple[int, ...]:
    """The shape sent for one input.

    A leading -1 is the batch dim and becomes ``batch_size``; ``--shape NAME:D1,D2`` gives the other
    dims. Any other -1 left without ``--shape`` is an error naming the input.
    """
    batched = bool(spec.shape) and spec.shape[0] == -1
    rest = spec.shape[1:] if batched else spec.shape
    if spec.name in shapes:
        given = shapes[spec.name]
        if len(given) != len(rest):
            raise PayloadError(
                f"--shape {spec.name}: model dims {list(spec.shape)} need {len(rest)} dims"
                f"{' after the batch dim' if batched else ''}, got {list(given)}"
            )
        if any(m != -1 and m != g for m, g in zip(rest, given)):
            raise PayloadError(f"--shape {spec.name}: {list(given)} contradicts the model's {list(spec.shape)}")
        rest = given
    if any(d < 0 for d in rest):
        raise PayloadError(
            f"input {spec.name!r} has variable dims {list(spec.shape)}: give them with --shape {spec.name}:D1,D2"
        )
    if not batched and batch_size != 1:
        raise PayloadError(
            f"--batch-size {batch_size}: input {spec.name!r} has no batch dim (shape {list(spec.shape)})"
        )
    return ((batch_size,) if batched else ()) + tuple(rest)


def random_inputs(
    specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], batch_size: int, seed: int
) -> dict[str, np.ndarray]:
    """Random tensors of the model's inputs (small values: valid as indices, finite as floats)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = request_shape(spec, shapes, batch_size)
        if spec.datatype == "BYTES":
            count = int(np.prod(shape, dtype=np.int64))
            raw = rng.integers(ord("a"), ord("z") + 1, size=(count, 8), dtype=np.uint8)
            out[spec.name] = np.array([r.tobytes() for r in raw], dtype=object).reshape(shape)
            continue
        try:
            dtype = numpy_dtype(spec.datatype)
        except Exception:
            raise PayloadError(f"input {spec.name!r}: unknown datatype {spec.datatype!r}") from None
        if dtype.kind == "b":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind in "iu":
            out[spec.name] = rng.integers(0, 100, size=shape).astype(dtype)
        else:
            out[spec.name] = rng.random(size=shape).astype(dtype)
    return out


def file_inputs(
    path: str, specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], batch_size: int
) -> dict[str, np.ndarray]:
    """Tensors from ``--input-data``: .npy (single-input model), .npz or JSON ``{"name": [...]}``.

    An array whose rank is one below a batched input's is one sample and is stacked ``batch_size``
    times; otherwise it is sent as it is.
    """
    if path.endswith(".npy"):
        if len(specs) != 1:
            raise PayloadError(f"--input-data {path}: a .npy file fits a single-input model; this one has {len(specs)}")
        raw: dict[str, Any] = {specs[0].name: np.load(path, allow_pickle=False)}
    elif path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    else:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise PayloadError(f"--input-data {path}: expected a JSON object {{name: [...]}}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in raw:
            raise PayloadError(f"--input-data {path}: no data for input {spec.name!r}")
        if spec.datatype == "BYTES":
            arr = as_bytes_array(np.asarray(raw[spec.name]))
        else:
            arr = np.asarray(raw[spec.name]).astype(numpy_dtype(spec.datatype), copy=False)
        batched = bool(spec.shape) and spec.shape[0] == -1
        if batched and arr.ndim == len(spec.shape) - 1:
            arr = np.stack([arr] * batch_size)
        if arr.ndim != len(spec.shape) or any(m != -1 and m != d for m, d in zip(spec.shape, arr.shape)):
            raise PayloadError(
                f"--input-data {path}: input {spec.name!r} has shape {list(arr.shape)}, "
                f"model expects {list(spec.shape)}"
            )
        out[spec.name] = arr
    return out


def _raw_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype == object:
        return serialize_bytes(arr)
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def encode(inputs: dict[str, np.ndarray], datatypes: dict[str, str], protocol: str) -> Payload:
    """Encode the request once: ``json``, ``binary`` (tensor extension) or ``msgpack``."""
    samples = max((a.shape[0] if a.ndim else 1) for a in inputs.values()) if inputs else 1
    if protocol == "json":
        tensors = []
        for name, arr in inputs.items():
            if arr.dtype == object:
                data: list[Any] = [v.decode("utf-8", "replace") for v in arr.reshape(-1)]
            else:
                data = arr.reshape(-1).tolist()
            tensors.append({"name": name, "datatype": datatypes[name], "shape": list(arr.shape), "data": data})
        body = json.dumps({"inputs": tensors}, separators=(",", ":")).encode()
        return Payload(body, {"Content-Type": "application/json"}, samples)
    if protocol == "binary":
        blobs = [_raw_bytes(arr) for arr in inputs.values()]
        header = {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatypes[name],
                    "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
                for (name, arr), blob in zip(inputs.items(), blobs)
            ],
            # Binary outputs are the cheapest for both ends to handle.
            "parameters": {"binary_data_output": True},
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
        return Payload(head + b"".join(blobs), headers, samples)
    if protocol == "msgpack":
        tensors = [
            {"name": name, "datatype": datatypes[name], "shape": list(arr.shape), "data": _raw_bytes(arr)}
            for name, arr in inputs.items()
        ]
        body = msgpack.packb({"inputs": tensors}, use_bin_type=True)
        return Payload(body, {"Content-Type": MSGPACK_CONTENT_TYPE}, samples)
    raise PayloadError(f"unknown protocol {protocol!r}")


def build_payload(
    metadata: dict[str, Any],
    protocol: str,
    shapes: dict[str, tuple[int, ...]],
    batch_size: int,
    input_data: str | None,
    seed: int,
) -> Payload:
    """The one request body of a run, from metadata and options."""
    specs = input_specs(metadata)
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise PayloadError(f"--shape names unknown inputs {sorted(unknown)}; the model has {[s.name for s in specs]}")
    if input_data:
        inputs = file_inputs(input_data, specs, shapes, batch_size)
    else:
        inputs = random_inputs(specs, shapes, batch_size, seed)
    return encode(inputs, {s.name: s.datatype for s in specs}, protocol)
