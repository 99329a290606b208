"""The ONNX Runtime backend (CPU execution provider), and reading an ONNX model's inputs and outputs.

onnxruntime runs the models; the ``onnx`` package (see onnx_prune.py) cuts graphs down to the served
outputs and says which external data file a graph that failed to load refers to and lacks.

Weights in external data files (``torch.onnx.export`` writes ``model.onnx`` + ``model.onnx.data``)
are read by onnxruntime from the graph's folder, under the name the graph records.

pyserve serves tensors (KServe v2). Exporters also write other ONNX types: skl2onnx classifiers, with
their default options, end in a ZipMap whose ``output_probability`` is ``seq(map(int64,tensor(float)))``.
Such outputs are left out of the served outputs (one log line per model load says which and how to
export them as tensors); an input that is not a servable tensor makes the model unservable. An input
of type ``optional(tensor(T))`` is served as an optional input of type T (``TensorSpec.optional``): a
request may leave it out, and the session then runs without it; such models are served without
batching (max_batch_size 0)."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from pyserve.backends.base import Backend
from pyserve.backends.onnx_prune import (
    EXTERNAL_FOLDER_ENTRY,
    escaping_external_data,
    missing_external_data,
    pruned_model,
)
from pyserve.config import ConfigError, ModelConfig, TensorSpec
from pyserve.datatypes import numpy_dtype
from pyserve.errors import ErrorKind, PyserveError, invalid

log = logging.getLogger("pyserve.backends.onnx")

_ORT_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# onnxruntime reads external data of a model given as bytes from a folder it is told (the session
# config entry EXTERNAL_FOLDER_ENTRY) since 1.21 (microsoft/onnxruntime#23557); older versions would
# look beside the working directory, so models with external data are run whole there.
_ORT_VERSION = tuple(int(p) for p in re.findall(r"\d+", ort.__version__)[:2])
_CUTS_EXTERNAL_DATA = _ORT_VERSION >= (1, 21)
# onnxruntime 1.24 and newer refuse an external data location outside the graph's folder themselves
# ('External data path escapes model directory'); with older ones pyserve checks (reading the graph
# with the onnx package, a cost at each load that newer versions are spared).
_CHECKS_EXTERNAL_DATA_PATHS = _ORT_VERSION >= (1, 24)
_SERVED_TYPES = "tensor of bool, (u)int8/16/32/64, float16, float, double or string"
_ZIPMAP_ADVICE = ("export it without ZipMap: with skl2onnx, to_onnx(model, X, options={'zipmap': False}), "
                  "or options={id(classifier): {'zipmap': False}} for a classifier inside a pipeline; with "
                  "onnxmltools, convert_lightgbm(model, ..., zipmap=False); from any other exporter (CatBoost), "
                  "remove the ZipMap node and make its input a graph output (docs/exporters.md); the "
                  "probabilities then come as an FP32 [N, classes] tensor")


class Tensors(NamedTuple):
    """What pyserve can serve of an ONNX model: its tensor ``inputs`` and ``outputs`` (full shapes,
    dynamic dims as -1), and the outputs it ``left_out`` as ``(name, ONNX type)`` pairs: non-tensor
    types (sequence, map, optional, sparse tensor) and tensors with no KServe datatype."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    left_out: tuple[tuple[str, str], ...] = ()


_OPTIONAL_TENSOR = re.compile(r"optional\((tensor\(\w+\))\)")


def _why(onnx_type: str) -> str:
    """Why a value of ``onnx_type`` cannot travel as a KServe tensor."""
    if onnx_type.startswith("tensor("):
        return f"its ONNX type {onnx_type} has no KServe datatype (pyserve serves a {_SERVED_TYPES})"
    return f"its ONNX type {onnx_type} is not a tensor (pyserve serves tensors only)"


def _output_advice(onnx_type: str) -> str:
    """What to do so that an output of ``onnx_type`` comes out of the model as a servable tensor."""
    if onnx_type.startswith("tensor("):
        return "to serve it, cast it in the model to a served type (e.g. a Cast node to float, FP32)"
    if "map(" in onnx_type:  # a classifier's ZipMap (skl2onnx's default), seq(map(label, tensor(float)))
        return "to get it as a tensor, " + _ZIPMAP_ADVICE
    if onnx_type.startswith("seq("):
        return ("to get it as a tensor, export the model so that this output is one tensor (e.g. a "
                "ConcatFromSequence node on the sequence)")
    if onnx_type.startswith("optional("):
        return "to get it as a tensor, export it as a plain tensor (e.g. an OptionalGetElement node)"
    return "to get it as a tensor, export the model so that this output is a dense tensor"


