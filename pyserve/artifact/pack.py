"""``pyserve package``: a model folder (one version of it) into one ``.pyserve`` file.

The file is a zip archive (PKWARE APPNOTE) with every member *stored*, not deflated: the bytes then
depend on nothing but the inputs (deflate's output changes with the zlib build), a member can be
hashed as it is read, and no member can unpack to more than it occupies (no zip bomb). Zip rather than
tar because its central directory names every member up front (duplicates and strays are refused
before anything is read) and Python reads it without extracting. Members are written in a fixed
order (manifest, signature, then by path) with one fixed timestamp (``SOURCE_DATE_EPOCH`` when set,
else the newest modification time of the inputs) and permissions 0644, so packaging the same inputs
twice gives the same bytes (reproducible-builds.org's SOURCE_DATE_EPOCH specification).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyserve import __version__
from pyserve.artifact import lock as locks
from pyserve.artifact.manifest import LOCK, MANIFEST, MODEL_PREFIX, SIGNATURE, FileEntry, Manifest, Provenance
from pyserve.errors import invalid

CHUNK = 1 << 20
ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest time a zip entry can carry
# Files of a model folder that are the server's state, not the model's (the traffic policy).
NOT_PACKAGED = frozenset({"traffic.json"})


@dataclass(frozen=True)
class PackageOptions:
    """What ``pyserve package`` adds besides the model: the version to package (None: the newest),
    provenance (training commit, training data files, metadata, import source), the signing key, and
    ``source_date_epoch`` (seconds; None: ``$SOURCE_DATE_EPOCH``, else the newest input's mtime)."""

    version: int | None = None
    training_commit: str = ""
    training_data: tuple[Path, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    imported_from: Mapping[str, Any] = field(default_factory=dict)
    sign_key: Path | None = None
    source_date_epoch: int | None = None


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _regular(path: Path, what: str) -> Path:
    if path.is_symlink():
        raise invalid(f"{path}: {what} is a symbolic link; an artifact holds regular files only "
                      "(copy the file in its place)")
    return path


def model_files(model_dir: Path, version: int) -> dict[str, Path]:
    """Member path -> file: the model folder's own files (config.toml, label files, ...; hidden ones
    and the traffic policy left out) and every file of version folder ``version`` (``__pycache__`` and
    hidden ones left out). INVALID_ARGUMENT for a symbolic link or a missing version folder."""
    files: dict[str, Path] = {}
    for p in sorted(model_dir.iterdir()):
        if p.name.startswith(".") or p.name in NOT_PACKAGED:
            continue
        if _regular(p, "a model file").is_file():
            files[MODEL_PREFIX + p.name] = p
    vdir = model_dir / str(version)
    if not vdir.is_dir():
        raise invalid(f"{model_dir}: no version folder {version}")
    for root, dirs, names in os.walk(_regular(vdir, "the version folder")):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for d in dirs:
            _regular(Path(root) / d, "a folder of the version")
        for n in sorted(names):
            p = Path(root) / n
            if n.startswith(".") or n.endswith(".pyc"):
                continue
            _regular(p, "a file of the version")
            if p.suffix == ".pyserve":
                raise invalid(f"{p}: an artifact inside the version folder: package the model's own files "
                              "(write -o outside the model folder)")
            rel = p.relative_to(model_dir).as_posix()
            files[MODEL_PREFIX + rel] = p
    return files


def _epoch(options: PackageOptions, files: Iterable[Path]) -> int:
    if options.source_date_epoch is not None:
        return options.source_date_epoch
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is not None:
        try:
            return int(env)
        except ValueError:
            raise invalid(f"SOURCE_DATE_EPOCH: expected an integer number of seconds, got {env!r}") from None
    return max((int(p.stat().st_mtime) for p in files), default=ZIP_EPOCH)


def _zip_info(name: str, epoch: int) -> zipfile.ZipInfo:
    t = datetime.datetime.fromtimestamp(max(epoch, ZIP_EPOCH), datetime.timezone.utc)
    info = zipfile.ZipInfo(name, date_time=(t.year, t.month, t.day, t.hour, t.minute, t.second))
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # Unix, so that external_attr carries the mode on every platform
    info.external_attr = 0o100644 << 16
    return info


def package(model_dir: Path, out: Path, options: PackageOptions = PackageOptions()) -> tuple[str, Manifest]:
    """Writes the artifact of ``model_dir`` (a repository's model folder) to ``out``; returns its
    sha256 (hex) and manifest. INVALID_ARGUMENT naming the file for a config that does not load, a
    missing version, a dependency not installed, an unreadable key, or a file changed while packaged."""
    from pyserve.config import load_model_config, version_dirs

    model_dir = Path(model_dir)
    if not (model_dir / "config.toml").is_file() and not version_dirs(model_dir):
        raise invalid(f"{model_dir}: not a model folder (no config.toml, no version folder) "
                      "nor an MLflow model (no MLmodel file)")
    config = load_model_config(model_dir, default_max_batch_size=0)
    versions = version_dirs(model_dir)
    version = options.version if options.version is not None else (max(versions) if versions else None)
    if version is None:
        raise invalid(f"{model_dir}: no version folder to package (expected {model_dir}/1/)")
    files = model_files(model_dir, version)
    code = [p for m, p in files.items() if m.endswith(".py") and m.startswith(f"{MODEL_PREFIX}{version}/")]
    direct, unresolved = locks.direct_packages(config.backend, code)
    if unresolved:
        raise invalid(f"{model_dir}/{version}: the model code imports {', '.join(unresolved)}, which no "
                      "installed distribution provides: install it, then package")
    lock_bytes = locks.dumps(locks.build_lock(direct))
    epoch = _epoch(options, files.values())
    entries = [FileEntry(m, sha256_file(p), p.stat().st_size) for m, p in files.items()]
    entries.append(FileEntry(LOCK, hashlib.sha256(lock_bytes).hexdigest(), len(lock_bytes)))
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    provenance = Provenance(
        pyserve_version=__version__, created=created, training_commit=options.training_commit,
        training_data=tuple((p.name, sha256_file(p)) for p in options.training_data),
        metadata=dict(options.metadata), imported_from=dict(options.imported_from))
    manifest = Manifest(model_dir.resolve().name, version, config.backend, tuple(sorted(entries, key=lambda e: e.path)),
                        provenance)
    manifest_bytes = manifest.to_bytes()
    signature = None
    if options.sign_key is not None:
        from pyserve.artifact import sign

        signature = sign.sign(manifest_bytes, sign.load_private_key(options.sign_key))
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr(_zip_info(MANIFEST, epoch), manifest_bytes)
            if signature is not None:
                z.writestr(_zip_info(SIGNATURE, epoch), signature)
            for entry in manifest.files:
                if entry.path == LOCK:
                    z.writestr(_zip_info(LOCK, epoch), lock_bytes)
                    continue
                _copy_checked(z, _zip_info(entry.path, epoch), files[entry.path], entry)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_file(out), manifest


def _copy_checked(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, entry: FileEntry) -> None:
    """Copies ``path`` into the archive, refusing it when it no longer has the manifest's sha256."""
    h = hashlib.sha256()
    with open(path, "rb") as src, z.open(info, "w", force_zip64=entry.size >= (1 << 31)) as dst:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            dst.write(chunk)
    if h.hexdigest() != entry.sha256:
        raise invalid(f"{path}: changed while it was being packaged; package again")


def manifest_summary(manifest: Manifest) -> str:
    """A few lines naming what an artifact holds, for ``pyserve package`` to print."""
    out = io.StringIO()
    for f in manifest.files:
        out.write(f"  {f.sha256[:16]}  {f.size:>10}  {f.path}\n")
    return out.getvalue().rstrip("\n")
