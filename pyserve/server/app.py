"""The aiohttp application: settings, the resources it owns, and how it starts and stops."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from pyserve.repository import ModelRepository, SingleModel
from pyserve.runtime import CompletionPump
from pyserve.server import handlers, metrics
from pyserve.server.state import INFER_ERRORS, REGISTRY, REPOSITORY, SETTINGS

log = logging.getLogger("pyserve.server")


@dataclass(frozen=True)
class ServerSettings:
    """Per-process settings (per-model settings live in each model's config.toml)."""

    repository: Path | None = None
    models: tuple[SingleModel, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 64 << 20
    strict_readiness: bool = True
    model_control: bool = True
    shutdown_timeout_s: float = 30.0


async def _repository_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pump = CompletionPump(asyncio.get_running_loop())
    repo = ModelRepository(pump, settings.repository, settings.models)
    app[REPOSITORY] = repo
    app[REGISTRY], app[INFER_ERRORS] = metrics.make_registry(repo.runners)
    await repo.load_all()
    yield
    # Shutdown: the listener is closed and in-flight handlers have finished or timed out; drain
    # whatever is still queued so no accepted request is dropped, then release the core.
    try:
        await asyncio.wait_for(repo.close(), settings.shutdown_timeout_s)
    except TimeoutError:
        # A backend call that never returns cannot be interrupted; exiting is the only way out.
        log.error("a model backend did not finish within %.0f s of shutdown; exiting with status 1",
                  settings.shutdown_timeout_s)
        logging.shutdown()
        os._exit(1)
    pump.close()


def create_app(settings: ServerSettings) -> web.Application:
    """The application serving ``settings``; models load during startup."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_repository_ctx)
    handlers.add_routes(app)
    return app


def run(settings: ServerSettings) -> None:
    """Serves until SIGINT/SIGTERM: then stops accepting, finishes accepted requests, exits."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # optional: the stdlib loop works, a little slower
        pass
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=None,
        # A client that goes away cancels its handler, and so its request while still queued.
        handler_cancellation=True,
        print=lambda msg: log.info("%s", msg.strip()),
    )
