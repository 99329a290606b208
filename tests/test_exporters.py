"""Models as exporters write them: scikit-learn models converted by skl2onnx, served as they come out.

skl2onnx classifiers, with default options, end in a ZipMap: ``output_probability`` is
``seq(map(int64|string, tensor(float)))``, not a tensor. pyserve serves their tensor outputs, leaves
the rest out with one log line per model load, and refuses what cannot be served (a config naming a
non-tensor output, a non-tensor input) with a message that says what to do. The models are fitted and
exported at test time (small and fast) and served by a real server; the answers over JSON are
compared with scikit-learn's own predict / predict_proba.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
from conftest import Repo, Server, decode, infer, toml_tensors
from onnx import TensorProto, helper, save_model

from pyserve.backends import create_backend
from pyserve.backends.onnx import read_onnx_tensors
from pyserve.config import ConfigError, config_from_onnx, load_model_config

ZIPMAP_INT = "seq(map(int64,tensor(float)))"
ZIPMAP_STR = "seq(map(string,tensor(float)))"
LOGGER = "pyserve.backends.onnx"


@dataclass
class Exported:
    """The fitted scikit-learn models, the repository serving their ONNX exports, and test inputs."""

    root: Path
    logreg: Any
    pipe: Any
    forest: Any
    regressor: Any
    single: Path  # the logreg export as a lone file, for --model NAME=PATH
    x: np.ndarray  # FP32 [N, 4], rows none of the models saw


def _to_onnx(model: Any, x: np.ndarray, **kw: Any) -> bytes:
    from skl2onnx import to_onnx

    return to_onnx(model, x[:1], **kw).SerializeToString()


def _write(repo: Repo, name: str, onnx: bytes, versions: tuple[int, ...] = (1,),
           config: str | None = None) -> Path:
    for version in versions:
        vdir = repo.model_dir(name) / str(version)
        vdir.mkdir()
        (vdir / "model.onnx").write_bytes(onnx)
    if config is not None:
        repo.config(name, config)
    return repo.model_dir(name) / str(versions[-1]) / "model.onnx"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DictionaryType, FloatTensorType, StringTensorType
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x_all = rng.normal(size=(140, 4)).astype(np.float32)
    # Three classes, from two features, so that both classifiers learn something.
    y = (x_all[:, 0] + x_all[:, 1] > 0).astype(np.int64) + (x_all[:, 2] > 0.8)
    x, x_test = x_all[:120], x_all[120:]
    names = np.array(["setosa", "versicolor", "virginica"])
    logreg = LogisticRegression().fit(x, y[:120])
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y[:120])
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, names[y[:120]])
    regressor = RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0)
    regressor.fit(x, x[:, 0] * 2 - x[:, 3])
    dictvec = DictVectorizer(sparse=False).fit([{"a": 1.0, "b": 2.0}])

    repo = Repo(tmp_path_factory.mktemp("exporters") / "models")
    logreg_onnx = _to_onnx(logreg, x)  # default options: output_label + ZipMap output_probability
    _write(repo, "logreg", logreg_onnx)
    _write(repo, "forest", _to_onnx(forest, x), versions=(1, 2),
           config="max_batch_size = 8\ninstance_count = 2\n[version_policy]\nall = true\n")
    # The export options the log line advises: one keyed by the classifier in a pipeline, one plain.
    _write(repo, "pipe_nozip", _to_onnx(pipe, x, options={id(pipe.steps[-1][1]): {"zipmap": False}}))
    _write(repo, "forest_nozip", _to_onnx(forest, x, options={"zipmap": False}))
    _write(repo, "regressor", _to_onnx(regressor, x))
    # Configs listing only tensor outputs, or a subset of them.
    _write(repo, "logreg_labels", logreg_onnx,
           config=toml_tensors("inputs", [("X", "FP32", [-1, 4])])
           + toml_tensors("outputs", [("output_label", "INT64", [-1])]))
    _write(repo, "pipe_subset", _to_onnx(pipe, x, options={id(pipe.steps[-1][1]): {"zipmap": False}}),
           config="max_batch_size = 4\n" + toml_tensors("outputs", [("label", "INT64", [])]))
    # Refused: a config that asks for the ZipMap output; a model with a map input.
    _write(repo, "logreg_asks_zipmap", logreg_onnx,
           config=toml_tensors("outputs", [("output_probability", "FP32", [-1, 3])]))
    map_input = DictionaryType(StringTensorType([1]), FloatTensorType([1]))
    _write(repo, "dictvec", to_onnx(dictvec, initial_types=[("input", map_input)]).SerializeToString())
    single = repo.root.parent / "single" / "logreg.onnx"
    single.parent.mkdir()
    single.write_bytes(logreg_onnx)
    return Exported(repo.root, logreg, pipe, forest, regressor, single, x_test)


@pytest.fixture(scope="module")
def server(serve_module: Any, exported: Exported) -> Server:
    # Two models of the repository are refused on purpose: ready means the startup is over.
    return serve_module([exported.root, "--model", f"single_logreg={exported.single}",
                         "--no-strict-readiness"])


def run_json(server: Server, model: str, x: np.ndarray, **doc: Any) -> dict[str, np.ndarray]:
    return decode(infer(server.url, model, "json", {"X": x}, **doc))[1]


def metadata(server: Server, model: str) -> dict:
    resp = requests.get(f"{server.url}/v2/models/{model}", timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def index(server: Server) -> dict[str, dict]:
    rows = requests.post(server.url + "/v2/repository/index", timeout=5).json()
    return {r["name"]: r for r in rows}


def onnx_log_lines(server: Server, model_path: Path) -> list[str]:
    """The log lines of the ONNX backend about outputs left out of the files under folder ``model_path``
    (or that file); its other lines (batching on or off) are not counted."""
    key = str(model_path) + ("" if model_path.suffix == ".onnx" else "/")
    return [line for line in server.log().splitlines()
            if f" {LOGGER}: " in line and key in line and "is not served" in line]


# ---------------------------------------------------------------------------------------------
# Served as exported

@pytest.mark.parametrize("model", ["logreg", "single_logreg"])
def test_default_classifier_serves_its_label_tensor(server: Server, exported: Exported, model: str) -> None:
    meta = metadata(server, model)
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "output_label", "datatype": "INT64", "shape": [-1]}]
    out = run_json(server, model, exported.x)
    assert list(out) == ["output_label"]
    np.testing.assert_array_equal(out["output_label"], exported.logreg.predict(exported.x))
    assert len(set(out["output_label"].tolist())) > 1  # not one class for every row


def test_string_label_forest_with_batching(server: Server, exported: Exported) -> None:
    # ZipMap over string labels (seq(map(string,...))), two versions, two instances, max_batch_size 8.
    meta = metadata(server, "forest")
    assert meta["versions"] == ["1", "2"]
    assert meta["outputs"] == [{"name": "output_label", "datatype": "BYTES", "shape": [-1]}]
    x = exported.x[:8]
    out = run_json(server, "forest", x)
    assert list(out) == ["output_label"]
    assert [b.decode() for b in out["output_label"]] == exported.forest.predict(x).tolist()


@pytest.mark.parametrize("model", ["pipe_nozip", "forest_nozip"])
def test_zipmap_false_export_serves_probabilities(server: Server, exported: Exported, model: str) -> None:
    sk = exported.pipe if model == "pipe_nozip" else exported.forest
    meta = metadata(server, model)
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert meta["outputs"][1] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    out = run_json(server, model, exported.x)
    labels = out["label"].tolist()
    if out["label"].dtype == object:
        labels = [b.decode() for b in labels]
    assert labels == sk.predict(exported.x).tolist()
    assert out["probabilities"].shape == (len(exported.x), 3)
    np.testing.assert_allclose(out["probabilities"], sk.predict_proba(exported.x), rtol=1e-4, atol=1e-5)


def test_regressor_matches_predict(server: Server, exported: Exported) -> None:
    meta = metadata(server, "regressor")
    assert meta["outputs"] == [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}]
    out = run_json(server, "regressor", exported.x)
    expected = exported.regressor.predict(exported.x)
    np.testing.assert_allclose(out["variable"][:, 0], expected, rtol=1e-4, atol=1e-5)


def test_config_listing_only_the_tensor_outputs(server: Server, exported: Exported) -> None:
    out = run_json(server, "logreg_labels", exported.x)
    assert list(out) == ["output_label"]
    np.testing.assert_array_equal(out["output_label"], exported.logreg.predict(exported.x))


def test_config_with_a_subset_of_outputs_returns_only_those(server: Server, exported: Exported) -> None:
    meta = metadata(server, "pipe_subset")
    assert meta["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]
    out = run_json(server, "pipe_subset", exported.x[:3])
    assert list(out) == ["label"]
    np.testing.assert_array_equal(out["label"], exported.pipe.predict(exported.x[:3]))


def test_config_with_a_subset_of_outputs_fetches_only_those(exported: Exported,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The backend asks onnxruntime for the configured outputs only (ORT still runs the whole graph).
    model_dir = exported.root / "pipe_subset"
    backend = create_backend(load_model_config(model_dir), model_dir / "1")
    asked: list[Any] = []
    real_run = ort.InferenceSession.run

    def run(self: ort.InferenceSession, output_names: Any, *args: Any, **kw: Any) -> Any:
        asked.append(output_names)
        return real_run(self, output_names, *args, **kw)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    out = backend({"X": exported.x[:2]})
    assert asked == [["label"]] and list(out) == ["label"]


# ---------------------------------------------------------------------------------------------
# What is left out is logged once per load; what cannot be served is refused, saying what to do

def test_one_log_line_per_model_load_names_the_left_out_output(server: Server, exported: Exported) -> None:
    # forest: two versions, two instances each, and still one line for its load.
    where = [(exported.root / "logreg", ZIPMAP_INT), (exported.root / "forest", ZIPMAP_STR),
             (exported.single, ZIPMAP_INT)]
    for path, onnx_type in where:
        lines = onnx_log_lines(server, path)
        assert len(lines) == 1, (path, lines)
        line = lines[0]
        assert "WARNING" in line and "'output_probability'" in line and onnx_type in line, line
        assert "options={'zipmap': False}" in line and "{id(classifier): {'zipmap': False}}" in line, line
    # Loading the model again logs one more line: one per load.
    forest_dir = exported.root / "forest"
    resp = requests.post(f"{server.url}/v2/repository/models/forest/load", timeout=60)
    assert resp.status_code == 200, resp.text
    assert len(onnx_log_lines(server, forest_dir)) == 2
    # Models without non-tensor outputs log nothing of the kind.
    for model in ("pipe_nozip", "forest_nozip", "regressor"):
        assert onnx_log_lines(server, exported.root / model) == []


def test_config_naming_a_zipmap_output_is_refused(server: Server, exported: Exported) -> None:
    row = index(server)["logreg_asks_zipmap"]
    assert row["state"] == "UNAVAILABLE"
    reason = row["reason"]
    model_dir = exported.root / "logreg_asks_zipmap"
    assert reason.startswith(f"{model_dir / 'config.toml'}: outputs[0].name: 'output_probability' is an "
                             f"output of {model_dir / '1' / 'model.onnx'} that pyserve cannot serve"), reason
    assert f"its ONNX type {ZIPMAP_INT} is not a tensor" in reason
    assert "leave it out of [[outputs]]" in reason and "options={'zipmap': False}" in reason
    assert "is not an output" not in reason


def test_non_tensor_input_is_refused(server: Server, exported: Exported) -> None:
    row = index(server)["dictvec"]
    assert row["state"] == "UNAVAILABLE"
    reason = row["reason"]
    assert reason.startswith(f"{exported.root / 'dictvec' / '1' / 'model.onnx'}: input 'input': "), reason
    assert "map(string,tensor(float)) is not a tensor" in reason and "cannot serve this model" in reason
    assert "export the model with tensor inputs" in reason and "DictVectorizer" in reason


def test_every_served_model_is_ready(server: Server) -> None:
    rows = index(server)
    refused = {"logreg_asks_zipmap", "dictvec"}
    assert {n for n, r in rows.items() if r["state"] != "READY"} == refused, rows


# ---------------------------------------------------------------------------------------------
# Other non-tensor outputs (sequence, optional) and a tensor type with no KServe datatype

def save_odd_outputs(path: Path, outputs: tuple[str, ...] = ("y", "seq", "opt", "bf16")) -> Path:
    """x: FP32 [N, 2] -> y = x (tensor), seq = [x, x] (seq(tensor(float))), opt = Optional(x)
    (optional(tensor(float))), bf16 = Cast(x) (tensor(bfloat16)); only the ``outputs`` named."""
    nodes = {
        "y": helper.make_node("Identity", ["x"], ["y"]),
        "seq": helper.make_node("SequenceConstruct", ["x", "x"], ["seq"]),
        "opt": helper.make_node("Optional", ["x"], ["opt"]),
        "bf16": helper.make_node("Cast", ["x"], ["bf16"], to=TensorProto.BFLOAT16),
    }
    infos = {
        "y": helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
        "seq": helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, ["N", 2]),
        "opt": helper.make_value_info("opt", helper.make_optional_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 2]))),
        "bf16": helper.make_tensor_value_info("bf16", TensorProto.BFLOAT16, ["N", 2]),
    }
    graph = helper.make_graph([nodes[o] for o in outputs], "odd",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [infos[o] for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def test_sequence_optional_and_bfloat16_outputs_are_left_out(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    onnx_path = save_odd_outputs(tmp_path / "odd.onnx")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        config = config_from_onnx("odd", onnx_path, max_batch_size=4)
    assert [(o.name, o.datatype, o.shape) for o in config.outputs] == [("y", "FP32", (2,))]
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert message.startswith(f"{onnx_path}: serving its tensor outputs only; ")
    for part in ["output 'seq' is not served: its ONNX type seq(tensor(float)) is not a tensor",
                 "ConcatFromSequence",
                 "output 'opt' is not served: its ONNX type optional(tensor(float)) is not a tensor",
                 "OptionalGetElement",
                 "output 'bf16' is not served: its ONNX type tensor(bfloat16) has no KServe datatype",
                 "a Cast node to float"]:
        assert part in message, (part, message)
    backend = create_backend(config, tmp_path)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = backend({"x": x})
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], x)


def test_config_naming_a_sequence_output_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "odd"
    onnx_path = save_odd_outputs(model_dir / "1" / "model.onnx")
    outputs = [("y", "FP32", [-1, 2]), ("seq", "FP32", [-1])]
    (model_dir / "config.toml").write_text(toml_tensors("outputs", outputs))
    with pytest.raises(ConfigError) as info:
        load_model_config(model_dir)
    assert str(info.value) == (
        f"{model_dir / 'config.toml'}: outputs[1].name: 'seq' is an output of {onnx_path} that pyserve "
        "cannot serve: its ONNX type seq(tensor(float)) is not a tensor (pyserve serves tensors only); "
        "leave it out of [[outputs]], or to get it as a tensor, export the model so that this output is "
        "one tensor (e.g. a ConcatFromSequence node on the sequence)")


def test_model_with_no_servable_output_is_refused(tmp_path: Path) -> None:
    onnx_path = save_odd_outputs(tmp_path / "seq.onnx", outputs=("seq", "opt"))
    with pytest.raises(ConfigError) as info:
        read_onnx_tensors(onnx_path)
    message = str(info.value)
    assert message.startswith(f"{onnx_path}: no output pyserve can serve: output 'seq' is not served: ")
    assert "output 'opt' is not served" in message and "OptionalGetElement" in message


def test_read_onnx_tensors_lists_what_it_left_out(exported: Exported) -> None:
    tensors = read_onnx_tensors(exported.root / "forest" / "1" / "model.onnx")
    assert [s.name for s in tensors.inputs] == ["X"] and [s.name for s in tensors.outputs] == ["output_label"]
    assert tensors.left_out == (("output_probability", ZIPMAP_STR),)



def test_only_the_served_outputs_are_computed(tmp_path: Path) -> None:
    """ORT runs every node of a graph: a config that serves a subset of the outputs has the rest cut
    away, so a node that only feeds an unserved output (here one that always fails) never runs."""
    import onnx
    from onnx import TensorProto, helper

    from pyserve.backends import create_backend
    from pyserve.config import load_model_config
    from pyserve.errors import PyserveError

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [-1, 3])
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [-1, 3])  # 4 columns never reshape to 3
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Reshape", ["x", "s"], ["z"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z], initializer=[shape]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "m" / "1").mkdir(parents=True)
    onnx.save(model, str(tmp_path / "m" / "1" / "model.onnx"))
    (tmp_path / "m" / "config.toml").write_text('[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1, 4]\n')
    backend = create_backend(load_model_config(tmp_path / "m"), tmp_path / "m" / "1")
    out = backend({"x": np.array([[-1, 2, -3, 4]], np.float32)})
    np.testing.assert_array_equal(out["y"], [[0, 2, 0, 4]])
    # Serving both outputs runs the failing node, as the model says.
    (tmp_path / "m" / "config.toml").unlink()
    whole = create_backend(load_model_config(tmp_path / "m"), tmp_path / "m" / "1")
    with pytest.raises(PyserveError):
        whole({"x": np.ones((1, 4), np.float32)})


def test_the_cut_keeps_what_a_subgraph_reads_from_the_outer_graph(tmp_path: Path) -> None:
    """An If branch that reads a value of the outer graph (not a node input of the If itself) keeps
    the node that makes it; the node feeding only the unserved output goes."""
    import onnx
    from onnx import TensorProto, helper

    from pyserve.backends.onnx_prune import pruned_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])
    branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])
    then_g = helper.make_graph([helper.make_node("Identity", ["doubled"], ["b"])], "then", [], [branch_out])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "else", [], [branch_out])
    nodes = [
        helper.make_node("Add", ["x", "x"], ["doubled"], name="double"),  # read only inside the branch
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="choose"),
        helper.make_node("Neg", ["x"], ["z"], name="negate"),  # feeds only z
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, c], [y, z]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    pruned = pruned_model(path, ["y"])
    assert pruned is not None
    kept = [n.name for n in onnx.load_from_string(pruned.model).graph.node]
    assert kept == ["double", "choose"]
    session = ort.InferenceSession(pruned.model, providers=["CPUExecutionProvider"])
    out = session.run(["y"], {"x": np.array([1, 2], np.float32), "c": np.array(True)})[0]
    np.testing.assert_array_equal(out, [2, 4])
