"""Real exported models served as they come: no config.toml, answers equal to the library's own.

Each family of ``exported_models.py`` (scikit-learn through skl2onnx, a ColumnTransformer pipeline
with a string column, XGBoost and LightGBM through onnxmltools, CatBoost, PyTorch through
``torch.onnx.export``) is fitted on small synthetic data and exported at test time into a repository
of its own, which one ``pyserve serve REPO`` serves. Each model must load READY with the inputs and
outputs the exporter wrote (less the non-tensor ones, such as a classifier's ZipMap), and answer a
request of several rows over JSON, the binary tensor extension and msgpack, and one-row requests
sent all at once, with the library's own predictions (tolerances per model in ``exported_models``).

The families beyond scikit-learn need the ``exporters`` extra; without it they are skipped. Then the
pitfalls of docs/exporters.md, each as a user meets it: a text model on a host without the
en_US.UTF-8 locale, and a torch model exported without ``dynamic_axes``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
from conftest import Repo, Server, decode, infer
from exported_models import (
    FAMILIES,
    Case,
    concurrent_problems,
    export_torch_fixed,
    metadata_problems,
    request_problems,
    state,
    without_zipmap,
)
from onnx import TensorProto, helper

from pyserve.backends.onnx import open_session
from pyserve.config import ConfigError

SLOW_FAMILIES = {"torch"}  # the dynamo exporter takes tens of seconds on a small machine
# The default export of a text model loads only on a host with the en_US.UTF-8 locale: see
# test_text_model_without_the_en_us_locale.
HOST_DEPENDENT = {"sk_tfidf_text"}


def family_params() -> list[Any]:
    """Every family, the slow ones marked."""
    return [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_FAMILIES else [], id=n) for n in sorted(FAMILIES)]


@dataclass
class Served:
    """A family's repository, the server serving it, and its cases by model name."""

    server: Server
    repo: Path
    cases: dict[str, Case]


@pytest.fixture(scope="module")
def served(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Served]]:
    """``served(family)``: the family exported and served (built on first use, skipped when its
    packages are missing)."""
    built: dict[str, Served] = {}

    def get(family: str) -> Served:
        if family not in built:
            for module in FAMILIES[family].needs:
                pytest.importorskip(module)
            repo = tmp_path_factory.mktemp(family) / "models"
            cases = FAMILIES[family].build(repo)
            if family == "torch":
                export_torch_fixed(repo)  # the pitfall, beside the models exported as they should be
            if family == "catboost":  # the ZipMap cut off, as docs/exporters.md says
                without_zipmap(repo / "catboost_classifier" / "1" / "model.onnx",
                               repo / "catboost_no_zipmap" / "1" / "model.onnx")
            # The default text export may be UNAVAILABLE on this host: the others must still serve.
            built[family] = Served(serve_module([repo, "--no-strict-readiness"]), repo,
                                   {c.name: c for c in cases})
        return built[family]

    yield get


def servable(family: Served) -> list[Case]:
    """The family's cases that must serve on any host."""
    return [c for n, c in family.cases.items() if n not in HOST_DEPENDENT]


