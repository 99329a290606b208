"""Real exported models: each fitted on small synthetic data, exported by its library's own exporter
with default options, and written into a model repository as the exporter left it (no config.toml).

Used by ``tests/test_exported_models.py`` and, as a script, to count how many of them pyserve serves
as they come: loaded READY; metadata naming the exporter's tensors (less those pyserve leaves out)
with shapes that hold what the model takes and returns; and every served output equal to the
library's own prediction over JSON, the binary tensor extension and msgpack, and in concurrent
one-row requests::

    python tests/exported_models.py                 # every family whose packages are installed
    python tests/exported_models.py --family torch  # one family
    python tests/exported_models.py --keep /tmp/exported  # keep the repository to look at

Families and what they need (the ``exporters`` extra installs them all):

- ``sklearn``: scikit-learn + skl2onnx (``to_onnx(model, X[:1])``); classifiers end in a ZipMap, so
  their ``output_probability`` is left out and ``output_label`` served;
- ``xgboost``, ``lightgbm``: + onnxmltools (``convert_xgboost`` / ``convert_lightgbm``);
- ``catboost``: ``model.save_model(path, format="onnx")``;
- ``torch``: torch + onnxscript (``torch.onnx.export``, whose default exporter in torch 2.9 and newer
  is the dynamo one, needs onnxscript, and writes the weights to ``model.onnx.data``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib.util
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROWS = 12  # rows of each multi-row request, none of which the model saw in training


@dataclass
class Case:
    """One exported model in a repository, and what the library says it must answer.

    ``inputs``: the test rows, by input name (the first dim counts the rows; a model with several
    inputs takes row i of each). ``expected``: the library's own predictions for those rows, by the
    name of each output pyserve must serve, shaped as the model returns them (e.g. a regressor's
    ``[N, 1]``). Floats are compared with ``rtol``/``atol`` (float32 ONNX against the library's
    float64, or float32 summed in another order), everything else exactly. ``left_out``: the outputs
    of the model that pyserve leaves out (non-tensor types: a classifier's ZipMap), and
    ``probabilities`` the library's predict_proba of such a classifier, where the test needs it."""

    name: str
    exporter: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    rtol: float = 0.0
    atol: float = 0.0
    left_out: tuple[str, ...] = ()
    # The library's predict_proba, for a classifier whose probabilities are left out as exported.
    probabilities: np.ndarray | None = None
    # One-row requests, sent at once: the rows of ``inputs`` by default; a sequence model sends rows
    # of several lengths (which a request of many rows cannot hold).
    singles: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=list)

    def single_rows(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``(inputs, expected)`` of each one-row request."""
        if self.singles:
            return self.singles
        n = len(next(iter(self.inputs.values())))
        return [({k: v[i:i + 1] for k, v in self.inputs.items()},
                 {k: v[i:i + 1] for k, v in self.expected.items()}) for i in range(n)]


def quiet(build: Callable[..., Any]) -> Callable[..., Any]:
    """``build`` with the libraries' warnings silenced: deprecations and convergence notices about
    the libraries themselves (SVC's probability=True in scikit-learn 1.9, torch.export's internals),
    not about what pyserve serves."""

    @functools.wraps(build)
    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build(*args, **kwargs)

    return run


def _version_dir(repo: Path, name: str) -> Path:
    vdir = repo / name / "1"
    vdir.mkdir(parents=True)
    return vdir


# ---------------------------------------------------------------------------------------------
# Synthetic data

def classes_data(seed: int = 0, n: int = 160, width: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FP32 [n, width] training rows, their labels (3 classes, INT64 [n]) and ROWS test rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + ROWS, width)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.6)
    return x[:n], y[:n], x[n:]


def regression_data(seed: int = 1, n: int = 160, width: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FP32 [n, width] training rows, a noisy linear target (FP64 [n]) and ROWS test rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + ROWS, width)).astype(np.float32)
    y = 2 * x[:, 0] - x[:, 3] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.1, size=n + ROWS)
    return x[:n], y[:n], x[n:]


# ---------------------------------------------------------------------------------------------
# scikit-learn, skl2onnx with default options

def _sklearn_classifiers() -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    return {
        "sk_logistic_regression": LogisticRegression(),
        "sk_random_forest_classifier": RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0),
        "sk_gradient_boosting_classifier": GradientBoostingClassifier(n_estimators=10, random_state=0),
        "sk_svc": SVC(probability=True, random_state=0),
        "sk_kneighbors_classifier": KNeighborsClassifier(),
        "sk_decision_tree_classifier": DecisionTreeClassifier(max_depth=5, random_state=0),
        "sk_gaussian_nb": GaussianNB(),
        "sk_mlp_classifier": MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0),
    }


def _sklearn_regressors() -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, Ridge
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.svm import SVR
    from sklearn.tree import DecisionTreeRegressor

    return {
        "sk_linear_regression": LinearRegression(),
        "sk_ridge": Ridge(),
        "sk_random_forest_regressor": RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0),
        "sk_gradient_boosting_regressor": GradientBoostingRegressor(n_estimators=10, random_state=0),
        "sk_svr": SVR(),
        "sk_kneighbors_regressor": KNeighborsRegressor(),
        "sk_decision_tree_regressor": DecisionTreeRegressor(max_depth=5, random_state=0),
    }


def _save_onnx(repo: Path, name: str, model: Any) -> Path:
    path = _version_dir(repo, name) / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@quiet
def build_sklearn(repo: Path) -> list[Case]:
    """scikit-learn classifiers and regressors, and a TfidfVectorizer text pipeline, each exported
    with ``to_onnx`` defaults; and
    the text pipeline once more with the export option that spares the host the en_US.UTF-8 locale."""
    from skl2onnx import to_onnx

    cases = []
    x, y, x_test = classes_data()
    for name, clf in _sklearn_classifiers().items():
        clf.fit(x, y)
        _save_onnx(repo, name, to_onnx(clf, x[:1]))
        # The ZipMap's output_probability is left out; the label is served.
        cases.append(Case(name, "skl2onnx", {"X": x_test}, {"output_label": clf.predict(x_test)},
                          left_out=("output_probability",)))
    x, target, x_test = regression_data()
    for name, reg in _sklearn_regressors().items():
        reg.fit(x, target)
        _save_onnx(repo, name, to_onnx(reg, x[:1]))
        # float32 ONNX against scikit-learn's float64.
        cases.append(Case(name, "skl2onnx", {"X": x_test}, {"variable": reg.predict(x_test).reshape(-1, 1)},
                          rtol=1e-4, atol=1e-4))
    cases.append(_text_pipeline(repo, "sk_tfidf_text", locale=None))
    cases.append(_text_pipeline(repo, "sk_tfidf_text_c_utf8", locale="C.UTF-8"))
    return cases


@quiet
def build_sklearn_columns(repo: Path) -> list[Case]:
    """A Pipeline (ColumnTransformer: OneHotEncoder on a string column, StandardScaler on two numeric
    ones; LogisticRegression) fitted on a pandas DataFrame: to_onnx makes one input per column."""
    import pandas as pd
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(2)
    n = 160 + ROWS
    frame = pd.DataFrame({"city": rng.choice(["paris", "lyon", "nice", "zürich"], n),
                          "age": rng.normal(40, 10, n).astype(np.float32),
                          "income": rng.normal(3, 1, n).astype(np.float32)})
    y = ((frame.city == "paris") ^ (frame.age > 40)).to_numpy().astype(np.int64)
    pipe = Pipeline([
        ("pre", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                   ("num", StandardScaler(), ["age", "income"])])),
        ("clf", LogisticRegression())]).fit(frame[:160], y[:160])
    _save_onnx(repo, "sk_column_transformer", to_onnx(pipe, frame[:1]))
    test = frame[160:].copy()
    test.iloc[0, 0] = "berlin"  # a category unseen in training (handle_unknown="ignore")
    inputs = {"city": np.array([[c.encode()] for c in test.city], dtype=object),
              "age": test.age.to_numpy().reshape(-1, 1), "income": test.income.to_numpy().reshape(-1, 1)}
    return [Case("sk_column_transformer", "skl2onnx", inputs, {"output_label": pipe.predict(test)},
                 left_out=("output_probability",))]


TEXTS = ["a good movie", "bad film", "great acting", "awful plot", "a good plot", "bad acting, bad plot",
         "great movie", "awful film", "good acting", "bad movie", "great plot", "awful acting"]


def _text_pipeline(repo: Path, name: str, locale: str | None) -> Case:
    """TfidfVectorizer + LogisticRegression on a string input [N, 1]. skl2onnx's StringNormalizer
    node names no locale unless told (``options={TfidfVectorizer: {"locale": ...}}``), and
    onnxruntime then uses en_US.UTF-8, which a host may lack: see docs/exporters.md."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = np.array(TEXTS * 4)
    y = np.array([1 if t.startswith(("a good", "great", "good")) else 0 for t in texts])
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, y)
    options = {TfidfVectorizer: {"locale": locale}} if locale else None
    _save_onnx(repo, name, to_onnx(pipe, initial_types=[("text", StringTensorType([None, 1]))],
                                   options=options))
    test = np.array(["Good film", "AWFUL movie", "great, great plot", "bad", "a good acting", "film"])
    return Case(name, "skl2onnx", {"text": np.array([[t.encode()] for t in test], dtype=object)},
                {"output_label": pipe.predict(test)}, left_out=("output_probability",))


