"""Batching on by default where the model allows it, output shapes that exporters declare wrongly, and
the run-time check of every output's shape against the declared one.

The models are built here with onnx.helper: a model with a dynamic first dimension everywhere, one
with a fixed first dimension, one with an optional input, one that declares its ``label`` [1] and
returns [N] (as onnxmltools declares a LightGBM classifier's), one whose output shape depends on an
input's value (it breaks its declaration at run time), and a real LightGBM classifier exported by
onnxmltools when those packages are installed."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import requests
from conftest import Repo, decode, infer, run_service, toml_tensors
from onnx import TensorProto, helper

from pyserve.backends import create_backend
from pyserve.config import ConfigError, config_from_onnx, load_model_config
from pyserve.errors import ErrorKind, PyserveError

X = np.arange(12, dtype=np.float32).reshape(3, 4) - 5


def save(path: Path, nodes: list, inputs: list, outputs: list, initializers: tuple = ()) -> Path:
    """An ONNX model file (opset 17, IR 8) of one graph."""
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def save_double(path: Path, first: Any = "N") -> Path:
    """x FP32 [first, 4] -> y = 2 x, FP32 [first, 4]."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    return save(path, [helper.make_node("Mul", ["x", "two"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, 4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, 4])], (two,))


def save_declares_one(path: Path) -> Path:
    """x FP32 [N, 4] -> label = argmax(x, 1) INT64 [N] declared [1] (as onnxmltools declares a
    LightGBM classifier's label), probabilities = softmax(x) FP32 [N, 4]."""
    return save(path, [helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0),
                       helper.make_node("Softmax", ["x"], ["probabilities"], axis=1)],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                [helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
                 helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])])


def save_truly_one(path: Path) -> Path:
    """As :func:`save_declares_one`, but its label really is [1] whatever the batch (the max over x)."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    return save(path, [helper.make_node("ReduceMax", ["x"], ["m"], axes=[0, 1], keepdims=1),
                       helper.make_node("Squeeze", ["m", "axes"], ["mf"]),
                       helper.make_node("Cast", ["mf"], ["label"], to=TensorProto.INT64),
                       helper.make_node("Softmax", ["x"], ["probabilities"], axis=1)],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                [helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
                 helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])], (axes,))


def save_reshaper(path: Path, offset: int = 0) -> Path:
    """x FP32 [N, 4], s INT64 [K] -> y = reshape(x, s + offset): onnx cannot know y's rank, and the
    model declares none (onnxruntime shows it as a scalar, shape []). A warm-up on zeros works with
    offset 0 (s = [0, 0] keeps x's shape) and fails with offset 1."""
    one = helper.make_tensor("offset", TensorProto.INT64, [], [offset])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["s", "offset"], ["s1"]), helper.make_node("Reshape", ["x", "s1"], ["y"])],
        "reshape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                    helper.make_tensor_value_info("s", TensorProto.INT64, ["K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [one]),
        opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # no onnx.checker: it wants a shape on every graph output
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def save_slicer(path: Path) -> Path:
    """x FP32 [1, 4], k INT64 [1] -> y = x[:, :k], declared [1, 2]: it keeps its declaration for k = 2
    only (a model that breaks its own declaration at run time)."""
    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    return save(path, [helper.make_node("Slice", ["x", "zero", "k", "one"], ["y"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                 helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], (zero, one))


def save_optional(path: Path) -> Path:
    """x FP32 [N, 4], bias optional(tensor(float)) [N, 4] -> y = x + (bias or 10), FP32 [N, 4]."""
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 4]))
    then_g = helper.make_graph([helper.make_node("OptionalGetElement", ["bias"], ["b1"])], "then", [],
                               [helper.make_tensor_value_info("b1", TensorProto.FLOAT, None)])
    ten = helper.make_tensor("c", TensorProto.FLOAT, [], [10.0])
    else_g = helper.make_graph([helper.make_node("Constant", [], ["b2"], value=ten)], "else", [],
                               [helper.make_tensor_value_info("b2", TensorProto.FLOAT, None)])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("OptionalHasElement", ["bias"], ["has"]),
         helper.make_node("If", ["has"], ["b"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Add", ["x", "b"], ["y"])], "opt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_value_info("bias", opt)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# A Python model batched 4 at a time that breaks its declared shape [2] when it is sent a negative value.
BREAKING_MODEL = """
class Model:
    def infer(self, inputs):
        x = inputs["x"]
        return {"y": x[:, :1] if (x < 0).any() else x}
"""
BREAKING_CONFIG = 'backend = "python"\nmax_batch_size = 4\n' + toml_tensors("inputs", [("x", "FP32", [2])]) \
    + toml_tensors("outputs", [("y", "FP32", [2])])


def label_config(shape: list[int]) -> str:
    """``[[outputs]]`` of config.toml giving the INT64 output ``label`` this shape."""
    return toml_tensors("outputs", [("label", "INT64", shape)])


def lightgbm_model(path: Path) -> Any:
    """A LightGBM classifier (3 classes) exported by onnxmltools to ``path`` (input x FP32 [N, 4]); the
    classifier, or a skip when lightgbm or onnxmltools is not installed."""
    lightgbm = pytest.importorskip("lightgbm")
    onnxmltools = pytest.importorskip("onnxmltools")
    from onnxmltools.convert.common.data_types import FloatTensorType

    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 4)).astype(np.float32)
    target = (data[:, 0] > 0).astype(int) + (data[:, 1] > 0)
    clf = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(data, target)
    model = onnxmltools.convert_lightgbm(clf, initial_types=[("x", FloatTensorType([None, 4]))],
                                         zipmap=False, target_opset=15)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return clf


