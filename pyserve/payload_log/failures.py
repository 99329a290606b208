"""The last failed calls the payload log saw, in memory, for the dashboard (``PayloadLog.recent_failures``).

Filled on the payload log's writer thread from the records it drains (never on the event loop's
thread); read from any thread. A record keeps only short text: its inputs as a preview of at most
:data:`PREVIEW_VALUES` values per tensor and :data:`PREVIEW_CHARS` characters in all, with the model's
``[payload_log]`` applied first (``inputs`` kept, ``redact`` dropped, ``hash`` shown as hashed, a
tensor over ``max_tensor_bytes`` by datatype and shape only), so the page shows nothing the files
would not hold.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from pyserve.payload_log.record import OK, _datatype, tensor_size

if TYPE_CHECKING:
    from pyserve.config import PayloadLogConfig
    from pyserve.payload_log.record import Capture

PREVIEW_VALUES = 6  # values shown per tensor
PREVIEW_CHARS = 240  # characters of a record's whole preview
VALUE_CHARS = 40  # characters of one BYTES element


def _value(v: object) -> str:
    if isinstance(v, bytes | bytearray):
        v = bytes(v).decode("utf-8", "backslashreplace")
    text = repr(v) if isinstance(v, str) else format(v.item() if isinstance(v, np.generic) else v)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


def preview(inputs: dict[str, np.ndarray] | None, config: PayloadLogConfig) -> str:
    """The inputs of a call in one short line, e.g. ``x FP32[2,4] 0.5 -1 2.25 3 1 2 …``; "" for none.

    Only the first :data:`PREVIEW_VALUES` elements (row-major) of each tensor are read, so a large
    tensor costs no more than a small one."""
    if not inputs:
        return ""
    parts = []
    for name, arr in inputs.items():
        if (config.inputs is not None and name not in config.inputs) or name in config.redact:
            continue
        arr = np.asarray(arr)
        head = f"{name} {_datatype(arr)}[{','.join(map(str, arr.shape))}]"
        if name in config.hash:
            parts.append(f"{head} (hashed)")
            continue
        limit = config.max_tensor_bytes
        if limit and tensor_size(arr) > limit:
            parts.append(f"{head} (over max_tensor_bytes)")
            continue
        flat = arr.reshape(-1)
        shown = " ".join(_value(v) for v in flat[:PREVIEW_VALUES])
        parts.append(f"{head} {shown}{' …' if flat.size > PREVIEW_VALUES else ''}".rstrip())
    text = "; ".join(parts)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


class RecentFailures:
    """A ring of the last ``size`` failed calls, as dicts with ``time`` (Unix s), ``model``,
    ``version``, ``request_id``, ``protocol``, ``status`` (the error kind, lower case), ``error``
    and ``inputs`` (a :func:`preview`). Thread-safe."""

    def __init__(self, size: int) -> None:
        self._ring: collections.deque[dict] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, captures: Iterable[Capture]) -> None:
        """Keeps the failed ones of ``captures`` (writer thread)."""
        rows = []
        for c in captures:
            if c.status == OK:
                continue
            rows.append({"time": c.time_ns / 1e9, "model": c.model, "version": c.version,
                         "request_id": c.request_id, "protocol": c.protocol, "status": c.status,
                         "error": c.error, "inputs": preview(c.inputs, c.config)})
        if rows:
            with self._lock:
                self._ring.extend(rows)

    def newest(self, limit: int) -> list[dict]:
        """Up to ``limit`` failures, newest first."""
        with self._lock:
            rows = list(self._ring)
        return rows[::-1][:max(limit, 0)]
