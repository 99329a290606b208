"""Artifacts served by a repository: unpacked once per content, and their provenance while serving.

A repository serves an artifact where it finds one: a version folder whose only model file is a
``*.pyserve`` file (``REPO/<model>/<version>/model.pyserve``, with no ``config.toml`` beside the version
folders: the artifact carries it), or ``pyserve serve --model NAME=FILE.pyserve``. Each artifact is
verified (:func:`pyserve.artifact.open_extracted`: hashes, signature when a public key is configured,
lock policy) and unpacked into a private folder that lives until the server stops; loading the same
bytes again reuses it. The unpacked version folder is then loaded as any other.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyserve.artifact.read import SUFFIX, Extracted, is_artifact
from pyserve.errors import invalid

log = logging.getLogger("pyserve.artifact")

# Extracted version folder -> its artifact: what the server shows as a version's provenance.
_SERVED: dict[Path, Extracted] = {}
_SERVED_LOCK = threading.Lock()
INFO_LABELS = ("artifact_sha256", "lock_sha256", "training_commit")


@dataclass(frozen=True)
class ArtifactSettings:
    """How a server treats artifacts: ``public_key`` (a PEM Ed25519 public key: every artifact must be
    signed by it) and ``lock_policy`` (``refuse``: a direct dependency whose version differs from the
    lock refuses the model; ``warn``: logged). ``unpack_dir``: the folder under which each artifact
    gets its private folder (None: the system's temporary folder); a ``--workers`` server gives each
    worker its own, which the supervisor deletes when the worker exits, also after a ``kill -9``."""

    public_key: Path | None = None
    lock_policy: str = "refuse"
    unpack_dir: Path | None = None


def version_artifact(version_dir: Path) -> Path | None:
    """The ``*.pyserve`` file of a version folder; None when it has none; INVALID_ARGUMENT when it has
    several (which one to serve would be a guess)."""
    if not version_dir.is_dir():
        return None
    found = sorted(p for p in version_dir.iterdir() if p.suffix == SUFFIX and p.is_file())
    if len(found) > 1:
        raise invalid(f"{version_dir}: {len(found)} artifacts ({', '.join(p.name for p in found)}); "
                      "a version folder serves one")
    return found[0] if found else None


def provenance_of(version_dir: Path) -> dict[str, str] | None:
    """The provenance of a served version folder unpacked from an artifact (None for any other
    folder): ``artifact_sha256``, ``lock_sha256``, ``training_commit``, ``artifact_created`` and
    ``artifact_version`` (the version number it was packaged as), all strings."""
    with _SERVED_LOCK:
        extracted = _SERVED.get(Path(version_dir))
    if extracted is None:
        return None
    m = extracted.manifest
    return {"artifact_sha256": extracted.sha256, "lock_sha256": m.lock_sha256,
            "training_commit": m.provenance.training_commit, "artifact_created": m.provenance.created,
            "artifact_version": str(m.version)}


class ArtifactCache:
    """The artifacts a server has unpacked, by file and content; :meth:`close` deletes them all."""

    def __init__(self, settings: ArtifactSettings | None = None) -> None:
        self.settings = settings or ArtifactSettings()
        self._stack = contextlib.ExitStack()
        self._by_key: dict[tuple[Path, str, str], Extracted] = {}
        self._lock = threading.Lock()

    def open(self, path: Path, name: str) -> Extracted:
        """The verified, unpacked artifact ``path`` with its model folder named ``name``; raises as
        :func:`pyserve.artifact.open_extracted`. Runs in an executor thread (it hashes the file)."""
        from pyserve.artifact import open_extracted
        from pyserve.artifact.pack import sha256_file

        path = Path(path)
        if not is_artifact(path):
            raise invalid(f"{path}: not a pyserve artifact (a zip file named *{SUFFIX})")
        key = (path.resolve(), sha256_file(path), name)
        with self._lock:
            extracted = self._by_key.get(key)
            if extracted is not None:
                return extracted
            # An artifact replaced by other bytes is unpacked anew; the old folder stays until the server
            # stops, for the versions still draining from it.
            extracted = self._stack.enter_context(open_extracted(
                path, public_key=self.settings.public_key, lock_policy=self.settings.lock_policy, name=name,
                dest_parent=self.settings.unpack_dir))
            self._by_key[key] = extracted
        with _SERVED_LOCK:
            _SERVED[extracted.version_dir] = extracted
        signature = (f"signed by {extracted.signed_by}" if extracted.signed_by
                     else "signed, signature not checked (no public key)" if extracted.signed else "unsigned")
        log.info("model %s: artifact %s verified (sha256 %s, %d files, %s)", name, path, extracted.sha256,
                 len(extracted.manifest.files), signature)
        return extracted

    def close(self) -> None:
        """Deletes every unpacked artifact."""
        with self._lock:
            with _SERVED_LOCK:
                for extracted in self._by_key.values():
                    _SERVED.pop(extracted.version_dir, None)
            self._by_key.clear()
            self._stack.close()


def artifact_config(extracted: Extracted, override: Any = None,
                    default_max_batch_size: int | None = None) -> Any:
    """The config of an unpacked artifact's model, served under its folder's name: the artifact's
    config.toml with any ``name`` key left out (the served name may differ from the packaged one), or
    ``override`` (a load request's config)."""
    from pyserve.config import DEFAULT_MAX_BATCH_SIZE, load_model_config, read_config_file

    source = f"{extracted.model_dir.name}: the artifact's config.toml"
    if override is None:
        raw = {k: v for k, v in read_config_file(extracted.model_dir).items() if k != "name"}
    else:
        raw, source = dict(override), f"{extracted.model_dir.name}: the load request's config"
    return load_model_config(extracted.model_dir, raw, source,
                             DEFAULT_MAX_BATCH_SIZE if default_max_batch_size is None else default_max_batch_size)