@pytest.fixture(scope="module")
def served(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server over a repository of every case, none with a config unless the case needs one."""
    repo = Repo(tmp_path_factory.mktemp("batchdefault") / "models")
    save_double(repo.model_dir("auto") / "1" / "model.onnx")
    save_double(repo.model_dir("fixed") / "1" / "model.onnx", first=1)
    save_double(repo.model_dir("off") / "1" / "model.onnx")
    repo.config("off", "max_batch_size = 0\n")
    save_optional(repo.model_dir("opt") / "1" / "model.onnx")
    save_declares_one(repo.model_dir("label1") / "1" / "model.onnx")
    for name, config in [("corrected", label_config([-1])),
                         ("corrected4", "max_batch_size = 4\n" + label_config([])),
                         ("wrong", label_config([-1, 2]))]:
        save_declares_one(repo.model_dir(name) / "1" / "model.onnx")
        repo.config(name, config)
    save_slicer(repo.model_dir("slicer") / "1" / "model.onnx")
    repo.python("pybreaks", BREAKING_MODEL, BREAKING_CONFIG)
    return serve_module([repo.root], wait_ready=False), repo.root  # "wrong" is refused: not ready


def config_of(server: Any, model: str, fmt: str = "pyserve") -> dict:
    resp = requests.get(f"{server.url}/v2/models/{model}/config?format={fmt}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def log_lines(server: Any, model: str) -> list[str]:
    """The server's log lines about model ``model`` (they name it as model 'NAME')."""
    return [line for line in server.log().splitlines() if f"model '{model}'" in line]


def index(server: Any) -> dict[str, dict]:
    rows = requests.post(f"{server.url}/v2/repository/index", json={}, timeout=10).json()
    return {row["name"]: row for row in rows}


# ---------------------------------------------------------------------------------------------
# Batching on by default

def test_dynamic_first_dimension_batches_by_default(served: Any) -> None:
    server, root = served
    own = config_of(server, "auto")
    assert own["max_batch_size"] == 32 and own["auto_completed"] == ["inputs", "outputs", "max_batch_size"]
    assert own["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [4]}]
    triton = config_of(server, "auto", "triton")
    assert triton["max_batch_size"] == 32 and "dynamic_batching" in triton
    # One INFO line per load says so, why, and how to turn it off.
    lines = [line for line in log_lines(server, "auto") if "batching" in line]
    assert len(lines) == 1 and " INFO " in lines[0], lines
    model_file = root / "auto" / "1" / "model.onnx"
    assert (f"model 'auto': dynamic batching on, max_batch_size 32 (auto-completed: the first dimension of "
            f"every input and output of {model_file} is dynamic); to serve it without batching set "
            f"max_batch_size = 0 in {root / 'auto' / 'config.toml'}") in lines[0]
    _, out = decode(infer(server.url, "auto", "binary", {"x": X}))
    np.testing.assert_array_equal(out["y"], 2 * X)


def test_a_request_over_the_default_maximum_says_where_it_comes_from(served: Any) -> None:
    server, _ = served
    resp = infer(server.url, "auto", "json", {"x": np.zeros((33, 4), np.float32)})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "batch of 33 samples (its first dimension) exceeds max_batch_size 32" in error
    assert "max_batch_size 32 is pyserve's default for a model whose first dimension is dynamic" in error
    assert "--default-max-batch-size" in error
    decode(infer(server.url, "auto", "json", {"x": np.zeros((32, 4), np.float32)}))


def test_fixed_first_dimension_does_not_batch(served: Any) -> None:
    server, root = served
    own = config_of(server, "fixed")
    assert own["max_batch_size"] == 0 and own["auto_completed"] == ["inputs", "outputs"]
    assert own["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]
    assert "dynamic_batching" not in config_of(server, "fixed", "triton")
    lines = [line for line in log_lines(server, "fixed") if "batching" in line]
    model_file = root / "fixed" / "1" / "model.onnx"
    assert len(lines) == 1 and (
        f"model 'fixed': served without batching (max_batch_size 0): input 'x' of {model_file} has shape "
        "[1, 4], whose first dimension is not dynamic") in lines[0]


def test_an_explicit_zero_keeps_batching_off(served: Any) -> None:
    server, _ = served
    own = config_of(server, "off")
    assert own["max_batch_size"] == 0 and own["auto_completed"] == ["inputs", "outputs"]
    assert own["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert not [line for line in log_lines(server, "off") if "batching" in line]
    _, out = decode(infer(server.url, "off", "json", {"x": np.zeros((100, 4), np.float32)}))
    assert out["y"].shape == (100, 4)


def test_an_optional_input_keeps_batching_off(served: Any) -> None:
    server, _ = served
    own = config_of(server, "opt")
    assert own["max_batch_size"] == 0 and own["inputs"][1]["optional"] is True
    assert any("served without batching (max_batch_size 0): input(s) 'bias'" in line
               and "are optional" in line for line in log_lines(server, "opt"))


# ---------------------------------------------------------------------------------------------
# Output shapes declared wrongly

def test_a_label_declared_one_but_following_the_batch_is_served_as_dynamic(served: Any) -> None:
    server, root = served
    own = config_of(server, "label1")
    assert own["max_batch_size"] == 32
    assert own["outputs"] == [{"name": "label", "datatype": "INT64", "shape": []},
                              {"name": "probabilities", "datatype": "FP32", "shape": [4]}]
    meta = requests.get(f"{server.url}/v2/models/label1", timeout=10).json()
    assert [o["shape"] for o in meta["outputs"]] == [[-1], [-1, 4]]
    warnings = [line for line in log_lines(server, "label1") if " WARNING " in line]
    assert len(warnings) == 1 and (
        f"model 'label1': {root / 'label1' / '1' / 'model.onnx'} declares output 'label' with shape [1] but "
        "a warm-up run on zeros (a batch of 2 samples) returned shape [2]: serving it with shape [-1]"
    ) in warnings[0]
    for protocol in ("json", "binary", "msgpack"):
        _, out = decode(infer(server.url, "label1", protocol, {"x": X}))
        np.testing.assert_array_equal(out["label"], X.argmax(axis=1))


def test_a_config_may_correct_a_declared_output_shape(served: Any) -> None:
    server, root = served
    own = config_of(server, "corrected")  # label [-1], full shapes: batching auto-completed
    assert own["max_batch_size"] == 32 and own["auto_completed"] == ["inputs", "max_batch_size"]
    assert own["outputs"] == [{"name": "label", "datatype": "INT64", "shape": []}]
    model_file = root / "corrected" / "1" / "model.onnx"
    assert any(f"output 'label' served with shape [-1] (the batch dimension first) as configured "
               f"({model_file} declares [1]; a warm-up run confirmed it)" in line
               for line in log_lines(server, "corrected"))
    assert config_of(server, "corrected4")["max_batch_size"] == 4
    for model in ("corrected", "corrected4"):
        _, out = decode(infer(server.url, model, "binary", {"x": X}))
        assert list(out) == ["label"]
        np.testing.assert_array_equal(out["label"], X.argmax(axis=1))


def test_a_wrong_correction_is_refused_naming_every_shape(served: Any) -> None:
    server, root = served
    row = index(server)["wrong"]
    assert row["state"] == "UNAVAILABLE"
    # Refused: not said to batch.
    assert not [line for line in log_lines(server, "wrong") if "batching" in line]
    model_file = root / "wrong" / "1" / "model.onnx"
    assert row["reason"] == (
        f"{root / 'wrong' / 'config.toml'}: outputs[0].shape: 'label' is configured as [-1, 2] (the batch "
        f"dimension first) but {model_file} declares [1], and a warm-up run on zeros (a batch of 2 samples) "
        "returned shape [2], which does not fit the configured one; state the shape the model returns")


def test_a_wrong_correction_without_batching_is_refused(tmp_path: Path) -> None:
    save_declares_one(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.toml").write_text("max_batch_size = 0\n" + label_config([3]))
    model_file = tmp_path / "m" / "1" / "model.onnx"
    with pytest.raises(ConfigError, match=re.escape(
            f"outputs[0].shape: 'label' is configured as [3] but {model_file} declares [1], and a warm-up "
            "run on zeros (a batch of 2 samples) returned shape [2], which does not fit")):
        load_model_config(tmp_path / "m")
    (tmp_path / "m" / "config.toml").write_text("max_batch_size = 0\n" + label_config([-1]))
    config = load_model_config(tmp_path / "m")
    assert config.max_batch_size == 0 and config.outputs[0].shape == (-1,)


def test_each_version_is_checked_against_the_corrected_shape(tmp_path: Path) -> None:
    """The newest version's label follows the batch; version 1's label really is [1]: version 1 is
    refused, naming its file and the shapes, and version 2 loads."""
    save_truly_one(tmp_path / "m" / "1" / "model.onnx")
    save_declares_one(tmp_path / "m" / "2" / "model.onnx")
    (tmp_path / "m" / "config.toml").write_text("[version_policy]\nall = true\n")
    config = load_model_config(tmp_path / "m")
    assert config.max_batch_size == 32 and config.outputs[0].shape == ()
    create_backend(config, tmp_path / "m" / "2")
    model_file = tmp_path / "m" / "1" / "model.onnx"
    with pytest.raises(ConfigError, match=re.escape(
            f"'label' is configured as [-1] (the batch dimension first) but {model_file} declares [1], and a "
            "warm-up run on zeros (a batch of 2 samples) returned shape [1]")):
        create_backend(config, tmp_path / "m" / "1")


def test_an_output_that_does_not_follow_the_batch_keeps_its_declaration(tmp_path: Path) -> None:
    """A label that really is [1] is no batch output: its declaration stands, and the model, whose
    outputs do not all follow the batch, is served without batching."""
    path = save_truly_one(tmp_path / "m" / "1" / "model.onnx")
    config = load_model_config(tmp_path / "m")
    assert config.max_batch_size == 0 and config.outputs[0].shape == (1,)
    single = config_from_onnx("m", path)
    assert single.max_batch_size == 0 and single.outputs[0].shape == (1,)


def test_an_output_declared_without_dimensions_gets_the_rank_a_warm_up_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An output whose rank onnx cannot know comes as shape []: one warm-up run gives its rank (every
    dimension dynamic). When the warm-up fails the declaration is kept, with a warning, and a request
    whose output breaks it is an INTERNAL error naming both shapes."""
    works = save_reshaper(tmp_path / "works" / "1" / "model.onnx")
    (tmp_path / "works" / "config.toml").write_text("max_batch_size = 0\n")
    config = load_model_config(tmp_path / "works")
    assert config.outputs[0].shape == (-1, -1)
    assert f"{works} declares output 'y' with shape [] but a warm-up run on zeros (a batch of 2 samples) " \
           "returned shape [2, 4]: serving it with shape [-1, -1]" in caplog.text
    fails = save_reshaper(tmp_path / "fails" / "1" / "model.onnx", offset=1)
    (tmp_path / "fails" / "config.toml").write_text("max_batch_size = 0\n")
    caplog.clear()
    config = load_model_config(tmp_path / "fails")
    assert config.outputs[0].shape == ()
    assert f"model 'fails': {fails}: could not check the declared shapes of output(s) 'y' [] by a warm-up " \
           "run on zeros (a batch of 2 samples), so they are served as declared: " in caplog.text

    async def body(service: Any, errors: Any) -> None:
        from pyserve.protocol import InferRequest

        x = np.zeros((3, 4), np.float32)
        request = InferRequest({"x": x, "s": np.array([2, 6], np.int64)})
        assert (await service.infer("works", None, request)).outputs["y"].shape == (2, 6)
        request = InferRequest({"x": x, "s": np.array([0, 11], np.int64)})  # + 1: reshaped to [1, 12]
        with pytest.raises(PyserveError) as err:
            await service.infer("fails", None, request)
        assert err.value.kind is ErrorKind.INTERNAL and err.value.message == (
            "model 'fails' version '1': output 'y': the model returned shape [1, 12] but declares []")

    run_service(tmp_path, body)


def test_an_output_whose_first_dimension_is_named_apart_from_the_batch_must_follow_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The row indices of x's non-zero values, [M, 2], beside x [N, 4]: a dynamic first dimension that
    is not the batch (batched, each request would get a 500). One warm-up run shows it (0 rows for
    zeros), and the model is served without batching. An output named 'B' that does follow the
    batch is batched."""
    caplog.set_level(logging.INFO, logger="pyserve.backends.onnx")
    nonzero = save(tmp_path / "nz" / "1" / "model.onnx",
                   [helper.make_node("NonZero", ["x"], ["idx"]), helper.make_node("Transpose", ["idx"], ["nz"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("nz", TensorProto.INT64, ["M", 2])])
    config = load_model_config(tmp_path / "nz")
    assert config.max_batch_size == 0 and config.outputs[0].shape == (-1, 2)
    assert (f"model 'nz': served without batching (max_batch_size 0): {nonzero}: output 'nz' has a first "
            "dimension named 'M' (the inputs': N), and a warm-up run on zeros (a batch of 2 samples) returned "
            "shape [0, 2], so it is not the batch") in caplog.text
    assert np.asarray(create_backend(config, nonzero.parent)({"x": X})["nz"]).shape == (np.count_nonzero(X), 2)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    save(tmp_path / "named" / "1" / "model.onnx", [helper.make_node("Mul", ["x", "two"], ["y"])],
         [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], (two,))
    assert load_model_config(tmp_path / "named").max_batch_size == 32


def test_the_server_default_can_be_changed_or_turned_off(tmp_path: Path) -> None:
    save_double(tmp_path / "m" / "1" / "model.onnx")
    assert load_model_config(tmp_path / "m", default_max_batch_size=8).max_batch_size == 8
    off = load_model_config(tmp_path / "m", default_max_batch_size=0)
    assert off.max_batch_size == 0 and off.auto_completed == ("inputs", "outputs")
    path = tmp_path / "m" / "1" / "model.onnx"
    assert config_from_onnx("m", path).max_batch_size == 32
    assert config_from_onnx("m", path, default_max_batch_size=0).max_batch_size == 0
    assert config_from_onnx("m", path, max_batch_size=0).max_batch_size == 0
    assert config_from_onnx("m", path, max_batch_size=4).auto_completed == ("inputs", "outputs")


def test_the_command_line_default_is_the_config_default() -> None:
    from pyserve import cli, config

    assert cli.DEFAULT_MAX_BATCH_SIZE == config.DEFAULT_MAX_BATCH_SIZE  # repeated so the CLI starts light


@pytest.mark.parametrize("args, message", [
    (["--preferred-batch-sizes", "4,64"],
     "--preferred-batch-sizes: each size must be at most --default-max-batch-size (32), got 64"),
    (["--default-max-batch-size", "8", "--preferred-batch-sizes", "4,16"],
     "--preferred-batch-sizes: each size must be at most --default-max-batch-size (8), got 16"),
])
def test_preferred_sizes_over_the_default_maximum_are_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        args: list[str], message: str) -> None:
    from pyserve import cli
    from pyserve.server import app

    monkeypatch.setattr(app, "run", lambda settings: pytest.fail(f"the server would start: {settings}"))
    path = save_double(tmp_path / "m.onnx")
    assert cli.main(["serve", "--model", f"m={path}", *args]) == cli.EXIT_REFUSED
    assert capsys.readouterr().err.strip() == f"pyserve serve: {message}"
    with pytest.raises(SystemExit):  # argparse's usage error: exit status 2
        cli.main(["serve", "--model", f"m={path}", "--default-max-batch-size", "-1"])


def test_flags_set_the_default_for_repository_and_single_file_models(serve: Any, tmp_path: Path) -> None:
    path = save_double(tmp_path / "repo" / "auto" / "1" / "model.onnx")
    server = serve([tmp_path / "repo", "--model", f"single={path}", "--default-max-batch-size", "8"])
    assert [config_of(server, m)["max_batch_size"] for m in ("auto", "single")] == [8, 8]
    assert any("max_batch_size 8 (auto-completed" in line and "give --max-batch-size 0" in line
               for line in log_lines(server, "single"))
    server.stop()
    server = serve([tmp_path / "repo", "--model", f"single={path}", "--default-max-batch-size", "0"])
    assert [config_of(server, m)["max_batch_size"] for m in ("auto", "single")] == [0, 0]
    server.stop()
    server = serve(["--model", f"single={path}", "--max-batch-size", "0"])
    assert config_of(server, "single")["max_batch_size"] == 0


# ---------------------------------------------------------------------------------------------
# The run-time check: a model that breaks its declaration fails that batch, and the server goes on

def test_an_onnx_model_breaking_its_declaration_is_a_500_and_the_next_request_is_served(served: Any) -> None:
    server, _ = served
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    _, out = decode(infer(server.url, "slicer", "json", {"x": x, "k": np.array([2], np.int64)}))
    np.testing.assert_array_equal(out["y"], x[:, :2])
    resp = infer(server.url, "slicer", "json", {"x": x, "k": np.array([3], np.int64)})
    assert resp.status_code == 500
    assert resp.json()["error"] == ("model 'slicer' version '1': output 'y': the model returned shape [1, 3] "
                                    "but declares [1, 2]")
    _, out = decode(infer(server.url, "slicer", "binary", {"x": x, "k": np.array([2], np.int64)}))
    np.testing.assert_array_equal(out["y"], x[:, :2])


def test_a_python_model_breaking_its_declaration_in_a_batch_is_a_500(served: Any) -> None:
    server, _ = served
    resp = infer(server.url, "pybreaks", "json", {"x": np.array([[-1, 2]], np.float32)})
    assert resp.status_code == 500
    assert resp.json()["error"] == (
        "model 'pybreaks' version '1': output 'y': the model returned shape [1, 1] for a batch of 1 sample "
        "but declares [-1, 2] (the batch dimension first)")
    x = np.array([[1, 2], [3, 4]], np.float32)
    _, out = decode(infer(server.url, "pybreaks", "json", {"x": x}))
    np.testing.assert_array_equal(out["y"], x)


def test_the_core_checks_rank_and_fixed_dims_of_each_output() -> None:
    """In-process through the core: a wrong rank and a wrong fixed dimension are INTERNAL errors
    naming the output; right shapes pass."""
    from pyserve import _core
    from pyserve.errors import error_from_core

    def backend(batch: dict) -> dict:
        x = batch["x"]
        mode = int(x[0, 0])
        y = {0: x, 1: x[:, :, None], 2: x[:, :1]}[mode]
        return {"y": np.ascontiguousarray(y)}

    cq = _core.CompletionQueue()
    options = _core.SchedulerOptions(model_name="m", model_version="1", inputs=[("x", "FP32", [2], False)],
                                     outputs=[("y", "FP32", [2], False)], max_batch_size=4)
    sched = _core.Scheduler(options, backend, cq)
    got = []
    for key, mode in enumerate((0, 1, 2, 0)):
        sched.submit({"x": np.array([[mode, 7]], np.float32)}, key)
        while len(got) <= key:
            got += [(code, message) for _, code, message, *_ in cq.drain()]
    sched.stop()
    errors = [error_from_core(code, message) if code else None for code, message in got]
    assert errors[0] is None and errors[3] is None
    assert errors[1].kind is ErrorKind.INTERNAL
    assert "output 'y': the model returned shape [1, 2, 1]" in errors[1].message
    assert errors[2].kind is ErrorKind.INTERNAL
    assert "returned shape [1, 1] for a batch of 1 sample" in errors[2].message


# ---------------------------------------------------------------------------------------------
# A real exporter: LightGBM through onnxmltools (skipped when they are not installed)

def test_lightgbm_classifier_from_onnxmltools_is_served_batched(serve: Any, tmp_path: Path) -> None:
    clf = lightgbm_model(tmp_path / "repo" / "lgbm" / "1" / "model.onnx")
    server = serve([tmp_path / "repo"])
    own = config_of(server, "lgbm")
    assert own["max_batch_size"] == 32
    assert {o["name"]: o["shape"] for o in own["outputs"]} == {"label": [], "probabilities": [3]}
    assert any("declares output 'label' with shape [1]" in line for line in log_lines(server, "lgbm"))
    rows = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    for protocol in ("json", "binary", "msgpack"):
        _, out = decode(infer(server.url, "lgbm", protocol, {"x": rows}))
        np.testing.assert_array_equal(out["label"], clf.predict(rows))
        np.testing.assert_allclose(out["probabilities"], clf.predict_proba(rows), rtol=1e-5, atol=1e-6)
