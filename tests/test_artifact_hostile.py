"""Hostile ``.pyserve`` archives whose manifest is consistent with their members (so only the reader's
own guards can catch them): each is refused with a message naming what is wrong, by ``pyserve
verify`` with exit status 1 and no traceback, and leaves nothing on disk."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from artifact_helpers import require_artifact_extra

require_artifact_extra()

from pyserve.artifact import open_extracted  # noqa: E402
from pyserve.artifact.manifest import FORMAT, LOCK, MANIFEST  # noqa: E402
from pyserve.cli import main  # noqa: E402
from pyserve.errors import PyserveError  # noqa: E402

LOCK_BYTES = b'lock-version = "1.0"\ncreated-by = "test"\n'


def hostile(path: Path, files: dict[str, bytes], name: str = "m", manifest: bytes | None = None) -> Path:
    """An unsigned archive holding ``files`` and a manifest listing each with its right sha256 and size
    (or the raw ``manifest`` bytes)."""
    doc = {"format": FORMAT, "model": {"name": name, "version": 1, "backend": "onnxruntime"},
           "files": [{"path": p, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in files.items()],
           "provenance": {"pyserve_version": "0.1.0", "created": "2025-11-30T00:00:00Z"}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(MANIFEST, manifest if manifest is not None else json.dumps(doc).encode())
        for p, b in files.items():
            z.writestr(p, b)
    return path


CASES = {
    # A member that is a file and the folder of another: the second cannot be written.
    "file-and-folder": ({"model/1/a": b"x", "model/1/a/b": b"y", LOCK: LOCK_BYTES}, "m", None,
                        "model/1/a/b"),
    # A path part longer than a file name may be (255 bytes on Linux and macOS).
    "long-part": ({"model/" + "a" * 300 + "/x": b"x", LOCK: LOCK_BYTES}, "m", None,
                  "(300 characters) is longer than the 255 bytes"),
    "long-model-name": ({"model/config.toml": b"", LOCK: LOCK_BYTES}, "n" * 300, None, "model.name"),
    "nul-in-model-name": ({"model/config.toml": b"", LOCK: LOCK_BYTES}, "a\x00b", None, "model.name"),
    # JSON nested deeper than Python's recursion limit.
    "deep-manifest": ({}, "m", b'{"format": "pyserve-artifact/1", "model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                      "nested too deeply"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_archive_is_refused_naming_the_fault(tmp_path: Path, case: str) -> None:
    files, name, manifest, expected = CASES[case]
    path = hostile(tmp_path / "bad.pyserve", files, name, manifest)
    dest = tmp_path / "unpack"
    dest.mkdir()
    with pytest.raises(PyserveError) as e:
        with open_extracted(path, dest_parent=dest, lock_policy=None):
            pass
    assert expected in e.value.message and str(path) in e.value.message
    assert len(e.value.message) < 400 + len(str(path))  # a long hostile name is cut in the message
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("case", list(CASES))
def test_verify_of_a_hostile_archive_fails_without_a_traceback(tmp_path: Path, case: str,
                                                               capsys: pytest.CaptureFixture) -> None:
    files, name, manifest, expected = CASES[case]
    path = hostile(tmp_path / "bad.pyserve", files, name, manifest)
    assert main(["verify", str(path), "--no-golden"]) == 1
    out = capsys.readouterr()
    assert f"FAIL: artifact {path}: " in out.out and expected in out.out
    assert "Traceback" not in out.err


@pytest.mark.parametrize("case", ["config-not-toml", "no-version-folder"])
def test_verify_without_golden_still_reads_the_config(tmp_path: Path, case: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    """``--no-golden`` loads no model, but an artifact whose config.toml no server can read, or that lacks
    its version's folder, does not PASS (both did); the message names the member, not the private folder."""
    from pyserve.artifact import lock as locks

    files = {"model/config.toml": b"\xff\xfe not toml" if case == "config-not-toml" else
             b'backend = "onnxruntime"\n[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [4]\n'
             b'[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [4]\n',
             LOCK: locks.dumps(locks.build_lock(["numpy"]))}
    path = hostile(tmp_path / "bad.pyserve", files)
    assert main(["verify", str(path), "--no-golden"]) == 1
    out = capsys.readouterr().out
    expected = "FAIL: model/config.toml: invalid TOML" if case == "config-not-toml" else \
        "FAIL: model/1/: the folder of the packaged version is not in the artifact"
    assert expected in out and "PASS" not in out and "pyserve-artifact-" not in out


@pytest.mark.parametrize("case", ["nan-metadata", "deep-metadata", "missing-folder", "nan-mlmodel"])
def test_package_refuses_bad_inputs_without_a_traceback(repo, tmp_path: Path, case: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Exit 2 naming the flag or file, nothing written: NaN in the metadata (the manifest would not be
    JSON), metadata nested past the recursion limit, an output folder that does not exist (three
    tracebacks or a NaN in the manifest before)."""
    from artifact_helpers import golden_onnx_model

    model_dir = golden_onnx_model(repo)
    out = tmp_path / "out.pyserve"
    meta = tmp_path / "meta.json"
    argv = ["package", str(model_dir), "-o", str(out)]
    if case == "nan-metadata":
        meta.write_text('{"accuracy": NaN}')
        argv += ["--metadata-file", str(meta)]
        expected = f"--metadata-file {meta}: not a readable JSON file: NaN is not a JSON value"
    elif case == "deep-metadata":
        meta.write_text("[" * 100_000 + "]" * 100_000)
        argv += ["--metadata-file", str(meta)]
        expected = f"--metadata-file {meta}: JSON nested too deeply"
    elif case == "missing-folder":
        out = tmp_path / "absent" / "out.pyserve"
        argv[3] = str(out)
        expected = f"-o {out}: the folder {out.parent} does not exist"
    else:
        mlflow_dir = tmp_path / "mlflow"
        mlflow_dir.mkdir()
        (mlflow_dir / "model.onnx").write_bytes((model_dir / "1" / "model.onnx").read_bytes())
        (mlflow_dir / "MLmodel").write_text("flavors:\n  onnx:\n    data: model.onnx\nmetadata:\n  score: .nan\n")
        argv[1] = str(mlflow_dir)
        expected = "provenance: a number of the metadata"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not out.exists()
    if out.parent.is_dir():  # nor the temporary file the artifact is written to before its rename
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


@pytest.mark.parametrize("missing", ["tomli_w", "cryptography"])
def test_a_missing_extra_is_named_not_a_traceback(repo, tmp_path: Path, missing: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Without pyserve[artifact]: ``package`` (tomli-w writes the lock) and ``verify --public-key``
    (cryptography) say which extra to install (both were ModuleNotFoundError tracebacks)."""
    import sys

    from artifact_helpers import golden_onnx_model, key_pair

    model_dir = golden_onnx_model(repo)
    _, public = key_pair(tmp_path, "release")
    artifact = tmp_path / "a.pyserve"
    assert main(["package", str(model_dir), "-o", str(artifact)]) == 0
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as if it were not installed
    capsys.readouterr()
    if missing == "tomli_w":
        assert main(["package", str(model_dir), "-o", str(tmp_path / "b.pyserve")]) == 2
        assert "the artifact's lock needs tomli-w: pip install 'pyserve[artifact]'" in capsys.readouterr().err
    else:
        assert main(["verify", str(artifact), "--public-key", str(public), "--no-golden"]) == 1
        out = capsys.readouterr().out
        assert "signing and checking signatures need the cryptography package" in out and "PASS" not in out
