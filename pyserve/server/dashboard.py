"""HTTP of the dashboard (docs/dashboard.md): ``GET /dashboard``, ``/dashboard/data`` and its static
files. What the page shows is :mod:`pyserve.dashboard`'s business; here are paths, headers, caching."""

from __future__ import annotations

from collections.abc import Callable

import urllib.parse

import orjson

from pyserve.dashboard import DATA_URL, STATIC_PREFIX, Dashboard
from pyserve.errors import invalid, not_found
from pyserve.server.errors import async_endpoint
from pyserve.server.messages import Handler, Request, Response
from pyserve.server.router import Router

# The page runs only its own files: no inline script, nothing from another origin. plotly.js sets
# style attributes and adds <style> elements, so styles may be inline.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Static files are named with ?v=<version> by the page; an hour, then a revalidation by ETag (304).
STATIC_MAX_AGE_S = 3600


def _dashboard(request: Request) -> Dashboard:
    dashboard = request.app.dashboard
    if dashboard is None:
        raise not_found("the dashboard is off on this server (it was started with --disable-dashboard)")
    return dashboard


@async_endpoint
async def page(request: Request) -> Response:
    html = await _dashboard(request).page()
    return Response(html.encode(), content_type="text/html; charset=utf-8", headers=dict(PAGE_HEADERS))


@async_endpoint
async def data(request: Request) -> Response:
    unknown = sorted(urllib.parse.parse_qs(request.query_string, keep_blank_values=True))
    if unknown:  # as /v2/drift and /v2/logs: a misspelt filter is an error, not silently ignored
        raise invalid(f"unknown query parameter(s) {', '.join(map(repr, unknown))}; expected none")
    doc = await _dashboard(request).document()
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), headers={"Cache-Control": "no-store"})


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


@async_endpoint
async def static(request: Request) -> Response:
    """A file of the page: ETag and If-None-Match (304), Cache-Control, gzip when the client takes it."""
    name = request.match_info["name"]
    asset = await _dashboard(request).asset(name)
    if asset is None:
        raise not_found(f"no such dashboard file: {name[:100]}")
    headers = {"ETag": asset.etag, "Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}", "Vary": "Accept-Encoding",
               "X-Content-Type-Options": "nosniff"}
    tags = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
    if asset.etag in tags or "*" in tags:
        return Response(b"", 304, content_type=None, headers=headers)
    if asset.gzipped is not None and _accepts_gzip(request):
        return Response(asset.gzipped, content_type=asset.content_type, headers={**headers, "Content-Encoding": "gzip"})
    return Response(asset.body, content_type=asset.content_type, headers=headers)


def add_routes(router: Router, guard: Callable[[Handler], Handler] = lambda handler: handler) -> None:
    """``GET /dashboard``, ``GET /dashboard/data``, ``GET /dashboard/static/{name}``, each wrapped by
    ``guard`` (the token check of the scope the server gives the dashboard)."""
    router.add("GET", "/dashboard", guard(page))
    router.add("GET", DATA_URL, guard(data))
    router.add("GET", STATIC_PREFIX + "{name}", guard(static))