def left_out_message(name: str, onnx_type: str) -> str:
    """Why output ``name`` of ONNX type ``onnx_type`` is not served, and what to do to serve it."""
    return f"output {name!r} is not served: {_why(onnx_type)}; {_output_advice(onnx_type)}"


def session_tensors(session: ort.InferenceSession, onnx_path: Path | str) -> Tensors:
    """The servable inputs and outputs of a session (full shapes, dynamic dims as -1), and the outputs
    left out (see :class:`Tensors`). An input of ONNX type optional(tensor(T)) is an optional tensor
    input of type T (``TensorSpec.optional``). ConfigError when an input is not a servable tensor, or when no output
    is: pyserve cannot serve such a model. Logs nothing: :func:`read_onnx_tensors` does."""

    def spec(arg: Any, onnx_type: str, optional: bool = False) -> TensorSpec:
        # Symbolic dims come as str, unknown ones as None: both are variable.
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or ()))
        return TensorSpec(arg.name, _ORT_DATATYPES[onnx_type], dims, optional=optional)

    inputs = []
    for arg in session.get_inputs():
        optional = _OPTIONAL_TENSOR.fullmatch(arg.type)
        if optional and optional.group(1) in _ORT_DATATYPES:
            inputs.append(spec(arg, optional.group(1), optional=True))
            continue
        if arg.type not in _ORT_DATATYPES:
            if arg.type.startswith("tensor("):
                todo = "export the model with inputs of a served type (e.g. float, and a Cast node after it)"
            else:
                todo = ("export the model with tensor inputs (e.g. keep a scikit-learn DictVectorizer, which "
                        "takes dicts, out of the exported pipeline and feed the array it makes)")
            raise ConfigError(f"{onnx_path}: input {arg.name!r}: {_why(arg.type)}, so pyserve cannot serve "
                              f"this model; {todo}")
        inputs.append(spec(arg, arg.type))
    outputs, left_out = [], []
    for arg in session.get_outputs():
        if arg.type in _ORT_DATATYPES:
            outputs.append(spec(arg, arg.type))
        else:
            left_out.append((arg.name, arg.type))
    if not outputs:
        raise ConfigError(f"{onnx_path}: no output pyserve can serve: "
                          + "; ".join(left_out_message(n, t) for n, t in left_out))
    return Tensors(inputs, outputs, tuple(left_out))


# onnxruntime's StringNormalizer builds the C++ locale its graph names, en_US.UTF-8 when it names none
# (skl2onnx's text vectorizers name none by default); a host without that locale cannot load the model.
_LOCALE_FAILURE = re.compile(r"Failed to construct locale with name:([^:]+):")


def _load_advice(text: str) -> str:
    """What to do about onnxruntime's refusal ``text`` to load a model, when pyserve knows ("" if not)."""
    found = _LOCALE_FAILURE.search(text)
    if found is None:
        return ""
    locale = found.group(1)
    language, _, charset = locale.partition(".")
    return (f"; the model's StringNormalizer node (skl2onnx's text vectorizers) needs the locale "
            f"{locale!r}, which this host lacks: add it to the host (localedef -i {language} -f "
            f"{charset or 'UTF-8'} {locale}) or export the model with a locale every host has: with "
            "skl2onnx, to_onnx(model, ..., options={TfidfVectorizer: {'locale': 'C.UTF-8'}}) "
            "(or CountVectorizer)")


def open_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """An onnxruntime session of the ONNX file ``path``; ConfigError naming the file when it cannot be
    loaded: an external data location that leaves the graph's folder (checked here with onnxruntime
    older than 1.24, which reads whatever file the graph names), an external data file that is
    missing (named), or onnxruntime's own refusal."""
    escaping = None if _CHECKS_EXTERNAL_DATA_PATHS else escaping_external_data(path)
    if escaping is not None:
        raise ConfigError(f"{path}: cannot be loaded: {escaping}")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        missing = missing_external_data(path)
        if missing is not None:
            raise ConfigError(f"{path}: cannot be loaded: {missing} (onnxruntime: {exc})") from None
        text = str(exc).rstrip()
        raise ConfigError(f"{path}: cannot be loaded by onnxruntime: {text}{_load_advice(text)}") from None


def read_onnx_tensors(onnx_path: Path) -> Tensors:
    """The servable inputs and outputs of an ONNX file (see :func:`session_tensors`); ConfigError naming
    it when it cannot be loaded or served.

    Called once per model load (when its config is read), it logs one warning naming the outputs left
    out, their ONNX types and how to export them as tensors, if the model has any."""
    return _read_model(Path(onnx_path))[1]


