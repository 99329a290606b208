"""The Kubernetes Horizontal Pod Autoscaler's algorithm (``autoscaling/v2``), as a pure state machine
run on a simulated clock.

Sources: the Kubernetes documentation "Horizontal Pod Autoscaling" (algorithm details, the
``behavior`` field: stabilization windows, scaling policies, ``selectPolicy``) and its reference
implementation, ``pkg/controller/podautoscaler`` (``replica_calculator.go``: ratio, tolerance and
missing pods; ``horizontal.go``: ``stabilizeRecommendationWithBehaviors``,
``calculateScaleUpLimitWithScalingRules``, ``calculateScaleDownLimitWithBehaviors``).

One evaluation (every ``sync_period_s``, default 15 s):

1. ratio = metric / target, the metric averaged over the pods that report it (ready pods);
   pods that exist but report nothing (still starting: *missing*) count as 0 when scaling up and
   as the target when scaling down, and the ratio is taken again over all pods;
2. within the tolerance (|1 - ratio| <= 0.1), or when counting the missing pods flips the direction,
   the recommendation is the current count; else ``desired = ceil(ratio * pods)``;
3. stabilization: the recommendation is at least the lowest recommendation of the scale-up window
   (default 0 s) and at most the highest of the scale-down window (default 300 s);
4. rate limit: the change is bounded by the policies over their periods, counting the changes
   already made in each period (scale-up default: the larger of +100% and +4 pods per 15 s;
   scale-down default: -100% per 15 s), then by minReplicas and maxReplicas.

Recommendations and scale events are kept with their times; a record is "in a window" when it is
strictly later than ``now - window`` (Go's ``time.After``), as in the controller.
"""

from __future__ import annotations

import dataclasses
import math

SELECT_POLICIES = ("Max", "Min", "Disabled")
POLICY_TYPES = ("Pods", "Percent")


@dataclasses.dataclass(frozen=True)
class ScalingPolicy:
    """One ``HPAScalingPolicy``: change by ``value`` pods or percent per ``period_s`` seconds."""

    type: str  # "Pods" or "Percent"
    value: int
    period_s: int

    def __post_init__(self) -> None:
        if self.type not in POLICY_TYPES:
            raise ValueError(f"scaling policy type must be one of {POLICY_TYPES}, got {self.type!r}")
        if self.value <= 0 or self.period_s <= 0:
            raise ValueError(f"scaling policy value and period must be > 0, got {self.value} per {self.period_s} s")


@dataclasses.dataclass(frozen=True)
class ScalingRules:
    """One direction of ``behavior`` (``HPAScalingRules``)."""

    stabilization_window_s: int
    policies: tuple[ScalingPolicy, ...]
    select_policy: str = "Max"

    def __post_init__(self) -> None:
        if self.select_policy not in SELECT_POLICIES:
            raise ValueError(f"selectPolicy must be one of {SELECT_POLICIES}, got {self.select_policy!r}")
        if self.stabilization_window_s < 0:
            raise ValueError(f"stabilizationWindowSeconds must be >= 0, got {self.stabilization_window_s}")


def default_scale_up() -> ScalingRules:
    """Kubernetes' default: no stabilization; the larger of +100% and +4 pods every 15 s."""
    return ScalingRules(0, (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15)), "Max")


def default_scale_down() -> ScalingRules:
    """Kubernetes' default: 300 s stabilization; down to any count (-100%) every 15 s."""
    return ScalingRules(300, (ScalingPolicy("Percent", 100, 15),), "Max")


