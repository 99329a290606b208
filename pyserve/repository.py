"""The model repository: which models and versions are loaded, loading and unloading them live.

Layout: ``REPO/<model>/config.toml`` and ``REPO/<model>/<version>/<model file>`` (see pyserve.config),
plus single ONNX files given on the command line. Each loaded version has its own core scheduler
(pyserve.runtime.ModelRunner). Loading a model again swaps in the new versions first and then drains
the old ones, so requests in flight on an old version finish; one model that fails to load is
reported (index, logs) and never stops the others.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pyserve.backends import create_backend
from pyserve.config import ModelConfig, config_from_onnx, load_model_config, version_dirs
from pyserve.errors import ErrorKind, PyserveError, not_found, unavailable
from pyserve.runtime import CompletionPump, ModelRunner

log = logging.getLogger("pyserve.repository")

UNLOADED = "unloaded"  # the reason of a model unloaded on request (model control), not by failure


class ModelState(enum.Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"  # failed to load, or unloaded


@dataclass(frozen=True)
class SingleModel:
    """A model given as one ONNX file (``--model NAME=PATH``) with the batching knobs of the CLI."""

    name: str
    path: Path
    overrides: dict = field(default_factory=dict, hash=False)

    def config(self) -> ModelConfig:
        overrides = dict(self.overrides)
        max_batch_size = overrides.pop("max_batch_size", 0)
        return config_from_onnx(self.name, self.path, max_batch_size=max_batch_size, **overrides)


@dataclass
class ModelEntry:
    """What the repository knows of one model: its state and its loaded versions."""

    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    config: ModelConfig | None = None
    versions: dict[int, ModelRunner] = field(default_factory=dict)

    def runner(self, version: str | None) -> ModelRunner:
        """The runner of ``version`` (newest when None); NOT_FOUND / UNAVAILABLE errors otherwise."""
        if self.state is not ModelState.READY or not self.versions:
            raise unavailable(f"model '{self.name}' is not ready" + (f": {self.reason}" if self.reason else ""))
        if version is None or version == "":
            return self.versions[max(self.versions)]
        try:
            return self.versions[int(version)]
        except (ValueError, KeyError):
            served = ", ".join(str(v) for v in sorted(self.versions))
            raise not_found(f"model '{self.name}' has no version '{version}' (serving: {served})") from None


class ModelRepository:
    """Loads models from a repository folder and/or single files, and serves their runners."""

    def __init__(
        self,
        pump: CompletionPump,
        root: Path | None = None,
        single_models: Iterable[SingleModel] = (),
    ) -> None:
        self.pump = pump
        self.root = Path(root) if root is not None else None
        self.single = {m.name: m for m in single_models}
        self.models: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.startup_done = False

    # -- discovery ---------------------------------------------------------------------------
    def available(self) -> list[str]:
        """Model names in the repository folder and on the command line."""
        names = set(self.single)
        if self.root is not None and self.root.is_dir():
            names.update(
                p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
            )
        return sorted(names)

    def _read(self, name: str) -> tuple[ModelConfig, dict[int, Path]]:
        if name in self.single:
            single = self.single[name]
            return single.config(), {1: single.path.parent}
        if self.root is None or not (self.root / name).is_dir():
            raise not_found(f"unknown model '{name}'")
        model_dir = self.root / name
        config = load_model_config(model_dir)
        selected = config.version_policy.select(version_dirs(model_dir))
        if not selected and config.backend != "identity":
            raise PyserveError(
                ErrorKind.INVALID_ARGUMENT,
                f"{model_dir}: no version folder to serve (expected {model_dir}/1/{config.model_filename})",
            )
        if config.backend == "identity" and not selected:
            selected = [1]
        return config, {v: model_dir / str(v) for v in selected}

    # -- load / unload -----------------------------------------------------------------------
    async def load_all(self) -> None:
        """Loads every available model, each on its own; failures are recorded, not raised."""
        await asyncio.gather(*(self._load_logged(n) for n in self.available()))
        self.startup_done = True

    async def _load_logged(self, name: str) -> None:
        try:
            await self.load(name)
        except PyserveError as e:
            log.error("model %s failed to load: %s", name, e.message)

    async def load(self, name: str) -> ModelEntry:
        """(Re)loads a model: new versions start serving, then removed or replaced ones drain."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.models.setdefault(name, ModelEntry(name))
            loop = asyncio.get_running_loop()
            if entry.state is not ModelState.READY:
                entry.state = ModelState.LOADING
            try:
                config, dirs = await loop.run_in_executor(None, self._read, name)
                keep = entry.versions if entry.config == config else {}
                fresh = {v: r for v, r in keep.items() if v in dirs}
                for version, path in dirs.items():
                    if version not in fresh:
                        fresh[version] = await loop.run_in_executor(None, self._start, config, version, path)
            except PyserveError as e:
                if not entry.versions:
                    if e.kind is ErrorKind.NOT_FOUND:
                        # No such model: forget it, or a mistyped load would list it in the index
                        # and keep the server unready for good.
                        del self.models[name]
                    else:
                        entry.state, entry.reason = ModelState.UNAVAILABLE, e.message
                raise
            except Exception as e:  # a model's own code may raise anything while loading
                log.exception("model %s failed to load", name)
                if not entry.versions:
                    entry.state, entry.reason = ModelState.UNAVAILABLE, f"{type(e).__name__}: {e}"
                raise PyserveError(ErrorKind.INVALID_ARGUMENT, f"model '{name}' failed to load: {e}") from None
            old = [r for v, r in entry.versions.items() if fresh.get(v) is not r]
            entry.config, entry.versions = config, fresh
            entry.state, entry.reason = ModelState.READY, ""
            log.info("model %s ready, versions %s", name, sorted(fresh))
            await asyncio.gather(*(r.stop(drain=True) for r in old))
            return entry

    def _start(self, config: ModelConfig, version: int, version_dir: Path) -> ModelRunner:
        # Runs in an executor thread: building a backend may take seconds (ORT session, imports).
        backend = "identity" if config.backend == "identity" else create_backend(config, version_dir)
        try:
            return ModelRunner(config, str(version), backend, self.pump)
        except BaseException:
            if not isinstance(backend, str):
                backend.close()
            raise

    async def unload(self, name: str) -> None:
        """Stops serving a model; requests already accepted finish first."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry = self.models.get(name)
            if entry is None:
                if name not in self.available():
                    raise not_found(f"unknown model '{name}'")
                return
            old = list(entry.versions.values())
            entry.versions = {}
            entry.state, entry.reason = ModelState.UNAVAILABLE, UNLOADED
            await asyncio.gather(*(r.stop(drain=True) for r in old))
            log.info("model %s unloaded", name)

    async def close(self) -> None:
        """Drains and stops every version (server shutdown)."""
        runners = [r for e in self.models.values() for r in e.versions.values()]
        for e in self.models.values():
            e.versions = {}
            e.state = ModelState.UNAVAILABLE
        await asyncio.gather(*(r.stop(drain=True) for r in runners))

    # -- lookup ------------------------------------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        """The entry of a known model; NOT_FOUND otherwise."""
        entry = self.models.get(name)
        if entry is None:
            raise not_found(f"unknown model '{name}'")
        return entry

    def runner(self, name: str, version: str | None = None) -> ModelRunner:
        """The runner serving ``name`` at ``version`` (newest when None)."""
        return self.entry(name).runner(version)

    def runners(self) -> list[ModelRunner]:
        """Every loaded version of every model."""
        return [r for e in self.models.values() for r in e.versions.values()]

    def index(self) -> list[dict]:
        """Triton's repository index: one row per model version (or per model when none loaded)."""
        rows: list[dict] = []
        for name in sorted(set(self.available()) | set(self.models)):
            entry = self.models.get(name)
            if entry is None or not entry.versions:
                row = {"name": name, "state": (entry.state if entry else ModelState.UNAVAILABLE).value}
                if entry and entry.reason:
                    row["reason"] = entry.reason
                rows.append(row)
                continue
            for v in sorted(entry.versions):
                rows.append({"name": name, "version": str(v), "state": entry.state.value})
        return rows

    def all_ready(self) -> bool:
        """Startup finished and every known model is READY, or was unloaded on request.

        An operator's unload must not make the whole server unready (a readiness probe would then
        take every other model out of service), as in Triton."""
        return self.startup_done and all(
            e.state is ModelState.READY or (e.state is ModelState.UNAVAILABLE and e.reason == UNLOADED)
            for e in self.models.values()
        )

