"""The HTTP server: KServe v2 / Open Inference Protocol, msgpack, model control and metrics."""

from pyserve.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
