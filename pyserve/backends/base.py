"""The backend interface and the dispatch from a model config to a backend instance."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from pyserve.config import ModelConfig
from pyserve.errors import invalid


class Backend(abc.ABC):
    """Runs one batch. Called by a C++ core instance thread that holds the GIL for the call, once per batch.

    Inputs are numpy arrays whose first dim is the batch dim when max_batch_size > 0 (BYTES: object
    arrays of bytes). The result maps every configured output name to a numpy array."""

    @abc.abstractmethod
    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""

    def close(self) -> None:
        """Release what the backend holds; it is not called again afterwards."""


class IdentityBackend(Backend):
    """Returns each input as the output of the same index, without copying (tests, benchmarks)."""

    def __init__(self, config: ModelConfig) -> None:
        self._pairs = [(i.name, o.name) for i, o in zip(config.inputs, config.outputs)]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {out: inputs[inp] for inp, out in self._pairs}


def create_backend(config: ModelConfig, version_dir: Path) -> Backend:
    """A backend for one version of a model; PyserveError(INVALID_ARGUMENT) when it cannot be loaded."""
    version_dir = Path(version_dir)
    # Imported on demand: the server must not pay for onnxruntime when no model uses it.
    if config.backend == "onnxruntime":
        from pyserve.backends.onnx import OnnxBackend

        return OnnxBackend(config, version_dir / config.model_filename)
    if config.backend == "python":
        from pyserve.backends.python import PythonBackend

        return PythonBackend(config, version_dir)
    if config.backend == "identity":
        return IdentityBackend(config)
    if config.backend == "tensorrt":
        raise invalid(f"model {config.name!r}: the tensorrt backend is not available in this build")
    raise invalid(f"model {config.name!r}: unknown backend {config.backend!r}")