def _read_model(onnx_path: Path) -> tuple[ort.InferenceSession, Tensors]:
    """A session of ``onnx_path`` (unoptimized: made to read the I/O and for a warm-up run) and its
    tensors, as :func:`read_onnx_tensors` says."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only reading I/O
    options.log_severity_level = 3
    session = open_session(onnx_path, options)
    tensors = session_tensors(session, onnx_path)
    if tensors.left_out:
        log.warning("%s: serving its tensor outputs only; %s", onnx_path,
                    "; ".join(left_out_message(n, t) for n, t in tensors.left_out))
    return session, tensors


# The batch of a warm-up run: 2 samples, so that an output whose first dimension follows the batch
# is told apart from one of a fixed size 1 (onnxmltools declares a LightGBM classifier's label [1]).
WARMUP_BATCH = 2


def _full_shape(spec: TensorSpec, max_batch_size: int) -> tuple[int, ...]:
    """A config tensor's shape with the batch dimension (-1) in front when batching."""
    return (-1, *spec.shape) if max_batch_size > 0 else spec.shape


def _input_shapes(model_inputs: list[TensorSpec], config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The full shape of each model input as served: the configured one where the config gives one of
    the model's rank (it may narrow a dynamic dimension), else the model's."""
    configured = {s.name: _full_shape(s, config.max_batch_size) for s in config.inputs}
    shapes = {}
    for spec in model_inputs:
        shape = configured.get(spec.name, spec.shape)
        shapes[spec.name] = shape if len(shape) == len(spec.shape) else spec.shape
    return shapes


def warmup_feeds(model_inputs: list[TensorSpec], config: ModelConfig) -> dict[str, np.ndarray]:
    """The inputs of a warm-up run: zeros of each required input's datatype (BYTES: empty strings),
    with :data:`WARMUP_BATCH` for a dynamic first dimension and 1 for any other dynamic one (Triton's
    ``model_warmup`` with ``zero_data`` inputs is the precedent). Optional inputs are left out."""
    feeds = {}
    for spec in model_inputs:
        if spec.optional:
            continue
        shape = _input_shapes([spec], config)[spec.name]
        dims = tuple((WARMUP_BATCH if d == 0 else 1) if n == -1 else n for d, n in enumerate(shape))
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(dims, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(dims, numpy_dtype(spec.datatype))
    return feeds


def warm_up(session: ort.InferenceSession, feeds: dict[str, np.ndarray],
            names: list[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of outputs ``names`` in one run of ``session`` on ``feeds``; raises what onnxruntime
    raises when the run fails."""
    results = session.run(names, feeds)
    return {name: tuple(np.shape(r)) for name, r in zip(names, results)}


def _fits(observed: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a shape a run returned fits a declared one (-1 matches any size)."""
    return len(observed) == len(shape) and all(s == -1 or s == o for o, s in zip(observed, shape))


def _probe_outputs(config: ModelConfig, session: ort.InferenceSession, tensors: Tensors,
                   model_file: Path) -> Tensors:
    """``tensors`` with the output shapes the model declares wrongly corrected by one warm-up run.

    Only outputs read off the model are probed (a config that lists outputs says what they are), and
    only suspect declarations: a fixed first dimension while the first dimension of every input is
    dynamic (onnxmltools declares a LightGBM classifier's ``label`` [1] and returns [N]), or no
    dimension at all (a scalar, or a shape onnx left unknown). An output whose first dimension followed
    the warm-up's batch of :data:`WARMUP_BATCH` is served with a dynamic first dimension; one declared
    without dimensions that returned some is served with as many dynamic ones. When the first dimension
    of every input is dynamic (the model may be batched), every output is checked, for a declaration
    of the wrong rank too: one with a dynamic first dimension that followed the batch with another
    rank is served with the rank returned, every dimension dynamic (CatBoost declares its regressor's
    ``predictions`` [N] and returns [N, 1], which would fail every batched request). Each correction is
    logged as a warning naming the output and both shapes. When the run fails, or an output does not
    follow the batch, the declarations are kept."""
    if config.outputs:
        return tensors
    shapes = _input_shapes(tensors.inputs, config)
    batched = all(shape and shape[0] == -1 for shape in shapes.values())
    suspects = [o for o in tensors.outputs if not o.shape or (batched and o.shape[0] != -1)]
    probed = list(tensors.outputs) if batched else suspects
    if not probed:
        return tensors
    run = "a warm-up run on zeros" + (f" (a batch of {WARMUP_BATCH} samples)" if batched else "")
    try:
        observed = warm_up(session, warmup_feeds(tensors.inputs, config), [o.name for o in probed])
    except Exception as exc:
        # Declarations nothing made suspect are served as declared without a word.
        (log.warning if suspects else log.debug)(
            "model %r: %s: could not check the declared shapes of output(s) %s by %s, so they are served "
            "as declared: %s", config.name, model_file,
            ", ".join(f"{o.name!r} {list(o.shape)}" for o in suspects or probed), run, exc)
        return tensors
    corrected = {}
    for out in probed:
        got = observed[out.name]
        follows = batched and bool(got) and got[0] == WARMUP_BATCH
        if not out.shape and got:
            corrected[out.name] = (-1,) * len(got)
        elif out.shape and follows and out.shape[0] != -1 and len(got) == len(out.shape) \
                and _fits(got[1:], out.shape[1:]):
            corrected[out.name] = (-1, *out.shape[1:])
        elif out.shape and follows and out.shape[0] == -1 and len(got) != len(out.shape):
            corrected[out.name] = (-1,) * len(got)
        else:
            if not _fits(got, out.shape):
                log.warning("model %r: %s declares output %r with shape %s but %s returned shape %s; a "
                            "request whose output breaks the declaration fails (500)", config.name,
                            model_file, out.name, list(out.shape), run, list(got))
            continue
        log.warning("model %r: %s declares output %r with shape %s but %s returned shape %s: serving it "
                    "with shape %s", config.name, model_file, out.name, list(out.shape), run, list(got),
                    list(corrected[out.name]))
    if not corrected:
        return tensors
    return tensors._replace(outputs=[dataclasses.replace(o, shape=corrected.get(o.name, o.shape))
                                     for o in tensors.outputs])


def _batching_off(src: str) -> str:
    """How to serve without batching a model whose config comes from ``src``."""
    if src.endswith("config.toml"):
        return f"set max_batch_size = 0 in {src}"
    if src.endswith(".onnx"):  # pyserve serve --model NAME=PATH
        return "give --max-batch-size 0"
    return "set max_batch_size = 0 in the model's config"


def _first_dim_names(args: list[Any]) -> dict[str, str]:
    """The symbolic name of each onnxruntime NodeArg's first dimension, where it has one (``'N'``,
    ``'batch'``); unnamed dynamic and fixed dimensions are left out."""
    return {a.name: a.shape[0] for a in args if a.shape and isinstance(a.shape[0], str) and a.shape[0]}


def _not_following_the_batch(config: ModelConfig, session: ort.InferenceSession, tensors: Tensors,
                             served: list[str]) -> str | None:
    """Why the first served output whose dynamic first dimension need not be the batch is not; None
    when every one may be. The model's own names decide where it gives them: an output whose first
    dimension has a name that no input's first dimension has (``'M'`` beside ``'N'``: detections,
    a NonZero's count) is checked by one warm-up run of a batch of :data:`WARMUP_BATCH`, and follows
    the batch only if it has that many rows. Unnamed dimensions are taken as the batch (Triton's
    rule); a first dimension the probe corrected was shown to follow the batch (it has no name)."""
    names = _first_dim_names(session.get_inputs())
    outputs = _first_dim_names([o for o in session.get_outputs() if o.name in served])
    suspects = [n for n, name in outputs.items() if name not in names.values()]
    if not suspects:
        return None
    inputs = ", ".join(sorted(set(names.values()))) or "none"
    try:
        observed = warm_up(session, warmup_feeds(tensors.inputs, config), suspects)
    except Exception as exc:
        return (f"output {suspects[0]!r} has a first dimension named {outputs[suspects[0]]!r} (the inputs': "
                f"{inputs}), and a warm-up run on zeros that would show whether it follows the batch "
                f"failed: {exc}")
    for name in suspects:
        got = observed[name]
        if not got or got[0] != WARMUP_BATCH:
            return (f"output {name!r} has a first dimension named {outputs[name]!r} (the inputs': {inputs}), "
                    f"and a warm-up run on zeros (a batch of {WARMUP_BATCH} samples) returned shape "
                    f"{list(got)}, so it is not the batch")
    return None


def _auto_batching(config: ModelConfig, session: ort.InferenceSession, tensors: Tensors,
                   model_file: Path, max_batch_size: int) -> tuple[ModelConfig, str]:
    """``config`` with batching on (``max_batch_size``, the shapes without their batch dimension) when
    the model allows it: no optional input, a dynamic first dimension in every input and served
    output, and every served output's first dimension the batch (see
    :func:`_not_following_the_batch`); and the line to log once the model is accepted, saying whether
    and why, and how to change it."""
    src = config.source or config.name
    served = [("input", s) for s in config.inputs or tensors.inputs]
    served += [("output", s) for s in config.outputs or tensors.outputs]
    optional = [s.name for s in tensors.inputs if s.optional]
    fixed = [(what, s) for what, s in served if not s.shape or s.shape[0] != -1]
    off = f"model {config.name!r}: served without batching (max_batch_size 0): "
    if optional:
        return config, f"{off}input(s) {', '.join(map(repr, optional))} of {model_file} are optional"
    if fixed:
        what, spec = fixed[0]
        return config, (f"{off}{what} {spec.name!r} of {model_file} has shape {list(spec.shape)}, whose "
                        "first dimension is not dynamic; a model exported with a dynamic batch dimension is "
                        f"batched (torch.onnx.export: dynamic_axes={{{spec.name!r}: {{0: 'batch'}}, ...}})")
    outputs = [s.name for what, s in served if what == "output"]
    why = _not_following_the_batch(config, session, tensors, outputs)
    if why is not None:
        return config, f"{off}{model_file}: {why}"
    batched = dataclasses.replace(
        config, max_batch_size=max_batch_size,
        inputs=tuple(dataclasses.replace(s, shape=s.shape[1:]) for s in config.inputs),
        outputs=tuple(dataclasses.replace(s, shape=s.shape[1:]) for s in config.outputs))
    return batched, (f"model {config.name!r}: dynamic batching on, max_batch_size {max_batch_size} "
                     f"(auto-completed: the first dimension of every input and output of {model_file} is "
                     f"dynamic); to serve it without batching {_batching_off(src)} (another value changes "
                     "the limit; --default-max-batch-size changes it for every model whose config sets none)")


def strip_batch_dim(specs: list[TensorSpec], max_batch_size: int, onnx_path: Path | str,
                    what: str) -> tuple[TensorSpec, ...]:
    """Config specs from full model shapes: without the first dim, which must be dynamic, when batching."""
    if max_batch_size == 0:
        return tuple(specs)
    out = []
    for spec in specs:
        if not spec.shape or spec.shape[0] != -1:
            raise ConfigError(
                f"{onnx_path}: {what} {spec.name!r}: max_batch_size is {max_batch_size} but the model's "
                f"shape {list(spec.shape)} has no dynamic first (batch) dimension")
        out.append(dataclasses.replace(spec, shape=spec.shape[1:]))
    return tuple(out)


def check_onnx_model(config: ModelConfig, tensors: Tensors,
                     onnx_path: Path | str) -> list[tuple[int, TensorSpec, TensorSpec]]:
    """Refuse a config whose inputs/outputs disagree with the ONNX model's ``tensors``; return the
    configured outputs whose shape differs from the model's declaration, as ``(index, configured spec,
    model spec)``: such shapes stand when a warm-up run confirms them (:func:`confirm_output_shapes`).

    Every model input must be configured; configured outputs must exist in the model (a subset is
    fine) and be servable (not among ``tensors.left_out``). Names, datatypes, ranks and fixed dims must
    agree (a configured fixed dim may narrow a dynamic model dim, not the other way round); with
    batching, every input's first dimension must be dynamic."""
    src = config.source or config.name
    mismatched = []
    pairs = (("inputs", config.inputs, tensors[0]), ("outputs", config.outputs, tensors[1]))
    for key, specs, model_specs in pairs:
        by_name = {s.name: s for s in model_specs}
        missing = [n for n in by_name if n not in {s.name for s in specs}]
        if key == "inputs" and missing:
            raise ConfigError(f"{src}: inputs: model input(s) {', '.join(map(repr, missing))} of {onnx_path} "
                              "are not configured")
        for i, spec in enumerate(specs):
            at = f"{src}: {key}[{i}]"
            model = by_name.get(spec.name)
            if model is None and key == "outputs" and spec.name in dict(tensors.left_out):
                onnx_type = dict(tensors.left_out)[spec.name]
                raise ConfigError(f"{at}.name: {spec.name!r} is an output of {onnx_path} that pyserve cannot "
                                  f"serve: {_why(onnx_type)}; leave it out of [[outputs]], or "
                                  f"{_output_advice(onnx_type)}")
            if model is None:
                what = "an input" if key == "inputs" else "an output"
                raise ConfigError(f"{at}.name: {spec.name!r} is not {what} of {onnx_path} "
                                  f"(it has {', '.join(map(repr, by_name))})")
            if spec.datatype != model.datatype:
                raise ConfigError(f"{at}.datatype: {spec.name!r} is {spec.datatype} "
                                  f"but {onnx_path} has {model.datatype}")
            if key == "outputs":
                if not _fits(_full_shape(spec, config.max_batch_size), model.shape):
                    mismatched.append((i, spec, model))
                continue
            dims = model.shape
            if config.max_batch_size > 0:
                if not dims or dims[0] != -1:
                    raise ConfigError(f"{src}: max_batch_size: is {config.max_batch_size} but input "
                                      f"{spec.name!r} of {onnx_path} has shape {list(dims)} with no dynamic "
                                      "first (batch) dimension")
                dims = dims[1:]
            if len(spec.shape) != len(dims) or any(m != -1 and c != m for c, m in zip(spec.shape, dims)):
                batch = " (without the batch dimension)" if config.max_batch_size > 0 else ""
                raise ConfigError(f"{at}.shape: {spec.name!r} has shape {list(spec.shape)} but {onnx_path} "
                                  f"has {list(dims)}{batch}")
    return mismatched


