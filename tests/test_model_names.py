"""Model control stays inside the repository: names that are not models are refused before anything is
read, leave no state behind, and never change the server's readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import requests
from conftest import Repo, onnx_affine_bytes

from pyserve.errors import ErrorKind, PyserveError
from pyserve.repository import ModelRepository, check_model_name
from pyserve.runtime import CompletionPump

pytest.importorskip("onnx")

# (name as sent in the URL path, what the server sees after percent-decoding)
HOSTILE = [
    "..", "%2e%2e", "%2E%2E", ".%2e", ".", "%2e", ".hidden", "%2ehidden", "_private", "%5fprivate",
    "..%5c..", "m%5c..", "%00", "m%00x", "%0a", "%7f", "x" * 300,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serve_module):  # type: ignore[no-untyped-def]
    parent = tmp_path_factory.mktemp("parent")
    # The repository's parent folder looks like a model: loading '..' used to serve it.
    (parent / "1").mkdir()
    (parent / "1" / "model.onnx").write_bytes(onnx_affine_bytes(5.0, 0.0))
    repo = Repo(parent / "models")
    repo.onnx("m", {1: 1.0})
    repo.onnx(".hidden", {1: 1.0})
    repo.onnx("_private", {1: 1.0})
    return serve_module([str(repo.root), "--log-level", "info"])


@pytest.mark.parametrize("action", ["load", "unload"])
@pytest.mark.parametrize("name", HOSTILE)
def test_names_that_are_not_models_are_refused(server, name: str, action: str) -> None:  # type: ignore[no-untyped-def]
    resp = requests.post(f"{server.url}/v2/repository/models/{name}/{action}", timeout=10)
    assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
    assert "error" in resp.json()
    index = requests.get(server.url + "/v2/repository/index", timeout=10).json()
    assert sorted(r["name"] for r in index) == ["m"], index
    assert requests.get(server.url + "/v2/health/ready", timeout=10).status_code == 200


def test_refusals_say_why(server) -> None:  # type: ignore[no-untyped-def]
    cases = {"%2e%2e": "'.' and '..'", "_private": "starting with '.' or '_'", "a%5cb": "path separator",
             "nosuch": "unknown model 'nosuch'"}
    for name, needle in cases.items():
        resp = requests.post(f"{server.url}/v2/repository/models/{name}/load", timeout=10)
        assert needle in resp.json()["error"], (name, resp.text)
    assert requests.post(f"{server.url}/v2/repository/models/nosuch/load", timeout=10).status_code == 404
    assert requests.post(f"{server.url}/v2/repository/models/%2e%2e/load", timeout=10).status_code == 400
    # A client's mistake is not the server's error: nothing about these names at ERROR in the log.
    assert not [line for line in server.log().splitlines() if " ERROR " in line and "nosuch" in line]


def test_the_real_model_still_loads(server) -> None:  # type: ignore[no-untyped-def]
    assert requests.post(f"{server.url}/v2/repository/models/m/load", timeout=30).status_code == 200


@pytest.mark.parametrize("name, ok", [
    ("digits", True), ("my-model.v2", True), ("模型", True), ("a" * 255, True), ("a" * 256, False),
    ("", False), (".", False), ("..", False), ("a/b", False), ("a\\b", False), (".x", False), ("_x", False),
    ("a\x00b", False), ("a\nb", False), ("\ud800", False),
])
def test_check_model_name(name: str, ok: bool) -> None:
    if ok:
        assert check_model_name(name) == name
    else:
        with pytest.raises(PyserveError) as info:
            check_model_name(name)
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT


def test_unknown_names_leave_no_state(tmp_path: Path) -> None:
    repo_dir = Repo(tmp_path / "models")
    repo_dir.onnx("m", {1: 1.0})

    async def main() -> tuple[int, int, int]:
        repo = ModelRepository(CompletionPump(), repo_dir.root)
        await repo.load_all()
        for i in range(2000):
            for call in (repo.load, repo.unload):
                with pytest.raises(PyserveError):
                    await call(f"nosuch-{i}")
                with pytest.raises(PyserveError):
                    await call(f"../x{i}")
        sizes = len(repo.registry.models), len(repo._locks), len(repo.index())
        await repo.close()
        return sizes

    assert asyncio.run(main()) == (1, 1, 1)
