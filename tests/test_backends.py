"""Backends: ONNX Runtime (numbers, BYTES), Python model files, identity, dispatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from pyserve import _core
from pyserve.backends import Backend, create_backend
from pyserve.backends.onnx import OnnxBackend
from pyserve.backends.python import PythonBackend
from pyserve.config import ConfigError, ModelConfig, TensorSpec, config_from_onnx, load_model_config
from pyserve.errors import ErrorKind, PyserveError


def save_linear(path: Path, rng: np.random.Generator) -> Path:
    """y = relu(x @ W + b) with x: [N, 8] FP32, y: [N, 3]."""
    w = rng.standard_normal((8, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def save_concat_strings(path: Path) -> Path:
    """y = x + x element-wise on strings (StringConcat, opset 20); x: [N] STRING."""
    graph = helper.make_graph(
        [helper.make_node("StringConcat", ["x", "x"], ["y"])], "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def test_onnx_backend_matches_a_direct_session(tmp_path: Path) -> None:
    model_dir = tmp_path / "linear"
    onnx_path = save_linear(model_dir / "1" / "model.onnx", np.random.default_rng(0))
    (model_dir / "config.toml").write_text(
        "max_batch_size = 16\n[onnxruntime]\ngraph_optimization_level = 'basic'\n")
    config = load_model_config(model_dir)
    backend = create_backend(config, model_dir / "1")
    assert isinstance(backend, OnnxBackend) and isinstance(backend, Backend)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    out = backend({"x": x})
    direct = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    assert list(out) == ["y"]
    assert out["y"].shape == (5, 3) and out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], direct, rtol=1e-6)
    assert (out["y"] > 0).any()  # the numbers are not all relu'd away
    backend.close()
    with pytest.raises(PyserveError) as info:
        backend({"x": x})
    assert info.value.kind is ErrorKind.UNAVAILABLE


def test_onnx_backend_bad_input_is_invalid_argument(tmp_path: Path) -> None:
    onnx_path = save_linear(tmp_path / "m.onnx", np.random.default_rng(0))
    backend = create_backend(config_from_onnx("m", onnx_path), tmp_path)
    with pytest.raises(PyserveError) as info:
        backend({"x": np.zeros((2, 5), np.float32)})
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "x [2, 5]" in info.value.message and "invalid dimensions for input: x" in info.value.message


def test_onnx_backend_bytes(tmp_path: Path) -> None:
    onnx_path = save_concat_strings(tmp_path / "s.onnx")
    backend = create_backend(config_from_onnx("s", onnx_path, max_batch_size=4), tmp_path)
    out = backend({"x": np.array([b"ab", "é".encode(), b""], dtype=object)})["y"]
    assert out.dtype == object and out.shape == (3,)
    assert out.tolist() == [b"abab", "éé".encode(), b""]


def test_onnx_backend_checks_each_version_against_the_config(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    save_linear(tmp_path / "m" / "2" / "model.onnx", rng)
    save_concat_strings(tmp_path / "m" / "1" / "model.onnx")
    config = load_model_config(tmp_path / "m")  # read off version 2
    with pytest.raises(ConfigError, match="datatype") as info:
        create_backend(config, tmp_path / "m" / "1")
    assert str(tmp_path / "m" / "1" / "model.onnx") in info.value.message


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    x, y = TensorSpec("x", "FP32", (1,)), TensorSpec("y", "FP32", (1,))
    config = ModelConfig("m", "onnxruntime", (x,), (y,))
    with pytest.raises(PyserveError, match="no such model file") as info:
        create_backend(config, tmp_path / "1")
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT


def python_config(max_batch_size: int = 4, **kw: object) -> ModelConfig:
    return ModelConfig(
        "pm", "python",
        (TensorSpec("x", "FP32", (2,)),),
        (TensorSpec("y", "FP32", (2,)), TensorSpec("label", "BYTES", ())),
        max_batch_size=max_batch_size, **kw,  # type: ignore[arg-type]
    )


MODEL_PY = '''
import numpy as np
SCALE = {scale}
class Model:
    def __init__(self, config, version_dir):
        self.name = config.name
        self.version = version_dir.name
        self.closed = False
    def infer(self, inputs):
        x = inputs["x"]
        return {{"y": x * SCALE, "label": np.array([self.version] * len(x))}}
    def close(self):
        global CLOSED
        CLOSED = True
'''


def write_version(model_dir: Path, version: int, source: str, filename: str = "model.py") -> Path:
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / filename).write_text(source)
    return version_dir


def test_python_backend_runs_a_batch_and_versions_do_not_clash(tmp_path: Path) -> None:
    v1 = write_version(tmp_path, 1, MODEL_PY.format(scale=2.0))
    v2 = write_version(tmp_path, 2, MODEL_PY.format(scale=10.0))
    config = python_config()
    b1, b2 = create_backend(config, v1), create_backend(config, v2)
    assert isinstance(b1, PythonBackend)
    x = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    out1, out2 = b1({"x": x}), b2({"x": x})
    np.testing.assert_array_equal(out1["y"], x * 2)
    np.testing.assert_array_equal(out2["y"], x * 10)
    assert out1["y"].dtype == np.float32
    assert out1["label"].tolist() == [b"1"] * 3 and out2["label"].tolist() == [b"2"] * 3
    module = b1._model.infer.__globals__  # the model file's own module
    b1.close()
    assert module["CLOSED"] is True
    b2.close()


def test_python_backend_class_option_and_init_kwargs(tmp_path: Path) -> None:
    source = '''
import numpy as np
class Net:
    def __init__(self, config):
        self.n = config.max_batch_size
    def infer(self, inputs):
        x = inputs["x"].astype(np.float64)  # cast back to FP32 by the backend
        return {"y": x + self.n, "label": np.array([b"a"] * len(x), dtype=object)}
'''
    v = write_version(tmp_path, 1, source, "net.py")
    config = python_config(default_model_filename="net.py", backend_options={"class": "Net"})
    out = create_backend(config, v)({"x": np.zeros((2, 2), np.float32)})
    assert out["y"].dtype == np.float32 and out["y"].tolist() == [[4, 4], [4, 4]]


@pytest.mark.parametrize(
    "result, expected",
    [
        ("[x]", "must return a dict"),
        ('{"y": x}', "output 'label': missing"),
        ('{"y": np.full((2, 2), "a"), "label": x}', "expected FP32"),
        ('{"y": x, "label": x}', "expected BYTES"),
        ('1 / 0', "infer() raised ZeroDivisionError"),
    ],
)
def test_python_backend_bad_output_is_internal(tmp_path: Path, result: str, expected: str) -> None:
    source = ("import numpy as np\nclass Model:\n    def infer(self, inputs):\n"
              f"        x = inputs['x']\n        return {result}\n")
    backend = create_backend(python_config(), write_version(tmp_path, 1, source))
    with pytest.raises(PyserveError) as info:
        backend({"x": np.ones((2, 2), np.float32)})
    assert info.value.kind is ErrorKind.INTERNAL
    assert expected in info.value.message  # the core adds the model and version (tests/test_server.py)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import not_a_module_anywhere\n", "ModuleNotFoundError"),
        ("def broken(:\n", "SyntaxError"),
        ("class Other:\n    pass\n", "no class 'Model'"),
        ("class Model:\n    pass\n", "no infer"),
        ("class Model:\n    def __init__(self):\n        raise RuntimeError('no GPU')\n"
         "    def infer(self, i):\n        return i\n",
         "RuntimeError: no GPU"),
        ("class Model:\n    def __init__(self, weights):\n        pass\n", "weights"),
    ],
)
def test_python_backend_load_failure_is_invalid_argument(tmp_path: Path, source: str, expected: str) -> None:
    v = write_version(tmp_path, 1, source)
    with pytest.raises(PyserveError) as info:
        create_backend(python_config(), v)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert str(v / "model.py") in info.value.message and expected in info.value.message


def test_identity_and_tensorrt_dispatch(tmp_path: Path) -> None:
    config = ModelConfig("id", "identity", (TensorSpec("a", "INT8", (-1,)), TensorSpec("b", "BYTES", ())),
                         (TensorSpec("c", "INT8", (-1,)), TensorSpec("d", "BYTES", ())))
    # The identity backend is the core's own: batches never reach Python.
    assert isinstance(create_backend(config, tmp_path), _core.IdentityBackend)
    trt = ModelConfig("t", "tensorrt", config.inputs, config.outputs)
    with pytest.raises(PyserveError, match="tensorrt backend is not available in this build") as info:
        create_backend(trt, tmp_path)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
