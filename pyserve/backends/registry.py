"""The backend registry: one entry per backend kind, and the only place that knows backend names.

An entry says everything the rest of pyserve needs to know of a kind of backend: the file a version
folder holds, the platform name shown in model metadata (Triton's names), the options of its
``[<backend>]`` table in config.toml, how to complete a config from the model file (inputs and
outputs read off an ONNX file), whether its cheap batches may run inline on the event loop's thread,
and how to create a backend for one model version. A new backend (TensorRT, PyTorch) is one new entry
in :data:`REGISTRY`.

Backend modules are imported when a backend is created, never before: a server whose models are all
Python does not pay for importing onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyserve import _core
from pyserve.errors import invalid

if TYPE_CHECKING:
    from pyserve.config import ModelConfig


@dataclass(frozen=True)
class Option:
    """One key of a backend's options table: its default and what it accepts.

    ``kind`` is ``"int"`` (an integer >= ``minimum``), ``"choice"`` (one of ``choices``) or
    ``"identifier"`` (a Python identifier)."""

    default: Any
    kind: str = "int"
    minimum: int = 0
    choices: tuple[str, ...] = ()

    def parse(self, value: Any) -> Any:
        """``value`` checked; ValueError with "expected ..., got ..." when it is not accepted."""
        if self.kind == "int":
            # bool is a subclass of int in Python; TOML true must not pass for 1.
            if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
                raise ValueError(f"expected an integer >= {self.minimum}, got {value!r}")
        elif self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        elif not isinstance(value, str) or not value.isidentifier():
            raise ValueError(f"expected a Python class name, got {value!r}")
        return value


# A batch callable (dict of numpy arrays in, dict out) or the core's native identity backend.
BackendHandle = Any


@dataclass(frozen=True)
class BackendKind:
    """What pyserve knows of one kind of backend.

    ``create(config, version_dir)`` returns the backend of one version: a callable taking a batch (dict
    of numpy arrays) and returning a dict of numpy arrays, with an optional ``close()``, or a
    ``_core.IdentityBackend``; it raises PyserveError(INVALID_ARGUMENT) naming the file when the
    version cannot be loaded. ``complete(config, model_file, auto_max_batch_size)`` returns the config
    with what the model file says filled in and checked (ConfigError when they disagree), and
    ``auto_completed`` naming what was filled in; ``model_file`` is None when no version folder holds
    one; ``auto_max_batch_size`` > 0 when the config sets no max_batch_size: the value to set when the
    model allows batching (Triton's auto-complete of max_batch_size)."""

    name: str
    platform: str
    model_filename: str
    create: Callable[[ModelConfig, Path], BackendHandle]
    options: Mapping[str, Option] = field(default_factory=dict)
    complete: Callable[[ModelConfig, Path | None, int], ModelConfig] | None = None
    inline_ok: bool = False
    needs_model_file: bool = True
    # Configs of this kind must be checked beyond the common rules (ConfigError when wrong).
    check: Callable[[ModelConfig], None] | None = None
    # Whether config.toml may hold a ``[<name>]`` table of its options.
    options_table: bool = True

    def defaults(self) -> dict[str, Any]:
        """The backend options with every default filled in."""
        return {k: o.default for k, o in self.options.items()}


# -- onnxruntime ---------------------------------------------------------------------------------
def _create_onnx(config: ModelConfig, version_dir: Path) -> BackendHandle:
    from pyserve.backends.onnx import OnnxBackend

    return OnnxBackend(config, Path(version_dir) / config.model_filename)


def _complete_onnx(config: ModelConfig, model_file: Path | None, auto_max_batch_size: int) -> ModelConfig:
    from pyserve.backends.onnx import complete_config

    return complete_config(config, model_file, auto_max_batch_size)


# -- python --------------------------------------------------------------------------------------
def _create_python(config: ModelConfig, version_dir: Path) -> BackendHandle:
    from pyserve.backends.python import PythonBackend

    return PythonBackend(config, Path(version_dir))


# -- identity ------------------------------------------------------------------------------------
def _create_identity(config: ModelConfig, version_dir: Path) -> BackendHandle:
    return _core.IdentityBackend()


def _check_identity(config: ModelConfig) -> None:
    from pyserve.config import ConfigError

    src = config.source or config.name
    if len(config.inputs) != len(config.outputs):
        raise ConfigError(f"{src}: outputs: the identity backend needs one output per input: "
                          f"{len(config.inputs)} inputs, {len(config.outputs)} outputs")
    for i, (inp, out) in enumerate(zip(config.inputs, config.outputs)):
        if inp.datatype != out.datatype:
            raise ConfigError(f"{src}: outputs[{i}].datatype: the identity backend needs {inp.datatype} "
                              f"(as inputs[{i}]), got {out.datatype}")


# -- tensorrt ------------------------------------------------------------------------------------
def _create_tensorrt(config: ModelConfig, version_dir: Path) -> BackendHandle:
    raise invalid(f"model {config.name!r}: the tensorrt backend is not available in this build")


REGISTRY: dict[str, BackendKind] = {
    kind.name: kind
    for kind in (
        BackendKind(
            "onnxruntime", platform="onnxruntime_onnx", model_filename="model.onnx", create=_create_onnx,
            options={
                "intra_op_num_threads": Option(1),
                "inter_op_num_threads": Option(1),
                "graph_optimization_level": Option("all", "choice",
                                                   choices=("disable", "basic", "extended", "all")),
            },
            complete=_complete_onnx,
            # ONNX Runtime's cost per batch is steady: a cheap model may run on the loop's thread.
            inline_ok=True,
        ),
        # A user's Python model that now and then takes seconds would stall every other request if
        # it ran on the loop's thread: never inline.
        BackendKind("python", platform="python", model_filename="model.py", create=_create_python,
                    options={"class": Option("Model", "identifier")}),
        BackendKind("identity", platform="identity", model_filename="", create=_create_identity,
                    inline_ok=True, needs_model_file=False, check=_check_identity, options_table=False),
        BackendKind("tensorrt", platform="tensorrt_plan", model_filename="model.plan", create=_create_tensorrt),
    )
}
DEFAULT_BACKEND = "onnxruntime"


def backend_names() -> tuple[str, ...]:
    """The names of every registered backend, in registry order."""
    return tuple(REGISTRY)


def get(name: str) -> BackendKind:
    """The entry of backend ``name``; PyserveError(INVALID_ARGUMENT) naming the known ones otherwise."""
    kind = REGISTRY.get(name)
    if kind is None:
        raise invalid(f"unknown backend {name!r}: expected one of {', '.join(REGISTRY)}")
    return kind


def kind_of_file(filename: str) -> BackendKind:
    """The backend whose model files end like ``filename`` (``.py`` -> python); the default otherwise."""
    suffix = Path(filename).suffix
    for kind in REGISTRY.values():
        if kind.model_filename and Path(kind.model_filename).suffix == suffix:
            return kind
    return REGISTRY[DEFAULT_BACKEND]


def detect(version_dirs: list[Path]) -> BackendKind:
    """The backend of a model folder with no ``backend`` key: the first kind other than the default
    whose model file one of ``version_dirs`` holds (``model.py`` -> python), else the default."""
    for kind in REGISTRY.values():
        if kind.name == DEFAULT_BACKEND or not kind.model_filename:
            continue
        if any((d / kind.model_filename).is_file() for d in version_dirs):
            return kind
    return REGISTRY[DEFAULT_BACKEND]


def option_tables() -> tuple[str, ...]:
    """The backends that have an options table in config.toml (``[onnxruntime]``, ``[python]``, ...)."""
    return tuple(k.name for k in REGISTRY.values() if k.options_table)


__all__ = ["BackendKind", "Option", "REGISTRY", "backend_names", "detect", "get", "kind_of_file",
           "option_tables"]