# ---------------------------------------------------------------------------------------------
# XGBoost and LightGBM through onnxmltools, CatBoost's own exporter

def _float_input(width: int) -> list[tuple[str, Any]]:
    from onnxmltools.convert.common.data_types import FloatTensorType

    return [("input", FloatTensorType([None, width]))]


@quiet
def build_xgboost(repo: Path) -> list[Case]:
    """XGBClassifier (3 classes) and XGBRegressor, ``onnxmltools.convert_xgboost``."""
    import xgboost
    from onnxmltools import convert_xgboost

    x, y, x_test = classes_data()
    clf = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y)
    _save_onnx(repo, "xgb_classifier", convert_xgboost(clf, initial_types=_float_input(4)))
    x_r, target, x_test_r = regression_data()
    reg = xgboost.XGBRegressor(n_estimators=10, max_depth=3).fit(x_r, target)
    _save_onnx(repo, "xgb_regressor", convert_xgboost(reg, initial_types=_float_input(4)))
    return [
        Case("xgb_classifier", "onnxmltools", {"input": x_test},
             {"label": clf.predict(x_test), "probabilities": clf.predict_proba(x_test)}, rtol=1e-5, atol=1e-6),
        Case("xgb_regressor", "onnxmltools", {"input": x_test_r},
             {"variable": reg.predict(x_test_r).reshape(-1, 1)}, rtol=1e-5, atol=1e-5),
    ]


