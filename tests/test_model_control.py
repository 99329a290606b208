"""Model control through the service layer over a real server: a load with Triton's config override,
bodies that are not JSON objects, the readiness of a server whose every --model failed, and the
shutdown log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import Repo, decode, infer, model_stats, run_onnx

pytest.importorskip("onnx")


@pytest.fixture
def server(repo: Repo, serve):  # type: ignore[no-untyped-def]
    repo.onnx("m", {1: 1.0}, config="max_batch_size = 4\n")
    return serve([str(repo.root)])


def config_of(url: str) -> dict:
    return requests.get(url + "/v2/models/m/config", timeout=10).json()


def load(url: str, **kw: object) -> requests.Response:
    return requests.post(url + "/v2/repository/models/m/load", timeout=30, **kw)  # type: ignore[arg-type]


def test_load_applies_a_config_override(server) -> None:  # type: ignore[no-untyped-def]
    assert config_of(server.url)["max_batch_size"] == 4
    # Triton's form: parameters.config is a JSON string.
    override = {"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_us": 500}}
    resp = load(server.url, json={"parameters": {"config": json.dumps(override)}})
    assert resp.status_code == 200, resp.text
    doc = config_of(server.url)
    assert doc["max_batch_size"] == 16 and doc["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    resp = infer(server.url, "m", "json", {"x": np.ones((16, 4), np.float32)})
    assert resp.status_code == 200, resp.text
    # An object is taken too; a plain load goes back to config.toml.
    assert load(server.url, json={"parameters": {"config": {"max_batch_size": 2}}}).status_code == 200
    assert config_of(server.url)["max_batch_size"] == 2
    assert load(server.url).status_code == 200
    assert config_of(server.url)["max_batch_size"] == 4


def test_load_applies_a_changed_config_toml(server, repo: Repo) -> None:  # type: ignore[no-untyped-def]
    """A load after config.toml changed starts the model's versions again with the new config (their
    counters start from 0); a load with the same config keeps the running versions and their counters."""
    eight = {"x": np.arange(32, dtype=np.float32).reshape(8, 4)}
    refused = infer(server.url, "m", "json", eight)
    assert refused.status_code == 400 and "max_batch_size 4" in refused.json()["error"], refused.text
    for _ in range(3):
        assert infer(server.url, "m", "json", {"x": np.ones((1, 4), np.float32)}).status_code == 200
    assert load(server.url).status_code == 200  # config.toml unchanged
    assert model_stats(server.url, "m")["requests_succeeded"] == 3

    repo.config("m", "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 700\n")
    assert load(server.url).status_code == 200
    doc = config_of(server.url)
    assert doc["max_batch_size"] == 8 and doc["dynamic_batching"]["max_queue_delay_microseconds"] == 700
    _, out = decode(infer(server.url, "m", "binary", eight))
    expected = run_onnx(repo.root / "m" / "1" / "model.onnx", eight["x"])
    np.testing.assert_array_equal(out["y"], expected["y"])
    stats = model_stats(server.url, "m")
    assert (stats["requests_succeeded"], stats["samples_inferred"]) == (1, 8)  # a new runner's counters


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "the body is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"parameters": []}', "'parameters' must be a JSON object"),
    (b'{"parameters": {"config": "{oops"}}', "parameters.config is not JSON"),
    (b'{"parameters": {"config": "[1]"}}', "parameters.config must be a JSON object"),
    (b'{"parameters": {"conifg": "{}"}}', "unknown parameter(s) 'conifg'"),
    (b'{"parameters": {"config": "{\\"max_batch_sise\\": 8}"}}', "max_batch_sise: unknown key"),
    (b'{"parameters": {"config": "{\\"max_batch_size\\": -1}"}}', "max_batch_size: expected an integer >= 0"),
])
def test_bad_load_bodies_are_400_and_change_nothing(server, body: bytes, needle: str) -> None:  # type: ignore[no-untyped-def]
    resp = load(server.url, data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"], resp.text
    assert config_of(server.url)["max_batch_size"] == 4
    assert infer(server.url, "m", "json", {"x": np.ones((1, 4), np.float32)}).status_code == 200
    assert requests.get(server.url + "/v2/health/ready", timeout=10).status_code == 200


def test_bad_index_and_unload_bodies_are_400(server) -> None:  # type: ignore[no-untyped-def]
    resp = requests.post(server.url + "/v2/repository/index", data=b"{nope", timeout=10)
    assert resp.status_code == 400 and "not JSON" in resp.json()["error"]
    resp = requests.post(server.url + "/v2/repository/index", json={"ready": "yes"}, timeout=10)
    assert resp.status_code == 400 and "'ready'" in resp.json()["error"]
    resp = requests.post(server.url + "/v2/repository/models/m/unload", data=b"{nope", timeout=10)
    assert resp.status_code == 400
    assert requests.get(server.url + "/v2/models/m/ready", timeout=10).status_code == 200


def test_shutdown_log_ends_with_server_stopped(server) -> None:  # type: ignore[no-untyped-def]
    server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert lines[-1].endswith("pyserve.server: server stopped"), lines[-3:]


def test_a_server_whose_every_model_failed_exits_non_zero(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    proc = subprocess.run([sys.executable, "-m", "pyserve", "serve", "--model", f"b={broken}", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "no --model could be loaded" in proc.stderr.splitlines()[-1], proc.stderr
