"""The lifecycle of models: load, swap in new versions, drain old ones, unload, close.

Each loaded version has its own core scheduler (:class:`pyserve.runtime.ModelRunner`). Loading a model
again starts the new versions first and then drains the old ones, so requests in flight on an old
version finish; a model that fails to load is recorded (index, logs) and never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pyserve.artifact.serving import ArtifactSettings
from pyserve.backends import create_backend
from pyserve.config import DEFAULT_MAX_BATCH_SIZE, ModelConfig
from pyserve.errors import ErrorKind, PyserveError, not_found
from pyserve.repository.registry import ModelEntry, ModelRegistry, ModelState
from pyserve.repository.sources import ModelSources, SingleModel, check_model_name
from pyserve.runtime import CompletionPump, ModelRunner

log = logging.getLogger("pyserve.repository")


# Checks a started version before it joins the registry (its folder given); raises PyserveError to
# refuse it. The server's is the golden-sample gate (pyserve.release.golden).
Validator = Callable[[ModelRunner, Path], Awaitable[object]]


class ModelRepository:
    """Loads models from their sources into the registry, and unloads them.

    ``repository.registry`` answers the lookups of the request path; the methods here change what
    is served. Every name is checked (:func:`~pyserve.repository.sources.check_model_name`) before a
    file is read, and no state is kept for a name that no source has. ``validate`` runs on each
    version started, before it serves: a version it refuses fails its load."""

    def __init__(
        self,
        pump: CompletionPump,
        root: Path | None = None,
        single_models: Iterable[SingleModel] = (),
        validate: Validator | None = None,
        default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        artifacts: ArtifactSettings | None = None,
    ) -> None:
        self.pump = pump
        self.validate = validate
        self.sources = ModelSources(root, single_models, default_max_batch_size, artifacts)
        self.registry = ModelRegistry()
        self._locks: dict[str, asyncio.Lock] = {}
        self.startup_done = False

    # -- load / unload -----------------------------------------------------------------------
    async def load_all(self) -> None:
        """Loads every model of every source, each on its own; failures are recorded and logged."""
        await asyncio.gather(*(self._load_logged(n) for n in self.sources.names()))
        self.startup_done = True

    async def _load_logged(self, name: str) -> None:
        try:
            await self.load(name)
        except PyserveError as e:
            log.error("model %s failed to load: %s", name, e.message)

    def _check_known(self, name: str) -> None:
        """INVALID_ARGUMENT for a name that cannot be a model, NOT_FOUND for one no source has."""
        check_model_name(name)
        if not self.sources.has(name):
            raise not_found(f"unknown model '{name}'")

    def _lock(self, name: str) -> asyncio.Lock:
        """The lock of a model a source has (checked by the caller): loads and unloads of one model
        run one at a time."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load(self, name: str, config_override: Mapping[str, Any] | None = None) -> ModelEntry:
        """(Re)loads a model: new versions start serving, then removed or replaced ones drain.

        ``config_override`` replaces the model's config.toml for this load (a mapping in its shape).
        Raises INVALID_ARGUMENT for a name that cannot be a model or a config that is refused,
        NOT_FOUND when no source has the model; a version's failure leaves the versions that
        served before in service."""
        loop = asyncio.get_running_loop()
        # Checked before any lock or entry exists: unknown names leave nothing behind.
        self._check_known(name)
        async with self._lock(name):
            entry = self.registry.models.get(name)
            if entry is None:
                entry = self.registry.models[name] = ModelEntry(name)
            elif entry.state is not ModelState.READY:
                entry.state, entry.reason = ModelState.LOADING, ""
            started: list[ModelRunner] = []  # this load's new runners: stopped again if it fails
            try:
                config, dirs = await loop.run_in_executor(None, self.sources.read, name, config_override)
                keep = entry.versions if entry.config == config else {}
                fresh = {v: r for v, r in keep.items() if v in dirs}
                for version, path in dirs.items():
                    if version not in fresh:
                        runner = await loop.run_in_executor(None, self._start, config, version, path)
                        started.append(runner)
                        if self.validate is not None:
                            await self.validate(runner, path)
                        fresh[version] = runner
            except PyserveError as e:
                await self._discard(name, started)
                self._failed(entry, e.kind, e.message)
                raise
            except Exception as e:  # a model's own code may raise anything while loading
                log.exception("model %s failed to load", name)
                await self._discard(name, started)
                self._failed(entry, ErrorKind.INVALID_ARGUMENT, f"{type(e).__name__}: {e}")
                raise PyserveError(ErrorKind.INVALID_ARGUMENT, f"model '{name}' failed to load: {e}") from None
            old = [r for v, r in entry.versions.items() if fresh.get(v) is not r]
            entry.config, entry.versions = config, fresh
            entry.state, entry.reason = ModelState.READY, ""
            log.info("model %s ready, versions %s", name, sorted(fresh))
            await asyncio.gather(*(r.stop(drain=True) for r in old))
            return entry

    @staticmethod
    async def _discard(name: str, runners: list[ModelRunner]) -> None:
        """Stops the runners a failed load had started (never served: nothing to drain), so their
        core threads, backends (an ORT session, a Python model's close()) and modules go too."""
        results = await asyncio.gather(*(r.stop(drain=False) for r in runners), return_exceptions=True)
        for runner, result in zip(runners, results):
            if isinstance(result, BaseException):
                log.error("model %s version %s: stopping it after a failed load failed: %r", name,
                          runner.version, result)

    def _failed(self, entry: ModelEntry, kind: ErrorKind, message: str) -> None:
        """Records a failed load; a model still serving older versions keeps serving them."""
        if entry.versions:
            return
        if kind is ErrorKind.NOT_FOUND:
            # The model's folder went away: forget it, or the index would list it and the server
            # would stay unready for good.
            self.registry.models.pop(entry.name, None)
            self._locks.pop(entry.name, None)
        else:
            entry.state, entry.reason = ModelState.UNAVAILABLE, message

    def _start(self, config: ModelConfig, version: int, version_dir: Path) -> ModelRunner:
        # Runs in an executor thread: building a backend may take seconds (ORT session, imports).
        backend = create_backend(config, version_dir)
        try:
            return ModelRunner(config, str(version), backend, self.pump)
        except BaseException:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
            raise

    async def load_version(self, name: str, version: int) -> ModelEntry:
        """(Re)loads one version of a model; its other versions keep serving, untouched.

        The version runs with the config the model's other versions serve with, or, when none is
        loaded, with its config.toml. It is served whatever the model's ``version_policy`` (an
        operator asked for it), until the next load of the whole model, which serves what the policy
        selects again. A version already loaded is started again and swapped in; the old one drains.
        INVALID_ARGUMENT for a name that cannot be a model or a version that fails to load (nothing
        changes then), NOT_FOUND for an unknown model or a version folder that does not exist."""
        loop = asyncio.get_running_loop()
        self._check_known(name)
        async with self._lock(name):
            entry = self.registry.models.get(name)
            try:
                if entry is not None and entry.state is ModelState.READY and entry.versions and entry.config:
                    config = entry.config
                else:
                    config = (await loop.run_in_executor(None, self.sources.read, name, None))[0]
                path = self.sources.version_dir(name, config, version)
                runner = await self._start_checked(loop, name, config, version, path)
                if self.validate is not None:
                    try:
                        await self.validate(runner, path)
                    except BaseException:
                        await self._discard(name, [runner])
                        raise
            except PyserveError as e:
                log.info("load of model %s version %s refused: %s", name, version, e.message)
                raise
            if entry is None:
                entry = self.registry.models[name] = ModelEntry(name)
            old = entry.versions.get(version)
            # A new dict, swapped in one step: the request path never sees a half-changed mapping.
            entry.versions = dict(sorted({**entry.versions, version: runner}.items()))
            entry.config = config
            entry.state, entry.reason = ModelState.READY, ""
            log.info("model %s version %s ready (serving %s)", name, version, sorted(entry.versions))
            if old is not None:
                await old.stop(drain=True)
            return entry

    async def unload_version(self, name: str, version: int) -> None:
        """Stops serving one version of a model once the requests it accepted are answered; the
        other versions keep serving. Unloading the last version unloads the model.

        INVALID_ARGUMENT for a name that cannot be a model, NOT_FOUND for an unknown model or a
        version that is not loaded."""
        self._check_known(name)
        async with self._lock(name):
            entry = self.registry.models.get(name)
            runner = entry.versions.get(version) if entry is not None else None
            if entry is None or runner is None:
                served = ", ".join(str(v) for v in sorted(entry.versions)) if entry else ""
                raise not_found(f"model '{name}' has no version '{version}' loaded (serving: {served or 'none'})")
            entry.versions = {v: r for v, r in entry.versions.items() if v != version}
            if not entry.versions:
                entry.state, entry.reason = ModelState.UNLOADED, ""
            await runner.stop(drain=True)
            log.info("model %s version %s unloaded (serving %s)", name, version, sorted(entry.versions))

    async def _start_checked(self, loop: asyncio.AbstractEventLoop, name: str, config: ModelConfig,
                             version: int, path: Path) -> ModelRunner:
        """Starts one version; a model's own code may raise anything while loading: INVALID_ARGUMENT."""
        try:
            return await loop.run_in_executor(None, self._start, config, version, path)
        except PyserveError:
            raise
        except Exception as e:
            log.exception("model %s version %s failed to load", name, version)
            raise PyserveError(ErrorKind.INVALID_ARGUMENT,
                               f"model '{name}' version {version} failed to load: {e}") from None

    async def unload(self, name: str) -> None:
        """Stops serving a model; requests already accepted finish first.

        INVALID_ARGUMENT for a name that cannot be a model, NOT_FOUND for one that is neither loaded
        nor in a source; unloading a model that is not loaded does nothing."""
        entry = self.registry.models.get(name)
        if entry is None:
            self._check_known(name)
            return
        async with self._lock(name):
            old = list(entry.versions.values())
            entry.versions = {}
            entry.state, entry.reason = ModelState.UNLOADED, ""
            await asyncio.gather(*(r.stop(drain=True) for r in old))
            log.info("model %s unloaded", name)

    async def close(self) -> None:
        """Drains and stops every version (server shutdown), then deletes the artifacts unpacked."""
        runners = self.registry.runners()
        for e in self.registry.models.values():
            e.versions = {}
            e.state, e.reason = ModelState.UNAVAILABLE, "the server is shutting down"
        await asyncio.gather(*(r.stop(drain=True) for r in runners))
        self.sources.close()

    # -- what the server shows -----------------------------------------------------------------
    def index(self) -> list[dict]:
        """Triton's repository index over every source's models and every registry entry."""
        return self.registry.index(self.sources.names())

    def all_ready(self) -> bool:
        """Startup finished and every known model is READY, or was unloaded on request."""
        return self.startup_done and self.registry.all_ready()
