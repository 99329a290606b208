"""The server process: settings, the resources it owns, and how it starts and stops."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from pyserve.repository import ModelRepository, SingleModel
from pyserve.runtime import CompletionPump
from pyserve.server import handlers, metrics
from pyserve.server.http import HttpServer

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


class App:
    """What the handlers share: the settings, the model repository and the metrics."""

    def __init__(self, settings: ServerSettings, repository: ModelRepository, registry: CollectorRegistry,
                 infer_errors: Counter) -> None:
        self.settings = settings
        self.repository = repository
        self.registry = registry
        self.infer_errors = infer_errors


async def serve(settings: ServerSettings, stop: asyncio.Event) -> None:
    """Loads the models, serves until ``stop`` is set, then shuts down without dropping a request.

    Shutdown: stop accepting; let every connection finish the requests it has begun; drain what
    is still queued in the core; release the models. A backend that does not return within
    ``shutdown_timeout_s`` ends the process with status 1.
    """
    pump = CompletionPump(asyncio.get_running_loop())
    repo = ModelRepository(pump, settings.repository, settings.models)
    registry, infer_errors = metrics.make_registry(repo.runners)
    await repo.load_all()
    # What startup built (modules, models, sessions) lives until exit: keep it out of the
    # collector's generations, so the collections that requests trigger walk only new objects.
    gc.collect()
    gc.freeze()
    app = App(settings, repo, registry, infer_errors)
    router = handlers.make_router()
    server = HttpServer(app, router, settings.max_body_bytes,
                        on_refused=functools.partial(handlers.count_refused, app, router))
    await server.listen(settings.host, settings.port)
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        log.info("======== Running on http://%s:%s ========", f"[{host}]" if ":" in host else host, port)
    await stop.wait()
    log.info("shutting down: finishing accepted requests (up to %.0f s)", settings.shutdown_timeout_s)
    if not await server.shutdown(settings.shutdown_timeout_s):
        log.warning("some connections had not finished within %.0f s and were closed",
                    settings.shutdown_timeout_s)
    try:
        await asyncio.wait_for(repo.close(), settings.shutdown_timeout_s)
    except TimeoutError:
        # A backend call that never returns cannot be interrupted; exiting is the only way out.
        log.error("a model backend did not finish within %.0f s of shutdown; exiting with status 1",
                  settings.shutdown_timeout_s)
        logging.shutdown()
        os._exit(1)
    pump.close()


async def _main(settings: ServerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def run(settings: ServerSettings) -> None:
    """Serves until SIGINT/SIGTERM: then stops accepting, finishes accepted requests, exits."""
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, a little slower
        asyncio.run(_main(settings))
    else:
        uvloop.run(_main(settings))
