"""The control journal of a ``--workers`` server: the model-control calls applied so far, replayed by a
worker that starts after them, so that it serves what its siblings serve.

Model control (load and unload, traffic policies, aliases) is applied by every live worker
(:func:`pyserve.workers.routes.fan_out`). A worker that dies and is restarted starts from the
repository's startup state; without the journal it would serve models its siblings unloaded, or
lack one they loaded. So the worker that takes a control call records it here once it has applied
it (before it forwards it to its siblings), and every worker, before it takes connections, replays
the journal on its own private channel (:func:`converge`), its readiness false meanwhile.

Why a journal rather than copying a ready sibling's state: the calls are replayed through the same
handlers that applied them (the same checks, the same golden samples), with no second description
of "the state" to keep in step with the service layer; and it needs no sibling to be ready (every
worker may be restarting at once).

The journal is compacted as it is written, one call per key: a model's load or unload (a load or
unload of the whole model replaces its versions' too; a version's, that version's), a model's
traffic policy (which replaces its aliases), one alias of a model. A rollout of a model drops that
model's traffic and alias calls: a rollout's state and the policy it steps are read back from the
model's ``rollout.json`` and ``traffic.json`` at start, and replaying an older policy over them
would undo the rollout's steps. Each call keeps a sequence number: the replay follows the order
in which they were taken.

The journal is one JSON file in the supervisor's runtime directory, changed under an ``fcntl`` lock
and written whole to a temporary name, then renamed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from pyserve.workers import channel
from pyserve.workers.counters import write_atomically
from pyserve.workers.settings import WorkerSettings

log = logging.getLogger("pyserve.workers")

JOURNAL_FILE = "control-journal.json"
_LOCK_FILE = "control-journal.lock"
_MODEL = r"/v2/repository/models/(?P<model>[^/]+)"
# (method, path pattern) -> the kind of call; a path of none of these is not recorded.
_CALLS = (
    ("POST", re.compile(_MODEL + r"/(?:load|unload)"), "model"),
    ("POST", re.compile(_MODEL + r"/versions/(?P<version>[^/]+)/(?:load|unload)"), "version"),
    ("PUT", re.compile(_MODEL + r"/traffic"), "traffic"),
    ("PUT", re.compile(_MODEL + r"/aliases/(?P<alias>[^/]+)"), "alias"),
    ("DELETE", re.compile(_MODEL + r"/aliases/(?P<alias>[^/]+)"), "alias"),
    ("POST", re.compile(_MODEL + r"/rollout(?:/[^/]+)?"), "rollout"),
)


@dataclass(frozen=True)
class Call:
    """One control call as the worker that took it received it: ``target`` is the path and query,
    ``body`` base64, ``client`` the caller's address (for the replaying worker's log)."""

    seq: int
    key: list[str]
    method: str
    target: str
    content_type: str
    body: str
    client: str

    @property
    def body_bytes(self) -> bytes:
        """The request body as received."""
        return base64.b64decode(self.body)


def classify(method: str, path: str) -> tuple[str, list[str]] | None:
    """(kind, key) of a control call: kind is ``model``, ``version``, ``traffic``, ``alias`` or
    ``rollout``; None for a call that is not recorded."""
    for m, pattern, kind in _CALLS:
        match = pattern.fullmatch(path)
        if m == method and match is not None:
            parts = match.groupdict()
            key = [kind, parts["model"]] + [parts[k] for k in ("version", "alias") if parts.get(k)]
            return ("model" if kind == "version" else kind), key
    return None


def _replaces(kind: str, key: list[str], old: list[str]) -> bool:
    """Whether a call of ``kind`` with ``key`` makes the recorded call ``old`` obsolete."""
    model = key[1]
    if old[1] != model:
        return False
    if kind == "model":
        # A whole model's load or unload replaces its versions' calls; a version's, its own.
        return old == key or (len(key) == 2 and old[0] in ("model", "version"))
    if kind == "traffic":
        return old[0] in ("traffic", "alias")
    if kind == "alias":
        return old == key
    return kind == "rollout" and old[0] in ("traffic", "alias")


class ControlJournal:
    """The journal file of the runtime directory ``runtime_dir`` (module docstring)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.path = Path(runtime_dir) / JOURNAL_FILE
        self._lock_path = Path(runtime_dir) / _LOCK_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> tuple[int, list[Call]]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return 0, []
        except ValueError as e:
            # Written whole and renamed: only someone else's hand damages it.
            raise ValueError(f"{self.path}: damaged control journal: {e}") from None
        return doc["seq"], [Call(**c) for c in doc["calls"]]

    def record(self, method: str, target: str, body: bytes, content_type: str, client: str) -> int | None:
        """Records a control call applied by this worker (``target``: path and query); its sequence
        number, or None for a call that is not recorded (not model control). Blocks (file lock):
        call it off the event loop. Raises OSError when the file cannot be written."""
        kind_key = classify(method, target.partition("?")[0])
        if kind_key is None:
            return None
        kind, key = kind_key
        with self._locked():
            seq, calls = self._read()
            seq += 1
            calls = [c for c in calls if not _replaces(kind, key, c.key)]
            if kind != "rollout":
                calls.append(Call(seq, key, method, target, content_type,
                                  base64.b64encode(body).decode(), client))
            doc = {"seq": seq, "calls": [asdict(c) for c in calls]}
            write_atomically(self.path, json.dumps(doc).encode())
        return seq

    def calls(self) -> list[Call]:
        """The recorded calls, oldest first. Raises ValueError for a damaged journal."""
        with self._locked():
            return self._read()[1]


class ReplayError(Exception):
    """A recorded call failed on replay with a status that says this worker, not the call, is at
    fault (5xx, or no answer): this worker cannot serve what its siblings serve."""


async def converge(worker: WorkerSettings) -> int:
    """Replays the journal on this worker's own private channel (which must listen already, so that
    a call taken meanwhile by a sibling reaches this worker too) until a pass finds nothing new:
    a call recorded during the replay is recorded before it is forwarded, so the last pass sees
    it, and the calls replayed last are the newest. Returns the number of calls replayed. A call
    answered 4xx no longer applies to this worker's state (the worker that took it was answered
    the same): logged, and skipped. Raises :class:`ReplayError` for a 5xx answer or no answer, or a
    journal that cannot be read."""
    journal = ControlJournal(worker.runtime_dir)
    socket = str(worker.socket_path(worker.index))
    done: dict[int, bool] = {}
    replayed = 0
    while True:
        try:
            calls = await asyncio.to_thread(journal.calls)
        except (OSError, ValueError) as e:
            raise ReplayError(f"cannot read the control journal: {e}") from None
        new = [c for c in calls if c.seq not in done]
        if not new:
            return replayed
        for call in new:
            headers = {channel.CLIENT_HEADER: call.client}
            if call.content_type:
                headers["content-type"] = call.content_type
            try:
                status, answer = await channel.request(socket, call.method, call.target, call.body_bytes,
                                                       headers, channel.CONTROL_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as e:
                raise ReplayError(f"replaying {call.method} {call.target}: {e}") from None
            done[call.seq] = True
            replayed += 1
            if status >= 500:
                raise ReplayError(f"replaying {call.method} {call.target}: status {status}: "
                                  f"{answer[:300].decode(errors='replace')}")
            if status >= 400:
                log.warning("control journal: %s %s no longer applies here (status %d: %s)", call.method,
                            call.target, status, answer[:300].decode(errors="replace"))
            else:
                log.info("control journal: replayed %s %s", call.method, call.target)
