"""A real ``pyserve serve`` subprocess under model control: version policies and version selection,
loading a new version and unloading while requests are in flight, loading a broken model, the stock
tritonclient's repository calls, and SIGTERM with requests in flight."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import (
    GATE_MODEL,
    Gate,
    Repo,
    Server,
    decode,
    encode,
    gate_config,
    http_status,
    infer,
    model_stats,
    run_onnx,
    wait_until,
)

pytest.importorskip("onnx")

# Version 2 of the gated models: answers at once, y = 3 x.
UNGATED_MODEL = """
import numpy as np

class Model:
    def infer(self, inputs):
        x = inputs["x"]
        return {"y": x * np.float32(3.0), "seq": np.zeros((x.shape[0], 1), np.int64)}
"""
ONE = {"x": np.ones((1, 1), np.float32)}


@pytest.fixture(scope="module")
def control_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    repo = Repo(tmp_path_factory.mktemp("control") / "models")
    scales = {1: 1.0, 2: 2.0, 3: 3.0}
    repo.onnx("latest_default", scales)
    repo.onnx("latest_two", scales, config="[version_policy]\nlatest = 2\n")
    repo.onnx("specific", scales, config="[version_policy]\nspecific = [1, 3]\n")
    repo.onnx("every", scales, config="[version_policy]\nall = true\n")
    repo.onnx("hot", {1: 1.0}, config="max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 1000\n")
    for name in ("swapped", "drained"):
        repo.python(name, GATE_MODEL.format(scale=2.0), gate_config(4))
    repo.onnx("tc", {1: 1.0})
    repo.onnx("slow_body", {1: 1.0})
    return repo


@pytest.fixture(scope="module")
def server(serve_module: Any, control_repo: Repo) -> Server:
    return serve_module([control_repo.root])


def index(url: str) -> list[dict]:
    resp = requests.post(url + "/v2/repository/index", timeout=5)
    assert resp.status_code == 200
    return resp.json()


def served_versions(url: str, model: str) -> list[str]:
    return [r["version"] for r in index(url) if r["name"] == model and r["state"] == "READY"]


def load(url: str, model: str) -> requests.Response:
    return requests.post(f"{url}/v2/repository/models/{model}/load", timeout=60)


def unload(url: str, model: str) -> requests.Response:
    return requests.post(f"{url}/v2/repository/models/{model}/unload", timeout=60)


def affine_y(repo: Repo, model: str, version: int, x: np.ndarray) -> np.ndarray:
    return run_onnx(repo.root / model / str(version) / "model.onnx", x)["y"]


# ---------------------------------------------------------------------------------------------
# Versions

@pytest.mark.parametrize(("model", "served"), [
    ("latest_default", [3]), ("latest_two", [2, 3]), ("specific", [1, 3]), ("every", [1, 2, 3]),
])
def test_version_policy_and_selection(
    server: Server, control_repo: Repo, model: str, served: list[int]
) -> None:
    url = server.url
    assert served_versions(url, model) == [str(v) for v in served]
    meta = requests.get(f"{url}/v2/models/{model}", timeout=5).json()
    assert meta["versions"] == [str(v) for v in served]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for version in (1, 2, 3):
        resp = infer(url, model, "json", {"x": x}, version=str(version))
        ready = requests.get(f"{url}/v2/models/{model}/versions/{version}/ready", timeout=5)
        if version in served:
            doc, out = decode(resp)
            assert doc["model_version"] == str(version)
            np.testing.assert_array_equal(out["y"], affine_y(control_repo, model, version, x))
            assert ready.status_code == 200
        else:
            assert resp.status_code == 404, resp.text
            assert f"no version '{version}'" in resp.json()["error"]
            assert ready.status_code == 404
    # Without a version: the newest served one.
    doc, out = decode(infer(url, model, "msgpack", {"x": x}))
    assert doc["model_version"] == str(max(served))
    np.testing.assert_array_equal(out["y"], affine_y(control_repo, model, max(served), x))


def test_new_version_loads_while_requests_are_in_flight(server: Server, control_repo: Repo) -> None:
    """Version 1 holds requests (gate closed) while version 2 is added and loaded: new requests go to
    version 2 at once, and the ones in flight on version 1 finish with version 1's answer."""
    url = server.url
    gate = Gate(control_repo.root / "swapped" / "gate.lock")
    vdir = control_repo.root / "swapped" / "2"
    with ThreadPoolExecutor(8) as pool, gate:
        old = [pool.submit(infer, url, "swapped", "json", ONE) for _ in range(3)]
        wait_until(lambda: model_stats(url, "swapped")["in_flight"] == 3, what="3 requests in flight on v1")
        vdir.mkdir()
        (vdir / "model.py").write_text(UNGATED_MODEL)
        loading = pool.submit(load, url, "swapped")
        wait_until(lambda: served_versions(url, "swapped") == ["2"], what="version 2 serving")
        doc, out = decode(infer(url, "swapped", "binary", ONE))
        assert doc["model_version"] == "2" and out["y"].tolist() == [[3.0]]
        assert infer(url, "swapped", "json", ONE, version="1").status_code == 404
        assert all(not f.done() for f in old)  # still waiting on version 1
        gate.open()
        for f in old:
            doc, out = decode(f.result(timeout=30))
            assert doc["model_version"] == "1" and out["y"].tolist() == [[2.0]]
        assert loading.result(timeout=30).status_code == 200
    assert served_versions(url, "swapped") == ["2"]


