"""The demo model repository: digits training and ONNX export, textstats, and the cached build."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pyserve.demo
import pyserve.demo.train_digits as train_module
from pyserve.demo import MARKER, build_version, default_cache_dir, demo_repository

onnxruntime = pytest.importorskip("onnxruntime")

TEXTSTATS_DIR = Path(pyserve.demo.__file__).parent / "textstats"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The digits model trained once for the module."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    return train_module.train_digits(tmp_path_factory.mktemp("digits-repo"), seed=0)


@pytest.fixture(scope="module")
def session(digits: dict[str, Any]) -> Any:
    return onnxruntime.InferenceSession(
        str(digits["onnx_path"]), providers=["CPUExecutionProvider"]
    )


def test_train_digits_reaches_accuracy_and_writes_metrics(digits: dict[str, Any]) -> None:
    assert digits["accuracy"] > 0.9
    # The exported model is what gets served: it must be as good as the sklearn one.
    assert digits["onnx_accuracy"] == pytest.approx(digits["accuracy"], abs=0.01)
    model_dir = digits["model_dir"]
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "1",
        "config.toml",
        "metrics.json",
        "samples.npz",
    ]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == digits["accuracy"]
    assert metrics["seed"] == 0
    assert metrics["n_train"] + metrics["n_test"] == 1797
    assert set(metrics["versions"]) >= {"scikit-learn", "skl2onnx"}


def test_onnx_signature(session: Any) -> None:
    [x] = session.get_inputs()
    assert (x.name, x.type, x.shape[1:]) == ("x", "tensor(float)", [64])
    assert not isinstance(x.shape[0], int)  # dynamic batch
    outputs = {o.name: (o.type, o.shape[1:]) for o in session.get_outputs()}
    assert outputs == {"label": ("tensor(int64)", []), "probabilities": ("tensor(float)", [10])}


def test_onnx_predicts_golden_samples(digits: dict[str, Any], session: Any) -> None:
    samples = np.load(digits["model_dir"] / "samples.npz")
    x, expected = samples["x"], samples["label"]
    assert x.dtype == np.float32 and x.shape == (16, 64)
    label, probabilities = session.run(["label", "probabilities"], {"x": x})
    assert label.dtype == np.int64 and label.shape == (16,)
    assert probabilities.dtype == np.float32 and probabilities.shape == (16, 10)
    assert np.mean(label == expected) >= 0.85
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), label)
    # Batch of one gives the same answer as inside the batch.
    [single] = session.run(["label"], {"x": x[3:4]})
    assert single.tolist() == [label[3]]


def test_config_toml_names_the_tensors(digits: dict[str, Any]) -> None:
    config = tomllib.loads((digits["model_dir"] / "config.toml").read_text())
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 64
    assert [(t["name"], t["datatype"], t["shape"]) for t in config["inputs"]] == [
        ("x", "FP32", [64])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in config["outputs"]] == [
        ("label", "INT64", []),
        ("probabilities", "FP32", [10]),
    ]
    assert config["dynamic_batching"] == {"max_queue_delay_us": 1000, "max_queue_size": 4096}
    assert config["onnxruntime"] == {"intra_op_num_threads": 1, "inter_op_num_threads": 1}


def test_missing_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'pyserve\[demo\]'"):
        train_module.train_digits(tmp_path)
    assert not (tmp_path / "digits").exists()


def _load_textstats() -> Any:
    path = TEXTSTATS_DIR / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("textstats_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Model()


def test_textstats_counts_characters_and_words() -> None:
    texts = [
        "hello world",
        "  héllo   wörld\tünïcode\n",
        "",
        "日本語 テキスト",
        "one",
    ]
    batch = np.empty((len(texts) + 1, 1), dtype=object)
    batch[: len(texts), 0] = [t.encode("utf-8") for t in texts]
    batch[-1, 0] = b"ok \xff"  # invalid UTF-8: one replacement character, not a failed batch
    out = _load_textstats().infer({"text": batch})
    assert set(out) == {"characters", "words"}
    for name in ("characters", "words"):
        assert out[name].dtype == np.int32 and out[name].shape == (6, 1)
    assert out["characters"].ravel().tolist() == [11, 24, 0, 8, 3, 4]
    assert out["words"].ravel().tolist() == [2, 3, 0, 2, 1, 2]


def test_textstats_config() -> None:
    config = tomllib.loads((TEXTSTATS_DIR / "config.toml").read_text())
    assert (config["backend"], config["max_batch_size"]) == ("python", 32)
    assert [(t["name"], t["datatype"], t["shape"]) for t in config["inputs"]] == [
        ("text", "BYTES", [1])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in config["outputs"]] == [
        ("characters", "INT32", [1]),
        ("words", "INT32", [1]),
    ]
    assert config["dynamic_batching"] == {"max_queue_delay_us": 500}


def test_default_cache_dir_follows_pyserve_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYSERVE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "demo"
    monkeypatch.delenv("PYSERVE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "pyserve" / "demo"


def test_demo_repository_builds_once(
    digits: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="pyserve.demo"):
        repository = demo_repository(tmp_path)
    assert repository == tmp_path / "repository"
    assert any("held-out accuracy" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in repository.iterdir()) == [MARKER, "digits", "textstats"]
    assert (repository / "textstats" / "1" / "model.py").is_file()
    assert (repository / "textstats" / "config.toml").is_file()
    onnx_path = repository / "digits" / "1" / "model.onnx"
    # Same data and seed give the same model, byte for byte.
    assert onnx_path.read_bytes() == digits["onnx_path"].read_bytes()
    assert json.loads((repository / MARKER).read_text())["version"] == build_version()
    mtime_ns = onnx_path.stat().st_mtime_ns

    def no_training(out_dir: Path, seed: int = 0) -> dict[str, Any]:
        raise AssertionError("the cached repository was rebuilt")

    monkeypatch.setattr(train_module, "train_digits", no_training)
    assert demo_repository(tmp_path) == repository
    assert onnx_path.stat().st_mtime_ns == mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == ["repository"]  # no staging left behind


def _fake_training(monkeypatch: pytest.MonkeyPatch, content: bytes, barrier: Any = None) -> None:
    """Replace training by writing ``content`` as the model, optionally meeting at ``barrier``."""

    def fake(out_dir: Path, seed: int = 0) -> dict[str, Any]:
        if barrier is not None:
            barrier.wait(timeout=10)  # both builders are mid-build before either installs
        (out_dir / "digits" / "1").mkdir(parents=True)
        (out_dir / "digits" / "1" / "model.onnx").write_bytes(content)
        return {"accuracy": 1.0}

    monkeypatch.setattr(train_module, "train_digits", fake)


def test_demo_repository_rebuilds_a_stale_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "repository"
    (stale / "digits").mkdir(parents=True)
    (stale / MARKER).write_text(json.dumps({"version": "0-old"}))
    _fake_training(monkeypatch, b"new model")
    repository = demo_repository(tmp_path)
    assert (repository / "digits" / "1" / "model.onnx").read_bytes() == b"new model"
    assert json.loads((repository / MARKER).read_text())["version"] == build_version()
    assert [p.name for p in tmp_path.iterdir()] == ["repository"]


def test_demo_repository_concurrent_builders_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_training(monkeypatch, b"model", barrier=threading.Barrier(2))
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(demo_repository(tmp_path))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert results == [tmp_path / "repository"] * 2
    repository = results[0]
    assert (repository / "digits" / "1" / "model.onnx").read_bytes() == b"model"
    assert (repository / "textstats" / "1" / "model.py").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["repository"]
