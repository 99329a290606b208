"""Backends: run one batch of a model version. The C++ core calls a backend once per batch."""

from pyserve.backends.base import Backend, IdentityBackend, create_backend

__all__ = ["Backend", "IdentityBackend", "create_backend"]