def confirm_output_shapes(config: ModelConfig, session: ort.InferenceSession, model_inputs: list[TensorSpec],
                          mismatched: list[tuple[int, TensorSpec, TensorSpec]],
                          onnx_path: Path | str) -> None:
    """Accept configured output shapes that differ from the model's declaration (``mismatched``, from
    :func:`check_onnx_model`) when one warm-up run (:func:`warmup_feeds`) returns outputs of those
    shapes: with batching, a first dimension of the warm-up's batch and the configured rest. ConfigError
    naming the output, the declared, the configured and the returned shape otherwise, or the run's
    error when it fails."""
    src = config.source or config.name
    batching = config.max_batch_size > 0
    first = " (the batch dimension first)" if batching else ""

    def stated(i: int, spec: TensorSpec, model: TensorSpec) -> str:
        # Full shapes, batch dimension included, as the model declares and returns them.
        return (f"{src}: outputs[{i}].shape: {spec.name!r} is configured as "
                f"{list(_full_shape(spec, config.max_batch_size))}{first} but {onnx_path} declares "
                f"{list(model.shape)}")

    run = f"a warm-up run on zeros (a batch of {WARMUP_BATCH} samples)"
    try:
        names = [spec.name for _, spec, _ in mismatched]
        observed = warm_up(session, warmup_feeds(model_inputs, config), names)
    except Exception as exc:
        raise ConfigError(f"{stated(*mismatched[0])}, and {run}, which would have confirmed the configured "
                          f"shape, failed: {exc}") from None
    for i, spec, model in mismatched:
        got = observed[spec.name]
        if not _fits(got, _full_shape(spec, config.max_batch_size)) or (batching and got[0] != WARMUP_BATCH):
            raise ConfigError(f"{stated(i, spec, model)}, and {run} returned shape {list(got)}, which "
                              "does not fit the configured one; state the shape the model returns")


