"""The management audit log: one JSON line per model-control call, whatever its result.

Each record: ``time`` (UTC, ISO 8601 with milliseconds), ``protocol`` (``http``), ``client`` (the
caller's address, ``host:port``), ``token_id`` (the id of the token the call carried, null without
one; never the token), ``action`` (``load``, ``unload``, ``set_traffic``, ``set_alias``,
``remove_alias``, ``start_rollout``, ``rollout_pause``, ``rollout_resume``, ``rollout_promote``,
``rollout_abort``, ``rollout_unknown`` for a rollout action that is none of these, or ``access`` for a
refused read of the management API), ``model``, ``version``
and ``alias`` (null when the call names none), ``result`` (``ok``, or the error kind:
``UNAUTHENTICATED``, ``INVALID_ARGUMENT``, ``NOT_FOUND``, ...), ``status`` (the HTTP status),
``error`` (the error message, "" when ok), ``reason`` (what the caller gave; "" when none or when
the call was refused for want of a token), and ``client_cert_subject`` and ``client_cert_sha256``: the
subject (RFC 4514) and SHA-256 fingerprint of the client certificate the connection presented under
mTLS (null without one; :class:`~pyserve.security.tls.ClientCertificate`).

Records are written by a thread of their own, never on the event loop's thread: appended to the file
(one ``write`` per batch of records on a file opened for appending, then ``fsync``) and logged on the
``pyserve.audit`` logger at INFO. The queue is bounded (a flood of refused calls cannot grow memory):
a record that does not fit is dropped and counted in ``pyserve_audit_records_dropped_total``.

Changes of traffic policies also keep their own log with the policies before and after
(:mod:`pyserve.release.audit`, ``REPO/.pyserve/traffic-audit.jsonl``).
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from pyserve.errors import invalid

log = logging.getLogger("pyserve.audit")

DEFAULT_FILE = Path(".pyserve") / "audit.jsonl"  # under a served repository
QUEUE_SIZE = 10_000
MAX_TEXT = 1000  # characters of an error message or a reason kept
_BATCH = 256


@dataclass(frozen=True)
class AuditRecord:
    """One management call, as written (see the module's docstring for each field)."""

    client: str
    token_id: str | None
    action: str
    model: str | None
    version: str | None
    alias: str | None
    result: str
    status: int
    error: str = ""
    reason: str = ""
    protocol: str = "http"
    client_cert_subject: str | None = None
    client_cert_sha256: str | None = None

    def to_doc(self, now: datetime.datetime) -> dict[str, Any]:
        """The record as its JSON object, stamped ``now`` (UTC)."""
        return {"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "protocol": self.protocol,
                "client": self.client, "token_id": self.token_id, "action": self.action, "model": self.model,
                "version": self.version, "alias": self.alias, "result": self.result, "status": self.status,
                "error": self.error[:MAX_TEXT], "reason": self.reason[:MAX_TEXT],
                "client_cert_subject": self.client_cert_subject, "client_cert_sha256": self.client_cert_sha256}


class ManagementAudit:
    """Writes :class:`AuditRecord` s to ``path`` (JSON lines; None: the logger only) and to the
    ``pyserve.audit`` logger.

    Raises INVALID_ARGUMENT at construction when ``path`` (or its folder) cannot be created or opened
    for appending: a server that was asked to audit does not start without its log."""

    def __init__(self, path: Path | None, registry: CollectorRegistry | None = None,
                 queue_size: int = QUEUE_SIZE) -> None:
        self.path = Path(path) if path is not None else None
        self._fd: int | None = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as e:
                raise invalid(f"audit log {self.path}: cannot open it for appending: {e.strerror or e}") from None
        self._queue: queue.Queue[tuple[AuditRecord, datetime.datetime] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="pyserve-audit", daemon=True)
        self._thread.start()
        self.records = Counter("pyserve_audit_records", "Management calls recorded in the audit log, by "
                               "action and result.", ["action", "result"],
                               registry=registry) if registry is not None else None
        self.dropped = Counter("pyserve_audit_records_dropped", "Audit records dropped: the writer's queue "
                               "was full (a flood of calls) or the file could not be written.",
                               registry=registry) if registry is not None else None

    def record(self, record: AuditRecord) -> None:
        """Queues ``record`` for the writer thread (never blocks; a full queue drops it, counted)."""
        try:
            self._queue.put_nowait((record, datetime.datetime.now(datetime.UTC)))
        except queue.Full:
            if self.dropped is not None:
                self.dropped.inc()
            return
        if self.records is not None:
            self.records.labels(record.action, record.result).inc()

    def close(self) -> None:
        """Writes what is queued, stops the thread, closes the file."""
        self._queue.put(None)
        self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def flush(self) -> None:
        """Waits until every record queued so far is written (tests, shutdown)."""
        self._queue.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < _BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [item for item in items if item is not None]
            stop = len(records) < len(items)
            try:
                self._write(records)
            finally:
                for _ in items:
                    self._queue.task_done()

    def _write(self, records: list[tuple[AuditRecord, datetime.datetime]]) -> None:
        if not records:
            return
        lines = [orjson.dumps(record.to_doc(now)) for record, now in records]
        for line in lines:
            log.info("%s", line.decode())
        if self._fd is None:
            return
        try:
            os.write(self._fd, b"\n".join(lines) + b"\n")
            os.fsync(self._fd)
        except OSError as e:
            log.error("audit log %s: %d record(s) not written: %s", self.path, len(lines), e.strerror or e)
            if self.dropped is not None:
                self.dropped.inc(len(lines))


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit file, oldest first ([] when it does not exist)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]
