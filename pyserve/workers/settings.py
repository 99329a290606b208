"""Who a worker is: its index, how many there are, and where the private channel's sockets live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkerSettings:
    """One worker of ``count`` (``index`` in 0..count-1) of a ``--workers`` server.

    ``runtime_dir`` is the parent's private directory (mode 0700) holding each worker's channel
    socket, ``worker-<index>.sock``.
    """

    index: int
    count: int
    runtime_dir: Path

    def unpack_dir(self, index: int) -> Path:
        """Where worker ``index`` unpacks ``.pyserve`` artifacts (its own: no two workers share a
        folder, and the supervisor deletes it when the worker exits)."""
        return self.runtime_dir / f"unpacked-{index}"

    def socket_path(self, index: int) -> Path:
        """The channel socket of worker ``index``."""
        return self.runtime_dir / f"worker-{index}.sock"

    @property
    def siblings(self) -> list[int]:
        """The indices of the other workers."""
        return [i for i in range(self.count) if i != self.index]