def complete_config(config: ModelConfig, model_file: Path | None,
                    auto_max_batch_size: int = 0) -> ModelConfig:
    """``config`` with what it leaves out read off ``model_file``, and checked against it.

    ``model_file`` is the newest served version's ONNX file (None when no version folder holds one:
    then the config must give both inputs and outputs). The inputs and outputs the config leaves out
    are read off the model, with output shapes the model declares wrongly corrected by a warm-up run
    (:func:`_probe_outputs`). ``auto_max_batch_size`` > 0 (the config sets no max_batch_size): batching
    is turned on with that maximum when the model allows it (:func:`_auto_batching`). Configured output
    shapes that differ from the model's declaration stand when a warm-up run confirms them.
    ``auto_completed`` names what was filled in. Raises ConfigError naming the file and key."""
    src = config.source or config.name
    if model_file is None:
        if config.inputs and config.outputs:
            return config
        folder = Path(src).parent if src.endswith("config.toml") else Path(config.name)
        raise ConfigError(f"{src}: no version folder holds {config.model_filename} to read the inputs "
                          f"and outputs from; add a version folder (e.g. {folder / '1' / config.model_filename}) "
                          "or give [[inputs]] and [[outputs]]")
    session, tensors = _read_model(model_file)
    optional = [s.name for s in tensors.inputs if s.optional]
    if optional and config.max_batch_size > 0:
        raise ConfigError(f"{src}: max_batch_size: is {config.max_batch_size} but input(s) "
                          f"{', '.join(map(repr, optional))} of {model_file} are optional (ONNX type "
                          "optional(tensor)), which pyserve serves without batching; set max_batch_size = 0")
    completed = tuple(key for key, given in (("inputs", config.inputs), ("outputs", config.outputs))
                      if not given)
    tensors = _probe_outputs(config, session, tensors, model_file)
    batching_line = ""
    if auto_max_batch_size > 0:
        config, batching_line = _auto_batching(config, session, tensors, model_file, auto_max_batch_size)
        if config.max_batch_size > 0:
            completed += ("max_batch_size",)
    if not config.inputs:
        config = dataclasses.replace(
            config, inputs=strip_batch_dim(tensors[0], config.max_batch_size, model_file, "input"))
    if not config.outputs:
        config = dataclasses.replace(
            config, outputs=strip_batch_dim(tensors[1], config.max_batch_size, model_file, "output"))
    mismatched = check_onnx_model(config, tensors, model_file)
    if mismatched:
        confirm_output_shapes(config, session, tensors.inputs, mismatched, model_file)
        for _, spec, model in mismatched:
            first = " (the batch dimension first)" if config.max_batch_size > 0 else ""
            shape = list(_full_shape(spec, config.max_batch_size))
            log.info("model %r: output %r served with shape %s%s as configured (%s declares %s; a warm-up "
                     "run confirmed it)", config.name, spec.name, shape, first, model_file, list(model.shape))
    if optional:  # the model says which inputs are optional, whatever config.toml lists
        config = dataclasses.replace(config, inputs=tuple(
            dataclasses.replace(s, optional=s.name in optional) for s in config.inputs))
    if batching_line:  # once the config is accepted: a refused model is not said to batch
        log.info("%s", batching_line)
    return dataclasses.replace(config, auto_completed=completed)


