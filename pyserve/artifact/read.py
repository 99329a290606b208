"""Reading a ``.pyserve`` artifact: every check before anything of it is used.

:func:`extract` reads the archive once, through one open file: the central directory is checked
(members stored, not encrypted, no links or folders, no duplicates, names under ``model/``, sizes
within the file), then the manifest and its signature, then each member is hashed as it is written
into a fresh private folder. Nothing from the artifact is imported or run before every hash (and the
signature) has checked out: a failure deletes the folder and raises INVALID_ARGUMENT naming the
member. No pickle is ever read (golden samples are read with ``allow_pickle=False``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyserve.artifact.manifest import (
    LOCK,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MODEL_PREFIX,
    SIGNATURE,
    Manifest,
    check_folder_name,
    check_member_path,
)
from pyserve.errors import PyserveError, invalid

CHUNK = 1 << 20
MAX_MEMBERS = 100_000
ZIP_MAGIC = b"PK\x03\x04"
SUFFIX = ".pyserve"


@dataclass(frozen=True)
class Extracted:
    """A verified artifact unpacked in ``root``: the model folder ``model_dir`` (``root/<name>``,
    config.toml and the version folder), the ``manifest``, the artifact's ``sha256`` (hex, of the whole
    file), ``signed_by`` (the key id that checked the signature; '' when none was checked) and
    ``signed`` (whether the artifact carries a signature)."""

    root: Path
    model_dir: Path
    manifest: Manifest
    sha256: str
    signed: bool
    signed_by: str

    @property
    def version_dir(self) -> Path:
        """The folder of the packaged version."""
        return self.model_dir / str(self.manifest.version)

    @property
    def lock_path(self) -> Path:
        """The unpacked ``pylock.toml``."""
        return self.root / LOCK


def is_artifact(path: Path) -> bool:
    """Whether ``path`` is a file named ``*.pyserve`` that starts as a zip archive does."""
    path = Path(path)
    if path.suffix != SUFFIX or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZIP_MAGIC
    except OSError:
        return False


def _hash_all(f: BinaryIO) -> str:
    h = hashlib.sha256()
    f.seek(0)
    while chunk := f.read(CHUNK):
        h.update(chunk)
    f.seek(0)
    return h.hexdigest()


def _check_directory(z: zipfile.ZipFile, file_size: int) -> dict[str, zipfile.ZipInfo]:
    """The members by name, once each is known to be a plain stored file with a safe name."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise invalid(f"{len(infos)} members, more than the {MAX_MEMBERS} an artifact may hold")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        if name in members:
            raise invalid(f"member {name}: appears twice in the archive")
        if name not in (MANIFEST, SIGNATURE):
            check_member_path(name)
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no Unix mode
        if info.is_dir() or kind not in (0, stat.S_IFREG):
            raise invalid(f"member {name}: not a regular file (a folder, a symbolic link or a device)")
        if info.flag_bits & 0x1:
            raise invalid(f"member {name}: encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise invalid(f"member {name}: compressed; pyserve artifacts store their members as they are")
        total += info.file_size
        if total > file_size:
            raise invalid(f"member {name}: the members claim more bytes than the file holds")
        members[name] = info
    return members


def _read_small(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise invalid(f"member {info.filename}: {info.file_size} bytes, more than the {limit} it may hold")
    try:
        return z.read(info)
    except (zipfile.BadZipFile, OSError) as e:
        raise invalid(f"member {info.filename}: cannot be read: {e}") from None


def extract(path: Path, dest_parent: Path | None = None, public_key: Path | None = None,
            name: str | None = None) -> Extracted:
    """Checks the artifact ``path`` and unpacks it into a new private folder (mode 0700) under
    ``dest_parent`` (default: the system's temporary folder), the model folder named ``name`` (default:
    the manifest's model name). With ``public_key`` (a PEM Ed25519 key), an artifact without a valid
    signature by it is refused. The caller deletes ``Extracted.root`` when done.

    Raises INVALID_ARGUMENT naming the artifact and the member at fault (or NOT_FOUND for a missing
    file); nothing is left on disk then."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        from pyserve.errors import not_found

        raise not_found(f"{path}: no such artifact file") from None
    except OSError as e:
        raise invalid(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        try:
            return _extract(f, path, dest_parent, public_key, name)
        except PyserveError as e:
            raise invalid(f"artifact {path}: {e.message}") from None


def _extract(f: BinaryIO, path: Path, dest_parent: Path | None, public_key: Path | None,
             name: str | None) -> Extracted:
    # The artifact's sha256 and the checks read the same open file: replacing the path meanwhile
    # changes neither.
    sha = _hash_all(f)
    file_size = os.fstat(f.fileno()).st_size
    try:
        z = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise invalid(f"not a zip archive: {e}") from None
    with z:
        members = _check_directory(z, file_size)
        if MANIFEST not in members:
            raise invalid(f"no {MANIFEST} member: not a pyserve artifact")
        manifest_bytes = _read_small(z, members[MANIFEST], MAX_MANIFEST_BYTES)
        signed, signed_by = SIGNATURE in members, ""
        from pyserve.artifact import sign

        # Read (CRC-checked) and decoded even with no key to check it against: no member goes unread.
        signature = sign.decode(_read_small(z, members[SIGNATURE], 4096)) if signed else b""
        if public_key is not None:
            key = sign.load_public_key(public_key)
            if not signed:
                raise invalid(f"not signed ({SIGNATURE} missing), and a public key requires a signature")
            sign.check(manifest_bytes, signature, key)
            signed_by = sign.key_id(key)
        manifest = Manifest.parse(manifest_bytes)
        listed = {e.path for e in manifest.files}
        strays = sorted(set(members) - listed - {MANIFEST, SIGNATURE})
        if strays:
            raise invalid(f"member {strays[0]}: not listed in {MANIFEST}")
        missing = sorted(listed - set(members))
        if missing:
            raise invalid(f"member {missing[0]}: listed in {MANIFEST} but not in the archive")
        folder = check_folder_name(name, "model name") if name else manifest.name  # the manifest's is checked
        root = Path(tempfile.mkdtemp(prefix="pyserve-artifact-", dir=dest_parent))
        try:
            (root / MANIFEST).write_bytes(manifest_bytes)
            for entry in manifest.files:
                target = root / LOCK if entry.path == LOCK else root / folder / entry.path[len(MODEL_PREFIX):]
                _unpack(z, members[entry.path], target, entry.sha256, entry.size)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    return Extracted(root, root / folder, manifest, sha, signed, signed_by)


def _unpack(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, sha256: str, size: int) -> None:
    """Writes one member to ``target`` (a new file), hashing it on the way; INVALID_ARGUMENT naming the
    member when its bytes or size are not the manifest's (or its CRC-32 is not the archive's)."""
    if info.file_size != size:
        raise invalid(f"member {info.filename}: {info.file_size} bytes, the manifest says {size}: "
                      "the member (or the manifest) was changed")
    h = hashlib.sha256()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                dst.write(chunk)
    except zipfile.BadZipFile as e:
        raise invalid(f"member {info.filename}: damaged in the archive ({e})") from None
    except OSError as e:  # a member named both as a file and as the folder of another, a full disk, ...
        raise invalid(f"member {info.filename}: cannot be written: {e.strerror or e}") from None
    if h.hexdigest() != sha256:
        raise invalid(f"member {info.filename}: sha256 {h.hexdigest()} is not the manifest's {sha256}: "
                      "the member (or the manifest) was changed")
