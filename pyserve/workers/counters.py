"""Whole-server counters that never go backwards, across worker deaths and restarts.

A restarted worker's counters start from 0. Summed as they are (:mod:`pyserve.workers.metrics`),
the server's counters would drop, and Prometheus would read a counter reset (``rate()`` spikes).
prometheus-client's multiprocess mode keeps a dead process's files counting; pyserve does the
equivalent with files in the supervisor's runtime directory, so that a count, once published,
stays in the sum:

- **Saved before published.** Each worker saves its own exposition (``exposition-<index>.prom``)
  each time it renders its metrics for a scrape, before it answers, and every
  :data:`SAVE_INTERVAL_S` seconds off the request path, and once more when it stops
  (:class:`CountSaver`: a render older than the saved one never replaces it). Counters only
  grow in a live process, so a worker's saved file always holds at least what any scrape
  published of it.
- **Retired totals.** When a worker exits (crashed, killed or stopped), the supervisor adds the
  counter, histogram and summary samples of its saved file to the retired totals
  (``retired.json``) and deletes the file, before it starts the worker again (nothing counted
  twice). Every retirement increments the totals' ``generation``.
- **The sum.** A scrape sums the live workers' answers, the saved file of each worker that did not
  answer (dead and not yet retired, or too slow), and the retired totals. The retired totals and
  the saved files are read under the ``fcntl`` lock the supervisor retires under; a scrape during
  which a retirement happened (the generation changed: the worker may be counted both live and
  retired) is taken again.

What a crash loses: the counts a worker made since its last save (at most
:data:`SAVE_INTERVAL_S` seconds' worth, and nothing before the last scrape). They were never
published, so no series goes backwards; they are just never counted.

There is no floor (publishing the largest value seen): a model version unloaded and loaded again
starts its counters from 0 in every worker, as in one process, and Prometheus reads that as the
reset it is; a floor would hide the new counts until they passed the old ones.

Every file is written whole to a temporary name, then renamed (a reader sees the old file or the
new one, never half of one).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics_core import Metric

from pyserve.workers import metrics as merged_metrics

log = logging.getLogger("pyserve.workers")

# How often each worker saves its own exposition: the most a crash leaves uncounted.
SAVE_INTERVAL_S = 5.0
RETIRED_FILE = "retired.json"
_LOCK_FILE = "counters.lock"
# The families whose samples only grow while a process lives (what Prometheus reads as counters).
MONOTONIC_TYPES = frozenset({"counter", "histogram", "summary"})
# A scrape during which a worker was retired is taken again, this many times at most.
SCRAPE_TRIES = 3


def exposition_path(runtime_dir: Path, index: int) -> Path:
    """Where worker ``index`` saves its own exposition."""
    return Path(runtime_dir) / f"exposition-{index}.prom"


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path``: a temporary file in the same folder, then renamed over it.
    Raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Retired:
    """The summed counters, histograms and summaries of the exited workers (an exposition), and
    how many retirements they hold."""

    generation: int = 0
    exposition: str = ""


def read_retired(runtime_dir: Path) -> Retired:
    """The retired totals (empty before the first retirement). Raises ValueError for a damaged
    file."""
    path = Path(runtime_dir) / RETIRED_FILE
    raw = _read_text(path)
    if raw is None:
        return Retired()
    try:
        doc = json.loads(raw)
        return Retired(int(doc["generation"]), str(doc["exposition"]))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: damaged retired totals: {e}") from None


def _monotonic_only(families: list[Metric]) -> list[Metric]:
    return [f for f in families if f.type in MONOTONIC_TYPES]


@contextlib.contextmanager
def _locked(runtime_dir: Path) -> Iterator[None]:
    with open(Path(runtime_dir) / _LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def retire(runtime_dir: Path, index: int) -> bool:
    """Adds the counters, histograms and summaries of worker ``index``'s saved exposition to the
    retired totals and deletes it, under the lock; called by the supervisor once the worker has
    exited and before it starts again. False when the worker saved none. Raises OSError when the
    files cannot be written; ValueError for a damaged file."""
    runtime_dir = Path(runtime_dir)
    path = exposition_path(runtime_dir, index)
    with _locked(runtime_dir):
        last = _read_text(path)
        if last is None:
            return False
        old = read_retired(runtime_dir)
        texts = [t for t in (old.exposition, last) if t]
        families = _monotonic_only(merged_metrics.merge_families(texts))
        doc = {"generation": old.generation + 1,
               "exposition": merged_metrics.exposition(families).decode()}
        write_atomically(runtime_dir / RETIRED_FILE, json.dumps(doc).encode())
        path.unlink()
    return True


class RetiredMeanwhile(Exception):
    """A worker was retired during a scrape: it may be counted both live and retired."""


def whole_server(runtime_dir: Path, answers: list[str], absent: list[int],
                 generation: int | None = None) -> bytes:
    """The exposition of the whole server: the ``answers`` of the live workers, the saved counters of
    the workers ``absent`` from them, and the retired totals, merged. Blocks (file lock): call it
    off the event loop. Raises :class:`RetiredMeanwhile` when ``generation`` is given and the
    retired totals are no longer of it (scrape again), ValueError for a text that is not an
    exposition or a damaged file."""
    with _locked(runtime_dir):
        retired = read_retired(runtime_dir)
        if generation is not None and retired.generation != generation:
            raise RetiredMeanwhile(f"retired totals of generation {retired.generation}, not {generation}")
        saved = [t for t in (_read_text(exposition_path(runtime_dir, i)) for i in absent) if t]
    # A silent worker's gauges say nothing of now: its counters only.
    counts = [merged_metrics.exposition(_monotonic_only(merged_metrics.merge_families([t]))).decode()
              for t in saved]
    families = merged_metrics.merge_families([*answers, *counts, retired.exposition])
    return merged_metrics.exposition(families)


class CountSaver:
    """Saves one worker's own exposition to its file (:func:`exposition_path`), newest render last.

    Every save renders on the event loop and writes in a thread; two saves in flight at once (a
    scrape through a sibling, a direct one, the periodic save, the final one) may finish their
    writes in either order. A write of a render older than the one the file holds is dropped:
    otherwise the file could go back to fewer counts than a scrape already published, and a
    ``kill -9`` then would make the whole server's counters go backwards.
    """

    def __init__(self, path: Path, render: Callable[[], bytes]) -> None:
        self.path = Path(path)
        self._render = render
        self._rendered = 0  # renders so far (on the event loop, so numbered in the order of counts)
        self._written = 0  # the number of the render the file holds
        self._lock = threading.Lock()

    def render(self) -> tuple[int, bytes]:
        """This worker's exposition now, and its number (call on the event loop)."""
        self._rendered += 1
        return self._rendered, self._render()

    def write(self, number: int, text: bytes) -> bool:
        """Writes render ``number``'s ``text`` unless a later render is saved already (blocking:
        call it in a thread); False when dropped. Raises OSError."""
        with self._lock:
            if number <= self._written:
                return False
            write_atomically(self.path, text)
            self._written = number
        return True

    async def save(self) -> bytes:
        """Renders this worker's exposition, saves it, and returns it once it is saved (so that
        a scrape publishes only counts already saved). Raises OSError."""
        number, text = self.render()
        await asyncio.to_thread(self.write, number, text)
        return text

    async def keep_saving(self, interval_s: float = SAVE_INTERVAL_S) -> None:
        """Saves every ``interval_s`` seconds until cancelled; a failed save is logged and tried
        again at the next tick."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.save()
            except OSError as e:
                log.warning("cannot save this worker's metrics to %s: %s", self.path, e)
