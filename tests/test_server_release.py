"""Safe releases over HTTP on a real ``pyserve serve``: one version loaded and unloaded while the
others serve."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, Server, decode, encode, run_onnx, wait_until

pytest.importorskip("onnx")

X = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.fixture(scope="module")
def release_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("release") / "models")
    repo.onnx("every", {1: 1.0, 2: 2.0, 3: 3.0}, config="max_batch_size = 8\n[version_policy]\nall = true\n")
    return repo


@pytest.fixture(scope="module")
def server(serve_module: Any, release_repo: Repo) -> Server:
    return serve_module([release_repo.root])


def post(url: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.post(url + path, timeout=60, **kwargs)


def served(url: str, model: str) -> list[str]:
    rows = requests.get(url + "/v2/repository/index", timeout=5).json()
    return [r["version"] for r in rows if r["name"] == model and "version" in r]


def expected(repo: Repo, model: str, version: str) -> list[float]:
    return run_onnx(repo.root / model / version / "model.onnx", X)["y"].ravel().tolist()


def test_version_unload_and_load_under_traffic(server: Server, release_repo: Repo) -> None:
    url = server.url
    answers = {v: expected(release_repo, "every", v) for v in ("1", "2", "3")}
    stop = threading.Event()
    failures: list[str] = []
    seen: list[tuple[str, bool]] = []

    def hammer(path: str, protocol: str) -> None:
        session = requests.Session()
        while not stop.is_set():
            body, headers = encode(protocol, {"x": X})
            resp = session.post(url + path, data=body, headers=headers, timeout=30)
            if resp.status_code != 200:
                failures.append(f"{path}: {resp.status_code} {resp.text[:200]}")
                continue
            doc, out = decode(resp)
            seen.append((doc["model_version"], out["y"].ravel().tolist() == answers[doc["model_version"]]))

    threads = [threading.Thread(target=hammer, args=a) for a in (
        ("/v2/models/every/versions/1/infer", "json"), ("/v2/models/every/versions/3/infer", "binary"),
        ("/v2/models/every/infer", "msgpack"))]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(seen) >= 20, what="traffic")
        resp = post(url, "/v2/repository/models/every/versions/2/unload")
        assert resp.status_code == 200 and resp.json() == {}, resp.text
        assert served(url, "every") == ["1", "3"]
        resp = post(url, "/v2/models/every/versions/2/infer", data=encode("json", {"x": X})[0])
        assert resp.status_code == 404 and "no version '2' (serving: 1, 3)" in resp.json()["error"]
        mark = len(seen)
        wait_until(lambda: len(seen) >= mark + 20, what="traffic after the unload")
        resp = post(url, "/v2/repository/models/every/versions/2/load")
        assert resp.status_code == 200, resp.text
        assert served(url, "every") == ["1", "2", "3"]
        doc, out = decode(post(url, "/v2/models/every/versions/2/infer", data=encode("json", {"x": X})[0]))
        assert doc["model_version"] == "2" and out["y"].ravel().tolist() == answers["2"]
        mark = len(seen)
        wait_until(lambda: len(seen) >= mark + 20, what="traffic after the load")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert all(right for _, right in seen)
    assert {v for v, _ in seen} == {"1", "3"}


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/v2/repository/models/every/versions/9/load", 404, "model 'every' has no version folder '9'"),
    ("/v2/repository/models/every/versions/9/unload", 404, "model 'every' has no version '9' loaded"),
    ("/v2/repository/models/every/versions/x1/load", 400, "model 'every' version 'x1': expected a version number"),
    ("/v2/repository/models/nosuch/versions/1/load", 404, "unknown model 'nosuch'"),
    ("/v2/repository/models/%2e%2e/versions/1/unload", 400, "'.' and '..' are not model names"),
])
def test_refused_version_control_changes_nothing(server: Server, path: str, status: int, message: str) -> None:
    before = requests.get(server.url + "/v2/repository/index", timeout=5).json()
    resp = post(server.url, path)
    assert resp.status_code == status and message in resp.json()["error"], resp.text
    assert requests.get(server.url + "/v2/repository/index", timeout=5).json() == before


def test_version_control_is_off_with_model_control(serve: Any, release_repo: Repo, tmp_path: Path) -> None:
    server = serve([release_repo.root, "--disable-model-control"])
    resp = post(server.url, "/v2/repository/models/every/versions/1/unload")
    assert resp.status_code == 404 and "model control is disabled" in resp.json()["error"]
    assert served(server.url, "every") == ["1", "2", "3"]
