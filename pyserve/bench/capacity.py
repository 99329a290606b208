"""The capacity answer: what one replica sustains within the SLO, and how many replicas a target
rate needs with headroom. Pure functions of the measured levels.

    capacity = the highest measured throughput among levels with p99 <= SLO and no errors
    replicas = ceil(target / (capacity * (1 - headroom_pct / 100)))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class LevelPoint:
    """What the capacity answer needs from one measured level."""

    level: float  # the sweep value (concurrency or request rate)
    throughput_rps: float
    p99_ms: float  # NaN when no request succeeded
    errors: int


@dataclasses.dataclass(frozen=True)
class CapacityAnswer:
    """The answer, with the chosen level and the replica count (None without a target rate)."""

    p99_slo_ms: float
    target_rate: float | None
    headroom_pct: float
    capacity_rps: float | None  # None: no level met the SLO
    level: float | None
    replicas: int | None
    text: str  # the plain-language answer, formula included


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def answer(
    points: Sequence[LevelPoint], p99_slo_ms: float, target_rate: float | None, headroom_pct: float, mode: str
) -> CapacityAnswer:
    """The capacity answer for ``points`` measured with sweep variable ``mode``."""
    if not 0 <= headroom_pct < 100:
        raise ValueError(f"headroom_pct must be in [0, 100), got {headroom_pct}")
    ok = [p for p in points if p.errors == 0 and not math.isnan(p.p99_ms) and p.p99_ms <= p99_slo_ms]
    if not ok:
        text = (
            f"No measured level meets the SLO (p99 <= {_fmt(p99_slo_ms)} ms with no errors): one replica cannot "
            "serve within it at any tested load. Lower the load range, relax the SLO or speed up the model."
        )
        return CapacityAnswer(p99_slo_ms, target_rate, headroom_pct, None, None, None, text)
    # Highest throughput wins; on a tie the lower level (less load for the same rate).
    best = max(ok, key=lambda p: (p.throughput_rps, -p.level))
    cap = best.throughput_rps
    lines = [
        f"One replica sustains {_fmt(cap)} req/s within p99 <= {_fmt(p99_slo_ms)} ms "
        f"(at {mode} {_fmt(best.level)}: p99 {_fmt(best.p99_ms)} ms, no errors)."
    ]
    replicas = None
    if target_rate is not None:
        usable = cap * (1 - headroom_pct / 100.0)
        if usable <= 0:
            text = f"{lines[0]} It served nothing within the SLO, so no replica count can reach the target."
            return CapacityAnswer(p99_slo_ms, target_rate, headroom_pct, cap, best.level, None, text)
        exact = target_rate / usable
        # Round away float noise before ceil: 400 / (250 * 0.8) must be 2, not 3.
        replicas = max(1, math.ceil(round(exact, 9)))
        h = headroom_pct / 100.0
        lines.append(
            f"replicas = ceil(target / (capacity * (1 - headroom))) = ceil({_fmt(target_rate)} / "
            f"({_fmt(cap)} * (1 - {_fmt(h)}))) = ceil({exact:.3f}) = {replicas}"
        )
        lines.append(f"For {_fmt(target_rate)} req/s with {_fmt(headroom_pct)}% headroom: {replicas} replica(s).")
    return CapacityAnswer(p99_slo_ms, target_rate, headroom_pct, cap, best.level, replicas, "\n".join(lines))
