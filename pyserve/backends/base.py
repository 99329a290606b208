"""The backend interface, and creating the backend of a model version through the registry."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pyserve.backends import registry

if TYPE_CHECKING:  # config imports the registry, whose package imports this module
    from pyserve.config import ModelConfig


class Backend(abc.ABC):
    """Runs one batch. Called by a C++ core instance thread that holds the GIL for the call, once per batch.

    Inputs are numpy arrays whose first dim is the batch dim when max_batch_size > 0 (BYTES: object
    arrays of bytes). The result maps every configured output name to a numpy array."""

    @abc.abstractmethod
    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""

    def close(self) -> None:
        """Release what the backend holds; it is not called again afterwards."""


def create_backend(config: ModelConfig, version_dir: Path) -> Any:
    """The backend of one version of a model, made by its registry entry.

    Returns a batch callable (or the core's native identity backend); raises
    PyserveError(INVALID_ARGUMENT) naming the file when the version cannot be loaded."""
    return registry.get(config.backend).create(config, Path(version_dir))
