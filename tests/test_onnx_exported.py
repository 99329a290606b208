"""ONNX models as current exporters write them: weights in an external data file, optional inputs.

``torch.onnx.export`` in current PyTorch writes ``model.onnx`` and ``model.onnx.data`` (ONNX external
data: initializers whose ``location`` names a file relative to the graph's folder). torch is not
needed: the models are built with onnx.helper and saved with
``onnx.save_model(..., save_as_external_data=True, all_tensors_to_one_file=True,
location="model.onnx.data", size_threshold=0)``, which writes the same layout.

Inputs of ONNX type ``optional(tensor(float))`` are marked ``"optional": true`` and may be left out
of a request (models with such inputs are served without batching).

Answers are compared with onnxruntime run in-process on the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
from conftest import Repo, Server, decode, infer, toml_tensors
from onnx import TensorProto, helper, numpy_helper

from pyserve.backends import create_backend
from pyserve.backends.onnx import read_onnx_tensors
from pyserve.backends.onnx_prune import external_data_files, missing_external_data
from pyserve.config import ConfigError, ModelConfig, TensorSpec, config_from_onnx, load_model_config
from pyserve.errors import ErrorKind, PyserveError

DATA = "model.onnx.data"
W = np.arange(16, dtype=np.float32).reshape(4, 4) / 8 - 1


def save_exported(vdir: Path, graph_name: str = "model.onnx", data_name: str = DATA,
                  failing_z: bool = False) -> Path:
    """Write ``vdir/graph_name`` and its weights in ``vdir/data_name`` as torch.onnx.export does.

    x: FP32 [N, 4] -> y = x @ W + b (W, b in the data file), z = Relu(x) * b; with ``failing_z``,
    z = Gather(x, [7], axis=1) instead, which fails for any x (there is no column 7): a node that
    only feeds z, so serving y alone must not run it. Its indices are in the data file too."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.full(4, 0.5, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    if failing_z:
        z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1])
        inits.append(numpy_helper.from_array(np.array([7], np.int64), "idx"))
        nodes.append(helper.make_node("Gather", ["x", "idx"], ["z"], axis=1))
    else:
        z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])
        nodes += [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "b"], ["z"])]
    model = helper.make_model(helper.make_graph(nodes, "exported", [x], [y, z], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    vdir.mkdir(parents=True, exist_ok=True)
    path = vdir / graph_name
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=0)
    return path


def ort_run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime's own answer, in-process, on the file as written."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))


X = np.array([[1, -2, 3, -4], [0.5, 0.25, -1, 2]], np.float32)


def test_saved_layout_is_the_exporters() -> None:
    """The graph file holds no weights: they are in model.onnx.data, named by the graph."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = save_exported(Path(tmp) / "1")
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", DATA]
        assert external_data_files(path) == {DATA: ["W", "b"]}
        assert missing_external_data(path) is None


# ---------------------------------------------------------------------------------------------
# A real server

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo") / "models"
    r = Repo(root)
    save_exported(r.model_dir("plain") / "1")  # as exported, no config.toml
    save_exported(r.model_dir("batched") / "1")
    r.config("batched", "max_batch_size = 8\n")
    # A config serving y only: z's failing node is cut away, weights still read from the data file.
    save_exported(r.model_dir("subset") / "1", failing_z=True)
    r.config("subset", toml_tensors("outputs", [("y", "FP32", [-1, 4])]))
    # The graph renamed after export: the data file's name is recorded in the graph, relative to it.
    save_exported(r.model_dir("renamed_graph") / "1", graph_name="other.onnx")
    r.config("renamed_graph", 'default_model_filename = "other.onnx"\n')
    # The data file renamed, or left behind: refused, naming the file the graph refers to.
    renamed = save_exported(r.model_dir("renamed_data") / "1")
    (renamed.parent / DATA).rename(renamed.parent / "weights.bin")
    missing = save_exported(r.model_dir("missing_data") / "1")
    (missing.parent / DATA).unlink()
    r.config("missing_data", "max_batch_size = 8\n" + toml_tensors("inputs", [("x", "FP32", [4])])
             + toml_tensors("outputs", [("y", "FP32", [4]), ("z", "FP32", [4])]))
    return root


@pytest.fixture(scope="module")
def server(serve_module: Any, repo: Path) -> Server:
    return serve_module([repo, "--no-strict-readiness"])


def index(server: Server) -> dict[str, dict]:
    rows = requests.post(server.url + "/v2/repository/index", timeout=5).json()
    return {r["name"]: r for r in rows}


@pytest.mark.parametrize("model", ["plain", "batched", "renamed_graph"])
def test_served_as_exported(server: Server, repo: Path, model: str) -> None:
    graph = repo / model / "1" / ("other.onnx" if model == "renamed_graph" else "model.onnx")
    expected = ort_run(graph, X)
    _, out = decode(infer(server.url, model, "json", {"x": X}))
    assert set(out) == {"y", "z"}
    for name in ("y", "z"):
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-6)


def test_subset_of_outputs_is_cut_with_external_data(server: Server, repo: Path) -> None:
    """Only y is served and computed: the Gather that always fails feeds z only and is cut."""
    expected = X @ W + 0.5
    _, out = decode(infer(server.url, "subset", "binary", {"x": X}))
    assert set(out) == {"y"}
    np.testing.assert_allclose(out["y"], expected, rtol=1e-6)
    meta = requests.get(f"{server.url}/v2/models/subset", timeout=5).json()
    assert [o["name"] for o in meta["outputs"]] == ["y"]


@pytest.mark.parametrize("model", ["renamed_data", "missing_data"])
def test_missing_data_file_is_refused_naming_it(server: Server, repo: Path, model: str) -> None:
    row = index(server)[model]
    assert row["state"] == "UNAVAILABLE", row
    reason = row["reason"]
    where = repo / model / "1" / DATA
    assert f"external data file '{DATA}' ({where})" in reason, reason
    assert "does not exist" in reason and "weights 'W', 'b'" in reason, reason
    assert "the graph file may be renamed, the data file may not" in reason, reason


def test_other_models_keep_serving(server: Server) -> None:
    rows = index(server)
    assert {n for n, r in rows.items() if r["state"] != "READY"} == {"renamed_data", "missing_data"}, rows
    assert requests.get(f"{server.url}/v2/models/plain/ready", timeout=5).status_code == 200


# ---------------------------------------------------------------------------------------------
# In-process: config time, the backend, the cut

def test_read_onnx_tensors_reads_external_data_models(tmp_path: Path) -> None:
    path = save_exported(tmp_path / "1")
    tensors = read_onnx_tensors(path)
    assert tensors.inputs == [TensorSpec("x", "FP32", (-1, 4))]
    assert tensors.outputs == [TensorSpec("y", "FP32", (-1, 4)), TensorSpec("z", "FP32", (-1, 4))]
    (tmp_path / "1" / DATA).unlink()
    with pytest.raises(ConfigError) as err:
        read_onnx_tensors(path)
    assert f"{path}: cannot be loaded: external data file '{DATA}' ({tmp_path / '1' / DATA})" in str(err.value)
    assert "onnxruntime:" in str(err.value)  # ORT's own words stay, after pyserve's


def test_single_file_model_with_its_data_beside(tmp_path: Path) -> None:
    """``--model name=path/model.onnx``: the data file beside it is found."""
    path = save_exported(tmp_path / "export")
    config = config_from_onnx("single", path, max_batch_size=4)
    backend = create_backend(config, path.parent)
    np.testing.assert_allclose(backend({"x": X})["y"], ort_run(path, X)["y"], rtol=1e-6)


def test_backend_refuses_missing_data_file_naming_it(tmp_path: Path) -> None:
    path = save_exported(tmp_path / "m" / "1")
    config = load_model_config(tmp_path / "m")  # read while the data file is there
    (path.parent / DATA).rename(path.parent / "elsewhere.data")
    with pytest.raises(PyserveError) as err:
        create_backend(config, path.parent)
    text = str(err.value)
    assert f"model 'm': {path}: cannot be loaded: external data file '{DATA}'" in text, text
    assert "elsewhere.data" not in text


def test_cut_reads_the_data_file_in_place_and_writes_nothing(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut graph is handed to ORT as bytes, its weights read from the model's own folder,
    whatever the working directory; no file is written beside the model or there."""
    path = save_exported(tmp_path / "m" / "1", failing_z=True)
    (tmp_path / "m" / "config.toml").write_text(toml_tensors("outputs", [("y", "FP32", [-1, 4])]))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    backend = create_backend(load_model_config(tmp_path / "m"), path.parent)
    np.testing.assert_allclose(backend({"x": X})["y"], X @ W + 0.5, rtol=1e-6)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # Served whole (no config), the failing node runs, as the model says.
    (tmp_path / "m" / "config.toml").unlink()
    whole = create_backend(load_model_config(tmp_path / "m"), path.parent)
    with pytest.raises(PyserveError):
        whole({"x": X})


def relocate_external_data(path: Path, location: str) -> None:
    """Rewrite every external data ``location`` the graph at ``path`` records (the weights stay)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("layout", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, layout: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A data file outside the graph's folder (a '..' location, an absolute one, a symlink to a file
    elsewhere) is refused: by onnxruntime 1.24 and newer itself, and with older ones (pyserve takes
    1.17 and up), which read whatever file the graph names, by pyserve before onnxruntime is asked."""
    path = save_exported(tmp_path / "m" / "1")
    data = tmp_path / "elsewhere" / DATA
    data.parent.mkdir()
    (path.parent / DATA).rename(data)
    if layout == "dotdot":
        relocate_external_data(path, f"../../elsewhere/{DATA}")
    elif layout == "absolute":
        relocate_external_data(path, str(data))
    else:
        (path.parent / DATA).symlink_to(data)

    def old_onnxruntime(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("onnxruntime was asked to load a graph whose data lies outside its folder")

    # With the installed onnxruntime (which checks itself from 1.24 on, pyserve before), refused.
    with pytest.raises(ConfigError, match="cannot be loaded"):
        read_onnx_tensors(path)
    # As an onnxruntime older than 1.24 would not be: pyserve refuses before asking it.
    monkeypatch.setattr("pyserve.backends.onnx.ort.InferenceSession", old_onnxruntime)
    monkeypatch.setattr("pyserve.backends.onnx._CHECKS_EXTERNAL_DATA_PATHS", False)
    with pytest.raises(ConfigError) as err:
        read_onnx_tensors(path)
    assert "outside the graph's folder" in str(err.value) or "not a path relative" in str(err.value)
    # An older version folder is loaded by the backend alone (the config is read off the newest).
    config = ModelConfig(name="m", backend="onnxruntime", inputs=(TensorSpec("x", "FP32", (-1, 4)),),
                         outputs=(TensorSpec("y", "FP32", (-1, 4)),))
    with pytest.raises(PyserveError) as perr:
        create_backend(config, path.parent)
    assert "cannot be loaded" in str(perr.value)


def test_external_data_symlinked_with_its_graph_loads(tmp_path: Path) -> None:
    """Graph and data both symlinks into one other folder (Hugging Face's cache: snapshots/ ->
    blobs/): the data lies beside the file the graph points to, which onnxruntime accepts too."""
    real = save_exported(tmp_path / "blobs")
    vdir = tmp_path / "m" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").symlink_to(real)
    (vdir / DATA).symlink_to(real.parent / DATA)
    tensors = read_onnx_tensors(vdir / "model.onnx")
    assert [s.name for s in tensors.inputs] == ["x"]


# ---------------------------------------------------------------------------------------------
# Optional inputs: a request may leave them out (served without batching)

def save_optional_input(path: Path) -> Path:
    """x: FP32 [N, 4], bias: optional(tensor(float)) [N, 4] -> y = x + (bias if given else 10)."""
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 4]))
    then_g = helper.make_graph([helper.make_node("OptionalGetElement", ["bias"], ["b1"])], "then", [],
                               [helper.make_tensor_value_info("b1", TensorProto.FLOAT, None)])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["b2"], value=helper.make_tensor("c", TensorProto.FLOAT, [], [10.0]))],
        "else", [], [helper.make_tensor_value_info("b2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("OptionalHasElement", ["bias"], ["has"]),
             helper.make_node("If", ["has"], ["b"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["x", "b"], ["y"])]
    graph = helper.make_graph(nodes, "opt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                             helper.make_value_info("bias", opt)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


BIAS = np.full((2, 4), 3, np.float32)


def ort_optional(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """onnxruntime's own answer, in-process (an optional input left out of ``feeds`` is absent)."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_optional_input_is_marked_and_may_be_left_out(tmp_path: Path) -> None:
    path = save_optional_input(tmp_path / "m" / "1" / "model.onnx")
    config = load_model_config(tmp_path / "m")
    assert config.inputs == (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("bias", "FP32", (-1, 4), optional=True))
    backend = create_backend(config, path.parent)
    for feeds in ({"x": X, "bias": BIAS}, {"x": X}):
        np.testing.assert_array_equal(backend(dict(feeds))["y"], ort_optional(path, feeds))
    np.testing.assert_array_equal(backend({"x": X})["y"], X + 10)


def test_optional_input_with_batching_is_refused(tmp_path: Path) -> None:
    path = save_optional_input(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.toml").write_text("max_batch_size = 4\n")
    with pytest.raises(ConfigError) as err:
        load_model_config(tmp_path / "m")
    assert str(err.value) == (
        f"{tmp_path / 'm' / 'config.toml'}: max_batch_size: is 4 but input(s) 'bias' of {path} are optional "
        "(ONNX type optional(tensor)), which pyserve serves without batching; set max_batch_size = 0")


def test_optional_input_served_by_a_server(serve: Any, tmp_path: Path) -> None:
    """Metadata and config mark the input ``"optional": true``; a request may leave it out (the
    model's default is used), or send it; the required input is still required."""
    path = save_optional_input(tmp_path / "repo" / "opt" / "1" / "model.onnx")
    server = serve([tmp_path / "repo"])
    meta = requests.get(f"{server.url}/v2/models/opt", timeout=5).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                              {"name": "bias", "datatype": "FP32", "shape": [-1, 4], "optional": True}]
    config = requests.get(f"{server.url}/v2/models/opt/config?format=pyserve", timeout=5).json()
    assert config["inputs"][1] == {"name": "bias", "datatype": "FP32", "shape": [-1, 4], "optional": True}
    triton = requests.get(f"{server.url}/v2/models/opt/config", timeout=5).json()  # Triton's schema
    assert [(i["name"], i["optional"]) for i in triton["input"]] == [("x", False), ("bias", True)]
    for protocol in ("json", "binary"):
        for feeds in ({"x": X, "bias": BIAS}, {"x": X}):
            _, out = decode(infer(server.url, "opt", protocol, dict(feeds)))
            np.testing.assert_array_equal(out["y"], ort_optional(path, feeds))
    resp = infer(server.url, "opt", "json", {"bias": BIAS})
    assert resp.status_code == 400 and "missing input 'x'" in resp.text, resp.text
    resp = infer(server.url, "opt", "json", {"x": X, "other": X})
    assert resp.status_code == 400 and "unexpected input 'other'" in resp.text, resp.text


def test_optional_input_required_by_an_older_version_is_a_400(tmp_path: Path) -> None:
    """The config marks 'bias' optional because the newest version's model does; version 1's model
    requires it: a request to version 1 that leaves it out is the client's mistake (INVALID_ARGUMENT
    naming the input), not an onnxruntime failure answered 500."""
    save_optional_input(tmp_path / "m" / "2" / "model.onnx")
    v1 = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])], "required",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]),
        opset_imports=[helper.make_opsetid("", 18)])
    v1.ir_version = 8
    (tmp_path / "m" / "1").mkdir()
    onnx.save(v1, str(tmp_path / "m" / "1" / "model.onnx"))
    (tmp_path / "m" / "config.toml").write_text("[version_policy]\nall = true\n")
    config = load_model_config(tmp_path / "m")
    assert config.inputs[1].optional
    old = create_backend(config, tmp_path / "m" / "1")
    with pytest.raises(PyserveError) as err:
        old({"x": X})
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and "missing input 'bias'" in str(err.value)
    np.testing.assert_array_equal(old({"x": X, "bias": BIAS})["y"], X + BIAS)
    np.testing.assert_array_equal(create_backend(config, tmp_path / "m" / "2")({"x": X})["y"], X + 10)
