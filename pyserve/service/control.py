"""Model control with no protocol in it: the repository index, load and unload.

Every transport's model-control endpoints (HTTP's ``/v2/repository/...``; gRPC's RepositoryModelLoad
when it exists) call these, so the rules are the same everywhere: names are checked before anything
is read (:func:`~pyserve.repository.check_model_name`), a load or unload completes even when its caller
goes away, and a caller's mistake (an unknown or impossible name) is logged at INFO, the server's
trouble (a config that does not load) at ERROR. Audit logging and aliases attach here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyserve.errors import ErrorKind, PyserveError, invalid
from pyserve.repository import check_model_name, version_number

if TYPE_CHECKING:
    from pyserve.service.host import ModelHost

log = logging.getLogger("pyserve.service")


class ModelControl:
    """Load, unload and list the models of a :class:`~pyserve.service.host.ModelHost`."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index rows (``name``, ``version``, ``state``, ``reason``)."""
        rows = self.host.repository.index()
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load(self, name: str, config_override: Mapping[str, Any] | None = None) -> None:
        """(Re)loads model ``name``, with ``config_override`` in place of its config.toml when given.

        Raises INVALID_ARGUMENT (a name that cannot be a model, a config that is refused), NOT_FOUND
        (no such model). Shielded: a caller that is cancelled does not leave a model half loaded."""
        try:
            await asyncio.shield(self.host.repository.load(name, config_override))
        except PyserveError as e:
            # A refused override is the caller's mistake; a config.toml that does not load, the server's.
            mistake = config_override is not None or self._callers_mistake(name, e)
            level = logging.INFO if mistake else logging.ERROR
            log.log(level, "load of model %r refused: %s", name, e.message)
            raise

    async def unload(self, name: str) -> None:
        """Stops serving ``name`` once the requests it accepted are answered (shielded like load).

        INVALID_ARGUMENT for a name that cannot be a model, NOT_FOUND for an unknown one."""
        try:
            await asyncio.shield(self.host.repository.unload(name))
        except PyserveError as e:
            log.info("unload of model %r refused: %s", name, e.message)
            raise

    async def load_version(self, name: str, version: str) -> None:
        """(Re)loads one version of ``name``; the model's other versions keep serving, untouched.

        INVALID_ARGUMENT for a name or version that cannot be one, or a version that fails to load
        (nothing changes then); NOT_FOUND for an unknown model or version folder. Shielded."""
        number = self._version(name, version)
        await asyncio.shield(self.host.repository.load_version(name, number))

    async def unload_version(self, name: str, version: str) -> None:
        """Stops serving one version of ``name`` once its accepted requests are answered; the other
        versions keep serving. NOT_FOUND for a version that is not loaded. Shielded."""
        number = self._version(name, version)
        try:
            await asyncio.shield(self.host.repository.unload_version(name, number))
        except PyserveError as e:
            log.info("unload of model %r version %s refused: %s", name, version, e.message)
            raise

    @staticmethod
    def _version(name: str, version: str) -> int:
        check_model_name(name)
        number = version_number(version)
        if number is None:
            raise invalid(f"model '{name}' version {version[:80]!r}: expected a version number (1, 2, ...)")
        return number

    @staticmethod
    def _callers_mistake(name: str, error: PyserveError) -> bool:
        if error.kind is ErrorKind.NOT_FOUND:
            return True
        try:
            check_model_name(name)
        except PyserveError:
            return True
        return False
