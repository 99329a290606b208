"""The traffic policies of a server's models: kept in memory for the request path, persisted in each
model's folder (``MODEL/traffic.json``), changed one at a time per model, every change audited.

A policy is kept apart from ``config.toml``: changing it never reloads the model. It is written
atomically (a temporary file in the same folder, flushed, then renamed over the old one), so a
crash leaves the old policy or the new one, never half of one; a restart reads it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from pyserve.errors import PyserveError, internal, invalid, unavailable
from pyserve.release.audit import AuditLog
from pyserve.release.policy import EMPTY, TrafficPolicy

if TYPE_CHECKING:
    from prometheus_client import Counter

    from pyserve.repository import ModelRegistry
    from pyserve.repository.sources import ModelSources

log = logging.getLogger("pyserve.release")

POLICY_FILE = "traffic.json"
# Under the repository's hidden folder: startup skips folders starting with ".", so it is no model.
AUDIT_FILE = Path(".pyserve") / "traffic-audit.jsonl"
# True while a change forwarded by another worker of a --workers server is applied (pyserve.workers):
# the worker that took the call has written the policy file and the audit record, and counted the
# change; this one only takes the new policy into memory.
REPLICA = contextvars.ContextVar("pyserve_traffic_replica", default=False)

# Runs a version's golden samples before it takes traffic; raises PyserveError when they fail.
Gate = Callable[[str, int], Awaitable[None]]


class TrafficPolicies:
    """Model name -> :class:`TrafficPolicy`, read by the request path (:meth:`get`), changed by
    :meth:`change`. ``changes`` counts the changes made, labelled ``model``; ``gate`` runs a version's
    golden samples before an alias or a weight first sends it traffic."""

    def __init__(self, root: Path | None, sources: ModelSources, registry: ModelRegistry,
                 changes: Counter | None = None, gate: Gate | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.sources = sources
        self.registry = registry
        self.changes = changes
        self.gate = gate
        self.audit = AuditLog(self.root / AUDIT_FILE) if self.root is not None else None
        self._policies: dict[str, TrafficPolicy] = {}
        self._broken: dict[str, str] = {}  # model -> why its policy file was refused at startup
        self._locks: dict[str, asyncio.Lock] = {}

    # -- startup -----------------------------------------------------------------------------
    def load_all(self) -> None:
        """Reads the policy file of every model folder. A file that is refused is logged at ERROR and
        the model's requests that need a policy (an alias, or no version) are answered UNAVAILABLE
        until a new policy is set: serving them some other way could send a canary all the traffic."""
        for name in self.sources.names():
            model_dir = self.sources.model_dir(name)
            path = model_dir / POLICY_FILE if model_dir is not None else None
            if path is None or not path.is_file():
                continue
            try:
                policy = TrafficPolicy.from_doc(orjson.loads(path.read_bytes()), where=str(path))
            except (PyserveError, orjson.JSONDecodeError, OSError) as e:
                why = e.message if isinstance(e, PyserveError) else f"{path}: {e}"
                self._broken[name] = why
                log.error("model %s: traffic policy refused: %s", name, why)
                continue
            if not policy.empty:
                self._policies[name] = policy
                log.info("model %s: traffic policy %s", name, orjson.dumps(policy.to_doc()).decode())

    def check_loaded(self) -> None:
        """After the startup load: a policy read back that names a version which did not load (a file
        edited by hand, or a version folder removed) is refused as :meth:`load_all` refuses a wrong
        file, rather than answering its alias and its share of the requests 404. Models that are not
        READY are left alone (their policy is checked again when it next changes)."""
        for name, policy in list(self._policies.items()):
            entry = self.registry.models.get(name)
            if entry is None or not entry.versions:
                continue
            model_dir = self.sources.model_dir(name)
            try:
                where = str(model_dir / POLICY_FILE) if model_dir is not None else "policy"
                policy.check(name, set(entry.versions), where=where)
            except PyserveError as e:
                del self._policies[name]
                self._broken[name] = e.message
                log.error("model %s: traffic policy refused: %s", name, e.message)

    # -- the request path --------------------------------------------------------------------
    def get(self, name: str) -> TrafficPolicy | None:
        """The policy of model ``name`` (None when it has none); UNAVAILABLE when its file was refused."""
        policy = self._policies.get(name)
        if policy is None and self._broken and name in self._broken:
            raise unavailable(f"model '{name}': its traffic policy was refused at startup "
                              f"({self._broken[name]}); set a new one")
        return policy

    def policy_or_none(self, name: str) -> TrafficPolicy | None:
        """The policy of ``name`` as set (None when none, or when its file was refused): for listings,
        which must not fail."""
        return self._policies.get(name)

    def routing_header(self, name: str) -> str | None:
        """The header naming model ``name``'s routing key, if its policy has one (lower case)."""
        policy = self._policies.get(name)
        return policy.routing_header if policy is not None else None

    def document(self, name: str) -> dict:
        """The policy of ``name`` as ``GET .../traffic`` shows it (an empty policy when none)."""
        self.sources.model_dir(name)  # INVALID_ARGUMENT / NOT_FOUND for names that are no model
        return (self.get(name) or EMPTY).to_doc()

    # -- changes -----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def changing(self, name: str) -> AsyncIterator[TrafficPolicy]:
        """Holds model ``name``'s change lock and yields its policy: policy changes, and the unload of
        a version that a policy may name, run one at a time per model."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        async with lock:
            yield self._policies.get(name, EMPTY)

    async def change(self, name: str, edit: Callable[[TrafficPolicy], TrafficPolicy], *, action: str,
                     who: str, reason: str) -> TrafficPolicy:
        """Applies ``edit`` (old policy -> new policy) to model ``name``'s policy and returns the new one.

        The new policy is checked against the loaded versions (INVALID_ARGUMENT naming the field), the
        versions it newly sends traffic to pass the golden-sample gate, then it is written to the
        model's folder and the audit log, and only then serves. Anything refused changes nothing.
        INVALID_ARGUMENT / NOT_FOUND for a name that is no model, INVALID_ARGUMENT for a model given as
        one file (``--model``: no folder to keep a policy in)."""
        model_dir = self.sources.model_dir(name)
        if model_dir is None or self.audit is None:
            raise invalid(f"model '{name}' is served from one file (--model): a traffic policy needs a "
                          "model folder of a repository to be kept in")
        async with self.changing(name) as old:
            new = edit(old)
            entry = self.registry.entry(name)
            new.check(name, set(entry.versions))
            if self.gate is not None:
                for version in sorted(new.versions_in_traffic() - old.versions_in_traffic()):
                    await self.gate(name, version)
                new.check(name, set(entry.versions))  # a whole-model load may have run meanwhile
            old_doc, new_doc = old.to_doc(), new.to_doc()
            replica = REPLICA.get()
            loop = asyncio.get_running_loop()
            try:
                if not replica:
                    await loop.run_in_executor(None, self._persist, model_dir / POLICY_FILE, new_doc, name,
                                               action, who, reason, old_doc)
            except OSError as e:
                log.error("model %s: traffic policy not changed: %s", name, e)
                raise internal(f"model '{name}': the traffic policy could not be written ({e}); "
                               "nothing was changed") from None
            if new.empty:
                self._policies.pop(name, None)
            else:
                self._policies[name] = new
            self._broken.pop(name, None)
            if self.changes is not None and not replica:
                self.changes.labels(name).inc()
            log.info("model %s: traffic policy %s by %s (reason: %r): %s", name, action, who, reason,
                     orjson.dumps(new_doc).decode())
            return new

    def _persist(self, path: Path, doc: dict, name: str, action: str, who: str, reason: str,
                 old_doc: dict) -> None:
        assert self.audit is not None
        audit = self.audit
        # Audited once the new file is on disk and before it replaces the old one.
        write_json_atomically(path, doc, lambda: audit.write(name, action, who, reason, old_doc, doc))


def write_json_atomically(path: Path, doc: dict, before_replace: Callable[[], object] | None = None) -> None:
    """Writes ``doc`` as indented JSON to ``path``: a temporary file in the same folder, flushed to
    disk, then renamed over ``path``, so readers (a restart) see the old file or the new one, whole.
    ``before_replace`` runs between the two; OSError (or what it raises) leaves ``path`` untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
