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

from pyserve.config import DEFAULT_MAX_BATCH_SIZE
from pyserve.repository import ModelRegistry, ModelRepository, SingleModel
from pyserve.runtime import CompletionPump

__all__ = ["ModelHost", "SingleModel"]


class ModelHost:
    """Loads the models of ``root`` (a repository folder) and ``single_models`` on the running loop.

    :meth:`start` loads every model (a model that fails is recorded, not raised); :meth:`close` drains
    every queued request and releases the models. Must be started and closed on one event loop.
    ``default_max_batch_size``: the max_batch_size of a model whose config sets none and that can batch
    (0: no such model batches; see :func:`pyserve.config.load_model_config`)."""

    def __init__(self, root: Path | None = None, single_models: Iterable[SingleModel] = (),
                 default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        self._root = root
        self._single = tuple(single_models)
        self._default_max_batch_size = default_max_batch_size
        self.pump: CompletionPump | None = None
        self._repository: ModelRepository | None = None

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

    async def start(self) -> None:
        """Creates the completion pump on the running loop and loads every model."""
        self.pump = CompletionPump(asyncio.get_running_loop())
        self._repository = ModelRepository(self.pump, self._root, self._single, self._default_max_batch_size)
        await self._repository.load_all()

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
