"""The built-in demo model repository that ``pyserve serve`` serves when given no repository.

It holds two models:

- ``digits``: an ONNX classifier of 8x8 digit images, trained on first use from the data that
  scikit-learn ships (``pyserve.demo.train_digits``; needs ``pip install 'pyserve[demo]'``);
- ``textstats``: a Python-backend model counting characters and words, copied from this package.

The repository is built once into a cache folder and reused. Its marker records a build version
that covers the training script and the packaged files, so upgrading pyserve rebuilds it when they
change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["DEMO_VERSION", "build_version", "default_cache_dir", "demo_repository"]

logger = logging.getLogger("pyserve.demo")

# Bump to force a rebuild for a change that the source digest below does not see (e.g. a new
# scikit-learn default that changes the trained model).
DEMO_VERSION = "1"
REPOSITORY_DIR = "repository"
MARKER = ".pyserve-demo.json"

_PACKAGE_DIR = Path(__file__).resolve().parent
_TEXTSTATS_DIR = _PACKAGE_DIR / "textstats"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
_INSTALL_ATTEMPTS = 3


def default_cache_dir() -> Path:
    """``$PYSERVE_HOME/demo`` when PYSERVE_HOME is set, else ``~/.cache/pyserve/demo``."""
    home = os.environ.get("PYSERVE_HOME")
    if home:
        return Path(home) / "demo"
    return Path.home() / ".cache" / "pyserve" / "demo"


def _source_files() -> list[Path]:
    """The files whose content defines the built repository, in a stable order."""
    textstats = [
        path
        for path in _TEXTSTATS_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    ]
    return sorted([_PACKAGE_DIR / "train_digits.py", *textstats])


def build_version() -> str:
    """The version a cached repository must carry to be reused: DEMO_VERSION + a source digest."""
    digest = hashlib.sha256()
    for path in _source_files():
        digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return f"{DEMO_VERSION}-{digest.hexdigest()[:16]}"


def _marker_version(repository: Path) -> str | None:
    """The build version recorded in a repository's marker, or None if absent or unreadable."""
    try:
        return str(json.loads((repository / MARKER).read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build(staging: Path, version: str) -> None:
    """Write the whole repository into ``staging``; the marker is written last."""
    from pyserve.demo.train_digits import train_digits

    logger.info("training the demo digits model (first use) into %s", staging)
    result = train_digits(staging)
    logger.info("demo digits model trained: held-out accuracy %.4f", result["accuracy"])
    shutil.copytree(_TEXTSTATS_DIR, staging / "textstats", ignore=_IGNORED)
    (staging / MARKER).write_text(json.dumps({"version": version}) + "\n", encoding="utf-8")


def _install(staging: Path, repository: Path, version: str) -> None:
    """Move the finished build to ``repository`` with one atomic rename.

    Another process may have installed a build first: if it carries the same version it is kept
    (ours is discarded by the caller); a stale one is moved aside and deleted, then we retry.
    """
    error: OSError | None = None
    for _ in range(_INSTALL_ATTEMPTS):
        try:
            os.rename(staging, repository)
            return
        except OSError as exc:
            error = exc
            if not repository.exists():
                continue  # removed between our rename and this check: try again
        if _marker_version(repository) == version:
            return
        trash = Path(tempfile.mkdtemp(prefix=".old-", dir=repository.parent))
        try:
            os.rename(repository, trash / REPOSITORY_DIR)
        except FileNotFoundError:
            pass  # another process moved it aside first
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not install the demo model repository at {repository}") from error


def demo_repository(cache_dir: Path | None = None) -> Path:
    """The demo model repository folder (``digits`` and ``textstats``), built on first use.

    The repository lives in ``cache_dir/repository`` (``cache_dir`` defaults to
    :func:`default_cache_dir`). It is reused while its marker carries the current
    :func:`build_version`; otherwise it is rebuilt. A build is written into a temporary folder next
    to it and renamed into place, so a process never sees half a repository; two processes starting
    at once may both train, and the second to finish keeps the first one's build.

    Raises ImportError naming ``pyserve[demo]`` when the digits model must be trained and
    scikit-learn or skl2onnx is missing.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    repository = cache_dir / REPOSITORY_DIR
    version = build_version()
    if _marker_version(repository) == version:
        return repository

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Staging in the same folder keeps the final rename on one filesystem, hence atomic.
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the repository is ordinary data
        _build(staging, version)
        _install(staging, repository, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return repository
