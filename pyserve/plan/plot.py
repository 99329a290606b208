"""The PNG plot of a simulation: load, replicas (the HPA's and the ready ones) and p99 over time.

matplotlib is the optional extra ``bench`` (``pip install pyserve[bench]``), imported only when a plot
is asked for, with the Agg backend (no display needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pyserve.plan.simulate import Simulation

WIDTH_PX, HEIGHT_PX, DPI = 900, 700, 100


def check_available() -> None:
    """Raise RuntimeError, before the simulation, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'pyserve[bench]'") from None


def figure(sim: Simulation, slo_p99_ms: float, capacity_rps: float, title: str) -> Any:
    """The matplotlib Figure: three stacked axes sharing time (s).

    Top: offered load and the capacity of the ready pods (req/s), SLO-miss seconds shaded. Middle: replicas
    (the HPA's, and ready). Bottom: p99 (ms) with the SLO line; p99 past the measured curve is drawn at
    the top of the axis.
    """
    check_available()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    load_ax, rep_ax, p99_ax = fig.subplots(3, 1, sharex=True)
    t = sim.time_s
    load_ax.plot(t, sim.rate_rps, label="load (req/s)")
    load_ax.plot(t, sim.ready * capacity_rps, label="ready pods x capacity (req/s)", linestyle="--")
    if sim.miss.any():
        load_ax.fill_between(t, 0, sim.rate_rps, where=sim.miss, color="red", alpha=0.25, step="mid",
                             label="SLO missed")
    load_ax.set_ylabel("req/s")
    load_ax.legend(loc="upper left", fontsize=8)
    rep_ax.step(t, sim.replicas, where="post", label="replicas (HPA)")
    rep_ax.step(t, sim.ready, where="post", label="ready")
    rep_ax.set_ylabel("pods")
    rep_ax.legend(loc="upper left", fontsize=8)
    finite = sim.p99_ms[np.isfinite(sim.p99_ms)]
    top = max(float(finite.max()) if len(finite) else 0.0, slo_p99_ms) * 1.5
    p99_ax.plot(t, np.where(np.isinf(sim.p99_ms), top, sim.p99_ms), label="p99 (ms; past the curve at top)")
    p99_ax.axhline(slo_p99_ms, color="red", linestyle="--", linewidth=1, label=f"SLO {slo_p99_ms:g} ms")
    p99_ax.set_ylim(0, top * 1.05)
    p99_ax.set_ylabel("p99 ms")
    p99_ax.set_xlabel("time (s)")
    p99_ax.legend(loc="upper left", fontsize=8)
    for ax in (load_ax, rep_ax, p99_ax):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_plot(path: str, sim: Simulation, slo_p99_ms: float, capacity_rps: float, title: str) -> None:
    """Draw :func:`figure` into ``path`` (PNG, WIDTH_PX x HEIGHT_PX)."""
    figure(sim, slo_p99_ms, capacity_rps, title).savefig(path, format="png", dpi=DPI)