@quiet
def build_lightgbm(repo: Path) -> list[Case]:
    """LGBMClassifier (3 classes) and LGBMRegressor, ``onnxmltools.convert_lightgbm``. The classifier's
    ``label`` is declared [1] while it is [N]; its probabilities come through a ZipMap."""
    import lightgbm
    from onnxmltools import convert_lightgbm

    x, y, x_test = classes_data()
    clf = lightgbm.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1).fit(x, y)
    _save_onnx(repo, "lgbm_classifier", convert_lightgbm(clf, initial_types=_float_input(4)))
    x_r, target, x_test_r = regression_data()
    reg = lightgbm.LGBMRegressor(n_estimators=10, min_child_samples=5, verbose=-1).fit(x_r, target)
    _save_onnx(repo, "lgbm_regressor", convert_lightgbm(reg, initial_types=_float_input(4)))
    return [
        Case("lgbm_classifier", "onnxmltools", {"input": x_test}, {"label": clf.predict(x_test)},
             left_out=("probabilities",)),
        # LightGBM sums in float64, the ONNX trees in float32.
        Case("lgbm_regressor", "onnxmltools", {"input": x_test_r},
             {"variable": reg.predict(x_test_r).reshape(-1, 1)}, rtol=1e-5, atol=1e-5),
    ]


