"""Type stubs of the C++ extension pyserve._core."""

from typing import Any, Callable

import numpy as np

NO_DEADLINE: int
NEVER_FLUSHED: int

class CoreError(Exception):
    """args: (status code, message)."""

class SchedulerOptions:
    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        # (name, datatype, shape) or (name, datatype, shape, optional): an optional input may be
        # left out of a request (only with max_batch_size 0); the backend gets the inputs present.
        inputs: list[tuple[str, str, list[int]]] | list[tuple[str, str, list[int], bool]],
        outputs: list[tuple[str, str, list[int]]] | list[tuple[str, str, list[int], bool]],
        max_batch_size: int = 0,
        preferred_batch_sizes: list[int] = ...,
        max_queue_delay_us: int = 0,
        max_queue_size: int = 0,
        default_timeout_us: int = 0,
        priority_levels: int = 1,
        default_priority_level: int = 1,
        instance_count: int = 1,
        submitter_flushes: bool = False,
    ) -> None: ...

class CompletionQueue:
    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[tuple[Any, int, str, dict[str, np.ndarray] | None, int, int]]: ...
    def wait(self, timeout_ms: int) -> bool: ...

class IdentityBackend:
    """The core's identity backend: output i is input i, run in C++ without the GIL."""
    def __init__(self) -> None: ...

class Scheduler:
    def __init__(
        self,
        options: SchedulerOptions,
        backend: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | IdentityBackend,
        completions: CompletionQueue,
    ) -> None: ...
    def submit(self, inputs: dict[str, np.ndarray], token: Any, priority: int = 0, timeout_us: int = 0) -> int: ...
    def cancel(self, request_id: int) -> bool: ...
    def flush(self, run_inline: bool = False) -> int: ...
    def stop(self, drain: bool = True) -> None: ...
    def stats(self) -> dict[str, Any]: ...

def decide(
    queue: list[tuple[int, int, int, int]],
    now_ns: int,
    max_batch_size: int,
    preferred_batch_sizes: list[int],
    max_queue_delay_ns: int,
    flushed_ns: int = ...,
) -> tuple[list[int], list[int], int]: ...
def serialize_bytes(array: np.ndarray) -> bytes: ...
def deserialize_bytes(data: bytes | memoryview, shape: list[int]) -> np.ndarray: ...
def build_info() -> dict[str, bool]: ...
def scan_kserve_request(body: bytes) -> tuple[bytes, list[tuple[int, int, int]]] | None: ...
def decode_json_tensor(body: bytes, begin: int, end: int, datatype: str, count: int) -> np.ndarray | int | None: ...

class JsonSkeleton:
    def __init__(
        self, body: bytes, spans: list[tuple[int, int, int]], tensors: list[tuple[str, str, tuple[int, ...]]]
    ) -> None: ...
    def match(self, body: bytes) -> tuple[dict[str, np.ndarray], str | None] | None: ...

def encode_json_reply(
    head: bytes, items: list[bytes | tuple[str, str, tuple[int, ...], np.ndarray]], tail: bytes, parts: list[Any]
) -> bytes | int | None: ...
def join_buffers(parts: list[Any]) -> bytes: ...
def parse_plain_request(
    data: bytes | bytearray | memoryview, start: int, max_body_bytes: int
) -> tuple[int, bytes, bytes, dict[str, str], bytes, bool, bool] | None: ...
