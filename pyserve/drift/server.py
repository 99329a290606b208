"""The drift monitor of a server: made from its model host and payload log, and what it says at startup."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyserve.drift.profile import profile_path_in
from pyserve.errors import PyserveError

if TYPE_CHECKING:
    from pathlib import Path

    from prometheus_client import CollectorRegistry

    from pyserve.config import ModelConfig
    from pyserve.drift.monitor import DriftMonitor
    from pyserve.payload_log import PayloadLog
    from pyserve.service import ModelHost

log = logging.getLogger("pyserve.drift")


def make_monitor(host: ModelHost, payload_log: PayloadLog | None, registry: CollectorRegistry | None
                 ) -> DriftMonitor | None:
    """The drift monitor fed by ``payload_log`` (None: the server keeps no payload log, or scipy is
    missing; :func:`say_which_models_drift` then says so when a model asks for drift)."""
    if payload_log is None:
        return None
    try:
        from pyserve.drift import require_scipy

        require_scipy()
    except ImportError:
        return None
    from pyserve.drift.monitor import DriftMonitor

    def model_config(name: str) -> ModelConfig | None:
        entry = host.registry.models.get(name)
        return entry.config if entry is not None else None

    def profile_path(name: str, config: ModelConfig, version: str) -> Path:
        return profile_path_in(host.repository.sources.version_dir(name, config, int(version)))

    def loaded() -> dict[tuple[str, str], object]:
        return {(r.config.name, r.version): r for r in host.registry.runners()}

    monitor = DriftMonitor(model_config, profile_path, loaded, registry)
    # Captures are made only for the calls of models with [drift]: the others cost the writer nothing more.
    payload_log.add_consumer(monitor.consume, wants=lambda config: config.drift.enabled)
    return monitor


def say_which_models_drift(host: ModelHost, monitor: DriftMonitor | None, payload_log: PayloadLog | None) -> None:
    """Logs which models' drift is watched, and WARNING for each model whose ``[drift]`` cannot be:
    the server keeps no payload log, the model's ``[payload_log]`` is off, or scipy is missing."""
    wanted = sorted((name, e.config) for name, e in host.registry.models.items()
                    if e.config is not None and e.config.drift.enabled)
    if not wanted:
        return
    if monitor is None:
        why = ("the server keeps no payload log (start it with --payload-log-dir or --payload-log-sink)"
               if payload_log is None else "scipy is not installed (pip install 'pyserve[drift]')")
        log.warning("%s ha%s [drift] in config.toml, but %s: drift is not watched",
                    ", ".join(n for n, _ in wanted), "ve" if len(wanted) > 1 else "s", why)
        return
    for name, config in wanted:
        if not config.payload_log.enabled:
            log.warning("model %s has [drift] but its payload log is off: add a [payload_log] table to "
                        "its config.toml (drift tests the calls the log samples)", name)
            continue
        for version in sorted(host.registry.models[name].versions):
            try:
                path = profile_path_in(host.repository.sources.version_dir(name, config, version))
            except PyserveError:  # the version folder is gone since it loaded: nothing to say of it
                continue
            if path.is_file():
                log.info("watching the drift of model %s version %s: profile %s, windows of %d rows, %s of the calls "
                         "(the payload log's sample_rate)", name, version, path, config.drift.window_rows,
                         f"{config.payload_log.sample_rate:.0%}")
            else:
                log.warning("model %s version %s has [drift] but no profile (%s): build one with "
                            "pyserve profile", name, version, path)
