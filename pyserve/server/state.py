"""Typed keys of the application's shared state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from pyserve.repository import ModelRepository

if TYPE_CHECKING:
    from pyserve.server.app import ServerSettings

SETTINGS: web.AppKey["ServerSettings"] = web.AppKey("settings")
REPOSITORY: web.AppKey[ModelRepository] = web.AppKey("repository", ModelRepository)
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
INFER_ERRORS: web.AppKey[Counter] = web.AppKey("infer_errors", Counter)
