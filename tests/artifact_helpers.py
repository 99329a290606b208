"""Helpers of the artifact tests: a packaged model with golden samples, archives rewritten member by
member (as someone changing an artifact would, with CRCs made right), and Ed25519 key files."""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np

import pytest

from conftest import Repo, run_onnx

EXTRA = ("packaging", "tomli_w", "yaml", "cryptography")  # pyserve[artifact]


def require_artifact_extra() -> None:
    """Skips the calling test module without pyserve[artifact]; fails in CI, which installs it."""
    missing = [m for m in EXTRA if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"pyserve[artifact] is not installed (cannot import {', '.join(missing)})"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message + ": CI must run the artifact tests", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def golden_onnx_model(repo: Repo, name: str = "affine", version: int = 1, scale: float = 2.0) -> Path:
    """An affine ONNX model (tests/conftest.py) with golden samples: its own answers on 4 inputs."""
    path = repo.onnx_version(name, version, scale, bias=1.0)
    x = np.arange(16, dtype=np.float32).reshape(4, 4) / 7
    expected = run_onnx(path, x)
    np.savez(path.parent / "golden.npz", **{"inputs/x": x, "outputs/y": expected["y"],
                                            "outputs/argmax": expected["argmax"]})
    repo.config(name, 'backend = "onnxruntime"\nmax_batch_size = 8\n')
    return repo.root / name


def members(path: Path) -> dict[str, bytes]:
    """The members of an archive, in order."""
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def rewrite(path: Path, out: Path, replace: dict[str, bytes | None] | None = None,
            extra: dict[str, bytes] | None = None, compress: int = zipfile.ZIP_STORED) -> Path:
    """``path`` written again to ``out`` with some members' bytes replaced (None: left out) and
    ``extra`` members added; CRCs and sizes are right, so only pyserve's own checks can catch it."""
    replace = replace or {}
    with zipfile.ZipFile(out, "w", compress) as z:
        for name, data in members(path).items():
            data = replace.get(name, data)
            if data is not None:
                z.writestr(name, data)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return out


def flip(data: bytes, at: int) -> bytes:
    """``data`` with the byte at ``at`` changed (xor 0x01)."""
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def key_pair(folder: Path, stem: str) -> tuple[Path, Path]:
    """(private, public) Ed25519 PEM files, as openssl genpkey -algorithm ed25519 writes them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = folder / f"{stem}.pem", folder / f"{stem}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
