"""The models of a server, with no protocol: the repository, the core's completion pump, the runners.

Tests, a batch job and every front end use the same host::

    async with ModelHost(Path("models")) as host:
        service = InferenceService(host)
        response = await service.infer("digits", None, InferRequest({"x": x}))
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pyserve.artifact.serving import ArtifactSettings, provenance_of
from pyserve.config import DEFAULT_MAX_BATCH_SIZE
from pyserve.release import TrafficPolicies, check_golden
from pyserve.repository import ModelRegistry, ModelRepository, SingleModel
from pyserve.runtime import CompletionPump, ModelRunner

if TYPE_CHECKING:
    from prometheus_client import Counter

__all__ = ["ModelHost", "SingleModel"]


class ModelHost:
    """Loads the models of ``root`` (a repository folder) and ``single_models`` on the running loop.

    :meth:`start` loads every model (a model that fails is recorded, not raised) and their traffic
    policies; :meth:`close` drains every queued request and releases the models. Must be started and
    closed on one event loop. Each version's golden samples (:mod:`pyserve.release.golden`) run before
    it serves, and before an alias or a weight first sends it traffic. ``policy_changes`` counts
    traffic-policy changes (label ``model``), ``golden_checks`` golden-sample checks (``model``,
    ``version``, ``result``). ``default_max_batch_size``: the max_batch_size of a model whose config
    sets none and that can batch (0: no such model batches; see
    :func:`pyserve.config.load_model_config`). ``artifacts``: how ``.pyserve`` artifacts are checked
    (public key, lock policy); :meth:`provenance` is what a version unpacked from one carries."""

    def __init__(self, root: Path | None = None, single_models: Iterable[SingleModel] = (),
                 policy_changes: Counter | None = None, golden_checks: Counter | None = None,
                 default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 artifacts: ArtifactSettings | None = None) -> None:
        self._artifacts = artifacts
        self._provenance: dict[tuple[str, str], dict[str, str] | None] = {}
        self._root = root
        self._single = tuple(single_models)
        self._policy_changes = policy_changes
        self._golden_checks = golden_checks
        self._default_max_batch_size = default_max_batch_size
        self.pump: CompletionPump | None = None
        self._repository: ModelRepository | None = None
        self._traffic: TrafficPolicies | None = None

    @property
    def repository(self) -> ModelRepository:
        """The repository (load, unload, index); RuntimeError before :meth:`start`."""
        if self._repository is None:
            raise RuntimeError("the model host is not started")
        return self._repository

    @property
    def registry(self) -> ModelRegistry:
        """The registry of the loaded models, as the request path looks them up."""
        return self.repository.registry

    @property
    def traffic(self) -> TrafficPolicies:
        """The models' traffic policies (aliases, weights); RuntimeError before :meth:`start`."""
        if self._traffic is None:
            raise RuntimeError("the model host is not started")
        return self._traffic

    async def start(self) -> None:
        """Creates the completion pump on the running loop, reads the traffic policies and loads
        every model."""
        self.pump = CompletionPump(asyncio.get_running_loop())
        repository = ModelRepository(self.pump, self._root, self._single, self._check_golden,
                                     self._default_max_batch_size, self._artifacts)
        self._traffic = TrafficPolicies(self._root, repository.sources, repository.registry, self._policy_changes,
                                        self._gate)
        self._traffic.load_all()
        self._repository = repository
        await repository.load_all()
        self._traffic.check_loaded()

    async def _check_golden(self, runner: ModelRunner, version_dir: Path) -> None:
        # Every version started passes here with its folder: where its provenance is known.
        self._provenance[(runner.config.name, runner.version)] = provenance_of(version_dir)
        await check_golden(runner, version_dir, self._golden_checks)

    def provenance(self, name: str, version: str) -> dict[str, str] | None:
        """The provenance of a loaded version served from a ``.pyserve`` artifact (artifact_sha256,
        lock_sha256, training_commit, artifact_created, artifact_version); None for any other."""
        return self._provenance.get((name, version))

    async def _gate(self, name: str, version: int) -> None:
        """Runs the golden samples of a loaded version about to take traffic (an alias or a weight)."""
        runner = self.registry.entry(name).versions.get(version)
        if runner is not None:  # not loaded: the policy's own check refuses it
            await self._check_golden(runner, self.repository.sources.version_dir(name, runner.config, version))

    async def close(self) -> None:
        """Drains and stops every model version, then the pump. A backend call that never returns
        keeps this waiting: bound it with asyncio.wait_for where that matters."""
        if self._repository is not None:
            await self._repository.close()
        if self.pump is not None:
            self.pump.close()

    def ready(self, strict: bool = True) -> bool:
        """Startup finished and (``strict``) every model is READY or was unloaded on request."""
        repo = self._repository
        if repo is None:
            return False
        return repo.all_ready() if strict else repo.startup_done

    async def __aenter__(self) -> ModelHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