def _pruned_session(name: str, model_path: Path, served: list[str], backend_options: Any,
                    whole: ort.InferenceSession) -> ort.InferenceSession:
    """A session of ``model_path`` cut to the ``served`` outputs, or ``whole`` (the session of the
    whole model) when it cannot be cut. A model whose weights are in external data files is given to
    onnxruntime as bytes with the graph's folder as the folder of its data files (onnxruntime 1.21
    or newer; older ones run it whole)."""
    pruned = pruned_model(model_path, served)
    if pruned is None:
        return whole
    options = _session_options(backend_options)
    if pruned.external_data:
        if not _CUTS_EXTERNAL_DATA:
            log.debug("model %r: %s: weights in external data files and onnxruntime %s: run whole",
                      name, model_path, ort.__version__)
            return whole
        options.add_session_config_entry(EXTERNAL_FOLDER_ENTRY, str(model_path.resolve().parent))
    try:
        session = ort.InferenceSession(pruned.model, options, providers=["CPUExecutionProvider"])
    except Exception:  # the whole model loaded: run it whole rather than refuse it
        log.debug("model %r: %s: the cut graph did not load; run whole", name, model_path, exc_info=True)
        return whole
    log.debug("model %r: %s: computing only its served outputs (%d of %d nodes)",
              name, model_path, pruned.nodes_after, pruned.nodes_before)
    return session


