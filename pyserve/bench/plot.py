"""The PNG plot: latency percentiles (p50/p90/p99) against measured throughput.

matplotlib is an optional extra (``pip install pyserve[bench]``), imported only when a plot is asked
for, with the Agg backend (no display needed).
"""

from __future__ import annotations

import math

from pyserve.bench.results import RunResult


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def check_available() -> None:
    """Fail before the sweep, not after it, when the plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'pyserve[bench]'") from None


def write_plot(path: str, run: RunResult, mode: str, model: str, p99_slo_ms: float | None) -> None:
    """Draw the latency-throughput curve of the sweep into ``path`` (PNG)."""
    check_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in run.levels if r.succeeded]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        x = [r.throughput_rps for r in points]
        for key, style in (("p50_ms", "o-"), ("p90_ms", "s-"), ("p99_ms", "^-")):
            y = [r.latency_ms[key] for r in points]
            ax.plot(x, [math.nan if v is None else v for v in y], style, label=key.removesuffix("_ms"))
        for r in points:
            ax.annotate(f"{r.level:g}", (r.throughput_rps, r.latency_ms["p99_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        if p99_slo_ms is not None:
            ax.axhline(p99_slo_ms, color="red", linestyle="--", linewidth=1, label=f"p99 SLO {p99_slo_ms:g} ms")
        ax.set_xlabel("throughput (req/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"pyserve bench: {model}, sweep over {mode.replace('_', ' ')} (labels)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
