"""The HTTP server: KServe v2 and msgpack over a lean HTTP/1.1 transport."""

from pyserve.server.app import ServerSettings, run, serve

__all__ = ["ServerSettings", "run", "serve"]
