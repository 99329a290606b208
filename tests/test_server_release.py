"""Safe releases over HTTP on a real ``pyserve serve``: one version loaded and unloaded while the
others serve."""

from __future__ import annotations

import json
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
    # "gated": version 1 serves; version 2's golden samples expect version 1's answers.
    repo.onnx("gated", {1: 1.0, 2: 2.0}, config="max_batch_size = 8\n[version_policy]\nspecific = [1]\n")
    y1 = run_onnx(repo.root / "gated" / "1" / "model.onnx", X)["y"]
    for version in (1, 2):
        np.savez(repo.root / "gated" / str(version) / "golden.npz", **{"inputs/x": X, "outputs/y": y1})
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
    resp = requests.put(server.url + "/v2/repository/models/every/aliases/stable", json={"version": "1"}, timeout=30)
    assert resp.status_code == 404 and "model control is disabled" in resp.json()["error"]
    assert served(server.url, "every") == ["1", "2", "3"]


# ---------------------------------------------------------------------------------------------
# Aliases over HTTP

def test_aliases_over_http_and_tritonclient(server: Server, release_repo: Repo) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    url = server.url
    resp = requests.put(url + "/v2/repository/models/every/aliases/stable", json={"version": "1", "reason": "go"},
                        timeout=30)
    assert resp.status_code == 200 and resp.json() == {"aliases": {"stable": "1"}, "weights": {}}, resp.text
    resp = requests.put(url + "/v2/repository/models/every/aliases/canary", json={"version": 3}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert requests.get(url + "/v2/repository/models/every/traffic", timeout=5).json() == {
        "aliases": {"stable": "1", "canary": "3"}, "weights": {}}
    meta = requests.get(url + "/v2/models/every", timeout=5).json()
    assert meta["versions"] == ["1", "2", "3"] and meta["aliases"] == {"canary": "3", "stable": "1"}
    meta = requests.get(url + "/v2/models/every/versions/stable", timeout=5).json()
    assert meta["versions"] == ["1"] and meta["aliases"] == {"stable": "1"}
    assert requests.get(url + "/v2/models/every/versions/canary/config", timeout=5).json()["name"] == "every"
    stats = requests.get(url + "/v2/models/every/versions/canary/stats", timeout=5).json()
    assert [s["version"] for s in stats["model_stats"]] == ["3"]
    index = requests.get(url + "/v2/repository/index", timeout=5).json()
    assert {"name": "every", "version": "1", "state": "READY", "aliases": ["stable"]} in index

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(X)
        for alias, version in (("stable", "1"), ("canary", "3")):
            result = client.infer("every", [inp], model_version=alias)
            assert result.get_response()["model_version"] == version
            np.testing.assert_array_equal(result.as_numpy("y").ravel(), expected(release_repo, "every", version))
            assert client.is_model_ready("every", alias)
    finally:
        client.close()

    # Audited with the client's address; a version an alias names cannot be unloaded.
    lines = (release_repo.root / ".pyserve" / "traffic-audit.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["who"].startswith("127.0.0.1:") and last["action"] == "set_alias" and last["reason"] == ""
    assert json.loads(lines[-2])["reason"] == "go"
    resp = post(url, "/v2/repository/models/every/versions/stable/unload")
    assert resp.status_code == 400 and "named by alias(es) 'stable'" in resp.json()["error"]
    for alias in ("stable", "canary"):
        resp = requests.delete(url + f"/v2/repository/models/every/aliases/{alias}", json={"reason": "done"},
                               timeout=30)
        assert resp.status_code == 200, resp.text
    assert requests.get(url + "/v2/repository/models/every/traffic", timeout=5).json() == {"aliases": {}, "weights": {}}
    assert "aliases" not in requests.get(url + "/v2/models/every", timeout=5).json()


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("PUT", "aliases/stable", {"version": "9"}, 400, "policy.aliases.stable: model 'every' version 9 is not loaded"),
    ("PUT", "aliases/stable", {}, 400, "alias request: expected {\"version\""),
    ("PUT", "aliases/stable", {"version": "1", "why": "x"}, 400, "unknown field(s) 'why'"),
    ("PUT", "aliases/stable", {"version": "1", "reason": 5}, 400, "reason: expected a string"),
    ("PUT", "aliases/7", {"version": "1"}, 400, "a number names a version, not an alias"),
    ("DELETE", "aliases/nope", {}, 404, "model 'every' has no alias 'nope'"),
    ("PUT", "aliases/stable", [], 400, "the body must be a JSON object"),
])
def test_bad_alias_requests_are_refused(server: Server, release_repo: Repo, method: str, path: str, body: Any,
                                        status: int, message: str) -> None:
    before = requests.get(server.url + "/v2/repository/models/every/traffic", timeout=5).json()
    resp = requests.request(method, f"{server.url}/v2/repository/models/every/{path}", json=body, timeout=30)
    assert resp.status_code == status and message in resp.json()["error"], resp.text
    assert requests.get(server.url + "/v2/repository/models/every/traffic", timeout=5).json() == before