@quiet
def build_catboost(repo: Path) -> list[Case]:
    """CatBoostClassifier (3 classes) and CatBoostRegressor, ``save_model(path, format="onnx")``. The
    regressor declares ``predictions`` as [N] and returns [N, 1]."""
    import catboost

    x, y, x_test = classes_data()
    clf = catboost.CatBoostClassifier(iterations=20, depth=4, verbose=0, random_seed=0,
                                      allow_writing_files=False).fit(x, y)
    clf.save_model(str(_version_dir(repo, "catboost_classifier") / "model.onnx"), format="onnx")
    x_r, target, x_test_r = regression_data()
    reg = catboost.CatBoostRegressor(iterations=20, depth=4, verbose=0, random_seed=0,
                                     allow_writing_files=False).fit(x_r, target)
    reg.save_model(str(_version_dir(repo, "catboost_regressor") / "model.onnx"), format="onnx")
    return [
        Case("catboost_classifier", "catboost", {"features": x_test},
             {"label": clf.predict(x_test).reshape(-1).astype(np.int64)}, left_out=("probabilities",),
             probabilities=clf.predict_proba(x_test)),
        Case("catboost_regressor", "catboost", {"features": x_test_r},
             {"predictions": reg.predict(x_test_r).reshape(-1, 1)}, rtol=1e-5, atol=1e-5),
    ]


def without_zipmap(src: Path, dst: Path) -> str:
    """Write the classifier ``src`` to ``dst`` with its ZipMap node removed and the node's input, the
    probability tensor FP32 [N, classes], made a graph output in place of the ZipMap's output (the
    recipe of docs/exporters.md for exporters without a zipmap option, such as CatBoost's). Returns
    the new output's name."""
    import onnx

    model = onnx.load(str(src))
    zipmap = next(n for n in model.graph.node if n.op_type == "ZipMap")
    model.graph.node.remove(zipmap)
    model.graph.output.remove(next(o for o in model.graph.output if o.name == zipmap.output[0]))
    model.graph.output.append(onnx.helper.make_tensor_value_info(zipmap.input[0], onnx.TensorProto.FLOAT,
                                                                 ["N", None]))
    dst.parent.mkdir(parents=True)
    onnx.save(model, str(dst))
    return zipmap.input[0]


# ---------------------------------------------------------------------------------------------
# PyTorch, torch.onnx.export

VOCAB = 50


def _sequence_models() -> tuple[Any, Any]:
    """Two small sequence classifiers of token ids INT64 [N, L] -> logits FP32 [N, 3]: Embedding +
    GRU, and Embedding + a TransformerEncoderLayer, mean-pooled."""
    import torch

    class GRUClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(VOCAB, 16)
            self.gru = torch.nn.GRU(16, 24, batch_first=True)
            self.head = torch.nn.Linear(24, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            states, _ = self.gru(self.embedding(ids))
            return self.head(states[:, -1])

    class EncoderClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(VOCAB, 16)
            self.encoder = torch.nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, batch_first=True)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embedding(ids)).mean(dim=1))

    torch.manual_seed(0)
    return GRUClassifier().eval(), EncoderClassifier().eval()


def _torch_case(name: str, model: Any, path: Path, lengths: tuple[int, ...]) -> Case:
    """The case of a sequence model exported to ``path``: ROWS rows of length ``lengths[0]`` in one
    request, and one-row requests of every length in ``lengths``, each compared with torch's own
    forward (float32 both, summed in other orders: atol 1e-5)."""
    import torch

    rng = np.random.default_rng(3)

    def forward(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(ids)).numpy()

    ids = rng.integers(0, VOCAB, size=(ROWS, lengths[0]), dtype=np.int64)
    singles = []
    for i in range(ROWS):
        one = rng.integers(0, VOCAB, size=(1, lengths[i % len(lengths)]), dtype=np.int64)
        singles.append(({"ids": one}, {"logits": forward(one)}))
    return Case(name, "torch.onnx.export", {"ids": ids}, {"logits": forward(ids)}, rtol=1e-4, atol=1e-5,
                singles=singles)


