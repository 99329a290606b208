"""The Python backend: a class in ``<version>/model.py`` whose ``infer`` takes and returns a batch.

    class Model:
        def __init__(self, config, version_dir):   # both optional: only the ones it names are passed
            ...
        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            ...
        def close(self):                            # optional
            ...
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pyserve.backends.base import Backend
from pyserve.config import ModelConfig
from pyserve.datatypes import NUMPY_DTYPES
from pyserve.errors import PyserveError, internal, invalid

_module_ids = itertools.count(1)


class PythonBackend(Backend):
    """Imports the model file of one version and calls its class's ``infer`` once per batch."""

    def __init__(self, config: ModelConfig, version_dir: Path) -> None:
        self._config = config
        self._name = config.name
        path = Path(version_dir) / config.model_filename
        if not path.is_file():
            raise invalid(f"model {config.name!r}: {path}: no such model file")
        # A unique module name per load: two versions (or reloads) of one model must not clash.
        safe = re.sub(r"\W", "_", f"{config.name}_{Path(version_dir).name}")
        self._module_name = f"pyserve_model_{safe}_{next(_module_ids)}"
        class_name = config.backend_options.get("class", "Model")
        try:
            spec = importlib.util.spec_from_file_location(self._module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError("not a loadable Python file")
            module = importlib.util.module_from_spec(spec)
            # Registered so that dataclasses, pickle and typing in the model file can find the module.
            sys.modules[self._module_name] = module
            spec.loader.exec_module(module)
            cls = getattr(module, class_name, None)
            if not inspect.isclass(cls):
                raise AttributeError(f"it defines no class {class_name!r}")
            self._model = cls(**self._init_kwargs(cls, config, Path(version_dir)))
            if not callable(getattr(self._model, "infer", None)):
                raise AttributeError(f"class {class_name!r} has no infer(self, inputs) method")
        except Exception as exc:
            sys.modules.pop(self._module_name, None)
            raise invalid(f"model {config.name!r}: {path}: {type(exc).__name__}: {exc}") from None
        self._dtypes = {o.name: NUMPY_DTYPES[o.datatype] for o in config.outputs}

    @staticmethod
    def _init_kwargs(cls: type, config: ModelConfig, version_dir: Path) -> dict[str, Any]:
        available = {"config": config, "version_dir": version_dir}
        params = inspect.signature(cls).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return available
        passable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {k: v for k, v in available.items() if k in params and params[k].kind in passable}

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            result = self._model.infer(inputs)
        except PyserveError:
            raise
        except Exception as exc:
            # The core prefixes the model and version; the chained traceback (server log only)
            # points at the model's own code.
            raise internal(f"infer() raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, dict):
            raise internal(f"infer() must return a dict of outputs, "
                            f"got {type(result).__name__}")
        # The core checks each output's shape against the declared one, for every backend.
        return {spec.name: self._check_output(spec, result) for spec in self._config.outputs}

    def _check_output(self, spec: Any, result: dict[str, Any]) -> np.ndarray:
        """The output as an array of the configured datatype."""
        where = f"output {spec.name!r}"  # the core prefixes the model and version
        if spec.name not in result:
            have = sorted(map(str, result))
            raise internal(f"{where}: missing from the dict infer() returned (it has {have})")
        try:
            array = np.asarray(result[spec.name])
        except Exception as exc:
            raise internal(f"{where}: not convertible to a numpy array: {exc}") from None
        want = self._dtypes[spec.name]
        if spec.datatype == "BYTES":
            if array.dtype.kind == "U":
                array = np.char.encode(array, "utf-8").astype(object)
            elif array.dtype.kind == "S":
                array = array.astype(object)
            elif array.dtype.kind != "O":
                raise internal(f"{where}: expected BYTES (bytes or str), got dtype {array.dtype}")
        elif array.dtype != want:
            # Widening or same-kind casts (float64 -> float32, int -> float) are what users expect
            # from Python code; a cast that changes kind (float -> int) is a bug to report.
            if not np.can_cast(array.dtype, want, casting="same_kind"):
                raise internal(f"{where}: expected {spec.datatype} ({want}), got dtype {array.dtype}")
            array = array.astype(want)
        return array

    def close(self) -> None:
        """Call the model's close() if it has one and forget its module."""
        try:
            close = getattr(self._model, "close", None)
            if callable(close):
                close()
        finally:
            sys.modules.pop(self._module_name, None)