def _metadata(url: str, model: str) -> dict:
    resp = requests.get(f"{url}/v2/models/{model}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---------------------------------------------------------------------------------------------
# Served as they come

@pytest.mark.parametrize("family", family_params())
def test_loaded_without_config_with_the_exporters_tensors(served: Callable[[str], Served], family: str) -> None:
    """READY, and the metadata names the exporter's tensors, less the ones left out, with shapes that
    hold what the model takes and returns."""
    fam = served(family)
    rows = state(fam.server.url)
    not_ready = {c.name: rows.get(c.name) for c in servable(fam) if rows.get(c.name, {}).get("state") != "READY"}
    assert not_ready == {}
    assert not any((fam.repo / c.name / "config.toml").exists() for c in servable(fam))
    problems = {c.name: metadata_problems(fam.server.url, c) for c in servable(fam)}
    assert {n: p for n, p in problems.items() if p} == {}


@pytest.mark.parametrize("family", family_params())
def test_batched_by_default(served: Callable[[str], Served], family: str) -> None:
    """Every model of the suite has a dynamic first dimension everywhere (once the shapes exporters
    declare wrongly are corrected), so each is batched with no config."""
    fam = served(family)
    sizes = {c.name: requests.get(f"{fam.server.url}/v2/models/{c.name}/config", timeout=10).json()["max_batch_size"]
             for c in servable(fam)}
    assert {n: size for n, size in sizes.items() if size <= 0} == {}


@pytest.mark.parametrize("protocol", ["json", "binary", "msgpack"])
@pytest.mark.parametrize("family", family_params())
def test_answers_equal_the_librarys_predictions(served: Callable[[str], Served], family: str,
                                                protocol: str) -> None:
    fam = served(family)
    problems = {c.name: request_problems(fam.server.url, c, protocol) for c in servable(fam)}
    assert {n: p for n, p in problems.items() if p} == {}


@pytest.mark.parametrize("family", family_params())
def test_concurrent_one_row_requests(served: Callable[[str], Served], family: str) -> None:
    """One request per row, all at once (with batching on, the batcher joins them; a sequence model
    sends rows of four lengths, which no one batch holds)."""
    fam = served(family)
    problems = {c.name: concurrent_problems(fam.server.url, c, "msgpack") for c in servable(fam)}
    assert {n: p for n, p in problems.items() if p} == {}


@pytest.mark.slow
def test_torch_default_export_writes_external_data_and_serves_it(served: Callable[[str], Served]) -> None:
    """torch.onnx.export's default (dynamo) exporter writes the weights beside the graph; the GRU's
    version folder is served as exported, weights included (its answers are checked above)."""
    fam = served("torch")
    assert sorted(p.name for p in (fam.repo / "torch_gru" / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert sorted(p.name for p in (fam.repo / "torch_encoder" / "1").iterdir()) == ["model.onnx"]
    meta = _metadata(fam.server.url, "torch_gru")
    # Batch and sequence length both dynamic, whether or not batching takes the first dimension.
    assert meta["inputs"][0]["shape"] in ([-1, -1], [-1]) and meta["inputs"][0]["datatype"] == "INT64"


# ---------------------------------------------------------------------------------------------
# Output shapes declared wrongly: corrected at load

def test_catboost_regressor_rank_is_corrected(served: Callable[[str], Served]) -> None:
    """CatBoost declares the regressor's ``predictions`` [N] and returns [N, 1]: served as [-1, -1],
    with one warning naming both shapes (batched, the declared shape would fail every request)."""
    fam = served("catboost")
    meta = _metadata(fam.server.url, "catboost_regressor")
    assert meta["outputs"] == [{"name": "predictions", "datatype": "FP32", "shape": [-1, -1]}]
    path = fam.repo / "catboost_regressor" / "1" / "model.onnx"
    assert (f"model 'catboost_regressor': {path} declares output 'predictions' with shape [-1] but a warm-up run "
            "on zeros (a batch of 2 samples) returned shape [2, 1]: serving it with shape [-1, -1]") in fam.server.log()


def test_an_output_declared_with_the_wrong_rank_is_served_with_the_rank_it_has(repo: Repo, serve: Any) -> None:
    """An output declared [N] that returns [N, 1], written as CatBoost writes its regressor (one
    ai.onnx.ml TreeEnsembleRegressor, opset 2, for which onnxruntime infers no shape): with no
    config it is batched and every request is answered with the shape the model returns."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])  # really [N, 1]
    tree = helper.make_node(  # x[:, 0] <= 0 -> 1.0, else 2.0
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_values=[0.0, 0.0, 0.0],
        nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
        target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[1.0, 2.0])
    model = helper.make_model(helper.make_graph([tree], "g", [x], [y]), opset_imports=[
        helper.make_opsetid("ai.onnx.ml", 2), helper.make_opsetid("", 17)])
    model.ir_version = 8
    vdir = repo.model_dir("tree") / "1"
    vdir.mkdir()
    onnx.save(model, str(vdir / "model.onnx"))
    server = serve([repo.root])
    config = requests.get(f"{server.url}/v2/models/tree/config?format=pyserve", timeout=10).json()
    assert config["max_batch_size"] > 0 and config["outputs"][0]["shape"] == [-1], config
    rows = np.array([[-1, 0, 0], [1, 0, 0], [0.5, 1, 1], [-2, 1, 1]], np.float32)
    out = decode(infer(server.url, "tree", "json", {"x": rows}))[1]
    np.testing.assert_array_equal(out["y"], [[1], [2], [2], [1]])
    out = decode(infer(server.url, "tree", "msgpack", {"x": rows[1:2]}))[1]
    np.testing.assert_array_equal(out["y"], [[2]])


# ---------------------------------------------------------------------------------------------
# Pitfalls (docs/exporters.md)

def test_catboost_classifier_with_its_zipmap_cut_off_serves_probabilities(served: Callable[[str], Served]) -> None:
    """CatBoost's exporter has no zipmap option: with the ZipMap node removed and its input made an
    output, the probabilities are served as a tensor equal to predict_proba."""
    fam = served("catboost")
    case = fam.cases["catboost_classifier"]
    meta = _metadata(fam.server.url, "catboost_no_zipmap")
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["probability_tensor"][0] == "FP32" and set(outputs) == {"label", "probability_tensor"}
    out = decode(infer(fam.server.url, "catboost_no_zipmap", "binary", case.inputs))[1]
    np.testing.assert_array_equal(out["label"], case.expected["label"])
    assert case.probabilities is not None
    np.testing.assert_allclose(out["probability_tensor"], case.probabilities, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torch_export_without_dynamic_axes_fixes_the_batch(served: Callable[[str], Served]) -> None:
    """Without ``dynamic_axes`` the example's shape [2, 7] is the model's only shape: served as such,
    and any other shape is refused with a 400 naming the input and both shapes."""
    fam = served("torch")
    url = fam.server.url
    assert state(url)["torch_fixed"]["state"] == "READY"
    meta = _metadata(url, "torch_fixed")
    assert meta["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": [2, 7]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [2, 3]}]
    ids = np.arange(14, dtype=np.int64).reshape(2, 7) % 50
    out = decode(infer(url, "torch_fixed", "json", {"ids": ids}))[1]
    assert out["logits"].shape == (2, 3)
    for shape in [(1, 7), (3, 7), (2, 9)]:
        resp = infer(url, "torch_fixed", "json", {"ids": np.zeros(shape, np.int64)})
        assert resp.status_code == 400, resp.text
        assert f"input 'ids'" in resp.text and "[2, 7]" in resp.text and str(list(shape)) in resp.text, resp.text


def _en_us_loads(path: Path, env: dict[str, str] | None = None) -> bool:
    """Whether onnxruntime, in a fresh process with ``env``, can load the text model at ``path``
    (it builds the C++ locale en_US.UTF-8 the graph's StringNormalizer asks for)."""
    code = f"import onnxruntime as ort; ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])"
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=60)
    return run.returncode == 0


def test_text_model_without_the_en_us_locale(served: Callable[[str], Served]) -> None:
    """skl2onnx's text vectorizers end in a StringNormalizer that names no locale; onnxruntime then
    builds en_US.UTF-8. On a host without it the model is refused, saying which locale and the two
    fixes; the model exported with ``options={TfidfVectorizer: {"locale": "C.UTF-8"}}`` serves
    anywhere (its answers are checked above)."""
    fam = served("sklearn")
    row = state(fam.server.url)["sk_tfidf_text"]
    path = fam.repo / "sk_tfidf_text" / "1" / "model.onnx"
    if _en_us_loads(path):
        assert row["state"] == "READY", row
        assert request_problems(fam.server.url, fam.cases["sk_tfidf_text"], "json") == []
        return
    assert row["state"] == "UNAVAILABLE", row
    reason = row["reason"]
    assert reason.startswith(f"{path}: cannot be loaded by onnxruntime: "), reason
    assert "Failed to construct locale with name:en_US.UTF-8" in reason
    assert ("needs the locale 'en_US.UTF-8', which this host lacks: add it to the host "
            "(localedef -i en_US -f UTF-8 en_US.UTF-8) or export the model with a locale") in reason, reason
    assert "options={TfidfVectorizer: {'locale': 'C.UTF-8'}}" in reason, reason


@pytest.mark.slow
def test_text_model_serves_once_the_host_has_the_locale(serve: Any, served: Callable[[str], Served],
                                                       tmp_path: Path) -> None:
    """The host fix: with en_US.UTF-8 compiled by localedef (here into a private folder that LOCPATH
    points glibc to, rather than the system's), the default export loads and answers."""
    if shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/en_US").exists():
        pytest.skip("localedef or the glibc locale sources (Debian: the locales package) are missing")
    fam = served("sklearn")
    path = fam.repo / "sk_tfidf_text" / "1" / "model.onnx"
    locales = tmp_path / "locales"
    locales.mkdir()
    subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8", str(locales / "en_US.UTF-8")], check=True,
                   capture_output=True, timeout=120)
    env = {"LOCPATH": str(locales)}
    assert _en_us_loads(path, env)
    server = serve(["--model", f"text={path}"], env=env)
    case = fam.cases["sk_tfidf_text"]
    assert request_problems(server.url, Case("text", case.exporter, case.inputs, case.expected), "json") == []


def test_a_missing_locale_is_named_with_both_fixes(tmp_path: Path) -> None:
    """Whatever the host has: a StringNormalizer naming a locale no host has is refused, naming it,
    the localedef line that makes it, and the export option."""
    node = helper.make_node("StringNormalizer", ["text"], ["lower"], case_change_action="LOWER",
                            locale="xx_YY.UTF-8")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
                              [helper.make_tensor_value_info("lower", TensorProto.STRING, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConfigError) as info:
        open_session(path, ort.SessionOptions())
    message = str(info.value)
    assert message.startswith(f"{path}: cannot be loaded by onnxruntime: "), message
    assert message.endswith(
        "configure locales; the model's StringNormalizer node (skl2onnx's text vectorizers) needs the locale "
        "'xx_YY.UTF-8', which this host lacks: add it to the host (localedef -i xx_YY -f UTF-8 xx_YY.UTF-8) "
        "or export the model with a locale every host has: with skl2onnx, to_onnx(model, ..., "
        "options={TfidfVectorizer: {'locale': 'C.UTF-8'}}) (or CountVectorizer)"), message
