"""Safe releases in-process (ModelHost + InferenceService + ModelControl, no HTTP): one version
loaded and unloaded while the others serve."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Repo, run_service

from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol import InferRequest
from pyserve.service import InferenceService, ModelControl

pytest.importorskip("onnx")

X = np.arange(4, dtype=np.float32).reshape(1, 4)


def affine(version: int) -> np.ndarray:
    """What version ``version`` of the test models answers for X (conftest's affine model: scale =
    version, bias = version)."""
    weights = np.float32(version) * (1 + 0.25 * np.arange(4, dtype=np.float32))
    return X * weights + np.float32(version)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    repo = Repo(tmp_path / "models")
    repo.onnx("every", {1: 1.0, 2: 2.0, 3: 3.0}, config="max_batch_size = 8\n[version_policy]\nall = true\n")
    repo.onnx("newest", {1: 1.0, 2: 2.0})  # serves version 2 only (latest = 1)
    return repo.root


async def _hammer(service: InferenceService, model: str, version: str | None, stop: asyncio.Event,
                  answers: list[tuple[str, list[float]]], failures: list[str]) -> None:
    """Sends requests one after another until ``stop``, recording each answer or failure."""
    while not stop.is_set():
        try:
            resp = await service.infer(model, version, InferRequest({"x": X}))
        except PyserveError as e:
            failures.append(f"{model}/{version}: {e.kind.name} {e.message}")
        else:
            answers.append((resp.model_version, resp.outputs["y"].ravel().tolist()))
        await asyncio.sleep(0)


def served(service: InferenceService, model: str) -> list[str]:
    return [r["version"] for r in ModelControl(service.host).index() if r["name"] == model and "version" in r]


def test_one_version_unloads_and_loads_while_the_others_serve(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        stop = asyncio.Event()
        answers: list[tuple[str, list[float]]] = []
        failures: list[str] = []
        tasks = [asyncio.create_task(_hammer(service, "every", v, stop, answers, failures))
                 for v in ("1", "3", None, "3")]
        while len(answers) < 40:
            await asyncio.sleep(0.001)
        await control.unload_version("every", "2")
        assert served(service, "every") == ["1", "3"]
        with pytest.raises(PyserveError) as e:
            await service.infer("every", "2", InferRequest({"x": X}))
        assert e.value.kind is ErrorKind.NOT_FOUND and "serving: 1, 3" in e.value.message
        mark = len(answers)
        while len(answers) < mark + 40:
            await asyncio.sleep(0.001)
        await control.load_version("every", "2")
        assert served(service, "every") == ["1", "2", "3"]
        resp = await service.infer("every", "2", InferRequest({"x": X}))
        assert resp.outputs["y"].tolist() == affine(2).tolist()
        mark = len(answers)
        while len(answers) < mark + 40:
            await asyncio.sleep(0.001)
        stop.set()
        await asyncio.gather(*tasks)
        assert not failures, failures[:5]
        # Each answer came from the version it names: no request saw a half-loaded version.
        for version, y in answers:
            assert y == affine(int(version)).ravel().tolist()
        assert {v for v, _ in answers} == {"1", "3"}

    run_service(models, body)


def test_version_load_ignores_the_version_policy_until_the_model_loads_again(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        assert served(service, "newest") == ["2"]
        await control.load_version("newest", "1")
        assert served(service, "newest") == ["1", "2"]
        resp = await service.infer("newest", "1", InferRequest({"x": X}))
        assert resp.model_version == "1" and resp.outputs["y"].tolist() == affine(1).tolist()
        await control.load("newest")  # the whole model: its version_policy again
        assert served(service, "newest") == ["2"]

    run_service(models, body)


def test_unloading_the_last_version_unloads_the_model(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        await control.unload_version("newest", "2")
        row, = [r for r in control.index() if r["name"] == "newest"]
        assert row == {"name": "newest", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert service.host.ready()  # an unload on request keeps the server ready
        await control.load_version("newest", "2")
        assert served(service, "newest") == ["2"]

    run_service(models, body)


@pytest.mark.parametrize(("model", "version", "kind", "message"), [
    ("every", "7", ErrorKind.NOT_FOUND, "model 'every' has no version folder '7' (version folders: 1, 2, 3)"),
    ("every", "stable", ErrorKind.INVALID_ARGUMENT, "model 'every' version 'stable': expected a version number"),
    ("every", "0", ErrorKind.INVALID_ARGUMENT, "expected a version number"),
    ("nope", "1", ErrorKind.NOT_FOUND, "unknown model 'nope'"),
    ("..", "1", ErrorKind.INVALID_ARGUMENT, "'.' and '..' are not model names"),
])
def test_bad_version_loads_are_refused_and_change_nothing(
    models: Path, model: str, version: str, kind: ErrorKind, message: str
) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        control = ModelControl(service.host)
        before = control.index()
        with pytest.raises(PyserveError) as e:
            await control.load_version(model, version)
        assert e.value.kind is kind and message in e.value.message, e.value.message
        with pytest.raises(PyserveError) as e:
            await control.unload_version(model, version)
        assert e.value.kind is kind or kind is ErrorKind.NOT_FOUND
        assert control.index() == before

    run_service(models, body)


def test_version_that_fails_to_load_changes_nothing(models: Path) -> None:
    async def body(service: InferenceService, errors: Any) -> None:
        (models / "every" / "4").mkdir()
        (models / "every" / "4" / "model.onnx").write_bytes(b"not an onnx model")
        control = ModelControl(service.host)
        before = control.index()
        with pytest.raises(PyserveError) as e:
            await control.load_version("every", "4")
        assert e.value.kind is ErrorKind.INVALID_ARGUMENT
        assert control.index() == before
        resp = await service.infer("every", None, InferRequest({"x": X}))
        assert resp.model_version == "3"

    run_service(models, body)
