"""Artifacts served over HTTP: the same answers as their source folder, provenance in metadata and
/metrics, and refusals at load (tampered, unsigned, lock mismatch) that name what is wrong."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

from artifact_helpers import flip, golden_onnx_model, key_pair, members, require_artifact_extra, rewrite
from conftest import Repo, decode, infer

require_artifact_extra()

from pyserve.artifact.manifest import LOCK, MANIFEST, Manifest  # noqa: E402
from pyserve.artifact.pack import PackageOptions, package  # noqa: E402


def relock(artifact: Path, out: Path, versions: dict[str, str]) -> Path:
    """``artifact`` as if packaged where ``versions`` (package -> version) were installed: its lock
    changed and its (unsigned) manifest made to agree."""
    import tomllib

    import tomli_w

    held = members(artifact)
    lock = tomllib.loads(held[LOCK].decode())
    for p in lock["packages"]:
        p["version"] = versions.get(p["name"], p["version"])
    lock_bytes = tomli_w.dumps(lock).encode()
    doc = json.loads(held[MANIFEST])
    for f in doc["files"]:
        if f["path"] == LOCK:
            f["sha256"], f["size"] = hashlib.sha256(lock_bytes).hexdigest(), len(lock_bytes)
    manifest = (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
    return rewrite(artifact, out, {LOCK: lock_bytes, MANIFEST: manifest})


def index(url: str) -> dict[str, dict]:
    return {m["name"]: m for m in requests.post(url + "/v2/repository/index", timeout=10).json()}


def answers(url: str, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    resp = infer(url, model, "json", {"x": x})
    assert resp.status_code == 200, resp.text
    return decode(resp)[1]


@pytest.mark.slow
def test_artifacts_serve_as_their_source_with_provenance_and_refusals(repo: Repo, tmp_path: Path, serve) -> None:
    source = golden_onnx_model(repo, "affine")
    private, public = key_pair(tmp_path, "release")
    signed = tmp_path / "affine.pyserve"
    sha, manifest = package(source, signed, PackageOptions(training_commit="9f1e2d3", sign_key=private))
    # The same artifact in a version folder of the repository (no config.toml: the artifact has it) ...
    (repo.root / "packed" / "2").mkdir(parents=True)
    (repo.root / "packed" / "2" / "model.pyserve").write_bytes(signed.read_bytes())
    # ... unsigned, and signed but with a member changed.
    unsigned = tmp_path / "unsigned.pyserve"
    package(source, unsigned)
    (repo.root / "unsigned" / "1").mkdir(parents=True)
    (repo.root / "unsigned" / "1" / "model.pyserve").write_bytes(unsigned.read_bytes())
    onnx = members(signed)["model/1/model.onnx"]
    (repo.root / "tampered" / "1").mkdir(parents=True)
    rewrite(signed, repo.root / "tampered" / "1" / "model.pyserve", {"model/1/model.onnx": flip(onnx, 100)})

    server = serve([repo.root, "--model", f"single={signed}", "--artifact-public-key", public,
                    "--no-strict-readiness"])
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    want = answers(server.url, "affine", x)
    for name in ("packed", "single"):
        got = answers(server.url, name, x)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])

    states = index(server.url)
    assert states["packed"]["state"] == "READY" and states["single"]["state"] == "READY"
    assert states["unsigned"]["state"] == "UNAVAILABLE" and "not signed" in states["unsigned"]["reason"]
    assert states["tampered"]["state"] == "UNAVAILABLE"
    assert "member model/1/model.onnx" in states["tampered"]["reason"]
    assert "member model/1/model.onnx" in server.log()

    expected = {"artifact_sha256": sha, "lock_sha256": manifest.lock_sha256, "training_commit": "9f1e2d3"}
    for name, version in (("packed", "2"), ("single", "1")):
        meta = requests.get(f"{server.url}/v2/models/{name}", timeout=10).json()
        assert meta["versions"] == [version]
        assert {k: meta["parameters"][k] for k in expected} == expected
        assert meta["parameters"]["artifact_version"] == "1"
    assert "parameters" not in requests.get(f"{server.url}/v2/models/affine", timeout=10).json()
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    for name, version in (("packed", "2"), ("single", "1")):
        line = (f'pyserve_model_artifact_info{{artifact_sha256="{sha}",lock_sha256="{manifest.lock_sha256}",'
                f'model="{name}",training_commit="9f1e2d3",version="{version}"}} 1.0')
        assert line in metrics
    info = [ln for ln in metrics.splitlines() if ln.startswith("pyserve_model_artifact_info")]
    assert len(info) == 2  # the folder model and the refused ones have none


@pytest.mark.slow
def test_lock_mismatch_refused_by_default_and_served_under_warn(repo: Repo, tmp_path: Path, serve) -> None:
    source = golden_onnx_model(repo, "affine")
    artifact = tmp_path / "affine.pyserve"
    package(source, artifact)
    moved = relock(artifact, tmp_path / "moved.pyserve", {"onnxruntime": "0.0.1"})
    refusing = serve([repo.root, "--model", f"m={moved}"], wait_ready=False)
    states = index(refusing.url)
    assert states["m"]["state"] == "UNAVAILABLE"
    assert LOCK in states["m"]["reason"] and "onnxruntime 0.0.1" in states["m"]["reason"]
    refusing.stop()
    warning = serve(["--model", f"m={moved}", "--artifact-lock-policy", "warn"])
    x = np.ones((1, 4), np.float32)
    assert set(answers(warning.url, "m", x)) == {"y", "argmax"}
    assert "model m artifact: onnxruntime locked 0.0.1" in warning.log()


def test_model_flags_do_not_apply_to_an_artifact(repo: Repo, tmp_path: Path) -> None:
    import subprocess
    import sys

    artifact = tmp_path / "a.pyserve"
    package(golden_onnx_model(repo, "affine"), artifact)
    done = subprocess.run([sys.executable, "-m", "pyserve", "serve", "--model", f"m={artifact}",
                           "--max-batch-size", "4"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--max-batch-size: not for --model m=" in done.stderr and "carries its own config.toml" in done.stderr
    assert zipfile.is_zipfile(artifact) and Manifest.parse(members(artifact)[MANIFEST]).name == "affine"