def test_hammered_model_loads_a_new_version_without_a_failed_request(
    server: Server, control_repo: Repo
) -> None:
    url = server.url
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    answers = {tuple(affine_y(control_repo, "hot", 1, x).ravel().tolist()): "1"}
    control_repo.onnx_version("hot", 2, scale=5.0, bias=2.0)
    answers[tuple(affine_y(control_repo, "hot", 2, x).ravel().tolist())] = "2"
    stop = threading.Event()
    failures: list[str] = []
    seen: list[tuple[str, str]] = []

    def hammer(protocol: str) -> None:
        session = requests.Session()
        while not stop.is_set():
            body, headers = encode(protocol, {"x": x})
            resp = session.post(url + "/v2/models/hot/infer", data=body, headers=headers, timeout=30)
            if resp.status_code != 200:
                failures.append(f"{resp.status_code} {resp.text[:200]}")
                continue
            doc, out = decode(resp)
            seen.append((doc["model_version"], answers.get(tuple(out["y"].ravel().tolist()), "?")))

    threads = [threading.Thread(target=hammer, args=(p,)) for p in ("json", "binary", "msgpack", "json")]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(seen) >= 20, what="traffic on version 1")
        resp = load(url, "hot")
        assert resp.status_code == 200, resp.text
        mark = len(seen)
        wait_until(lambda: len(seen) >= mark + 20, what="traffic after the load")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    # Each answer came from the version it claims; once load returned, only version 2 answers.
    assert all(claimed == computed for claimed, computed in seen), [s for s in seen if s[0] != s[1]][:5]
    assert seen[0][0] == "1"
    assert {v for v, _ in seen[mark + 4:]} == {"2"}  # the 4 threads may each hold one older answer
    assert served_versions(url, "hot") == ["2"]


def test_request_whose_body_arrives_during_a_load_is_served_by_the_new_version(
    server: Server, control_repo: Repo
) -> None:
    """The server takes a request's headers, then a new version loads (and the old one drains),
    then the body arrives: the request must be served by the new version, not refused."""
    x = np.ones((1, 4), np.float32)
    body, _ = encode("json", {"x": x})
    head = (f"POST /v2/models/slow_body/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        # The server answers 100 Continue once it has parsed the headers: from here on they are read.
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            assert chunk, f"connection closed before the 100 Continue: {interim!r}"
            interim += chunk
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        control_repo.onnx_version("slow_body", 2, scale=4.0, bias=2.0)
        assert load(server.url, "slow_body").status_code == 200
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head_part, _, payload = reply.partition(b"\r\n\r\n")
    assert head_part.split(b"\r\n")[0] == b"HTTP/1.1 200 OK", reply[:300]
    doc = json.loads(payload)
    assert doc["model_version"] == "2"
    y = np.array(doc["outputs"][0]["data"], np.float32).reshape(1, 4)
    np.testing.assert_array_equal(y, affine_y(control_repo, "slow_body", 2, x))


# ---------------------------------------------------------------------------------------------
# Unload, broken and unknown models

def test_unload_drains_in_flight_then_503_until_loaded_again(server: Server, control_repo: Repo) -> None:
    url = server.url
    gate = Gate(control_repo.root / "drained" / "gate.lock")
    with ThreadPoolExecutor(8) as pool, gate:
        in_flight = [pool.submit(infer, url, "drained", "msgpack", ONE) for _ in range(3)]
        wait_until(lambda: model_stats(url, "drained")["in_flight"] == 3, what="3 requests in flight")
        unloading = pool.submit(unload, url, "drained")
        wait_until(lambda: any(r["name"] == "drained" and r["state"] == "UNAVAILABLE" for r in index(url)),
                   what="drained unavailable")
        # New requests are refused as not ready (the model exists: not a 404), with Retry-After.
        resp = infer(url, "drained", "json", ONE)
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1", resp.text
        assert "not ready" in resp.json()["error"] and "unloaded" in resp.json()["error"]
        assert requests.get(url + "/v2/models/drained/ready", timeout=5).status_code == 503
        gate.open()
        # Accepted before the unload: every one is answered.
        for f in in_flight:
            _, out = decode(f.result(timeout=30))
            assert out["y"].tolist() == [[2.0]]
        assert unloading.result(timeout=30).status_code == 200
    row = next(r for r in index(url) if r["name"] == "drained")
    assert row == {"name": "drained", "state": "UNAVAILABLE", "reason": "unloaded"}
    ready_only = requests.post(url + "/v2/repository/index", json={"ready": True}, timeout=5).json()
    assert "drained" not in {r["name"] for r in ready_only} and {r["state"] for r in ready_only} == {"READY"}
    # An explicit unload is the operator's choice: the server stays ready (as Triton's does).
    assert requests.get(url + "/v2/health/ready", timeout=5).status_code == 200
    assert unload(url, "drained").status_code == 200  # unloading twice is fine
    assert load(url, "drained").status_code == 200
    _, out = decode(infer(url, "drained", "json", ONE))
    assert out["y"].tolist() == [[2.0]]


def test_loading_a_broken_model_is_400_and_others_keep_serving(server: Server, control_repo: Repo) -> None:
    url = server.url
    broken = "max_batch_size = 4\n[dynamic_batching]\nmax_queue_size = -1\n"
    control_repo.onnx("late", {1: 1.0}, config=broken)
    resp = load(url, "late")
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]
    assert str(Path("late") / "config.toml") in message and "dynamic_batching.max_queue_size" in message
    row = next(r for r in index(url) if r["name"] == "late")
    assert row["state"] == "UNAVAILABLE" and "max_queue_size" in row["reason"]
    assert infer(url, "late", "json", {"x": np.zeros((1, 4), np.float32)}).status_code == 503
    doc, _ = decode(infer(url, "tc", "json", {"x": np.zeros((1, 4), np.float32)}))
    assert doc["model_name"] == "tc"
    # Fixed on disk and loaded again: served.
    control_repo.config("late", "max_batch_size = 4\n")
    assert load(url, "late").status_code == 200
    x = np.ones((2, 4), np.float32)
    _, out = decode(infer(url, "late", "binary", {"x": x}))
    np.testing.assert_array_equal(out["y"], affine_y(control_repo, "late", 1, x))


