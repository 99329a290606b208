"""The dependency lock of an artifact: the packages the model needs, written as PEP 751 ``pylock.toml``.

Direct dependencies are what the backend imports: onnxruntime and numpy for an ONNX model; numpy and
the imports of the model code for a Python model, found by reading the code with :mod:`ast` (never by
importing it) and mapped to distributions with :func:`importlib.metadata.packages_distributions`. The
lock holds them and their installed requirements (transitively), each with its exact version; hashes
are those of the installed files: the sha256 of the distribution's ``RECORD`` (PEP 376/627), which
lists every installed file with its hash, kept under ``[packages.tool.pyserve]`` because PEP 751's own
``hashes`` are those of the wheel or sdist, which an installed environment no longer has.

Checking a lock against the running environment gives one :class:`LockRow` per package (and one for
Python itself).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import logging
import platform
import sys
import sysconfig
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyserve.errors import invalid

log = logging.getLogger("pyserve.artifact")

LOCK_VERSION = "1.0"
# What each backend imports itself (the model's code adds its own imports for a Python model).
BACKEND_PACKAGES = {"onnxruntime": ("onnxruntime", "numpy"), "python": ("numpy",), "identity": ()}
STATUS_OK = "ok"
STATUS_FILES = "same version, other files"
STATUS_VERSION = "version differs"
STATUS_MISSING = "not installed"


def _need(module: str, package: str) -> None:
    """INVALID_ARGUMENT naming the extra when ``module`` (of the distribution ``package``) is missing."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise invalid(f"the artifact's lock needs {package}: pip install 'pyserve[artifact]'") from None


