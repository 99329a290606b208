"""The server process: settings, the resources it owns, and how it starts and stops."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from pyserve import metrics
from pyserve.artifact.metrics import ArtifactInfoCollector
from pyserve.artifact.serving import ArtifactSettings
from pyserve.config import DEFAULT_MAX_BATCH_SIZE
from pyserve.drift.server import make_monitor, say_which_models_drift
from pyserve.dashboard.settings import DashboardSettings
from pyserve.errors import ErrorKind, PyserveError
from pyserve.payload_log.settings import PayloadLogSettings
from pyserve.release.rollout import RolloutController, RolloutMetrics
from pyserve.release.shadow import ShadowMetrics, ShadowMirror
from pyserve.security import (
    AccessControl,
    AccessSettings,
    FileWatcher,
    ManagementAudit,
    ReloadingTls,
    Scope,
    TlsSettings,
    exposure_error,
    is_loopback,
)
from pyserve.security.audit import DEFAULT_FILE as DEFAULT_AUDIT_FILE
from pyserve.security.reload import POLL_INTERVAL_S
from pyserve.server import handlers
from pyserve.server.fast_infer import FastInfer
from pyserve.server.http import HttpServer
from pyserve.server.limits import TransportLimits, default_max_connections, open_file_limit, raise_fd_limit
from pyserve.service import InferenceService, ModelControl, ModelHost, SingleModel
from pyserve.workers import WorkerSettings, counters, journal
from pyserve.workers.channel import Siblings

if TYPE_CHECKING:
    from pyserve.config import ModelConfig
    from pyserve.drift.monitor import DriftMonitor
    from pyserve.dashboard import Dashboard
    from pyserve.payload_log import PayloadLog

log = logging.getLogger("pyserve.server")


@dataclass(frozen=True)
class ServerSettings:
    """Per-process settings (per-model settings live in each model's config.toml)."""

    repository: Path | None = None
    models: tuple[SingleModel, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 64 << 20
    header_timeout_s: float = 30.0  # a request's line and headers must arrive within this (408)
    body_timeout_s: float = 60.0  # its body within this of the headers' end (408; 0: no deadline)
    max_connections: int | None = None  # None: from the open file limit (pyserve.server.limits)
    strict_readiness: bool = True
    model_control: bool = True
    # The infer fast path (pyserve.server.fast_infer); off: every infer request by the general path.
    infer_fast_path: bool = True
    shutdown_timeout_s: float = 30.0
    # On SIGTERM, how long readiness is false while the server still serves (Kubernetes' endpoint
    # propagation) before it stops accepting; 0: stop accepting at once.
    drain_grace_s: float = 0.0
    # max_batch_size of the models whose config sets none and that can batch (0: none batches)
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    payload_log: PayloadLogSettings = PayloadLogSettings()
    dashboard: DashboardSettings = DashboardSettings()
    access: AccessSettings = AccessSettings()
    tls: TlsSettings | None = None
    # The management audit log; None: REPO/.pyserve/audit.jsonl when serving a repository (the
    # logger only if that cannot be written), else the logger only.
    audit_log: Path | None = None
    reload_interval_s: float = POLL_INTERVAL_S  # how often token and TLS files are checked for changes
    artifacts: ArtifactSettings = ArtifactSettings()  # public key and lock policy of .pyserve artifacts
    # Set in each process of a --workers server (pyserve.workers): the port is shared (SO_REUSEPORT)
    # and readiness, /metrics and model control answer for every worker.
    worker: WorkerSettings | None = None


class StartupError(PyserveError):
    """The server cannot start (nothing to serve); the message says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, message)


class App:
    """What the HTTP handlers share: the settings, the model host, the inference service, the metrics."""

    def __init__(self, settings: ServerSettings, host: ModelHost, service: InferenceService,
                 registry: CollectorRegistry, rollouts: RolloutController | None = None) -> None:
        self.settings = settings
        self.host = host
        self.service = service
        self.control = ModelControl(host, rollouts)
        self.registry = registry
        self.dashboard: Dashboard | None = None  # GET /dashboard (pyserve.dashboard)
        self.payload_log: PayloadLog | None = None
        # The drift monitor (docs/drift.md): None when the server keeps no payload log (or lacks scipy).
        self.drift: DriftMonitor | None = None
        self.access: AccessControl | None = None
        self.audit: ManagementAudit | None = None
        # Set on SIGTERM: readiness answers 503 from then on, while requests are still served.
        self.draining = False
        # True while a worker of a --workers server replays the control journal at start
        # (pyserve.workers.journal): it does not serve yet what its siblings serve.
        self.converging = False
        # A worker's saved counts (pyserve.workers.counters); None in a server of one process.
        self.counts: counters.CountSaver | None = None

    def ready(self) -> bool:
        """Readiness of this process: False once draining or while converging, else the models'
        (``strict_readiness``)."""
        return (not self.draining and not self.converging
                and self.host.ready(strict=self.settings.strict_readiness))


async def serve(settings: ServerSettings, stop: asyncio.Event, hurry: asyncio.Event | None = None,
                on_listening: Callable[[], None] | None = None) -> None:
    """Loads the models, serves until ``stop`` is set, then shuts down without dropping a request.

    Shutdown (the Kubernetes pod termination sequence): readiness answers 503 at once while
    requests are still served for ``drain_grace_s`` (cut short when ``hurry`` is set), so that load
    balancers take the server out of rotation before it stops accepting; then stop accepting; let
    every connection finish the requests it has begun; drain what is still queued in the core;
    release the models. A backend that does not return within ``shutdown_timeout_s`` ends the
    process with status 1. ``on_listening`` is called once the server accepts connections (a
    ``--workers`` supervisor counts a worker as started from then on). Raises :class:`StartupError` when a
    server given only ``--model`` files could load none of them, and OSError when it cannot bind its
    address (before any model is loaded).
    """
    registry, infer_errors = metrics.make_registry(lambda: host.registry.runners())
    # Security first: a server refused for its settings refuses before it loads anything.
    access = AccessControl(settings.access, registry)
    tls = ReloadingTls(settings.tls, registry) if settings.tls is not None else None
    audit = _open_audit(settings, registry)
    host = ModelHost(settings.repository, settings.models, metrics.policy_changes_counter(registry),
                     metrics.golden_checks_counter(registry), settings.default_max_batch_size,
                     settings.artifacts)
    registry.register(ArtifactInfoCollector(lambda: host.registry.runners(), host.provenance))
    service = InferenceService(host, infer_errors)
    payload_log = None
    if settings.payload_log.enabled:
        from pyserve.payload_log import PayloadLog

        payload_log = PayloadLog(settings.payload_log, functools.partial(_model_config, host), registry)
    shadow_metrics = ShadowMetrics.register(registry)
    # Shadow pairs that disagree go to the payload log (of the models that log).
    service.add_hooks(ShadowMirror(host, shadow_metrics, payload_log.shadow_pair if payload_log else None))
    rollouts = RolloutController(host, RolloutMetrics(registry), shadow_metrics)
    app = App(settings, host, service, registry, rollouts)
    app.access, app.audit = access, audit
    if payload_log is not None:
        app.payload_log = payload_log
        service.add_hooks(payload_log)
    app.drift = make_monitor(host, payload_log, registry)
    if settings.dashboard.enabled:
        from pyserve.dashboard import Dashboard

        # The drift monitor is looked up at each request: app.drift (None when drift detection is off).
        # The failed calls' inputs are payload: with control tokens, only GET /v2/logs (a control read)
        # shows them, never a page that a browser opens without a token.
        app.dashboard = Dashboard(settings.dashboard, service, payload_log, lambda: app.drift,
                                  hide_inputs=access.required(Scope.CONTROL),
                                  worker=(settings.worker.index, settings.worker.count)
                                  if settings.worker is not None and settings.worker.count > 1 else None)
    worker = settings.worker
    siblings = Siblings(worker) if worker is not None and worker.count > 1 else None
    # A worker's own counts, saved for the whole server's /metrics (pyserve.workers.counters).
    app.counts = (counters.CountSaver(counters.exposition_path(worker.runtime_dir, worker.index),
                                      functools.partial(metrics.render, registry))
                  if worker is not None else None)
    router = handlers.make_router(access, audit, siblings)
    server = HttpServer(app, router, transport_limits(settings),
                        on_refused=functools.partial(handlers.count_refused, app, router))
    if settings.infer_fast_path and not access.required(Scope.INFERENCE):  # tokens: the router checks
        server.fast_infer = FastInfer(service)
    # A worker's private channel: its siblings ask it for its readiness and metrics, and forward
    # model control to it (pyserve.workers.channel).
    channel = HttpServer(app, handlers.make_channel_router(), server.limits) if worker is not None else None
    registry.register(metrics.TransportCollector(server))
    reloads: list[tuple[list[Path], Callable[[], object]]] = [(settings.access.files, access.reload)]
    if tls is not None:
        reloads.append((tls.settings.files, tls.reload))
    watcher = FileWatcher(reloads, settings.reload_interval_s)
    # Bound before the models load, so an address in use fails at once rather than after minutes of
    # loading; connections are refused until the models are loaded and the socket listens.
    try:
        await server.bind(settings.host, settings.port, ssl=tls.listener if tls is not None else None,
                          reuse_port=worker is not None)
        # After the bind: an address that is not this machine's, or does not resolve, says so first.
        refusal = exposure_error(settings.host, settings.model_control, access)
        if refusal is not None:
            server.close()
            raise StartupError(refusal)
    except BaseException:
        await asyncio.to_thread(audit.close)
        raise
    try:
        await host.start()
        if settings.models and settings.repository is None and not host.registry.runners():
            raise StartupError("no --model could be loaded (see the errors above): nothing to serve")
        # What startup built (modules, models, sessions) lives until exit: keep it out of the
        # collector's generations, so the collections that requests trigger walk only new objects.
        gc.collect()
        gc.freeze()
        rollouts.load_all()
        if app.payload_log is not None:
            app.payload_log.start()
            _say_which_models_log(host, settings.payload_log)
        if app.drift is not None:
            app.drift.start()
        say_which_models_drift(host, app.drift, app.payload_log)
        if channel is not None and worker is not None:
            app.converging = siblings is not None
            await channel.bind_unix(str(worker.socket_path(worker.index)))
            await channel.listen()
            if siblings is not None:
                await _converge(app, worker)
        await server.listen()
    except BaseException:
        server.close()
        if channel is not None:
            channel.close()
        await host.close()
        if app.payload_log is not None:
            await asyncio.to_thread(app.payload_log.close)
        if app.drift is not None:
            await asyncio.to_thread(app.drift.close)
        await asyncio.to_thread(audit.close)
        raise
    watcher.start()
    _on_sighup(watcher)  # until the loop closes: a SIGHUP during shutdown must not end the process
    # The rollout controller ticks off the request path; it stops before the models are released.
    ticker = asyncio.create_task(rollouts.run(), name="rollouts")
    sampler = asyncio.create_task(app.dashboard.run(), name="dashboard") if app.dashboard is not None else None
    # A worker's counts are saved off the request path, kept when it dies (pyserve.workers.counters).
    saver = (asyncio.create_task(app.counts.keep_saving(), name="save-counts")
             if siblings is not None and app.counts is not None else None)
    for sock in server.sockets:
        host_name, port = sock.getsockname()[:2]
        log.info("======== Running on %s://%s:%s ========", "https" if tls is not None else "http",
                 f"[{host_name}]" if ":" in host_name else host_name, port)
    _say_what_is_protected(settings, access, tls, audit)
    if on_listening is not None:
        on_listening()
    fd_limit = open_file_limit()
    log.info("open file limit %s: at most %d connections at once (--max-connections)",
             fd_limit if fd_limit is not None else "unknown", server.limits.max_connections)
    await stop.wait()
    app.draining = True
    server.draining = True  # kept-alive clients are told to reconnect (to a server still ready)
    if settings.drain_grace_s > 0 and not (hurry is not None and hurry.is_set()):
        log.info("draining: readiness is false; still serving for %.1f s (--drain-grace-s) before "
                 "no longer accepting connections", settings.drain_grace_s)
        await _wait(hurry, settings.drain_grace_s)
    watcher.close()
    ticker.cancel()
    if sampler is not None:
        sampler.cancel()
    log.info("shutting down: finishing accepted requests (up to %.0f s)", settings.shutdown_timeout_s)
    if not await server.shutdown(settings.shutdown_timeout_s):
        log.warning("some connections had not finished within %.0f s and were closed",
                    settings.shutdown_timeout_s)
    if channel is not None:
        await channel.shutdown(settings.shutdown_timeout_s)
    if saver is not None and app.counts is not None:
        saver.cancel()
        await _save_counts(app.counts)  # the final counts, every request answered
    try:
        await asyncio.wait_for(host.close(), settings.shutdown_timeout_s)
    except TimeoutError:
        # A backend call that never returns cannot be interrupted; exiting is the only way out.
        log.error("a model backend did not finish within %.0f s of shutdown; exiting with status 1",
                  settings.shutdown_timeout_s)
        logging.shutdown()
        os._exit(1)
    if app.payload_log is not None:
        # After the models: the last answers are in the queue; their files are published now.
        await asyncio.to_thread(app.payload_log.close)
    if app.drift is not None:
        await asyncio.to_thread(app.drift.close)
    await asyncio.to_thread(audit.close)
    log.info("server stopped")


async def _converge(app: App, worker: WorkerSettings) -> None:
    """Replays the control journal (readiness false meanwhile); StartupError when a call fails here
    for a reason of this worker (the supervisor restarts it later)."""
    try:
        replayed = await journal.converge(worker)
    except journal.ReplayError as e:
        raise StartupError(f"worker {worker.index} cannot serve what the other workers serve: {e}") from None
    if replayed:
        log.info("control journal: %d call(s) replayed; this worker serves what the others serve", replayed)
    app.converging = False


async def _save_counts(counts: counters.CountSaver) -> None:
    try:
        await counts.save()
    except OSError as e:
        log.warning("cannot save this worker's final counts to %s: %s", counts.path, e)


async def _wait(event: asyncio.Event | None, timeout_s: float) -> None:
    """Waits ``timeout_s``, or until ``event`` is set."""
    if event is None:
        await asyncio.sleep(timeout_s)
        return
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        pass


def _open_audit(settings: ServerSettings, registry: CollectorRegistry) -> ManagementAudit:
    """The management audit log of ``settings``. An explicit ``audit_log`` that cannot be opened
    refuses the start (INVALID_ARGUMENT); the default one in a read-only repository falls back to
    the logger, with a warning."""
    if settings.audit_log is not None or settings.repository is None:
        return ManagementAudit(settings.audit_log, registry)
    path = Path(settings.repository) / DEFAULT_AUDIT_FILE
    try:
        return ManagementAudit(path, registry)
    except PyserveError as e:
        log.warning("%s; management calls are audited on the pyserve.audit logger only (give a writable "
                    "--audit-log FILE)", e.message)
        return ManagementAudit(None, registry)


def _on_sighup(watcher: FileWatcher) -> bool:
    """SIGHUP re-reads the token and TLS files (off the event loop's thread); False when signals
    cannot be handled here (serve() run outside the main thread)."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        log.info("SIGHUP: reloading the token and TLS files" if watcher.groups else "SIGHUP: nothing to reload")
        loop.run_in_executor(None, watcher.reload_all)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (ValueError, RuntimeError, NotImplementedError):
        return False
    return True


def _say_what_is_protected(settings: ServerSettings, access: AccessControl, tls: ReloadingTls | None,
                           audit: ManagementAudit) -> None:
    """One line at start: which endpoints need a token, TLS, where the audit goes."""
    if access.tokens:
        needs = ["model control" if access.tokens.control else "model control (closed: no control token)"] + [s for s, on in (("inference and metadata", settings.access.inference),
                                                     ("/metrics", settings.access.metrics)) if on]
        log.info("bearer tokens required for %s (%d token(s): ids %s)", ", ".join(needs), len(access.tokens),
                 ", ".join(access.tokens.ids))
    elif settings.model_control:
        # On loopback: the processes of this machine; elsewhere the operator allowed it explicitly.
        log.log(logging.INFO if is_loopback(settings.host) else logging.WARNING,
                "no bearer tokens: model control is open to every client that reaches %s", settings.host)
    if tls is not None:
        log.info("TLS from %s%s", tls.settings.cert,
                 f"; client certificates {tls.settings.client_auth} (CA {tls.settings.client_ca})"
                 if tls.settings.client_auth != "none" else "")
    log.info("management audit log: %s", audit.path if audit.path is not None else "the pyserve.audit logger only")


def transport_limits(settings: ServerSettings) -> TransportLimits:
    """The HTTP transport's limits. The open file limit is raised to its hard limit, and without
    ``max_connections`` the cap is sized from it."""
    fd_limit = raise_fd_limit()
    max_connections = settings.max_connections
    if max_connections is None:
        max_connections = default_max_connections(fd_limit)
    return TransportLimits(max_body_bytes=settings.max_body_bytes, header_timeout_s=settings.header_timeout_s,
                           body_timeout_s=settings.body_timeout_s, max_connections=max_connections)


def _model_config(host: ModelHost, name: str) -> ModelConfig | None:
    entry = host.registry.models.get(name)
    return entry.config if entry is not None else None


def _say_which_models_log(host: ModelHost, settings: PayloadLogSettings) -> None:
    where = " and ".join(w for w in (f"files in {settings.log_dir}" if settings.log_dir else "",
                                     f"CloudEvents to {settings.sink_url}" if settings.sink_url else "") if w)
    logged = sorted(name for name, entry in host.registry.models.items()
                    if entry.config is not None and entry.config.payload_log.enabled)
    if logged:
        log.info("payload log: %s (%s)", ", ".join(logged), where)
    else:
        log.warning("payload log: %s, but no model has a [payload_log] table in its config.toml, "
                    "so nothing is logged yet", where)


async def _main(settings: ServerSettings, on_listening: Callable[[], None] | None) -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        # The first SIGTERM drains with the grace period; a second one cuts the grace short.
        if stop.is_set():
            hurry.set()
        stop.set()

    def interrupt() -> None:  # Ctrl-C: someone at a terminal, not a load balancer, is waiting
        hurry.set()
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, interrupt)
    orphan = asyncio.create_task(_stop_when_orphaned(stop, hurry)) if settings.worker is not None else None
    await serve(settings, stop, hurry, on_listening)
    if orphan is not None:
        orphan.cancel()


async def _stop_when_orphaned(stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """A worker whose supervisor is gone (killed with SIGKILL) stops too, rather than serve
    unsupervised."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("the supervisor (pid %d) is gone; stopping", parent)
            hurry.set()
            stop.set()


def run(settings: ServerSettings, on_listening: Callable[[], None] | None = None) -> None:
    """Serves until SIGTERM (drained for ``drain_grace_s``) or SIGINT (no grace): then stops
    accepting, finishes accepted requests, exits. ``on_listening`` is called once it accepts
    connections."""
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, a little slower
        asyncio.run(_main(settings, on_listening))
    else:
        uvloop.run(_main(settings, on_listening))