@quiet
def build_torch(repo: Path) -> list[Case]:
    """Two sequence models exported with ``dynamic_axes`` for the batch and the sequence length:
    the GRU by the default (dynamo) exporter, which writes ``model.onnx`` + ``model.onnx.data``; the
    Transformer encoder layer with ``external_data=False``, one file."""
    import torch

    gru, encoder = _sequence_models()
    example = (torch.randint(0, VOCAB, (2, 7)),)
    axes = {"ids": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    cases = []
    for name, model, extra in [("torch_gru", gru, {}), ("torch_encoder", encoder, {"external_data": False})]:
        path = _version_dir(repo, name) / "model.onnx"
        torch.onnx.export(model, example, str(path), input_names=["ids"], output_names=["logits"],
                          dynamic_axes=axes, verbose=False, **extra)
        cases.append(_torch_case(name, model, path, lengths=(7, 3, 12, 5)))
    return cases


@quiet
def export_torch_fixed(repo: Path, name: str = "torch_fixed") -> Path:
    """The GRU model exported without ``dynamic_axes``: its input is fixed at the example's [2, 7]."""
    import torch

    gru, _ = _sequence_models()
    path = _version_dir(repo, name) / "model.onnx"
    torch.onnx.export(gru, (torch.randint(0, VOCAB, (2, 7)),), str(path), input_names=["ids"],
                      output_names=["logits"], verbose=False)
    return path


# ---------------------------------------------------------------------------------------------
# Families

@dataclass(frozen=True)
class Family:
    """A group of cases built by one function, needing the modules ``needs``."""

    name: str
    needs: tuple[str, ...]
    build: Callable[[Path], list[Case]]

    def missing(self) -> list[str]:
        """The modules of ``needs`` that are not installed."""
        return [m for m in self.needs if importlib.util.find_spec(m) is None]


SKL = ("sklearn", "skl2onnx")
FAMILIES = {f.name: f for f in [
    Family("sklearn", SKL, build_sklearn),
    Family("sklearn_columns", SKL + ("pandas",), build_sklearn_columns),
    Family("xgboost", ("xgboost", "onnxmltools"), build_xgboost),
    Family("lightgbm", ("lightgbm", "onnxmltools"), build_lightgbm),
    Family("catboost", ("catboost",), build_catboost),
    Family("torch", ("torch", "onnxscript"), build_torch),
]}


# ---------------------------------------------------------------------------------------------
# Checking a served case

def _compare(case: Case, got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """What differs between the outputs ``got`` and the library's ``expected`` (empty: nothing)."""
    problems = []
    if sorted(got) != sorted(expected):
        problems.append(f"outputs {sorted(got)}, expected {sorted(expected)}")
    for name in sorted(got.keys() & expected.keys()):
        a, want = got[name], np.asarray(expected[name])
        if a.dtype == object:  # BYTES labels against the library's str labels
            a = np.array([v.decode() for v in a.ravel()]).reshape(a.shape)
        if a.shape != want.shape:
            problems.append(f"{name}: shape {list(a.shape)}, expected {list(want.shape)}")
        elif want.dtype.kind == "f":
            if not np.allclose(a, want, rtol=case.rtol, atol=case.atol):
                worst = float(np.max(np.abs(a.astype(np.float64) - want)))
                problems.append(f"{name}: differs from the library by up to {worst:.3g} "
                                f"(rtol {case.rtol}, atol {case.atol})")
        elif not np.array_equal(a.astype(want.dtype), want):
            problems.append(f"{name}: {a.ravel().tolist()}, expected {want.ravel().tolist()}")
    return problems


def request_problems(url: str, case: Case, protocol: str) -> list[str]:
    """One request of all the rows of ``case`` in ``protocol`` (json, binary or msgpack): what went wrong."""
    from conftest import decode, infer

    resp = infer(url, case.name, protocol, case.inputs)
    if resp.status_code != 200:
        return [f"{protocol}: HTTP {resp.status_code}: {resp.text[:400]}"]
    return [f"{protocol}: {p}" for p in _compare(case, decode(resp)[1], case.expected)]


def concurrent_problems(url: str, case: Case, protocol: str = "json") -> list[str]:
    """One-row requests of ``case``, all sent at once (the batcher joins them where batching is on)."""
    from conftest import decode, infer

    def one(row: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> list[str]:
        resp = infer(url, case.name, protocol, row[0])
        if resp.status_code != 200:
            return [f"one-row: HTTP {resp.status_code}: {resp.text[:400]}"]
        return [f"one-row: {p}" for p in _compare(case, decode(resp)[1], row[1])]

    rows = case.single_rows()
    with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        return [p for found in pool.map(one, rows) for p in found]


def takes_rows(shape: list[int], rows: tuple[int, ...]) -> bool:
    """Whether a tensor ``shape`` of the model metadata (a full shape, the batch dimension included
    whether or not the model is batched) holds ``rows`` (the shape of a tensor of several rows) and
    any other number of rows: a dynamic first dimension, and the others of ``rows`` or dynamic."""
    return len(shape) == len(rows) and shape[0] == -1 and all(d in (-1, r) for d, r in zip(shape[1:], rows[1:]))


def metadata_problems(url: str, case: Case) -> list[str]:
    """What the model metadata of ``case`` says wrongly: inputs and outputs other than the exporter's
    tensors (less the ones left out), or a shape that does not hold what the model takes or returns."""
    from conftest import wire_datatype

    resp = requests.get(f"{url}/v2/models/{case.name}", timeout=10)
    if resp.status_code != 200:
        return [f"metadata: HTTP {resp.status_code}: {resp.text[:400]}"]
    meta = resp.json()
    problems = []
    for key, arrays in (("inputs", case.inputs), ("outputs", case.expected)):
        served = {t["name"]: t for t in meta[key]}
        if sorted(served) != sorted(arrays):
            problems.append(f"metadata: {key} {sorted(served)}, expected {sorted(arrays)}")
        for name in sorted(served.keys() & arrays.keys()):
            tensor, array = served[name], np.asarray(arrays[name])
            datatype = "BYTES" if array.dtype.kind in "OU" else wire_datatype(array)
            if key == "inputs" and tensor["datatype"] != datatype:
                problems.append(f"metadata: {key} {name!r} is {tensor['datatype']}, sent as {datatype}")
            if not takes_rows(tensor["shape"], array.shape):
                problems.append(f"metadata: {key} {name!r} has shape {tensor['shape']}, but the model "
                                f"{'takes' if key == 'inputs' else 'returns'} {list(array.shape)} for "
                                f"{array.shape[0]} rows")
    return problems


def state(url: str) -> dict[str, dict]:
    """The repository index rows by model name."""
    return {r["name"]: r for r in requests.post(url + "/v2/repository/index", timeout=10).json()}


def served_problems(url: str, case: Case, row: dict) -> list[str]:
    """Everything that keeps ``case`` from being served as it comes, given its index ``row``."""
    if row.get("state") != "READY":
        return [f"{row.get('state')}: {row.get('reason', '')}"]
    problems = metadata_problems(url, case)
    problems += [p for protocol in ("json", "binary", "msgpack") for p in request_problems(url, case, protocol)]
    return problems + concurrent_problems(url, case)


# ---------------------------------------------------------------------------------------------
# The count

def main(argv: list[str] | None = None) -> int:
    """Build the families, serve them with ``pyserve serve REPO`` (no config), report per model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES),
                        help="a family to build (repeatable; default: every installed one)")
    parser.add_argument("--keep", type=Path, help="build the repository in this (new) folder and keep it")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))  # conftest's server and wire helpers
    from conftest import start_server

    work = Path(tempfile.mkdtemp(prefix="pyserve-exported-"))
    repo = args.keep or work / "models"
    repo.mkdir(parents=True)
    cases: list[Case] = []
    for name in args.family or sorted(FAMILIES):
        family = FAMILIES[name]
        if family.missing():
            print(f"{name}: skipped, not installed: {', '.join(family.missing())}")
            continue
        t0 = time.perf_counter()
        built = family.build(repo)
        print(f"{name}: exported {len(built)} model{'' if len(built) == 1 else 's'} in {time.perf_counter() - t0:.1f} s")
        cases += built
    server = start_server([str(repo), "--no-strict-readiness"], work / "logs")
    try:
        rows = state(server.url)
        failed = {}
        for case in cases:
            problems = served_problems(server.url, case, rows.get(case.name, {"state": "absent"}))
            if problems:
                failed[case.name] = problems
            print(f"{'ok  ' if not problems else 'FAIL'} {case.name:38} {case.exporter:18} "
                  + ("; ".join(dict.fromkeys(problems))[:600] if problems else ""))
    finally:
        server.stop()
        shutil.rmtree(work)
    print(f"served as they come: {len(cases) - len(failed)} of {len(cases)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