def _canonical(name: str) -> str:
    _need("packaging", "packaging")
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def imports_of(sources: Iterable[Path]) -> set[str]:
    """The top-level module names imported by the Python files ``sources`` (absolute imports only),
    read with :mod:`ast`; INVALID_ARGUMENT naming a file that is not valid Python."""
    names: set[str] = set()
    for path in sources:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except SyntaxError as e:
            raise invalid(f"{path}: not valid Python (line {e.lineno}): {e.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def direct_packages(backend: str, code: Iterable[Path] = ()) -> tuple[list[str], list[str]]:
    """(distributions the model needs directly, imports no installed distribution provides) for a model
    of ``backend`` whose Python code is ``code``. Standard-library modules and the model's own modules
    (the files beside it) are left out."""
    code = list(code)
    wanted = {_canonical(n) for n in BACKEND_PACKAGES.get(backend, ())}
    local = {p.stem for p in code}
    owners = md.packages_distributions()
    unresolved: list[str] = []
    for module in sorted(imports_of(code) - local - set(sys.stdlib_module_names)):
        dists = owners.get(module)
        if dists:
            wanted.update(_canonical(d) for d in dists)
        else:
            unresolved.append(module)
    return sorted(wanted), unresolved


def _record_sha256(dist: md.Distribution) -> str:
    record = dist.read_text("RECORD")
    return hashlib.sha256(record.encode("utf-8")).hexdigest() if record is not None else ""


def _requirements(dist: md.Distribution) -> list[str]:
    """The installed distributions ``dist`` requires (extras and markers not met left out)."""
    _need("packaging", "packaging")
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for text in dist.requires or ():
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append(_canonical(req.name))
    return out


def _distribution(name: str) -> md.Distribution | None:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def build_lock(direct: Iterable[str]) -> dict[str, Any]:
    """The PEP 751 document of ``direct`` and their installed requirements, sorted by name:
    ``lock-version``, ``created-by``, ``requires-python`` and one ``[[packages]]`` entry (name,
    version, ``[packages.tool.pyserve]``: direct, record-sha256) per installed distribution; Python's
    version and the platform under ``[tool.pyserve]``. INVALID_ARGUMENT when a direct dependency is not
    installed (the lock would not describe a working environment)."""
    direct = sorted({_canonical(d) for d in direct})
    found: dict[str, md.Distribution] = {}
    todo = list(direct)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        dist = _distribution(name)
        if dist is None:
            if name in direct:
                raise invalid(f"the model needs {name}, which is not installed here: install it, then package")
            continue  # a requirement not installed: optional in practice
        found[name] = dist
        todo.extend(_requirements(dist))
    packages = []
    for name in sorted(found):
        dist = found[name]
        packages.append({"name": name, "version": dist.version,
                         "tool": {"pyserve": {"direct": name in direct, "record-sha256": _record_sha256(dist)}}})
    v = sys.version_info
    return {
        "lock-version": LOCK_VERSION,
        "created-by": "pyserve",
        "requires-python": f"=={v.major}.{v.minor}.*",
        "packages": packages,
        "tool": {"pyserve": {"python-version": platform.python_version(),
                             "python-implementation": platform.python_implementation(),
                             "platform": sysconfig.get_platform()}},
    }


def dumps(lock: dict[str, Any]) -> bytes:
    """The TOML bytes of a lock (tomli-w: the same document always gives the same bytes)."""
    _need("tomli_w", "tomli-w")
    import tomli_w

    return tomli_w.dumps(lock).encode("utf-8")


def loads(data: bytes, where: str) -> dict[str, Any]:
    """The lock document of ``data``; INVALID_ARGUMENT naming ``where`` when it is not a PEP 751 lock
    pyserve can read."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise invalid(f"{where}: not TOML: {e}") from None
    if doc.get("lock-version") != LOCK_VERSION or not isinstance(doc.get("packages", []), list):
        raise invalid(f"{where}: expected a PEP 751 lock with lock-version = \"{LOCK_VERSION}\"")
    for i, p in enumerate(doc.get("packages", [])):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not isinstance(p.get("version"), str):
            raise invalid(f"{where}: packages[{i}]: expected a table with name and version strings")
    return doc


@dataclass(frozen=True)
class LockRow:
    """One package of a lock against the running environment: ``locked`` and ``installed`` versions
    (``installed`` '' when absent), whether the model needs it ``direct``ly, and the ``status``
    (ok, same version other files, version differs, not installed)."""

    name: str
    locked: str
    installed: str
    direct: bool
    status: str

    @property
    def ok(self) -> bool:
        """Same version, same installed files."""
        return self.status == STATUS_OK

    @property
    def version_mismatch(self) -> bool:
        """A different version or none at all (files alone differing is not a mismatch: another
        installer writes another RECORD for the same wheel)."""
        return self.status in (STATUS_VERSION, STATUS_MISSING)


def compare(lock: dict[str, Any]) -> list[LockRow]:
    """The rows of ``lock`` against this environment, Python first, then packages by name."""
    locked_python = str(lock.get("tool", {}).get("pyserve", {}).get("python-version", ""))
    here = platform.python_version()
    same_minor = locked_python.split(".")[:2] == here.split(".")[:2]
    rows = [LockRow("python", locked_python, here, False,
                    STATUS_OK if locked_python == here else STATUS_FILES if same_minor else STATUS_VERSION)]
    for p in sorted(lock.get("packages", []), key=lambda p: p["name"]):
        tool = p.get("tool", {}).get("pyserve", {})
        direct = bool(tool.get("direct", False))
        dist = _distribution(p["name"])
        if dist is None:
            rows.append(LockRow(p["name"], p["version"], "", direct, STATUS_MISSING))
            continue
        if dist.version != p["version"]:
            status = STATUS_VERSION
        elif tool.get("record-sha256") and tool["record-sha256"] != _record_sha256(dist):
            status = STATUS_FILES
        else:
            status = STATUS_OK
        rows.append(LockRow(p["name"], p["version"], dist.version, direct, status))
    return rows


def refused(rows: Iterable[LockRow], policy: str) -> list[LockRow]:
    """The rows that refuse the artifact under ``policy``: under ``refuse``, the direct dependencies
    whose version differs or that are not installed; under ``warn``, none."""
    if policy not in ("warn", "refuse"):
        raise invalid(f"lock policy: expected warn or refuse, got {policy!r}")
    return [r for r in rows if policy == "refuse" and r.direct and r.version_mismatch]


def table(rows: Iterable[LockRow]) -> str:
    """The rows as an aligned text table: package, locked, installed, direct, status."""
    lines = [("package", "locked", "installed", "direct", "status")]
    lines += [(r.name, r.locked, r.installed or "-", "yes" if r.direct else "", r.status) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
