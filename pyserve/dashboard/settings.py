"""The server-wide settings of the dashboard (``pyserve serve --dashboard-*``, docs/dashboard.md)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_SNAPSHOTS = 10_000  # the most snapshots kept: memory grows with snapshots x model versions
MIN_INTERVAL_S = 0.1  # a finer sampling costs more than it shows
MAX_INTERVAL_S = 3600.0  # the page refreshes every interval: more would leave it stale for hours
MAX_HISTORY_S = 7 * 86400.0  # a week


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
        if not MIN_INTERVAL_S <= self.interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"--dashboard-interval-s ({self.interval_s:g}) must be between {MIN_INTERVAL_S:g} "
                             f"and {MAX_INTERVAL_S:g} seconds")
        if not 0 < self.history_s <= MAX_HISTORY_S:
            raise ValueError(f"--dashboard-history-s ({self.history_s:g}) must be > 0 and at most "
                             f"{MAX_HISTORY_S:g} seconds (7 days)")
        if self.history_s < self.interval_s:
            raise ValueError(f"--dashboard-history-s ({self.history_s:g}) must be at least "
                             f"--dashboard-interval-s ({self.interval_s:g})")
        if self.snapshots > MAX_SNAPSHOTS:
            raise ValueError(f"--dashboard-history-s / --dashboard-interval-s is {self.snapshots - 1} snapshots; "
                             f"at most {MAX_SNAPSHOTS - 1} are kept: sample less often or keep less history")
