"""Model artifacts: one ``.pyserve`` file holding a model version, its config, golden samples and drift
profile, a dependency lock (PEP 751) and a manifest of sha256 hashes and provenance, optionally signed
(Ed25519). See docs/artifact.md.

- :mod:`~pyserve.artifact.manifest`: the manifest and the names of members;
- :mod:`~pyserve.artifact.lock`: the dependency lock, and checking it against this environment;
- :mod:`~pyserve.artifact.pack`: ``pyserve package``'s writer;
- :mod:`~pyserve.artifact.read`: checking and unpacking an artifact;
- :mod:`~pyserve.artifact.sign`: Ed25519 signatures of the manifest;
- :mod:`~pyserve.artifact.mlflow`: importing an MLflow model (ONNX flavour);
- :mod:`~pyserve.artifact.serving`: artifacts served by a repository, their provenance and info metric.

Batch jobs and servers use :func:`open_artifact`::

    with open_artifact(Path("digits.pyserve"), public_key=None, lock_policy="refuse") as model_dir:
        config = load_model_config(model_dir)   # model_dir/config.toml, model_dir/<N>/...
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from pyserve.artifact.read import Extracted, extract, is_artifact
from pyserve.errors import invalid

log = logging.getLogger("pyserve.artifact")

LOCK_POLICIES = ("warn", "refuse")

__all__ = ["LOCK_POLICIES", "Extracted", "check_lock", "is_artifact", "open_artifact", "open_extracted"]


def check_lock(extracted: Extracted, lock_policy: str = "refuse") -> list:
    """Compares the artifact's lock with this environment (:func:`pyserve.artifact.lock.compare`);
    logs every package that differs at WARNING, and raises INVALID_ARGUMENT naming ``pylock.toml`` and
    the packages when ``lock_policy`` is ``refuse`` and a direct dependency's version differs or is
    missing. Returns the rows."""
    from pyserve.artifact import lock as locks
    from pyserve.artifact.manifest import LOCK

    if lock_policy not in LOCK_POLICIES:
        raise invalid(f"lock policy: expected one of {', '.join(LOCK_POLICIES)}, got {lock_policy!r}")
    if not extracted.lock_path.is_file():
        raise invalid(f"{LOCK}: missing from the artifact")
    rows = locks.compare(locks.loads(extracted.lock_path.read_bytes(), LOCK))
    for r in rows:
        if not r.ok:
            log.warning("model %s artifact: %s locked %s, installed %s (%s%s)", extracted.model_dir.name, r.name,
                        r.locked, r.installed or "none", r.status, ", direct dependency" if r.direct else "")
    bad = locks.refused(rows, lock_policy)
    if bad:
        listed = ", ".join(f"{r.name} {r.locked} (installed: {r.installed or 'none'})" for r in bad)
        raise invalid(f"{LOCK}: the model's direct dependencies differ from this environment: {listed}; "
                      "install the locked versions, or set the lock policy to warn")
    return rows


@contextlib.contextmanager
def open_extracted(path: Path, *, public_key: Path | None = None, lock_policy: str | None = "refuse",
                   name: str | None = None, dest_parent: Path | None = None) -> Iterator[Extracted]:
    """As :func:`open_artifact`, yielding the whole :class:`~pyserve.artifact.read.Extracted` (manifest,
    sha256, signature) and naming the model folder ``name`` (default: the manifest's name);
    ``lock_policy`` None leaves the lock to the caller (``pyserve verify`` prints it as a table)."""
    extracted = extract(Path(path), dest_parent, public_key, name)
    try:
        try:
            if lock_policy is not None:
                check_lock(extracted, lock_policy)
        except Exception as e:
            message = getattr(e, "message", str(e))
            raise invalid(f"artifact {path}: {message}") from None
        yield extracted
    finally:
        shutil.rmtree(extracted.root, ignore_errors=True)


def open_artifact(path: Path, *, public_key: Path | None = None,
                  lock_policy: str = "refuse") -> contextlib.AbstractContextManager[Path]:
    """Verifies the artifact ``path`` and yields a folder laid out as a repository's model folder
    (``config.toml``, the packaged version's folder), named as the packaged model; the folder is
    deleted on exit.

    Checks, in order, before anything of the artifact is used: the archive's members (stored regular
    files, safe names, no duplicates, nothing beyond the manifest), the signature when ``public_key``
    (a PEM Ed25519 public key) is given (then required), every member's sha256 and size, and the lock
    against this environment under ``lock_policy`` (``refuse``: a direct dependency's version differing
    refuses; ``warn``: logged). Raises :class:`pyserve.errors.PyserveError` (INVALID_ARGUMENT, or
    NOT_FOUND for a missing file) whose message names the artifact and the member at fault."""

    @contextlib.contextmanager
    def _model_dir() -> Iterator[Path]:
        with open_extracted(path, public_key=public_key, lock_policy=lock_policy) as extracted:
            yield extracted.model_dir

    return _model_dir()
