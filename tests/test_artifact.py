"""``.pyserve`` artifacts (pyserve.artifact): reproducible packaging, tamper refusal naming the member,
the dependency lock and its policy, Ed25519 signatures, ``pyserve verify``, MLflow import."""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest

from artifact_helpers import flip, golden_onnx_model, key_pair, members, require_artifact_extra, rewrite
from conftest import Repo

require_artifact_extra()

from pyserve.artifact import is_artifact, open_artifact, open_extracted  # noqa: E402
from pyserve.artifact import lock as locks  # noqa: E402
from pyserve.artifact.manifest import LOCK, MANIFEST, SIGNATURE, Manifest  # noqa: E402
from pyserve.artifact.pack import PackageOptions, package  # noqa: E402
from pyserve.cli import main  # noqa: E402
from pyserve.errors import PyserveError  # noqa: E402


@pytest.fixture
def model_dir(repo: Repo) -> Path:
    return golden_onnx_model(repo)


@pytest.fixture
def artifact(model_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "affine.pyserve"
    package(model_dir, out, PackageOptions(training_commit="abc123", metadata={"accuracy": 0.97}))
    return out


def refused(path: Path, **kwargs) -> str:
    """The message of the refusal of ``path``; fails the test when it opens."""
    with pytest.raises(PyserveError) as e:
        with open_artifact(path, **kwargs):
            pass
    return e.value.message


# -- packaging --------------------------------------------------------------------------------------
def test_same_inputs_give_the_same_bytes(model_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.pyserve", tmp_path / "b.pyserve"
    sha_a, _ = package(model_dir, a)
    sha_b, _ = package(model_dir, b)
    assert a.read_bytes() == b.read_bytes() and sha_a == sha_b
    (model_dir / "1" / "notes.txt").write_text("one more file")
    sha_c, _ = package(model_dir, tmp_path / "c.pyserve")
    assert sha_c != sha_a


def test_source_date_epoch_sets_every_timestamp(model_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "a.pyserve"
    _, manifest = package(model_dir, out)
    assert manifest.provenance.created == "2023-11-14T22:13:20Z"
    with zipfile.ZipFile(out) as z:
        assert {i.date_time for i in z.infolist()} == {(2023, 11, 14, 22, 13, 20)}
        assert {i.external_attr >> 16 for i in z.infolist()} == {0o100644}
        names = [i.filename for i in z.infolist()]
    assert names[0] == MANIFEST and names[1:] == sorted(names[1:])
    # Another time of the inputs changes nothing once SOURCE_DATE_EPOCH is set.
    os.utime(model_dir / "1" / "model.onnx", (1, 1))
    package(model_dir, tmp_path / "b.pyserve")
    assert (tmp_path / "b.pyserve").read_bytes() == out.read_bytes()


def test_the_artifact_holds_the_model_lock_and_provenance(artifact: Path) -> None:
    assert is_artifact(artifact)
    held = members(artifact)
    assert set(held) == {MANIFEST, LOCK, "model/config.toml", "model/1/model.onnx", "model/1/golden.npz"}
    manifest = Manifest.parse(held[MANIFEST])
    assert (manifest.name, manifest.version, manifest.backend) == ("affine", 1, "onnxruntime")
    assert manifest.provenance.training_commit == "abc123"
    assert manifest.provenance.metadata == {"accuracy": 0.97}
    lock = locks.loads(held[LOCK], LOCK)
    assert lock["lock-version"] == "1.0"
    versions = {p["name"]: (p["version"], p["tool"]["pyserve"]["direct"]) for p in lock["packages"]}
    assert versions["onnxruntime"] == (md.version("onnxruntime"), True)
    assert versions["numpy"] == (md.version("numpy"), True)
    assert all(not direct for name, (_, direct) in versions.items() if name not in ("numpy", "onnxruntime"))
    assert lock["tool"]["pyserve"]["python-version"]


def test_python_model_locks_what_its_code_imports(repo: Repo, tmp_path: Path) -> None:
    model = repo.python("pycode", """
        import json, numpy as np
        from helper import double
        import onnx.helper

        class Model:
            def infer(self, inputs):
                return {"y": double(inputs["x"])}
        """, 'backend = "python"\nmax_batch_size = 4\n[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [1]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [1]\n')
    (model / "1" / "helper.py").write_text("def double(x):\n    return x * 2\n")
    _, manifest = package(model, tmp_path / "p.pyserve")
    assert {f.path for f in manifest.files} >= {"model/1/model.py", "model/1/helper.py"}
    lock = locks.loads(members(tmp_path / "p.pyserve")[LOCK], LOCK)
    direct = {p["name"] for p in lock["packages"] if p["tool"]["pyserve"]["direct"]}
    assert direct == {"numpy", "onnx"}  # not json (stdlib), not helper (the model's own)
    (model / "1" / "model.py").write_text("import surely_not_installed_pkg\nclass Model: pass\n")
    with pytest.raises(PyserveError, match="surely_not_installed_pkg"):
        package(model, tmp_path / "q.pyserve")


def test_an_artifact_inside_the_version_folder_is_refused(model_dir: Path) -> None:
    package(model_dir, model_dir / "1" / "first.pyserve")
    with pytest.raises(PyserveError, match="first.pyserve: an artifact inside the version folder"):
        package(model_dir, model_dir.parent / "second.pyserve")


def test_a_symbolic_link_is_refused(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "1" / "link.onnx").symlink_to(model_dir / "1" / "model.onnx")
    with pytest.raises(PyserveError, match="link.onnx: a file of the version is a symbolic link"):
        package(model_dir, tmp_path / "a.pyserve")


# -- tamper refusal -----------------------------------------------------------------------------------
def _data_span(path: Path, name: str) -> tuple[int, int]:
    """(offset, length) of a member's bytes in the archive (stored: as they are)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    raw = path.read_bytes()
    header = info.header_offset
    name_len, extra_len = int.from_bytes(raw[header + 26:header + 28], "little"), \
        int.from_bytes(raw[header + 28:header + 30], "little")
    return header + 30 + name_len + extra_len, info.file_size


def _positions(size: int, rng: random.Random, at_most: int = 48) -> list[int]:
    if size <= at_most:
        return list(range(size))
    return sorted({0, size - 1, *rng.sample(range(size), at_most - 2)})


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_every_byte_changed_in_place_is_refused_naming_the_member(model_dir: Path, tmp_path: Path,
                                                                  signed: bool) -> None:
    # In place: the archive's CRC-32 no longer matches (a disk or a transfer changed it). The signature
    # member too is read, and refused, with no key to check it against.
    rng = random.Random(11)
    artifact = tmp_path / "a.pyserve"
    package(model_dir, artifact, PackageOptions(sign_key=key_pair(tmp_path, "k")[0] if signed else None))
    raw = artifact.read_bytes()
    changed = tmp_path / "changed.pyserve"
    assert (SIGNATURE in members(artifact)) == signed
    for name in members(artifact):
        start, size = _data_span(artifact, name)
        for at in _positions(size, rng):
            changed.write_bytes(flip(raw, start + at))
            message = refused(changed)
            assert f"member {name}" in message, (name, at, message)


def test_every_member_rewritten_with_one_byte_changed_is_refused_naming_it(artifact: Path, tmp_path: Path) -> None:
    rng = random.Random(12)
    out = tmp_path / "changed.pyserve"
    for name, data in members(artifact).items():
        if name == MANIFEST:
            continue  # an unsigned manifest rewritten is the signature's job: see the signed test below
        for at in _positions(len(data), rng, 12):
            message = refused(rewrite(artifact, out, {name: flip(data, at)}))
            assert f"member {name}" in message and "sha256" in message, (name, at, message)


def test_a_signed_manifest_rewritten_is_refused_naming_it(model_dir: Path, tmp_path: Path) -> None:
    private, public = key_pair(tmp_path, "release")
    signed = tmp_path / "signed.pyserve"
    package(model_dir, signed, PackageOptions(sign_key=private))
    manifest = members(signed)[MANIFEST]
    out = tmp_path / "changed.pyserve"
    for at in _positions(len(manifest), random.Random(13), 24):
        message = refused(rewrite(signed, out, {MANIFEST: flip(manifest, at)}), public_key=public)
        assert MANIFEST in message and "signature" in message, (at, message)


@pytest.mark.parametrize("case", ["stray", "missing", "traversal", "absolute", "duplicate", "compressed",
                                  "symlink", "not-zip"])
def test_malformed_archives_are_refused(artifact: Path, tmp_path: Path, case: str) -> None:
    out = tmp_path / "bad.pyserve"
    expected = {"stray": "member model/1/extra.py: not listed", "missing": "member model/1/golden.npz: listed",
                "traversal": "member name '../evil.py'", "absolute": "member name '/etc/evil'",
                "duplicate": "appears twice", "compressed": "compressed", "symlink": "not a regular file",
                "not-zip": "not a zip archive"}[case]
    if case == "stray":
        rewrite(artifact, out, extra={"model/1/extra.py": b"import os\n"})
    elif case == "missing":
        rewrite(artifact, out, {"model/1/golden.npz": None})
    elif case == "traversal":
        rewrite(artifact, out, extra={"../evil.py": b"x"})
    elif case == "absolute":
        rewrite(artifact, out, extra={"/etc/evil": b"x"})
    elif case == "duplicate":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
            rewrite(artifact, out, extra={"model/config.toml": b"x"})
    elif case == "compressed":
        rewrite(artifact, out, compress=zipfile.ZIP_DEFLATED)
    elif case == "symlink":
        rewrite(artifact, out, {"model/1/golden.npz": None})
        with zipfile.ZipFile(out, "a") as z:
            info = zipfile.ZipInfo("model/1/golden.npz")
            info.external_attr = 0o120777 << 16
            z.writestr(info, b"/etc/passwd")
    else:
        out.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    assert expected in refused(out)


def test_nothing_is_left_behind_by_a_refusal(artifact: Path, tmp_path: Path) -> None:
    data = members(artifact)["model/1/golden.npz"]
    out = rewrite(artifact, tmp_path / "bad.pyserve", {"model/1/golden.npz": flip(data, 3)})
    dest = tmp_path / "unpack"
    dest.mkdir()
    with pytest.raises(PyserveError):
        with open_extracted(out, dest_parent=dest):
            pass
    assert list(dest.iterdir()) == []
    with open_extracted(artifact, dest_parent=dest) as extracted:
        assert (extracted.model_dir / "1" / "model.onnx").is_file()
        assert (extracted.model_dir / "config.toml").is_file()
    assert list(dest.iterdir()) == []


# -- signatures --------------------------------------------------------------------------------------
def test_signature_checked_with_the_right_key_refused_with_another(model_dir: Path, tmp_path: Path) -> None:
    private, public = key_pair(tmp_path, "release")
    _, other = key_pair(tmp_path, "other")
    signed, unsigned = tmp_path / "signed.pyserve", tmp_path / "unsigned.pyserve"
    package(model_dir, signed, PackageOptions(sign_key=private))
    package(model_dir, unsigned)
    assert SIGNATURE in members(signed) and SIGNATURE not in members(unsigned)
    with open_artifact(signed, public_key=public) as folder:
        assert (folder / "1" / "model.onnx").is_file()
    assert "signature" in refused(signed, public_key=other) and MANIFEST in refused(signed, public_key=other)
    assert "not signed" in refused(unsigned, public_key=public)
    with open_artifact(unsigned):  # no key configured: an unsigned artifact is served
        pass
    garbled = rewrite(signed, tmp_path / "garbled.pyserve", {SIGNATURE: b"!!not base64!!\n"})
    assert f"{SIGNATURE}: not a base64 signature" in refused(garbled, public_key=public)
    assert f"{SIGNATURE}: not a base64 signature" in refused(garbled)  # read even with no key
    short = rewrite(signed, tmp_path / "short.pyserve", {SIGNATURE: b"AAAA\n"})
    assert f"{SIGNATURE}: 3 bytes, an Ed25519 signature has 64" in refused(short)


def test_a_key_file_that_is_not_ed25519_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ec.pem").write_bytes(pem)
    with pytest.raises(PyserveError, match="ec.pem: expected an Ed25519 private key"):
        package(model_dir, tmp_path / "a.pyserve", PackageOptions(sign_key=tmp_path / "ec.pem"))


# -- the lock against the environment ----------------------------------------------------------------
class _MovedDistribution:
    """An installed distribution at another version than the lock's."""

    def __init__(self, real: md.Distribution, version: str) -> None:
        self._real, self.version = real, version

    def read_text(self, name: str) -> str | None:
        return self._real.read_text(name)


def _environment_moved(monkeypatch: pytest.MonkeyPatch, name: str, version: str | None) -> None:
    real = locks._distribution

    def distribution(n: str):  # type: ignore[no-untyped-def]
        if n != name:
            return real(n)
        return None if version is None else _MovedDistribution(real(n), version)

    monkeypatch.setattr(locks, "_distribution", distribution)


def test_a_direct_dependency_moved_is_refused_under_refuse_and_served_under_warn(
        artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _environment_moved(monkeypatch, "onnxruntime", "0.0.1")
    message = refused(artifact)
    assert LOCK in message and f"onnxruntime {md.version('onnxruntime')} (installed: 0.0.1)" in message
    with open_artifact(artifact, lock_policy="warn") as folder:
        assert folder.is_dir()
    assert "onnxruntime locked" in caplog.text and "version differs" in caplog.text


def test_an_indirect_dependency_moved_is_only_reported(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = locks.loads(members(artifact)[LOCK], LOCK)
    indirect = next(p["name"] for p in lock["packages"] if not p["tool"]["pyserve"]["direct"])
    _environment_moved(monkeypatch, indirect, None)
    with open_artifact(artifact) as folder:
        assert folder.is_dir()
    rows = {r.name: r for r in locks.compare(lock)}
    assert rows[indirect].status == locks.STATUS_MISSING and rows["numpy"].ok


def test_lock_policy_must_be_warn_or_refuse(artifact: Path) -> None:
    assert "expected one of warn, refuse" in refused(artifact, lock_policy="sometimes")


# -- pyserve package / verify ------------------------------------------------------------------------
def test_package_and_verify_commands(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    private, public = key_pair(tmp_path, "release")
    out = tmp_path / "affine.pyserve"
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n")
    assert main(["package", str(model_dir), "-o", str(out), "--training-commit", "c0ffee",
                 "--training-data", str(data), "--metadata", "auc=0.9", "--sign-key", str(private)]) == 0
    printed = capsys.readouterr().out
    assert "model affine version 1 (onnxruntime), 4 files" in printed and "sha256 " in printed
    manifest = Manifest.parse(members(out)[MANIFEST])
    assert manifest.provenance.training_data[0][0] == "train.csv"
    assert manifest.provenance.metadata == {"auc": "0.9"}
    assert main(["verify", str(out), "--public-key", str(public)]) == 0
    printed = capsys.readouterr().out
    assert "files: 4 of 4 match" in printed and "signature: valid, ed25519:" in printed
    assert "golden samples: 4 of 4 passed" in printed and printed.rstrip().endswith("PASS")
    assert "onnxruntime" in printed and "training commit c0ffee" in printed


def test_verify_fails_on_a_changed_member(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = members(artifact)["model/1/model.onnx"]
    bad = rewrite(artifact, tmp_path / "bad.pyserve", {"model/1/model.onnx": flip(data, len(data) // 2)})
    assert main(["verify", str(bad)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_fails_on_a_moved_dependency_and_prints_the_table(
        artifact: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _environment_moved(monkeypatch, "numpy", "1.0.0")
    assert main(["verify", str(artifact), "--no-golden"]) == 1
    printed = capsys.readouterr().out
    assert "package" in printed and "locked" in printed and "installed" in printed
    assert f"numpy        {md.version('numpy')}" in printed or "version differs" in printed
    assert "FAIL: direct dependencies differ from the lock: numpy" in printed
    assert main(["verify", str(artifact), "--no-golden", "--lock-policy", "warn"]) == 0


def test_verify_fails_when_the_golden_samples_fail(repo: Repo, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    model = golden_onnx_model(repo, "wrong")
    golden = dict(np.load(model / "1" / "golden.npz"))
    golden["outputs/y"] = golden["outputs/y"] + 1.0  # not what the model answers
    np.savez(model / "1" / "golden.npz", **golden)
    out = tmp_path / "wrong.pyserve"
    package(model, out)
    assert main(["verify", str(out)]) == 1
    assert "golden samples" in capsys.readouterr().out


def test_verify_of_a_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(tmp_path / "none.pyserve")]) == 1
    assert "no such artifact file" in capsys.readouterr().out


# -- MLflow ------------------------------------------------------------------------------------------
# Modelled on what mlflow.onnx.save_model writes (MLflow 2.x): both flavours name the ONNX file.
MLMODEL = """\
artifact_path: model
flavors:
  onnx:
    code: null
    data: model.onnx
    onnx_version: 1.15.0
    providers:
    - CUDAExecutionProvider
    - CPUExecutionProvider
  python_function:
    data: model.onnx
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.onnx
    python_version: 3.11.7
metadata:
  owner: fraud-team
mlflow_version: 2.9.2
model_size_bytes: 312
model_uuid: 5c7f1b0c2a3e4d5f8a9b0c1d2e3f4a5b
run_id: 0f4e2b8c9d7a41b3a6e5f4d3c2b1a098
utc_time_created: '2026-11-29 10:20:31.123456'
"""


def _mlflow_model(folder: Path, mlmodel: str = MLMODEL) -> Path:
    from conftest import onnx_affine_bytes

    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text(mlmodel)
    (folder / "model.onnx").write_bytes(onnx_affine_bytes(3.0, 0.5))
    (folder / "requirements.txt").write_text("mlflow==2.9.2\nonnx==1.15.0\n")
    return folder


@pytest.mark.parametrize("flavour", ["onnx", "python_function"])
def test_mlflow_onnx_model_packages_without_mlflow(tmp_path: Path, flavour: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    text = MLMODEL
    if flavour == "python_function":  # only the pyfunc flavour, loaded by mlflow.onnx
        text = text.replace("  onnx:\n    code: null\n    data: model.onnx\n    onnx_version: 1.15.0\n"
                            "    providers:\n    - CUDAExecutionProvider\n    - CPUExecutionProvider\n", "")
        assert "onnx_version" not in text
    source = _mlflow_model(tmp_path / "mlruns-model", text)
    out = tmp_path / "fraud.pyserve"
    assert main(["package", str(source), "--name", "fraud", "-o", str(out)]) == 0
    manifest = Manifest.parse(members(out)[MANIFEST])
    assert (manifest.name, manifest.backend) == ("fraud", "onnxruntime")
    assert manifest.provenance.imported_from["run_id"] == "0f4e2b8c9d7a41b3a6e5f4d3c2b1a098"
    assert manifest.provenance.imported_from["format"] == "mlflow"
    assert manifest.provenance.metadata == {"owner": "fraud-team"}
    assert members(out)["model/1/model.onnx"] == (source / "model.onnx").read_bytes()
    with pytest.raises(ImportError):
        import mlflow  # noqa: F401  # the import needed no MLflow
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0


def test_mlflow_model_without_onnx_is_refused_naming_the_flavours(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    text = "flavors:\n  sklearn:\n    pickled_model: model.pkl\n  python_function:\n    loader_module: mlflow.sklearn\n"
    source = _mlflow_model(tmp_path / "sk", text)
    assert main(["package", str(source), "-o", str(tmp_path / "x.pyserve")]) == 2
    err = capsys.readouterr().err
    assert "MLmodel: no ONNX model" in err and "found flavors sklearn, python_function" in err
    assert not (tmp_path / "x.pyserve").exists()


# -- in-process serving: provenance ------------------------------------------------------------------
def test_a_host_serving_an_artifact_shows_its_provenance(artifact: Path, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from pyserve.artifact.metrics import ArtifactInfoCollector
    from pyserve.protocol import InferRequest
    from pyserve.service import InferenceService, ModelHost, SingleModel

    sha = __import__("hashlib").sha256(artifact.read_bytes()).hexdigest()
    lock_sha = Manifest.parse(members(artifact)[MANIFEST]).lock_sha256

    async def scenario() -> tuple[dict, bytes, np.ndarray]:
        async with ModelHost(None, [SingleModel("served", artifact)]) as host:
            service = InferenceService(host)
            meta = service.metadata("served")
            registry = CollectorRegistry()
            registry.register(ArtifactInfoCollector(lambda: host.registry.runners(), host.provenance))
            x = np.ones((1, 4), np.float32)
            out = await service.infer("served", None, InferRequest({"x": x}))
            return meta.parameters, generate_latest(registry), out.outputs["y"]

    parameters, exposition, y = asyncio.run(scenario())
    assert parameters["artifact_sha256"] == sha and parameters["lock_sha256"] == lock_sha
    assert parameters["training_commit"] == "abc123"
    line = (f'pyserve_model_artifact_info{{artifact_sha256="{sha}",lock_sha256="{lock_sha}",model="served",'
            f'training_commit="abc123",version="1"}} 1.0')
    assert line in exposition.decode()
    assert y.shape == (1, 4)


def test_a_repository_folder_serving_artifacts_is_checked(artifact: Path, tmp_path: Path) -> None:
    from pyserve.repository.sources import ModelSources

    root = tmp_path / "repo"
    (root / "m" / "3").mkdir(parents=True)
    (root / "m" / "3" / "model.pyserve").write_bytes(artifact.read_bytes())
    sources = ModelSources(root)
    try:
        config, dirs = sources.read("m")
        assert config.name == "m" and list(dirs) == [3] and (dirs[3] / "model.onnx").is_file()
        (root / "m" / "2").mkdir()
        (root / "m" / "2" / "model.onnx").write_bytes(members(artifact)["model/1/model.onnx"])
        with pytest.raises(PyserveError, match="version folders 2 hold no .pyserve artifact while 3 do"):
            sources.read("m")
        (root / "m" / "2" / "model.onnx").unlink()
        (root / "m" / "2").rmdir()
        (root / "m" / "config.toml").write_text('backend = "onnxruntime"\n')
        with pytest.raises(PyserveError, match="take their config from the artifact: remove"):
            sources.read("m")
        (root / "m" / "config.toml").unlink()
        (root / "m" / "3" / "other.pyserve").write_bytes(artifact.read_bytes())
        with pytest.raises(PyserveError, match="2 artifacts"):
            sources.read("m")
    finally:
        unpacked = list(sources.artifacts._by_key.values())
        sources.close()
    assert unpacked and not any(e.root.exists() for e in unpacked)


def test_a_python_model_artifact_verifies_and_runs_its_golden_samples(repo: Repo, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    model = repo.python("doubler", """
        class Model:
            def infer(self, inputs):
                return {"y": inputs["x"] * 2}
        """, 'backend = "python"\nmax_batch_size = 4\n[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [2]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [2]\n')
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.savez(model / "1" / "golden.npz", **{"inputs/x": x, "outputs/y": x * 2})
    out = tmp_path / "doubler.pyserve"
    package(model, out)
    assert main(["verify", str(out)]) == 0
    assert "golden samples: 3 of 3 passed" in capsys.readouterr().out
    # The code in the artifact changed: refused before it is imported (importing it would exit).
    code = members(out)["model/1/model.py"]
    changed = b"import sys\nsys.exit(9)\n" + code
    bad = rewrite(out, tmp_path / "bad.pyserve", {"model/1/model.py": changed})
    assert main(["verify", str(bad)]) == 1
    assert "member model/1/model.py" in capsys.readouterr().out
