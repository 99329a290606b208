"""The files the dashboard page loads: plotly.js from the installed ``plotly`` package, and the page's
own script and style sheet from ``pyserve/dashboard/static/``. Nothing is fetched from the internet.

plotly.js is the one that the ``plotly`` PyPI package bundles (``plotly.offline.get_plotlyjs()``,
about 4.8 MB, 1.4 MB gzipped), read once, when first asked for, on the caller's thread.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import threading
from dataclasses import dataclass
from importlib import resources

PLOTLY = "plotly.min.js"
OWN = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
CHARTS_HINT = "pip install 'pyserve[dashboard]'"


@dataclass(frozen=True)
class Asset:
    """A static file: its bytes, its gzip form (None when compressing saves little), its media type
    and its strong ETag (a quoted hash of the bytes)."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> Asset:
    packed = gzip.compress(body, 6, mtime=0)
    return Asset(body, packed if len(packed) < 0.9 * len(body) else None, content_type,
                 '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


def plotly_version() -> str | None:
    """The version of the installed ``plotly`` package (which bundles plotly.js), without importing
    it; None when it is not installed (the page is then tables only)."""
    if importlib.util.find_spec("plotly") is None:
        return None
    try:
        return importlib.metadata.version("plotly")
    except importlib.metadata.PackageNotFoundError:
        return None


class Assets:
    """The static files by name (:data:`PLOTLY` and :data:`OWN`), each read and compressed once. Thread-safe."""

    def __init__(self) -> None:
        self._cache: dict[str, Asset | None] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Asset | None:
        """The file ``name``; None when there is no such file (or plotly is not installed)."""
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        asset = self._load(name)
        with self._lock:
            self._cache[name] = asset
        return asset

    @staticmethod
    def _load(name: str) -> Asset | None:
        if name == PLOTLY:
            if plotly_version() is None:
                return None
            from plotly.offline import get_plotlyjs

            return _asset(get_plotlyjs().encode(), "text/javascript; charset=utf-8")
        if name in OWN:
            return _asset(resources.files("pyserve.dashboard").joinpath("static", name).read_bytes(), OWN[name])
        return None
