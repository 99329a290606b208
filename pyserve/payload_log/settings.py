"""The server-wide settings of the payload log (``pyserve serve --payload-log-*``); importing this
module needs no pyarrow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class PayloadLogSettings:
    """Where and how the payload log is kept (per-model choices live in ``[payload_log]``).

    ``log_dir``: the folder of the Parquet files (None: no files). A file is closed and made visible
    when it reaches ``rotate_bytes`` or ``rotate_s`` seconds of age; completed files are deleted,
    oldest first, beyond ``retain_bytes`` in total or ``retain_s`` of age. ``queue_size``: records
    waiting for the writer thread; beyond it new records are dropped and counted.
    ``sink_url``: where records are posted as CloudEvents (None: no sink), each event retried up to
    ``sink_retries`` times with exponential backoff from ``sink_backoff_s``, ``sink_timeout_s`` per
    attempt; ``sink_source``, ``sink_namespace``, ``sink_component`` and ``sink_endpoint`` fill the
    events' ``ce-source``, ``ce-namespace``, ``ce-component`` and ``ce-endpoint`` as KServe's logger does."""

    log_dir: Path | None = None
    rotate_bytes: int = 64 * MIB
    rotate_s: float = 60.0
    retain_bytes: int = 1024 * MIB
    retain_s: float = 7 * 24 * 3600.0
    queue_size: int = 10_000
    flush_s: float = 0.5
    sink_url: str | None = None
    sink_retries: int = 5
    sink_backoff_s: float = 0.2
    sink_timeout_s: float = 5.0
    sink_concurrency: int = 8
    sink_source: str = ""
    sink_namespace: str = ""
    sink_component: str = "predictor"
    sink_endpoint: str = "default"

    @property
    def enabled(self) -> bool:
        """Whether the server keeps a payload log at all (files, a sink, or both)."""
        return self.log_dir is not None or self.sink_url is not None
