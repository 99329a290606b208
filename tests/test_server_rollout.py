"""Rollouts on a real ``pyserve serve``: the server's own controller ticks, the API, metrics and CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Server, decode, encode, wait_until
from test_rollout import make_repo

BASE = "/v2/repository/models/m/rollout"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    from pyserve import cli as pyserve_cli

    status = pyserve_cli.main(list(args))
    out, err = capsys.readouterr()
    return status, json.loads(out) if out.strip() else None, err


def state(url: str) -> dict:
    return requests.get(url + BASE, timeout=5).json()


class Traffic:
    """A thread sending requests (x = 1, 2, ...) with no version until stopped; every answer kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.answers: list[tuple[int, int, str]] = []  # (x, status, version or error)
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        session = requests.Session()
        x = 0
        while not self.stop.is_set():
            x += 1
            body, headers = encode("json", {"x": np.array([x], np.float32)})
            resp = session.post(self.url + "/v2/models/m/infer", data=body, headers=headers, timeout=30)
            if resp.status_code == 200:
                doc, out = decode(resp)
                assert out["y"].ravel().tolist() == [x]
                self.answers.append((x, 200, doc["model_version"]))
            else:
                self.answers.append((x, resp.status_code, resp.json()["error"]))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_the_servers_controller_promotes_each_step_and_exports_metrics(serve: Any, tmp_path: Path) -> None:
    server: Server = serve([make_repo(tmp_path / "models")])
    traffic = Traffic(server.url)
    try:
        resp = requests.post(server.url + BASE, json={"candidate": "2", "steps": [50, 100], "min_duration_s": 0,
                                                      "min_requests": 5, "gates": {"max_p99_ratio": None},
                                                      "reason": "release 2"}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["weights"] == {"stable": 50, "2": 50}
        wait_until(lambda: state(server.url)["phase"] == "succeeded", timeout_s=30, what="the rollout to succeed")
    finally:
        traffic.close()
    doc = state(server.url)
    assert [h["event"] for h in doc["history"]] == ["start", "step", "succeeded"]
    assert requests.get(server.url + "/v2/repository/models/m/traffic", timeout=5).json() == {
        "aliases": {"stable": "2"}, "weights": {"stable": 100}}
    assert all(status == 200 for _, status, _ in traffic.answers)
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    for line in ('pyserve_rollout_step{model="m"} 0.0', 'pyserve_rollout_candidate_weight_percent{model="m"} 100.0',
                 'pyserve_rollout_phase{model="m",phase="succeeded"} 1.0',
                 'pyserve_rollout_gate_value{gate="error_rate",model="m"} 0.0'):
        assert line in metrics, line


def test_a_failing_canary_is_rolled_back_and_stable_never_fails(serve: Any, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    server: Server = serve([make_repo(tmp_path / "models", v2={"fail_every": 10})])
    traffic = Traffic(server.url)
    try:
        status, doc, err = cli(capsys, "rollout", "start", "m", "--candidate", "2", "--steps", "20,100",
                               "--min-duration", "600", "--min-requests", "50", "--max-p99-ratio", "off",
                               "--url", server.url)
        assert status == 0, err
        assert doc["weights"] == {"stable": 80, "2": 20} and doc["spec"]["gates"]["max_p99_ratio"] is None
        wait_until(lambda: state(server.url)["phase"] == "failed", timeout_s=60, what="the rollback")
    finally:
        traffic.close()
    status, doc, _ = cli(capsys, "rollout", "status", "m", "--url", server.url)
    assert status == 0 and "gate error_rate failed" in doc["message"] and doc["weight"] == 0
    failed = [(x, body) for x, status, body in traffic.answers if status != 200]
    assert failed and all(x % 10 == 0 and "injected failure" in body for x, body in failed)
    xs = [x for x, _, _ in traffic.answers]
    assert xs == list(range(1, len(xs) + 1)), "a request was lost or answered twice"
    assert 'pyserve_rollout_rollbacks_total{cause="error_rate",model="m"} 1.0' in requests.get(
        server.url + "/metrics", timeout=5).text


def test_rollout_api_and_cli_control(serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server: Server = serve([make_repo(tmp_path / "models")])
    url = server.url
    resp = requests.get(url + BASE, timeout=5)
    assert resp.status_code == 404 and "model 'm' has no rollout" in resp.json()["error"]
    resp = requests.post(url + BASE, json={"candidate": "2", "steps": [50, 20]}, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"].startswith("rollout.steps[1]: the steps must increase")
    assert not (tmp_path / "models" / "m" / "rollout.json").exists()
    status, _, err = cli(capsys, "rollout", "start", "m", "--candidate", "1", "--steps", "50", "--url", url)
    assert status == 2 and "rollout.candidate: '1' is version 1, the stable version" in err
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"candidate": "2", "steps": [5, 25, 50, 100], "min_duration_s": 3600}))
    status, doc, err = cli(capsys, "rollout", "start", "m", "--file", str(spec), "--reason", "r", "--url", url)
    assert status == 0 and doc["phase"] == "progressing" and doc["step"] == 1, err
    resp = requests.post(url + BASE, json={"candidate": "2", "steps": [50]}, timeout=5)
    assert resp.status_code == 400 and "has a rollout progressing" in resp.json()["error"]
    assert cli(capsys, "rollout", "pause", "m", "--url", url)[1]["phase"] == "paused"
    assert cli(capsys, "rollout", "resume", "m", "--url", url)[1]["phase"] == "progressing"
    assert cli(capsys, "rollout", "promote", "m", "--url", url)[1]["weights"] == {"stable": 75, "2": 25}
    resp = requests.post(url + BASE + "/promote", json={"full": "yes"}, timeout=5)
    assert resp.status_code == 400 and "'full' must be true or false" in resp.json()["error"]
    resp = requests.post(url + BASE + "/rewind", json={}, timeout=5)
    assert resp.status_code == 400 and "expected pause, resume, promote or abort" in resp.json()["error"]
    doc = cli(capsys, "rollout", "abort", "m", "--reason", "bug 12", "--url", url)[1]
    assert doc["phase"] == "aborted" and "aborted by 127.0.0.1:" in doc["message"]
    assert doc["message"].endswith(": bug 12; all the traffic back to stable")
    assert state(url) == doc
    from pyserve.client import InferenceClient

    with InferenceClient(url) as client:
        assert client.start_rollout("m", {"candidate": "2", "steps": [10]}, "again")["step"] == 1
        assert client.rollout_action("m", "promote", full=True)["phase"] == "succeeded"
        assert client.rollout("m")["weights"] == {"2": 100}


def test_rollout_control_is_off_with_model_control(serve: Any, tmp_path: Path) -> None:
    server: Server = serve([make_repo(tmp_path / "models"), "--disable-model-control"])
    for path, body in (("", {"candidate": "2", "steps": [50]}), ("/pause", {}), ("/abort", {})):
        resp = requests.post(server.url + BASE + path, json=body, timeout=5)
        assert resp.status_code == 404 and "model control is disabled" in resp.json()["error"], resp.text
    resp = requests.get(server.url + BASE, timeout=5)  # reading stays available
    assert resp.status_code == 404 and "model 'm' has no rollout" in resp.json()["error"]
    assert not (tmp_path / "models" / "m" / "rollout.json").exists()


def test_a_rollout_in_progress_survives_a_server_restart(serve: Any, tmp_path: Path) -> None:
    root = make_repo(tmp_path / "models")
    server: Server = serve([root])
    resp = requests.post(server.url + BASE, json={"candidate": "2", "steps": [25, 100], "min_duration_s": 3600},
                         timeout=30)
    assert resp.status_code == 200, resp.text
    before = resp.json()
    server.stop()
    server = serve([root])
    after = state(server.url)
    assert (after["phase"], after["step"], after["weights"], after["spec"]) == (
        "progressing", 1, {"stable": 75, "2": 25}, before["spec"])
    assert [h["event"] for h in after["history"]] == ["start", "restart"]
    assert requests.get(server.url + "/v2/repository/models/m/traffic", timeout=5).json()["weights"] == {
        "stable": 75, "2": 25}
    assert 'pyserve_rollout_step{model="m"} 1.0' in requests.get(server.url + "/metrics", timeout=5).text
