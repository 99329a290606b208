"""The manifest of a ``.pyserve`` artifact: what it holds, each file's sha256, and where it came from.

The manifest is the member ``pyserve-manifest.json`` (UTF-8 JSON, keys sorted, so the same contents
always give the same bytes). Every other member but the signature is listed in it with its sha256 and
size; the optional Ed25519 signature (``pyserve-manifest.sig``) signs the manifest's bytes, so it
covers every file through their hashes. Layout of an artifact::

    pyserve-manifest.json     this manifest
    pyserve-manifest.sig      the signature of the manifest (only when signed)
    pylock.toml               the dependency lock (PEP 751)
    model/config.toml         the model folder, as in a repository
    model/<N>/model.onnx      the packaged version N (model.py and its modules for a Python model)
    model/<N>/golden.npz      golden samples and drift_profile.json, when the version has them
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pyserve.errors import PyserveError, invalid

FORMAT = "pyserve-artifact/1"
MANIFEST = "pyserve-manifest.json"
SIGNATURE = "pyserve-manifest.sig"
LOCK = "pylock.toml"
MODEL_PREFIX = "model/"
MAX_MANIFEST_BYTES = 16 << 20
MAX_PATH_LENGTH = 1024
# A file or folder name's limit on Linux and macOS (NAME_MAX), in bytes of UTF-8.
MAX_NAME_BYTES = 255
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileEntry:
    """One member of the artifact: its ``path`` (POSIX, relative), ``sha256`` (hex) and ``size`` (bytes)."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Provenance:
    """Where the model came from: the pyserve version that packaged it, the creation time (UTC, ISO
    8601; from ``SOURCE_DATE_EPOCH`` when set), and when given the training code's git commit, the
    training data's files and sha256, free-form ``metadata`` (metrics, owner, ...) and
    ``imported_from`` (the MLflow model it was imported from)."""

    pyserve_version: str
    created: str
    training_commit: str = ""
    training_data: tuple[tuple[str, str], ...] = ()  # (file name, sha256)
    metadata: dict[str, Any] = field(default_factory=dict)
    imported_from: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The provenance as the manifest's JSON holds it."""
        return {"pyserve_version": self.pyserve_version, "created": self.created,
                "training_commit": self.training_commit,
                "training_data": [{"name": n, "sha256": h} for n, h in self.training_data],
                "metadata": self.metadata, "imported_from": self.imported_from}


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest: the model's ``name``, packaged ``version`` and ``backend``, the ``files``
    (sorted by path) and the ``provenance``."""

    name: str
    version: int
    backend: str
    files: tuple[FileEntry, ...]
    provenance: Provenance

    def file(self, path: str) -> FileEntry | None:
        """The entry of ``path``, or None."""
        return next((f for f in self.files if f.path == path), None)

    @property
    def lock_sha256(self) -> str:
        """The sha256 of the lock (``pylock.toml``); '' when the artifact has none."""
        entry = self.file(LOCK)
        return entry.sha256 if entry is not None else ""

    def to_bytes(self) -> bytes:
        """The canonical bytes of the manifest (sorted keys, 2-space indent, UTF-8, final newline);
        INVALID_ARGUMENT when the provenance holds a NaN or an infinity (not JSON)."""
        doc = {
            "format": FORMAT,
            "model": {"name": self.name, "version": self.version, "backend": self.backend},
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "provenance": self.provenance.to_json(),
        }
        try:
            text = json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN or Infinity, which JSON has no word for (from an MLmodel's metadata)
            raise invalid(f"{MANIFEST}: provenance: a number of the metadata (--metadata-file, an MLmodel's metadata) "
                          "is NaN or infinite, which JSON cannot hold") from None
        return (text + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """The manifest of ``data``; INVALID_ARGUMENT naming the manifest and the wrong field."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise invalid(f"{MANIFEST}: not UTF-8 JSON: {e}") from None
        except RecursionError:  # json's decoder recurses once per level of nesting
            raise invalid(f"{MANIFEST}: JSON nested too deeply (a manifest nests 4 levels)") from None
        try:
            return cls._from_doc(doc)
        except PyserveError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise invalid(f"{MANIFEST}: malformed: {type(e).__name__}: {e}") from None

    @classmethod
    def _from_doc(cls, doc: Any) -> Manifest:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise invalid(f"{MANIFEST}: format: expected {FORMAT!r}, got {got!r}")
        model = doc["model"]
        name, version, backend = model["name"], model["version"], model["backend"]
        if not isinstance(name, str) or not name or not isinstance(backend, str):
            raise invalid(f"{MANIFEST}: model.name and model.backend: expected non-empty strings")
        check_folder_name(name, f"{MANIFEST}: model.name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise invalid(f"{MANIFEST}: model.version: expected an integer >= 1, got {version!r}")
        files: list[FileEntry] = []
        for entry in doc["files"]:
            path, sha, size = entry["path"], entry["sha256"], entry["size"]
            check_member_path(path)
            if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                raise invalid(f"{MANIFEST}: files: {path}: sha256: expected 64 lowercase hex digits, got {sha!r}")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise invalid(f"{MANIFEST}: files: {path}: size: expected an integer >= 0, got {size!r}")
            files.append(FileEntry(path, sha, size))
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            dup = next(p for p in paths if paths.count(p) > 1)
            raise invalid(f"{MANIFEST}: files: {dup} is listed twice")
        p = doc["provenance"]
        data = tuple((str(d["name"]), str(d["sha256"])) for d in p.get("training_data", []))
        provenance = Provenance(str(p["pyserve_version"]), str(p["created"]), str(p.get("training_commit", "")),
                                data, dict(p.get("metadata", {})), dict(p.get("imported_from", {})))
        return cls(name, version, backend, tuple(sorted(files, key=lambda f: f.path)), provenance)


def check_folder_name(name: str, where: str) -> str:
    """``name`` if it can name the folder a model is unpacked into: no ``/`` or ``\\``, no control
    character, not starting with ``.``, at most 255 bytes of UTF-8; INVALID_ARGUMENT naming ``where``
    otherwise."""
    if (not name or "/" in name or "\\" in name or name.startswith(".")
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise invalid(f"{where} {name!r} cannot name a folder: expected no '/', '\\', control character "
                      "or leading '.'")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise invalid(f"{where} {_shown(name, 40)}: longer than the {MAX_NAME_BYTES} bytes a folder's name may have")
    return name


def _shown(text: Any, most: int = 80) -> str:
    """``repr(text)``, cut to its first ``most`` characters when longer (a hostile name can be long)."""
    if isinstance(text, str) and len(text) > most:
        return f"{text[:most]!r}... ({len(text)} characters)"
    return repr(text)


def check_member_path(path: Any) -> str:
    """``path`` if it can name a member: a relative POSIX path under ``model/`` (or the lock), with no
    empty, ``.`` or ``..`` part, no backslash and no control character; INVALID_ARGUMENT otherwise
    (the guard against zip-slip: nothing is ever written outside the extraction folder), and no part
    longer than a file name may be (255 bytes)."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_LENGTH:
        raise invalid(f"member name {_shown(path)}: expected a relative path of 1 to {MAX_PATH_LENGTH} characters")
    parts = path.split("/")
    if (path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 or ord(c) == 127 for c in path) or ":" in parts[0]):
        raise invalid(f"member name {_shown(path)}: not a plain relative path (no '..', '\\', leading '/' or "
                      "control characters)")
    long = next((p for p in parts if len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES), None)
    if long is not None:
        raise invalid(f"member name {_shown(path)}: the part {_shown(long, 40)} is longer than the {MAX_NAME_BYTES} bytes a "
                      "file name may have")
    if path != LOCK and not (path.startswith(MODEL_PREFIX) and len(parts) >= 2):
        raise invalid(f"member name {_shown(path)}: expected {LOCK} or a file under {MODEL_PREFIX}")
    return path