@pytest.mark.parametrize(("body", "message"), [
    (b"", "traffic policy: the body is empty; send the whole policy"),
    (b" \n", "traffic policy: the body is empty"),
    (b'{"weights": {"1": NaN}}', "traffic policy: the body is not JSON"),
    (b'{"weights": {"1": 1e999}}', "traffic policy: the body is not JSON"),
    (b'{"aliases": {"../x": "1"}}', "policy.aliases: alias '../x': a model name has no path separator"),
    (b'{"aliases": {"": "1"}}', "policy.aliases: alias: expected a non-empty name"),
])
def test_bad_traffic_bodies_are_refused_and_change_nothing(server: Server, body: bytes, message: str) -> None:
    url = server.url + "/v2/repository/models/every"
    resp = requests.put(url + "/aliases/stable", json={"version": "1"}, timeout=30)
    assert resp.status_code == 200, resp.text
    before = requests.get(url + "/traffic", timeout=5).json()
    resp = requests.put(url + "/traffic", data=body, timeout=30)
    assert resp.status_code == 400 and message in resp.json()["error"], resp.text
    assert requests.get(url + "/traffic", timeout=5).json() == before
    assert requests.delete(url + "/aliases/stable", timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------------
# Traffic policy over HTTP and the CLI

def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    from pyserve import cli as pyserve_cli

    status = pyserve_cli.main(list(args))
    out, err = capsys.readouterr()
    return status, json.loads(out) if out.strip() else None, err


def test_weighted_split_over_http_by_header_and_request_id(
    server: Server, release_repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyserve.release import TrafficPolicy

    url = server.url
    status, doc, err = cli(capsys, "traffic", "set", "every", "--url", url, "--weights", "1=70,3=30",
                           "--routing-header", "X-User", "--reason", "canary 30%")
    assert status == 0, err
    assert doc == {"aliases": {}, "weights": {"1": 70, "3": 30}, "routing_header": "x-user"}
    policy = TrafficPolicy.from_doc(doc)
    session = requests.Session()
    counts = {"1": 0, "3": 0}
    for i in range(200):
        key = f"user-{i}"
        body, headers = encode("json", {"x": X})
        for _ in range(2):  # sticky: the same key twice, the same version
            resp = session.post(url + "/v2/models/every/infer", data=body, headers={**headers, "X-User": key},
                                timeout=30)
            doc, out = decode(resp)
            assert doc["model_version"] == str(policy.pick(key))
            assert out["y"].ravel().tolist() == expected(release_repo, "every", doc["model_version"])
        counts[doc["model_version"]] += 1
        # No header: the request id is the key.
        body, headers = encode("msgpack", {"x": X}, id=key)
        doc, _ = decode(session.post(url + "/v2/models/every/infer", data=body, headers=headers, timeout=30))
        assert doc["model_version"] == str(policy.pick(key))
        # A version named: no split.
        doc, _ = decode(session.post(url + "/v2/models/every/versions/2/infer", data=body, headers=headers,
                                     timeout=30))
        assert doc["model_version"] == "2"
    assert 70 - 10 < counts["1"] / 2 < 70 + 10

    status, doc, err = cli(capsys, "traffic", "set", "every", "--url", url, "--weights", "1=70,3=40")
    assert status == 2 and "policy.weights: the percentages must sum to 100, got 110" in err
    status, doc, _ = cli(capsys, "traffic", "show", "every", "--url", url)
    assert doc["weights"] == {"1": 70, "3": 30}
    metrics = requests.get(url + "/metrics", timeout=5).text
    assert 'pyserve_traffic_policy_changes_total{model="every"}' in metrics
    resp = requests.put(url + "/v2/repository/models/every/traffic", json={"reason": "back to newest"}, timeout=30)
    assert resp.status_code == 200 and resp.json() == {"aliases": {}, "weights": {}}
    assert not (release_repo.root / "every" / "traffic.json").read_text().count("x-user")


def test_cli_model_and_alias_commands(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    url = server.url
    assert cli(capsys, "model", "unload", "every", "--version", "2", "--url", url)[0] == 0
    assert served(url, "every") == ["1", "3"]
    assert cli(capsys, "model", "load", "every", "--version", "2", "--url", url)[0] == 0
    assert served(url, "every") == ["1", "2", "3"]
    status, doc, _ = cli(capsys, "alias", "set", "every", "stable", "2", "--url", url, "--reason", "r")
    assert status == 0 and doc["aliases"] == {"stable": "2"}
    status, _, err = cli(capsys, "model", "unload", "every", "--version", "stable", "--url", url)
    assert status == 2 and "pyserve model: model 'every' version 2 is named by alias(es) 'stable'" in err
    status, doc, _ = cli(capsys, "alias", "remove", "every", "stable", "--url", url)
    assert status == 0 and doc["aliases"] == {}
    status, _, err = cli(capsys, "alias", "remove", "every", "stable", "--url", url)
    assert status == 2 and "has no alias 'stable'" in err


def test_python_clients_model_control_calls(server: Server) -> None:
    import asyncio

    from pyserve.client import AsyncInferenceClient, InferenceClient, InferenceServerError

    with InferenceClient(server.url) as client:
        client.unload_model("every", 2)
        assert served(server.url, "every") == ["1", "3"]
        client.load_model("every", "2")
        assert client.set_alias("every", "stable", 2, "r") == {"aliases": {"stable": "2"}, "weights": {}}
        assert client.infer("every", {"x": X}, version="stable")["y"].shape == (1, 4)
        with pytest.raises(InferenceServerError) as e:
            client.set_traffic_policy("every", {"weights": {"1": 50}})
        assert e.value.status == 400 and "sum to 100, got 50" in e.value.message
        policy = client.set_traffic_policy("every", {"aliases": {"stable": "2"}, "weights": {"stable": 100}})
        assert client.traffic_policy("every") == policy == {"aliases": {"stable": "2"}, "weights": {"stable": 100}}

    async def run_async() -> None:
        async with AsyncInferenceClient(server.url) as client:
            assert await client.traffic_policy("every") == policy
            assert await client.set_traffic_policy("every", {}, "reset") == {"aliases": {}, "weights": {}}
            await client.set_alias("every", "stable", "1")
            assert (await client.remove_alias("every", "stable"))["aliases"] == {}
            await client.unload_model("every", "3")
            await client.load_model("every", 3)

    asyncio.run(run_async())
    assert served(server.url, "every") == ["1", "2", "3"]


def test_version_load_takes_no_config_override(server: Server) -> None:
    resp = post(server.url, "/v2/repository/models/every/versions/1/load",
                json={"parameters": {"config": {"max_batch_size": 4}}})
    assert resp.status_code == 400 and "parameters.config is for the load of the whole model" in resp.json()["error"]


def test_golden_samples_refuse_a_wrong_version_over_http(server: Server) -> None:
    resp = post(server.url, "/v2/repository/models/gated/versions/2/load")
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]
    assert message.startswith("model 'gated' version 2 failed its golden samples (")
    assert "gated/2/golden.npz): sample 0, output 'y': 4 of 4 values differ" in message
    assert served(server.url, "gated") == ["1"]
    assert f"ERROR pyserve.release: {message}; the version is refused and takes no traffic" in server.log()
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert 'pyserve_golden_checks_total{model="gated",result="passed",version="1"} 1.0' in metrics
    assert 'pyserve_golden_checks_total{model="gated",result="failed",version="2"} 1.0' in metrics


def test_shadow_over_http_is_measured_and_never_answered(server: Server, release_repo: Repo) -> None:
    url = server.url
    resp = requests.put(url + "/v2/repository/models/every/traffic", timeout=30,
                        json={"weights": {"1": 100}, "shadow": {"target": "3", "percent": 100}, "reason": "shadow 3"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["shadow"] == {"target": "3", "percent": 100, "max_in_flight": 64}
    session = requests.Session()
    for protocol in ("json", "binary", "msgpack") * 5:
        body, headers = encode(protocol, {"x": X})
        doc, out = decode(session.post(url + "/v2/models/every/infer", data=body, headers=headers, timeout=30))
        assert doc["model_version"] == "1" and out["y"].ravel().tolist() == expected(release_repo, "every", "1")

    def compared() -> float:
        for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
            if line.startswith('pyserve_shadow_requests_total{model="every",outcome="compared",version="3"}'):
                return float(line.split()[-1])
        return 0.0

    wait_until(lambda: compared() == 15, what="15 mirrored requests compared")
    metrics = requests.get(url + "/metrics", timeout=5).text
    assert 'pyserve_shadow_output_comparisons_total{model="every",output="y",result="disagree",version="3"} 15.0' \
        in metrics
    assert "pyserve_shadow_duration_seconds_count" in metrics
    assert requests.put(url + "/v2/repository/models/every/traffic", json={}, timeout=30).status_code == 200
