"""The audit log of traffic-policy changes: one JSON object per line, appended, never rewritten.

Each line: ``time`` (UTC, ISO 8601 with milliseconds), ``model``, ``action`` (``set_policy``,
``set_alias``, ``move_alias``, ``remove_alias``), ``who`` (the caller: the client's address for
HTTP, ``inprocess`` for in-process callers), ``reason`` (what the caller gave), ``old`` and ``new``
(the policies as ``GET .../traffic`` shows them)."""

from __future__ import annotations

import datetime
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("pyserve.release")


class AuditLog:
    """Appends change records to ``path`` (created with its folder on first write)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, model: str, action: str, who: str, reason: str, old: dict, new: dict) -> dict[str, Any]:
        """Appends one record and returns it. The line is written with one ``write`` on a file opened
        for appending, and flushed to disk before the change takes effect (OSError propagates: a change
        that cannot be audited is not made)."""
        now = datetime.datetime.now(datetime.UTC)
        record = {"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "model": model,
                  "action": action, "who": who, "reason": reason, "old": old, "new": new}
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def read(self) -> list[dict[str, Any]]:
        """Every record, oldest first ([] when the log does not exist)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]
