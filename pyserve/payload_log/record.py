"""One logged call: what the hooks capture (cheap references), and its decoded, redacted form.

A :class:`Capture` is built on the event loop's thread and holds only references (the request's and
the answer's arrays, the config); everything that costs (selection, redaction, hashing, decoding
BYTES, building Arrow columns) runs in the writer thread (:mod:`pyserve.payload_log`).

Decoded tensors are numpy arrays again after :func:`select`: numbers keep their numpy type, BYTES
become object arrays of ``str`` (UTF-8; bytes that are not UTF-8 appear as ``\\xNN`` escapes), and a
hashed tensor becomes an object array of SHA-256 hex digests, one per element, of the same shape.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pyserve.datatypes import datatype_of

if TYPE_CHECKING:
    from pyserve.config import PayloadLogConfig, TensorSpec

# The outcome of a failed call, in the words of pyserve_requests_total{outcome} (docs/metrics.md),
# from its error kind (lower case); any other kind is a "failure".
OUTCOME_OF_KIND = {"deadline_exceeded": "timeout", "unavailable": "rejected", "cancelled": "cancelled"}
SUCCESS = "success"
OK = "ok"


def outcome_of(status: str) -> str:
    """The outcome (``success``, ``failure``, ``timeout``, ``rejected``, ``cancelled``) of a status
    (``ok`` or an error kind in lower case)."""
    return SUCCESS if status == OK else OUTCOME_OF_KIND.get(status, "failure")


@dataclass(slots=True)
class Capture:
    """One call as the hooks saw it: references only, nothing copied or converted.

    ``time_ns``: wall-clock time (ns since the Unix epoch) the call arrived; ``duration_ns``: from
    arrival to the answer (or the error), monotonic. ``status``: ``ok`` or the error kind in lower
    case. ``sampled``: chosen by the sample rate (False: logged only because it failed).
    ``inputs`` / ``outputs``: the request's and the answer's arrays as the service had them (None:
    none, e.g. a body that did not decode). ``queue_us`` / ``compute_us``: how long the call waited
    in the core's queue and its batch ran, as the core measured them (None, or a negative number, when
    it never reached a model's queue). ``input_specs`` / ``output_specs``: the model's declared
    tensors, which fix the file's columns."""

    time_ns: int
    duration_ns: int
    model: str
    version: str
    request_id: str | None
    protocol: str
    status: str
    error: str | None
    sampled: bool
    inputs: dict[str, np.ndarray] | None
    outputs: dict[str, np.ndarray] | None
    queue_us: int | None
    compute_us: int | None
    config: PayloadLogConfig
    batching: bool
    input_specs: tuple[TensorSpec, ...]
    output_specs: tuple[TensorSpec, ...]

    @property
    def outcome(self) -> str:
        return outcome_of(self.status)

    def timings_us(self) -> tuple[int | None, int | None]:
        """(queue, compute) of the call in µs as the core measured them; None when it never ran."""
        queue = self.queue_us
        return (queue, self.compute_us) if queue is not None and queue >= 0 else (None, None)


@dataclass(slots=True)
class Tensor:
    """A tensor as logged: its wire datatype, shape, and values (None when larger than
    ``max_tensor_bytes``: logged by datatype and shape only)."""

    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | None


def _text(values: np.ndarray) -> np.ndarray:
    """BYTES elements as ``str``: UTF-8, other bytes as ``\\xNN`` escapes (readable, never raw)."""
    out = np.empty(values.shape, dtype=object)
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)
    for i, v in enumerate(flat_in):
        flat_out[i] = v.decode("utf-8", "backslashreplace") if isinstance(v, bytes | bytearray) else str(v)
    return out


def _hashed(values: np.ndarray) -> np.ndarray:
    """Each element replaced by the SHA-256 hex digest of its bytes (a number's little-endian bytes,
    a BYTES element's bytes), so equal values stay equal and can be counted, but are not written."""
    out = np.empty(values.shape, dtype=object)
    flat_out = out.reshape(-1)
    if values.dtype == object:
        for i, v in enumerate(values.reshape(-1)):
            data = v if isinstance(v, bytes | bytearray) else str(v).encode()
            flat_out[i] = hashlib.sha256(data).hexdigest()
    else:
        flat = np.ascontiguousarray(values.reshape(-1)).astype(values.dtype.newbyteorder("<"), copy=False)
        for i, v in enumerate(flat):
            flat_out[i] = hashlib.sha256(v.tobytes()).hexdigest()
    return out


def _datatype(arr: np.ndarray) -> str:
    try:
        return datatype_of(arr.dtype)
    except Exception:  # noqa: BLE001 - what a backend returned is logged, whatever it is
        return str(arr.dtype)


def tensor_size(arr: np.ndarray) -> int:
    """The bytes of a tensor's values (a BYTES element counts its own length, not a pointer's)."""
    if arr.dtype != object or arr.strides == (0,) * arr.ndim:  # a broadcast placeholder: nbytes is its size
        return arr.nbytes
    return sum(len(v) if isinstance(v, bytes | bytearray | str) else 8 for v in arr.reshape(-1))


def tensor(name: str, arr: np.ndarray, config: PayloadLogConfig) -> Tensor:
    """One tensor as logged (not redacted: the caller skips those): ``config.hash`` hashed, BYTES as
    text, values left out above ``config.max_tensor_bytes``."""
    arr = np.asarray(arr)
    datatype = _datatype(arr)
    limit = config.max_tensor_bytes
    if limit and tensor_size(arr) > limit:
        return Tensor(datatype, arr.shape, None)
    if name in config.hash:
        return Tensor("BYTES", arr.shape, _hashed(arr))
    if arr.dtype.kind in "OSU":
        return Tensor(datatype, arr.shape, _text(arr))
    return Tensor(datatype, arr.shape, arr)


def select(tensors: dict[str, np.ndarray] | None, keep: tuple[str, ...] | None, config: PayloadLogConfig
           ) -> dict[str, Tensor]:
    """The tensors the log keeps, redacted: only ``keep`` (None: all), without ``config.redact``, each
    as :func:`tensor` makes it."""
    if not tensors:
        return {}
    return {name: tensor(name, arr, config) for name, arr in tensors.items()
            if (keep is None or name in keep) and name not in config.redact}


def json_values(tensor: Tensor) -> Any:
    """The values as nested lists of Python numbers / strings (None when left out)."""
    if tensor.values is None:
        return None
    values = tensor.values
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    return values.tolist()


def json_tensor(tensor: Tensor, flat: bool = False) -> dict:
    """A tensor as JSON: ``{"datatype", "shape", "data"}``; ``data`` nested by the shape, or ``flat``
    (KServe v2's row-major list)."""
    data = json_values(tensor)
    if flat and data is not None and tensor.values is not None:
        values = tensor.values.astype(np.float32) if tensor.values.dtype == np.float16 else tensor.values
        data = values.reshape(-1).tolist()
    return {"datatype": tensor.datatype, "shape": list(tensor.shape), "data": data}
