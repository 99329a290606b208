"""The server-wide settings of the dashboard (``pyserve serve --dashboard-*``, docs/dashboard.md)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_SNAPSHOTS = 10_000  # the most snapshots kept: memory grows with snapshots x model versions


@dataclass(frozen=True)
class DashboardSettings:
    """``enabled``: whether ``GET /dashboard`` is served and statistics are sampled. Every
    ``interval_s`` seconds a snapshot of every loaded version's statistics is taken (the page's
    resolution and refresh period); ``history_s`` seconds of them are kept (what the page shows).
    ``failures``: the recent failed requests shown."""

    enabled: bool = True
    interval_s: float = 5.0
    history_s: float = 3600.0
    failures: int = 20

    @property
    def snapshots(self) -> int:
        """How many snapshots the ring keeps: the history and the one before it (for its first interval)."""
        return int(round(self.history_s / self.interval_s)) + 1

    def check(self) -> None:
        """Raises ValueError, naming the flags, when the settings cannot work."""
        if not (self.interval_s > 0 and self.history_s > 0):
            raise ValueError("--dashboard-interval-s and --dashboard-history-s must be > 0")
        if self.history_s < self.interval_s:
            raise ValueError(f"--dashboard-history-s ({self.history_s:g}) must be at least "
                             f"--dashboard-interval-s ({self.interval_s:g})")
        if self.snapshots > MAX_SNAPSHOTS:
            raise ValueError(f"--dashboard-history-s / --dashboard-interval-s is {self.snapshots - 1} snapshots; "
                             f"at most {MAX_SNAPSHOTS - 1} are kept: sample less often or keep less history")