def test_unknown_model_control_is_404(server: Server) -> None:
    for action in (load, unload, load):
        resp = action(server.url, "no_such_model")
        assert resp.status_code == 404 and "no_such_model" in resp.json()["error"]
    # A mistyped name leaves no trace: not in the index, and the server stays ready.
    assert "no_such_model" not in {r["name"] for r in index(server.url)}
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200


def test_stock_tritonclient_repository_calls(server: Server, control_repo: Repo) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        rows = client.get_model_repository_index()
        assert {"name": "tc", "version": "1", "state": "READY"} in rows
        client.unload_model("tc")
        assert not client.is_model_ready("tc")
        rows = client.get_model_repository_index()
        assert {"name": "tc", "state": "UNAVAILABLE", "reason": "unloaded"} in rows
        x = np.ones((1, 4), np.float32)
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as err:
            client.infer("tc", [inp])
        assert err.value.status() == "503"
        client.load_model("tc")
        assert client.is_model_ready("tc") and client.is_model_ready("tc", "1")
        y = client.infer("tc", [inp]).as_numpy("y")
        np.testing.assert_array_equal(y, affine_y(control_repo, "tc", 1, x))
        with pytest.raises(InferenceServerException):
            client.load_model("no_such_model")
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# Shutdown

def test_sigterm_answers_every_accepted_request_then_exits_0(serve: Any, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "models")
    repo.python("slow", GATE_MODEL.format(scale=2.0), gate_config(2))
    repo.onnx("broken", {1: 1.0}, config="max_batch_size = -3\n")
    gate = Gate(repo.root / "slow" / "gate.lock")
    # --no-strict-readiness: ready although "broken" failed to load.
    server = serve([repo.root, "--no-strict-readiness"])
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    n = 7
    with ThreadPoolExecutor(n) as pool, gate:
        xs = [np.full((1, 1), i, np.float32) for i in range(n)]
        futures = [pool.submit(infer, server.url, "slow", ("json", "binary", "msgpack")[i % 3], {"x": x},
                               id=f"r{i}") for i, x in enumerate(xs)]
        # One batch running (blocked), the rest queued: all accepted before the signal.
        wait_until(lambda: model_stats(server.url, "slow")["in_flight"] == n, what=f"{n} requests in flight")
        server.signal()
        # The listener closes first: a new connection is refused while the accepted requests wait.
        wait_until(lambda: http_status(server.url + "/v2/health/live", 1.0) is None, what="listener closed")
        assert server.proc.poll() is None
        gate.open()
        for i, f in enumerate(futures):
            doc, out = decode(f.result(timeout=30))
            assert doc["id"] == f"r{i}" and out["y"].tolist() == [[2.0 * i]]
    assert server.wait() == 0, server.log()[-3000:]



@pytest.mark.slow
def test_sigterm_with_a_backend_that_never_returns_exits_1_after_the_timeout(serve: Any, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "models")
    repo.python("stuck", GATE_MODEL.format(scale=1.0), gate_config(1))
    gate = Gate(repo.root / "stuck" / "gate.lock")
    server = serve([repo.root, "--shutdown-timeout-s", "1"])
    with ThreadPoolExecutor(1) as pool, gate:
        pool.submit(infer, server.url, "stuck", "json", {"x": np.ones((1, 1), np.float32)})
        wait_until(lambda: model_stats(server.url, "stuck")["in_flight"] == 1, what="request running")
        server.signal()
        # The handler is cancelled after 1 s, the drain gives up 1 s later: exit 1, said in the log.
        assert server.wait(timeout_s=15) == 1
        assert "did not finish within 1 s of shutdown" in server.log()
