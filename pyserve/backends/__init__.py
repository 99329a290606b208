"""Backends: run one batch of a model version. The C++ core calls a backend once per batch.

Which backends exist, and everything pyserve knows of each, is in :mod:`pyserve.backends.registry`.
"""

from pyserve.backends.base import Backend, create_backend

__all__ = ["Backend", "create_backend"]
