"""A real ``pyserve serve`` with bearer tokens: model control needs a token (and inference with
--auth-inference), health probes never do, refusals are 401s counted in /metrics and written to the
audit log, tokens rotate by file change and by SIGHUP, the control commands send a token, and a
server with model control open on a public address refuses to start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, infer, wait_until

from pyserve.client import AsyncInferenceClient, InferenceClient, InferenceServerError
from pyserve.errors import ErrorKind
from pyserve.security import read_audit

pytest.importorskip("onnx")

TOKEN = "ops-token-0123456789abcdef"
CI_TOKEN = "ci-token-ZYXWVUTSRQPONMLK"
NEW_TOKEN = "new-token-fedcba9876543210"
ONE = {"x": np.ones((1, 4), np.float32)}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def load(url: str, model: str, headers: dict[str, str] | None = None, **doc: Any) -> requests.Response:
    return requests.post(f"{url}/v2/repository/models/{model}/load", json=doc or None, headers=headers, timeout=60)


def metric(url: str, name: str, **labels: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10, headers=bearer(TOKEN)).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def models(repo: Repo) -> Repo:
    repo.onnx("m", {1: 1.0, 2: 2.0}, config="[version_policy]\nall = true\n")
    return repo


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "tokens"
    path.parent.mkdir()
    path.write_text(f"# rotated by the ops team\nops:{TOKEN}\n")
    return path


def audit_rows(repo: Repo, count: int) -> list[dict[str, Any]]:
    path = repo.root / ".pyserve" / "audit.jsonl"
    wait_until(lambda: len(read_audit(path)) >= count, what=f"{count} audit records")
    return read_audit(path)


def test_control_needs_a_token_and_every_call_is_audited(serve: Any, models: Repo, token_file: Path) -> None:
    server = serve([models.root, "--auth-token-file", token_file], env={"PYSERVE_AUTH_TOKENS": f"ci:{CI_TOKEN}"})
    url = server.url
    for headers, challenge in ((None, 'Bearer realm="pyserve"'),
                               (bearer(TOKEN[:-1]), 'Bearer realm="pyserve", error="invalid_token"'),
                               (bearer(TOKEN + "0"), 'Bearer realm="pyserve", error="invalid_token"'),
                               ({"Authorization": f"Basic {TOKEN}"}, 'Bearer realm="pyserve", error="invalid_token"')):
        r = load(url, "m", headers)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == challenge
        assert "error" in r.json()
    assert load(url, "m", bearer(TOKEN), reason="release 7").status_code == 200
    assert load(url, "m", bearer(CI_TOKEN)).status_code == 200  # the environment's token
    # Every route that changes what is served needs the token.
    changes = [("POST", "/v2/repository/models/m/unload"), ("POST", "/v2/repository/models/m/versions/1/unload"),
               ("POST", "/v2/repository/models/m/versions/1/load"), ("PUT", "/v2/repository/models/m/traffic"),
               ("PUT", "/v2/repository/models/m/aliases/stable"), ("DELETE", "/v2/repository/models/m/aliases/stable"),
               ("POST", "/v2/repository/models/m/rollout"), ("POST", "/v2/repository/models/m/rollout/abort"),
               ("POST", "/v2/repository/models/m/rollout/x" + "y" * 50)]
    for method, path in changes:
        assert requests.request(method, url + path, json={"version": "1"}, timeout=30).status_code == 401, path
    # The management API's reads too; health, inference, metadata and metrics stay open.
    for path in ("/v2/repository/index", "/v2/repository/models/m/traffic", "/v2/repository/models/m/rollout"):
        assert requests.get(url + path, timeout=30).status_code == 401, path
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/m/ready", "/v2/models/m", "/v2", "/metrics"):
        assert requests.get(url + path, timeout=30).status_code == 200, path
    assert infer(url, "m", "json", ONE).status_code == 200
    r = requests.put(url + "/v2/repository/models/m/aliases/stable", json={"version": "1", "reason": "pin"},
                     headers=bearer(TOKEN), timeout=30)
    assert r.status_code == 200, r.text
    assert metric(url, "pyserve_auth_failures_total", scope="control", reason="missing") == 1 + len(changes) + 3
    assert metric(url, "pyserve_auth_failures_total", scope="control", reason="invalid") == 2
    assert metric(url, "pyserve_auth_failures_total", scope="control", reason="malformed") == 1

    rows = audit_rows(models, 4 + 2 + len(changes) + 3 + 1)
    summary = [(r["action"], r["result"], r["status"], r["token_id"]) for r in rows]
    assert summary[:6] == [("load", "UNAUTHENTICATED", 401, None)] * 4 + [("load", "ok", 200, "ops"),
                                                                        ("load", "ok", 200, "ci")]
    assert [s[0] for s in summary[6:6 + len(changes)]] == [
        "unload", "unload", "load", "set_traffic", "set_alias", "remove_alias", "start_rollout", "rollout_abort",
        "rollout_unknown"]
    assert summary[6 + len(changes):] == [("access", "UNAUTHENTICATED", 401, None)] * 3 + [
        ("set_alias", "ok", 200, "ops")]
    assert rows[4]["reason"] == "release 7" and rows[-1]["alias"] == "stable" and rows[-1]["reason"] == "pin"
    assert rows[7]["version"] == "1" and rows[0]["client"].startswith("127.0.0.1:")
    # The audit metric's labels are a fixed set, whatever path a caller sends.
    assert metric(url, "pyserve_audit_records_total", action="rollout_unknown", result="UNAUTHENTICATED") == 1
    # The token is never written: neither in the audit log nor in the server's log.
    for text in ((models.root / ".pyserve" / "audit.jsonl").read_text(), server.log()):
        for token in (TOKEN, CI_TOKEN, TOKEN[:-1]):
            assert token not in text


def test_an_audited_failure_keeps_its_status_and_message(serve: Any, models: Repo, token_file: Path,
                                                         tmp_path: Path) -> None:
    audit_path = tmp_path / "audit" / "control.jsonl"
    server = serve([models.root, "--auth-token-file", token_file, "--audit-log", audit_path])
    r = load(server.url, "nope", bearer(TOKEN))
    assert r.status_code == 404
    wait_until(lambda: read_audit(audit_path), what="the audit record")
    row = read_audit(audit_path)[0]
    assert (row["action"], row["model"], row["result"], row["status"]) == ("load", "nope", "NOT_FOUND", 404)
    assert row["error"] == r.json()["error"]


def test_inference_needs_a_token_with_auth_inference(serve: Any, models: Repo, token_file: Path,
                                                     tmp_path: Path) -> None:
    app_tokens = tmp_path / "app-tokens"
    app_tokens.write_text(f"app:{CI_TOKEN}\n")
    url = serve([models.root, "--auth-token-file", token_file, "--inference-token-file", app_tokens,
                 "--auth-inference"]).url
    for path in ("/v2/models/m", "/v2", "/v2/models/m/config", "/v2/models/stats"):
        r = requests.get(url + path, timeout=30)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), path
        for token in (TOKEN, CI_TOKEN):
            assert requests.get(url + path, headers=bearer(token), timeout=30).status_code == 200, path
    assert infer(url, "m", "json", ONE).status_code == 401
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    for token in (TOKEN, CI_TOKEN):
        r = requests.post(url + "/v2/models/m/infer", json=doc, headers=bearer(token), timeout=30)
        assert r.status_code == 200, r.text
    # pyserve's clients send the token they are given.
    with InferenceClient(url, token=CI_TOKEN) as client:
        assert client.infer("m", ONE)["y"].shape == (1, 4)
    with InferenceClient(url) as client, pytest.raises(InferenceServerError) as info:
        client.infer("m", ONE)
    assert info.value.status == 401 and info.value.kind is ErrorKind.UNAUTHENTICATED

    async def infer_async() -> Any:
        async with AsyncInferenceClient(url, token=CI_TOKEN) as client:
            return await client.infer("m", ONE)

    assert asyncio.run(infer_async())["y"].shape == (1, 4)
    # An inference token cannot change what is served: 403, audited with its id.
    r = load(url, "m", bearer(CI_TOKEN))
    assert r.status_code == 403 and r.headers["WWW-Authenticate"] == 'Bearer realm="pyserve", error="insufficient_scope"'
    assert load(url, "m", bearer(TOKEN)).status_code == 200
    rows = audit_rows(models, 2)
    assert [(r["result"], r["status"], r["token_id"]) for r in rows] == [("PERMISSION_DENIED", 403, "app"),
                                                                         ("ok", 200, "ops")]
    # Probes stay open (Kubernetes sends no token); /metrics too without --auth-metrics.
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/m/ready", "/metrics"):
        assert requests.get(url + path, timeout=30).status_code == 200, path
    assert metric(url, "pyserve_auth_failures_total", scope="inference", reason="missing") == 6  # 4 GETs, 2 infers
    assert metric(url, "pyserve_auth_failures_total", scope="control", reason="insufficient_scope") == 1


def test_metrics_need_a_token_with_auth_metrics(serve: Any, models: Repo, token_file: Path) -> None:
    url = serve([models.root, "--auth-token-file", token_file, "--auth-metrics"]).url
    assert requests.get(url + "/metrics", timeout=30).status_code == 401
    assert requests.get(url + "/metrics", headers=bearer(TOKEN), timeout=30).status_code == 200
    assert infer(url, "m", "json", ONE).status_code == 200
    # The dashboard and drift are statistics, as /metrics: the same token check.
    for path in ("/dashboard", "/dashboard/data", "/v2/drift"):
        assert requests.get(url + path, timeout=30).status_code == 401, path
        assert requests.get(url + path, headers=bearer(TOKEN), timeout=30).status_code != 401, path


def test_the_dashboard_hides_failed_inputs_from_a_server_with_control_tokens(
        serve: Any, models: Repo, token_file: Path, tmp_path: Path) -> None:
    models.config("m", "[payload_log]\nsample_rate = 1.0\n")
    url = serve([models.root, "--auth-token-file", token_file, "--payload-log-dir", tmp_path / "log"]).url
    bad = requests.post(url + "/v2/models/m/infer", timeout=30, json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.5, 2.5, 31337.25]}]})
    assert bad.status_code == 400

    def records() -> list[dict]:
        return requests.get(url + "/dashboard/data", timeout=30).json()["failures"]["records"]

    wait_until(lambda: len(records()) == 1, what="the failed call on the dashboard")
    (record,) = records()
    assert record["status"] == "invalid_argument" and "31337" not in json.dumps(record)
    assert record["inputs"].startswith("(hidden")
    logged = requests.get(url + "/v2/logs", params={"model": "m"}, headers=bearer(TOKEN), timeout=30)
    assert logged.status_code == 200


def test_tokens_rotate_when_the_file_changes(serve: Any, models: Repo, token_file: Path) -> None:
    server = serve([models.root, "--auth-token-file", token_file])
    assert load(server.url, "m", bearer(TOKEN)).status_code == 200
    # As a Kubernetes Secret volume does: the new file is renamed over the old one.
    staged = token_file.with_name("tokens.new")
    staged.write_text(f"next:{NEW_TOKEN}\n")
    os.replace(staged, token_file)
    wait_until(lambda: load(server.url, "m", bearer(NEW_TOKEN)).status_code == 200, timeout_s=30,
               what="the new token to be accepted")
    assert load(server.url, "m", bearer(TOKEN)).status_code == 401
    # A broken file is refused and the tokens in force are kept.
    token_file.write_text("short\n")
    wait_until(lambda: "tokens not reloaded" in server.log(), timeout_s=30, what="the refused reload")
    assert load(server.url, "m", bearer(NEW_TOKEN)).status_code == 200
    assert "next" in server.log() and NEW_TOKEN not in server.log()


def test_sighup_rereads_the_token_file(serve: Any, models: Repo, token_file: Path) -> None:
    server = serve([models.root, "--auth-token-file", token_file])
    # The same size, inode and modification time: only SIGHUP can tell the file changed.
    st = token_file.stat()
    text = token_file.read_text()
    token_file.write_text(text.replace(TOKEN, NEW_TOKEN[:len(TOKEN)]))
    os.utime(token_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert token_file.stat().st_size == st.st_size
    assert load(server.url, "m", bearer(TOKEN)).status_code == 200
    server.signal(signal.SIGHUP)
    wait_until(lambda: load(server.url, "m", bearer(NEW_TOKEN[:len(TOKEN)])).status_code == 200, timeout_s=30,
               what="the token to be reloaded on SIGHUP")
    assert load(server.url, "m", bearer(TOKEN)).status_code == 401
    assert server.proc.poll() is None  # SIGHUP does not end the server


def test_control_commands_send_the_token(serve: Any, models: Repo, token_file: Path, tmp_path: Path) -> None:
    url = serve([models.root, "--auth-token-file", token_file]).url
    client_token = tmp_path / "client-token"
    client_token.write_text(TOKEN + "\n")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "PYSERVE_TOKEN"} | (env or {})
        return subprocess.run([sys.executable, "-m", "pyserve", *args, "--url", url], check=False, capture_output=True,
                              text=True, env=full_env, timeout=120)

    refused = run("model", "load", "m")
    assert refused.returncode == 2 and "bearer token" in refused.stderr
    assert run("model", "load", "m", "--token-file", str(client_token)).returncode == 0
    done = run("alias", "set", "m", "stable", "2", "--reason", "cli", env={"PYSERVE_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert run("traffic", "show", "m", env={"PYSERVE_TOKEN": TOKEN}).returncode == 0
    rows = audit_rows(models, 3)
    assert [(r["action"], r["result"], r["token_id"]) for r in rows] == [
        ("load", "UNAUTHENTICATED", None), ("load", "ok", "ops"), ("set_alias", "ok", "ops")]


def test_open_control_on_a_public_address_refuses_to_start(models: Repo, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYSERVE_AUTH_TOKENS"}
    done = subprocess.run([sys.executable, "-m", "pyserve", "serve", str(models.root), "--host", "0.0.0.0",
                           "--port", "0"], check=False, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "model control (load, unload, traffic, rollouts) would be open to anyone" in done.stderr
    assert "--allow-unauthenticated-control" in done.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--auth-inference"], "--auth-inference needs tokens"),
    (["--auth-token-file", "{tmp}/missing"], "cannot read it"),
    (["--tls-cert", "{tmp}/c.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "{tmp}/c.pem", "--tls-key", "{tmp}/k.pem"], "cannot load them"),
])
def test_security_flags_that_cannot_work_refuse_to_start(models: Repo, tmp_path: Path, flags: list[str],
                                                         message: str) -> None:
    args = [f.format(tmp=tmp_path) for f in flags]
    done = subprocess.run([sys.executable, "-m", "pyserve", "serve", str(models.root), "--port", "0", *args],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_bench_sends_the_token_of_its_environment(serve: Any, models: Repo, token_file: Path, tmp_path: Path) -> None:
    url = serve([models.root, "--auth-token-file", token_file, "--auth-inference", "--auth-metrics"]).url
    argv = [sys.executable, "-m", "pyserve", "bench", "-m", "m", "-u", url, "--concurrency", "1", "--warmup-s", "0",
            "--window-s", "0.2", "--max-windows", "3", "--stability-pct", "1000", "--json", str(tmp_path / "r.json")]
    env = {k: v for k, v in os.environ.items() if k != "PYSERVE_TOKEN"}
    refused = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0 and "401" in refused.stderr + refused.stdout
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env={**env, "PYSERVE_TOKEN": TOKEN}, timeout=120)
    assert done.returncode == 0, done.stderr
    level = json.loads((tmp_path / "r.json").read_text())["levels"][0]
    assert level["requests"] > 0 and level["errors"] == 0
    assert level["server"]["avg_batch_size"] >= 1  # /metrics, scraped with the token too
