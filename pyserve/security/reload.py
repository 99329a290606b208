"""Watching files for changes, so tokens and certificates rotate without a restart.

A thread polls ``os.stat`` of each watched file (inode, size, modification time) every
``interval_s`` and runs the file group's reload when any of them changed. Polling, not inotify: a
Kubernetes Secret volume updates by swapping a symlink (``..data``) in the folder, which an inotify
watch on the file itself does not see, while ``stat`` follows the link to the new file; and a
handful of ``stat`` calls a second costs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("pyserve.security")

POLL_INTERVAL_S = 2.0

Signature = tuple[tuple[int, int, int, int] | None, ...]


def _signature(paths: Sequence[Path]) -> Signature:
    sig: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            sig.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append(None)  # gone for now (a rename in progress): a change when it is back
    return tuple(sig)


class FileWatcher:
    """Runs ``reload()`` of a group when one of its files changes, on a daemon thread of its own.

    ``groups``: ``(files, reload)`` pairs; ``reload`` must not raise (the reloads of
    :class:`~pyserve.security.access.AccessControl` and :class:`~pyserve.security.tls.ReloadingTls`
    log their own failures and keep what is in force)."""

    def __init__(self, groups: Sequence[tuple[Sequence[Path], Callable[[], object]]],
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self.groups = [(list(paths), reload) for paths, reload in groups if paths]
        self.interval_s = interval_s
        self._seen = [_signature(paths) for paths, _ in self.groups]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Starts polling (nothing to do without files)."""
        if self.groups and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pyserve-file-watcher", daemon=True)
            self._thread.start()

    def reload_all(self) -> None:
        """Runs every group's reload now (SIGHUP); blocking: call it off the event loop's thread."""
        for i, (paths, reload) in enumerate(self.groups):
            self._seen[i] = _signature(paths)
            self._call(reload)

    def close(self) -> None:
        """Stops the thread (waits for a reload in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for i, (paths, reload) in enumerate(self.groups):
                sig = _signature(paths)
                if sig != self._seen[i]:
                    self._seen[i] = sig
                    self._call(reload)

    @staticmethod
    def _call(reload: Callable[[], object]) -> None:
        try:
            reload()
        except Exception:  # a reload logs its own failures; this is a bug, and the watcher goes on
            log.exception("reload failed")