@dataclasses.dataclass(frozen=True)
class HpaSpec:
    """The HPA's settings: replica bounds, the metric's target, the controller's period and tolerance."""

    min_replicas: int
    max_replicas: int
    target_value: float  # per-pod average of the metric (AverageValue)
    scale_up: ScalingRules = dataclasses.field(default_factory=default_scale_up)
    scale_down: ScalingRules = dataclasses.field(default_factory=default_scale_down)
    sync_period_s: int = 15  # kube-controller-manager --horizontal-pod-autoscaler-sync-period
    tolerance: float = 0.1  # --horizontal-pod-autoscaler-tolerance

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ValueError(f"minReplicas must be >= 1, got {self.min_replicas}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas ({self.max_replicas}) must be >= minReplicas ({self.min_replicas})")
        if not self.target_value > 0 or math.isinf(self.target_value):
            raise ValueError(f"the metric's target value must be a finite number > 0, got {self.target_value}")
        if self.sync_period_s < 1:
            raise ValueError(f"the sync period must be >= 1 s, got {self.sync_period_s}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"the tolerance must be in [0, 1), got {self.tolerance}")


def metric_replicas(current: int, ready_metric_sum: float, ready: int, missing: int, target: float,
                    tolerance: float) -> int:
    """``replica_calculator.go``'s answer for a per-pod average metric.

    ``ready_metric_sum`` is the metric summed over the ``ready`` pods that report it; ``missing`` pods
    exist but report nothing. Returns ``current`` when no pod reports the metric (the controller then
    skips the evaluation).
    """
    if ready == 0:
        return current
    ratio = ready_metric_sum / ready / target
    if missing == 0:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return _ceil(ratio * ready)
    # Missing pods: 0 when scaling up, the target when scaling down.
    assumed = 0.0 if ratio > 1.0 else target * missing
    new_ratio = (ready_metric_sum + assumed) / (ready + missing) / target
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current
    return _ceil(new_ratio * (ready + missing))


# Recommendations are clamped to maxReplicas later; this keeps an overflowing ratio (a huge load over a
# tiny target: inf) an integer.
_MAX_RECOMMENDATION = 1e12


def _ceil(replicas: float) -> int:
    """``ceil(replicas)``, float noise rounded away first, at most 10**12 (inf and NaN included)."""
    if not replicas <= _MAX_RECOMMENDATION:
        return int(_MAX_RECOMMENDATION)
    return math.ceil(round(replicas, 9))


@dataclasses.dataclass
class Hpa:
    """The controller's state for one HPA: past recommendations and scale events (times in s)."""

    spec: HpaSpec
    recommendations: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    scale_up_events: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = dataclasses.field(default_factory=list)

    def evaluate(self, now_s: float, current: int, ready_metric_sum: float, ready: int) -> int:
        """One sync at ``now_s`` with ``current`` replicas of which ``ready`` report the metric
        (summed: ``ready_metric_sum``); returns the new replica count (``current`` when unchanged)."""
        spec = self.spec
        raw = metric_replicas(current, ready_metric_sum, ready, max(0, current - ready), spec.target_value,
                              spec.tolerance)
        stabilized = self._stabilize(now_s, current, raw)
        new = self._rate_limit(now_s, current, stabilized)
        if new > current:
            self.scale_up_events.append((now_s, new - current))
        elif new < current:
            self.scale_down_events.append((now_s, current - new))
        return new

    def _stabilize(self, now_s: float, current: int, desired: int) -> int:
        up_cut = now_s - self.spec.scale_up.stabilization_window_s
        down_cut = now_s - self.spec.scale_down.stabilization_window_s
        up, down = desired, desired
        for t, rec in self.recommendations:
            if t > up_cut:
                up = min(up, rec)
            if t > down_cut:
                down = max(down, rec)
        # Keep only what a window can still see, then record the unstabilized recommendation.
        self.recommendations = [(t, r) for t, r in self.recommendations if t > min(up_cut, down_cut)]
        self.recommendations.append((now_s, desired))
        return min(max(current, up), down)

    @staticmethod
    def _changed(events: list[tuple[float, int]], now_s: float, period_s: int) -> int:
        return sum(n for t, n in events if t > now_s - period_s)

    def _rate_limit(self, now_s: float, current: int, desired: int) -> int:
        spec = self.spec
        if desired > current:
            limit = self._scale_up_limit(now_s, current)
            return min(desired, max(limit, current), spec.max_replicas)
        if desired < current:
            limit = self._scale_down_limit(now_s, current)
            return max(desired, min(limit, current), spec.min_replicas)
        return min(max(desired, spec.min_replicas), spec.max_replicas)

    def _scale_up_limit(self, now_s: float, current: int) -> int:
        rules = self.spec.scale_up
        if rules.select_policy == "Disabled":
            return current
        pick = max if rules.select_policy == "Max" else min
        result: int | None = None
        for p in rules.policies:
            start = current - self._changed(self.scale_up_events, now_s, p.period_s) + self._changed(
                self.scale_down_events, now_s, p.period_s)
            proposed = start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result

    def _scale_down_limit(self, now_s: float, current: int) -> int:
        rules = self.spec.scale_down
        if rules.select_policy == "Disabled":
            return current
        pick = min if rules.select_policy == "Max" else max  # the largest change is the lowest count
        result: int | None = None
        for p in rules.policies:
            start = current - self._changed(self.scale_up_events, now_s, p.period_s) + self._changed(
                self.scale_down_events, now_s, p.period_s)
            proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result