def _session_options(options: Any) -> ort.SessionOptions:
    """ORT session options from a model's ``backend_options``."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(options.get("intra_op_num_threads", 1))
    so.inter_op_num_threads = int(options.get("inter_op_num_threads", 1))
    so.graph_optimization_level = _OPT_LEVELS[options.get("graph_optimization_level", "all")]
    so.log_severity_level = 3  # errors only: warnings about unused initializers etc. are noise in a server
    # Spinning threads wait for work by burning CPU; an idle server must not.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


class OnnxBackend(Backend):
    """Runs an ONNX model with onnxruntime. Numeric inputs are handed to ORT without copies."""

    def __init__(self, config: ModelConfig, model_path: Path) -> None:
        self._name = config.name
        model_path = Path(model_path)
        if not model_path.is_file():
            raise invalid(f"model {config.name!r}: {model_path}: no such model file")
        try:  # each version: versions may differ
            session = open_session(model_path, _session_options(config.backend_options))
        except ConfigError as e:
            raise invalid(f"model {config.name!r}: {e.message}") from None
        served = [o.name for o in config.outputs]
        if not {o.name for o in session.get_outputs()} <= set(served):
            # ORT runs every node whatever a run asks for: cut the graph to the served outputs.
            session = _pruned_session(config.name, model_path, served, config.backend_options, session)
        # Each version is checked: versions of one model may differ, the config holds for all of them.
        tensors = session_tensors(session, model_path)
        mismatched = check_onnx_model(config, tensors, model_path)
        if mismatched:  # output shapes that differ from this version's declaration: one run confirms them
            confirm_output_shapes(config, session, tensors.inputs, mismatched, model_path)
        # The config marks an input optional when the newest version's model does; an older version
        # whose model requires it answers a request that leaves it out as the client's mistake.
        optional_here = {s.name for s in tensors.inputs if s.optional}
        self._required_here = tuple(s.name for s in config.inputs if s.optional and s.name not in optional_here)
        self._session: ort.InferenceSession | None = session
        # Failures of a run are answered and logged by pyserve; ORT's own line per failed run on
        # stderr would let any client flood the log.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        # Whether a run ever succeeded: until one has, a node that fails may be the model's own fault.
        self._answered = False
        self._output_names = [o.name for o in config.outputs]
        self._bytes_inputs = frozenset(i.name for i in config.inputs if i.datatype == "BYTES")
        self._bytes_outputs = frozenset(o.name for o in config.outputs if o.datatype == "BYTES")

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise PyserveError(ErrorKind.UNAVAILABLE, f"model {self._name!r}: backend is closed")
        for name in self._required_here:
            if name not in inputs:
                raise invalid(f"missing input {name!r}: it is optional in the newest version of the model, "
                              "not in this one")
        feeds = inputs
        if self._bytes_inputs:
            feeds = dict(inputs)
            for name in self._bytes_inputs & feeds.keys():
                feeds[name] = _to_str(feeds[name], self._name, name)
        try:
            results = session.run(self._output_names, feeds, self._run_options)
        except Exception as exc:
            raise run_error(exc, feeds, self._answered) from None
        self._answered = True
        out = dict(zip(self._output_names, results))
        for name in self._bytes_outputs:
            out[name] = _to_bytes(out[name])
        return out

    def close(self) -> None:
        """Drop the session (ORT frees its memory and threads)."""
        self._session = None


# ORT's error classes (onnxruntime.capi.onnxruntime_pybind11_state) for a run that failed on its
# inputs: a node could not compute with the values or shapes it was given.
_INPUT_FAILURES = ("InvalidArgument", "Fail", "RuntimeException")
# "/onnxruntime_src/.../reshape_helper.h:84 <C++ signature> <condition> was false. " before the message.
_SOURCE_PREFIX = re.compile(r"^\S+:\d+ .*? was false\. ", re.S)
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def run_error(exc: Exception, feeds: dict[str, np.ndarray], answered: bool = True) -> PyserveError:
    """The PyserveError of a failed ``session.run``.

    The model loaded and was checked against its config, so once it has ``answered`` a run, a run
    that fails while a node computes (two inputs whose dimensions disagree, an index out of range,
    a reshape that does not fit) failed on the request's inputs: INVALID_ARGUMENT, naming the
    inputs and their shapes and keeping ORT's own words without its source path. ORT's own
    INVALID_ARGUMENT (a wrong dimension, an index out of range) is the request's at any time.
    Before the model has answered once, any other node failure (ORT's FAIL) may fail whatever the
    input (a model broken in itself): INTERNAL. Anything else (memory, the execution provider) is
    INTERNAL. The core prefixes the model and version to the message."""
    text = str(exc)
    kind_name = type(exc).__name__
    trusted = answered or kind_name == "InvalidArgument" or "Status Message: " not in text
    if kind_name in _INPUT_FAILURES and "alloc" not in text.lower() and trusted:
        _, found, status = text.partition("Status Message: ")
        if found or kind_name == "InvalidArgument":
            detail = _SOURCE_PREFIX.sub("", status.strip()) if found else _ORT_PREFIX.sub("", text).strip()
            node = re.search(r"while running (\S+) node", text)
            where = f" in its {node.group(1)} node" if node else ""
            shapes = ", ".join(f"{name} {list(np.shape(a))}" for name, a in feeds.items())
            return invalid(f"onnxruntime could not run the model on these inputs ({shapes}){where}: {detail}")
    return PyserveError(ErrorKind.INTERNAL, f"onnxruntime: {text}")


def _to_str(array: np.ndarray, model: str, name: str) -> np.ndarray:
    """Object array of bytes -> str array for ORT (which would str() a bytes object into "b'..'")."""
    array = np.asarray(array)
    if array.dtype.kind == "U":
        return array
    try:
        # Vectorised: object -> fixed-width bytes -> UTF-8 decode, no Python loop per element.
        # (Fixed-width bytes drop trailing NUL bytes of an element.)
        return np.char.decode(array.astype(np.bytes_), "utf-8")
    except (UnicodeDecodeError, TypeError, ValueError) as exc:
        raise invalid(f"model {model!r}: input {name!r}: BYTES elements must be UTF-8 text "
                      f"for this model: {exc}") from None


def _to_bytes(array: np.ndarray) -> np.ndarray:
    """ORT string output (object array of str) -> object array of UTF-8 bytes."""
    if array.size == 0:
        return np.empty(array.shape, dtype=object)
    return np.char.encode(array.astype(np.str_), "utf-8").astype(object)
