"""Model configuration: parsing, strict validation with messages naming file and key, ONNX inference."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
from onnx import TensorProto, helper, save_model

from pyserve.config import (
    ConfigError,
    DynamicBatching,
    ModelConfig,
    TensorSpec,
    VersionPolicy,
    config_from_onnx,
    load_model_config,
    version_dirs,
)
from pyserve.errors import ErrorKind

FULL = """
backend = "python"
max_batch_size = 32
instance_count = 2
default_model_filename = "net.py"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [64, -1]
[[inputs]]
name = "s"
datatype = "BYTES"
shape = []
[[outputs]]
name = "y"
datatype = "INT64"
shape = [10]
[dynamic_batching]
preferred_batch_sizes = [16, 8]
max_queue_delay_us = 2000
max_queue_size = 1024
default_timeout_us = 500
priority_levels = 2
default_priority_level = 2
[version_policy]
specific = [3, 1]
[python]
class = "Net"
"""

PY_IO = """
backend = "python"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [4]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [4]
"""


def write_model(tmp_path: Path, toml: str | None, name: str = "m") -> Path:
    model_dir = tmp_path / name
    model_dir.mkdir()
    if toml is not None:
        (model_dir / "config.toml").write_text(toml)
    return model_dir


def save_onnx(path: Path, inputs: list[tuple], outputs: list[tuple] | None = None) -> Path:
    """An ONNX model whose outputs are Identity of its inputs; tensors are (name, elem_type, dims)."""
    outputs = outputs or [(f"out_{n}", t, d) for n, t, d in inputs]
    nodes = [helper.make_node("Identity", [i[0]], [o[0]]) for i, o in zip(inputs, outputs)]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def test_full_config_round_trip(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, FULL, "digits")
    config = load_model_config(model_dir)
    source = str(model_dir / "config.toml")
    assert config == ModelConfig(
        name="digits",
        backend="python",
        inputs=(TensorSpec("x", "FP32", (64, -1)), TensorSpec("s", "BYTES", ())),
        outputs=(TensorSpec("y", "INT64", (10,)),),
        max_batch_size=32,
        dynamic_batching=DynamicBatching((8, 16), 2000, 1024, 500, 2, 2),
        instance_count=2,
        version_policy=VersionPolicy("specific", versions=(1, 3)),
        default_model_filename="net.py",
        backend_options={"class": "Net"},
        source=source,
    )
    assert isinstance(config.backend_options, types.MappingProxyType)
    assert config.model_filename == "net.py"
    with pytest.raises(AttributeError):
        config.max_batch_size = 1  # type: ignore[misc]
    # A reload compares the config it reads with the one serving (equal: the running versions stay), so
    # equal configs read twice must compare and hash equal, and any changed field must make them differ.
    again = load_model_config(model_dir)
    assert again == config and hash(again) == hash(config) and {config: "serving"}[again] == "serving"
    for change in ({"max_batch_size": 16}, {"instance_count": 1}, {"backend_options": {"class": "Other"}},
                   {"dynamic_batching": DynamicBatching((8, 16), 2000, 1024, 500, 2, 1)}):
        assert dataclasses.replace(config, **change) != config, change


def test_defaults(tmp_path: Path) -> None:
    config = load_model_config(write_model(tmp_path, PY_IO))
    assert config.max_batch_size == 0
    assert config.instance_count == 1
    assert config.dynamic_batching == DynamicBatching()
    assert config.version_policy == VersionPolicy("latest", latest=1)
    assert config.model_filename == "model.py"
    assert dict(config.backend_options) == {"class": "Model"}


@pytest.mark.parametrize(
    "toml, key, expected",
    [
        (PY_IO.replace('"FP32"', '"FLOAT"', 1), "inputs[0].datatype", "expected one of BOOL, UINT8"),
        (PY_IO.replace("[4]", "[0]", 1), "inputs[0].shape[0]", "expected an integer >= 1 or -1, got 0"),
        (PY_IO.replace("[4]", '["4"]', 1), "inputs[0].shape[0]", "got '4'"),
        (PY_IO.replace("[4]", "[true]", 1), "inputs[0].shape[0]", "got True"),
        ("max_batch = 4\n" + PY_IO, "max_batch", "unknown key (did you mean 'max_batch_size'?)"),
        (PY_IO + "max_batch = 4\n", "outputs[0].max_batch", "unknown key"),
        (PY_IO.replace("datatype", "dtype", 1), "inputs[0].dtype", "unknown key"),
        (PY_IO + "[dynamic_batching]\nmax_delay_us = 1\n", "dynamic_batching.max_delay_us", "unknown key"),
        (PY_IO + "[python]\nclas = 'M'\n", "python.clas", "unknown key"),
        ("max_batch_size = true\n" + PY_IO, "max_batch_size", "expected an integer >= 0, got True"),
        ("instance_count = 0\n" + PY_IO, "instance_count", "expected an integer >= 1, got 0"),
        ("max_batch_size = 2.0\n" + PY_IO, "max_batch_size", "expected an integer"),
        (PY_IO + "[version_policy]\nlatest = 2\nall = true\n", "version_policy", "exactly one of"),
        (PY_IO + "[version_policy]\n", "version_policy", "exactly one of"),
        (PY_IO + "[version_policy]\nall = false\n", "version_policy.all", "expected true"),
        (PY_IO + "[version_policy]\nspecific = []\n", "version_policy.specific", "non-empty"),
        (PY_IO + "[version_policy]\nlatest = 0\n", "version_policy.latest", ">= 1"),
        ("max_batch_size = 8\n" + PY_IO + "[dynamic_batching]\npreferred_batch_sizes = [4, 16]\n",
         "dynamic_batching.preferred_batch_sizes", "1..max_batch_size (8), got 16"),
        ("max_batch_size = 8\n" + PY_IO + "[dynamic_batching]\npreferred_batch_sizes = [4, 4]\n",
         "dynamic_batching.preferred_batch_sizes", "no duplicates"),
        (PY_IO + "[dynamic_batching]\npriority_levels = 2\ndefault_priority_level = 3\n",
         "dynamic_batching.default_priority_level", "1..priority_levels (2), got 3"),
        (PY_IO + "[dynamic_batching]\nmax_queue_size = -1\n", "dynamic_batching.max_queue_size", ">= 0"),
        (PY_IO + '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [1]\n', "inputs[1].name",
         "duplicate tensor name 'x'"),
        (PY_IO.replace("shape = [4]\n", "", 1), "inputs[0].shape", "missing"),
        (PY_IO + "[onnxruntime]\nintra_op_num_threads = 2\n", "onnxruntime", "the backend is 'python'"),
        (PY_IO.replace('"python"', '"torch"'), "backend", "expected one of onnxruntime, python"),
        ('default_model_filename = "../x.py"\n' + PY_IO, "default_model_filename", "plain file name"),
        (PY_IO + "[python]\nclass = 'not a name'\n", "python.class", "Python class name"),
        ('backend = "python"\n', "inputs", "needs [[inputs]] and [[outputs]]"),
        (PY_IO.replace('"python"', '"identity"').replace('"FP32"', '"INT8"', 1), "outputs[0].datatype",
         "needs INT8 (as inputs[0]), got FP32"),
        (PY_IO + "x = = 1\n", "", "invalid TOML"),
    ],
)
def test_rejections_name_file_and_key(tmp_path: Path, toml: str, key: str, expected: str) -> None:
    model_dir = write_model(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_model_config(model_dir)
    message = str(info.value)
    assert message.startswith(str(model_dir / "config.toml") + ": ")
    assert f": {key}: " in message or not key
    assert expected in message
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT


def test_version_policy_select() -> None:
    available = [3, 1, 10, 2]
    assert VersionPolicy().select(available) == [10]
    assert VersionPolicy("latest", latest=2).select(available) == [3, 10]
    assert VersionPolicy("latest", latest=9).select(available) == [1, 2, 3, 10]
    assert VersionPolicy("all").select(available) == [1, 2, 3, 10]
    assert VersionPolicy("specific", versions=(2, 7, 10)).select(available) == [2, 10]
    assert VersionPolicy().select([]) == []


def test_version_dirs(tmp_path: Path) -> None:
    for name in ("2", "10", "1", "0", "01", "abc"):
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file, not a folder")
    assert version_dirs(tmp_path) == [1, 2, 10]
    assert version_dirs(tmp_path / "missing") == []


def test_backend_inferred_python_from_model_py(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, PY_IO.replace('backend = "python"\n', ""))
    (model_dir / "1").mkdir()
    (model_dir / "1" / "model.py").write_text("")
    assert load_model_config(model_dir).backend == "python"


def test_onnx_config_read_off_the_model_without_config_toml(tmp_path: Path) -> None:
    model_dir = tmp_path / "ids"
    save_onnx(model_dir / "1" / "model.onnx", [("a", TensorProto.FLOAT, [2, 3])])
    save_onnx(model_dir / "2" / "model.onnx",
              [("x", TensorProto.FLOAT, ["N", 4]), ("t", TensorProto.STRING, [None]),
               ("k", TensorProto.INT64, [])])
    config = load_model_config(model_dir)
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 0
    # The newest version (2) is read.
    assert config.inputs == (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("t", "BYTES", (-1,)),
                             TensorSpec("k", "INT64", ()))
    assert config.outputs == (TensorSpec("out_x", "FP32", (-1, 4)), TensorSpec("out_t", "BYTES", (-1,)),
                              TensorSpec("out_k", "INT64", ()))
    assert dict(config.backend_options) == {
        "intra_op_num_threads": 1, "inter_op_num_threads": 1, "graph_optimization_level": "all"}


def test_onnx_io_read_off_the_newest_version_the_policy_serves(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "[version_policy]\nspecific = [1]\n")
    save_onnx(model_dir / "1" / "model.onnx", [("a", TensorProto.FLOAT, [2])])
    save_onnx(model_dir / "2" / "model.onnx", [("b", TensorProto.FLOAT, [2])])
    assert load_model_config(model_dir).inputs == (TensorSpec("a", "FP32", (2,)),)


def test_onnx_max_batch_size_strips_the_batch_dim(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "max_batch_size = 16\n")
    save_onnx(model_dir / "1" / "model.onnx", [("x", TensorProto.FLOAT16, ["batch", 4, 5])])
    config = load_model_config(model_dir)
    assert config.max_batch_size == 16
    assert config.inputs == (TensorSpec("x", "FP16", (4, 5)),)
    assert config.outputs == (TensorSpec("out_x", "FP16", (4, 5)),)


def test_onnx_max_batch_size_needs_a_dynamic_first_dim(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "max_batch_size = 16\n")
    onnx_path = save_onnx(model_dir / "1" / "model.onnx", [("x", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(ConfigError, match="no dynamic first") as info:
        load_model_config(model_dir)
    assert str(onnx_path) in str(info.value) and "'x'" in str(info.value)


ONNX_IO = """
max_batch_size = 8
[[inputs]]
name = "x"
datatype = "FP32"
shape = [4]
[[outputs]]
name = "out_x"
datatype = "FP32"
shape = [4]
"""


@pytest.mark.parametrize(
    "toml, key, expected",
    [
        (ONNX_IO, None, None),
        (ONNX_IO.replace("shape = [4]", "shape = [3]", 1), "inputs[0].shape", "'x' has shape [3] but"),
        (ONNX_IO.replace("shape = [4]", "shape = [-1]", 1), "inputs[0].shape", "has [4]"),
        (ONNX_IO.replace("shape = [4]", "shape = [4, 1]", 1), "inputs[0].shape", "has shape [4, 1]"),
        (ONNX_IO.replace('"FP32"', '"FP64"', 1), "inputs[0].datatype", "'x' is FP64 but"),
        (ONNX_IO.replace('name = "x"', 'name = "z"'), "inputs", "input(s) 'x'"),
        (ONNX_IO.replace('"out_x"', '"y"'), "outputs[0].name", "'y' is not an output"),
        (ONNX_IO.replace("max_batch_size = 8", "max_batch_size = 0").replace("[4]", "[-1, 4]"), None, None),
    ],
)
def test_config_must_agree_with_the_onnx_model(tmp_path: Path, toml: str, key: str | None,
                                               expected: str | None) -> None:
    model_dir = write_model(tmp_path, toml)
    onnx_path = save_onnx(model_dir / "1" / "model.onnx", [("x", TensorProto.FLOAT, ["N", 4])])
    if key is None:
        assert load_model_config(model_dir).inputs[0].name == "x"
        return
    with pytest.raises(ConfigError) as info:
        load_model_config(model_dir)
    message = str(info.value)
    assert message.startswith(f"{model_dir / 'config.toml'}: {key}: ")
    assert expected in message and str(onnx_path) in message


def test_onnx_without_model_file_or_io_is_refused(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, None)
    with pytest.raises(ConfigError, match="no version folder holds model.onnx"):
        load_model_config(model_dir)


def test_unloadable_onnx_is_refused(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, None)
    (model_dir / "1").mkdir()
    (model_dir / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ConfigError, match="cannot be loaded by onnxruntime") as info:
        load_model_config(model_dir)
    assert str(model_dir / "1" / "model.onnx") in str(info.value)


def test_config_from_onnx(tmp_path: Path) -> None:
    onnx_path = save_onnx(tmp_path / "net.onnx", [("x", TensorProto.INT32, ["N", 3])])
    config = config_from_onnx("net", onnx_path, max_batch_size=4, instance_count=2,
                              dynamic_batching={"max_queue_delay_us": 100, "preferred_batch_sizes": [4]})
    assert config.name == "net" and config.backend == "onnxruntime"
    assert config.inputs == (TensorSpec("x", "INT32", (3,)),)
    assert config.max_batch_size == 4 and config.instance_count == 2
    assert config.dynamic_batching == DynamicBatching(preferred_batch_sizes=(4,), max_queue_delay_us=100)
    assert config.default_model_filename == "net.onnx" and config.source == str(onnx_path)
    with pytest.raises(ConfigError, match="instance_cnt: unknown key"):
        config_from_onnx("net", onnx_path, instance_cnt=2)
    with pytest.raises(ConfigError, match=r"preferred_batch_sizes: expected sizes in 1..max_batch_size \(0\)"):
        config_from_onnx("net", onnx_path, max_batch_size=0, dynamic_batching={"preferred_batch_sizes": [8]})
    # Without max_batch_size the model's dynamic first dimension gets the default maximum.
    with pytest.raises(ConfigError, match=r"preferred_batch_sizes: expected sizes in 1..max_batch_size \(32\)"):
        config_from_onnx("net", onnx_path, dynamic_batching={"preferred_batch_sizes": [64]})
