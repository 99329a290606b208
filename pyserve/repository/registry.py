"""The registry of models: which models the server knows, their states and their loaded versions.

Lookups on the request path (:meth:`ModelRegistry.version`) read a dict and nothing else. The
registry holds an entry only for a model that a source has or had: a name that is not a model never
leaves state behind (an unknown name in a request costs no memory).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyserve.config import ModelConfig
from pyserve.errors import not_found, unavailable
from pyserve.runtime import ModelRunner


def version_number(text: str) -> int | None:
    """The version that ``text`` names (``"2"`` -> 2), or None when it is not a version number."""
    # A version is a number of at most 19 digits (an int64, as Triton's): a longer string cannot
    # be one, and int() of thousands of digits raises (Python's int_max_str_digits).
    if text.isascii() and text.isdigit() and len(text) <= 19 and int(text) > 0:
        return int(text)
    return None


class ModelState(enum.Enum):
    """The state of a model, with Triton's names (repository index ``state``)."""

    READY = "READY"  # serving its versions
    LOADING = "LOADING"  # first load under way; a model reloading keeps serving as READY
    UNAVAILABLE = "UNAVAILABLE"  # failed to load (the entry's reason says why)
    UNLOADED = "UNLOADED"  # unloaded on request (model control)


@dataclass
class ModelEntry:
    """What the registry knows of one model: its state, why, its config and its loaded versions.

    Every change of a field of any entry (a new entry too) bumps :attr:`generation`: a reader that
    keeps what a lookup answered (``InferenceService.fast_route``, for the transports' fast paths)
    may keep it while the generation is the same. The fields are replaced, never changed in place (``versions``
    is a new dict each time), so no change goes unseen."""

    generation: ClassVar[int] = 0

    name: str
    state: ModelState = ModelState.LOADING
    reason: str = ""
    config: ModelConfig | None = None
    versions: dict[int, ModelRunner] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        ModelEntry.generation += 1

    def runner(self, version: str | None) -> ModelRunner:
        """The runner of ``version`` (newest when None or ""); NOT_FOUND / UNAVAILABLE otherwise."""
        if self.state is not ModelState.READY or not self.versions:
            why = {ModelState.UNLOADED: "it was unloaded", ModelState.LOADING: "it is loading"}.get(
                self.state, self.reason)
            raise unavailable(f"model '{self.name}' is not ready" + (f": {why}" if why else ""))
        if not version:
            return self.versions[max(self.versions)]
        number = version_number(version)
        runner = self.versions.get(number) if number is not None else None
        if runner is None:
            served = ", ".join(str(v) for v in sorted(self.versions))
            raise not_found(f"model '{self.name}' has no version '{version}' (serving: {served})")
        return runner


class ModelRegistry:
    """Model name -> :class:`ModelEntry`, with the lookups of the request path and the index."""

    def __init__(self) -> None:
        self.models: dict[str, ModelEntry] = {}

    def entry(self, name: str) -> ModelEntry:
        """The entry of a known model; NOT_FOUND otherwise."""
        entry = self.models.get(name)
        if entry is None:
            raise not_found(f"unknown model '{name}'")
        return entry

    def version(self, name: str, version: str | None = None) -> ModelRunner:
        """The runner serving ``name`` at ``version`` (newest when None); NOT_FOUND / UNAVAILABLE."""
        entry = self.models.get(name)
        if entry is None:
            raise not_found(f"unknown model '{name}'")
        return entry.runner(version)

    def runners(self) -> list[ModelRunner]:
        """Every loaded version of every model."""
        return [r for e in self.models.values() for r in e.versions.values()]

    def index(self, available: list[str]) -> list[dict]:
        """Triton's repository index: one row per loaded version, or per model when none is loaded.

        ``available``: the names the sources have now (listed even when never loaded). An unloaded
        model is shown as Triton shows it: state UNAVAILABLE, reason "unloaded"."""
        rows: list[dict] = []
        for name in sorted(set(available) | set(self.models)):
            entry = self.models.get(name)
            if entry is None:
                rows.append({"name": name, "state": ModelState.UNAVAILABLE.value})
            elif entry.state is ModelState.UNLOADED:
                # Triton's wire form of an unloaded model, which its clients and tools expect.
                rows.append({"name": name, "state": ModelState.UNAVAILABLE.value, "reason": "unloaded"})
            elif not entry.versions:
                row = {"name": name, "state": entry.state.value}
                if entry.reason:
                    row["reason"] = entry.reason
                rows.append(row)
            else:
                rows.extend({"name": name, "version": str(v), "state": entry.state.value}
                            for v in sorted(entry.versions))
        return rows

    def all_ready(self) -> bool:
        """Every known model is READY, or was unloaded on request.

        An operator's unload must not make the whole server unready (a readiness probe would then
        take every other model out of service), as in Triton."""
        return all(e.state in (ModelState.READY, ModelState.UNLOADED) for e in self.models.values())
