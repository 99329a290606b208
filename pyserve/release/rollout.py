"""Progressive delivery with automatic analysis: a rollout moves a model's traffic from its stable
version to a candidate in steps (setWeight 5, 25, 50, 100 percent), promoting each step while its
gates hold and rolling the traffic back to stable at once when one fails.

A rollout is a small document, the same on the wire (``POST /v2/repository/models/{m}/rollout``) and
in its file (``MODEL/rollout.json``, beside ``traffic.json``)::

    {"candidate": "2", "stable": "stable", "steps": [5, 25, 50, 100],
     "min_duration_s": 60, "min_requests": 100,
     "gates": {"max_error_rate": 1, "max_p99_ratio": 1.5, "min_agreement": 99}}

The :class:`RolloutController` ticks once a second on the event loop, off the request path. Each step
is measured over its own window, from the core's counters of each version (taken when the step
began): the candidate's error rate (failed, timed out and rejected requests over all it answered,
in percent), its p99 latency over stable's p99 in the same window (from the core's latency
histograms, interpolated as Prometheus' ``histogram_quantile``), and, when a shadow phase compared
the candidate's outputs, the share of compared outputs that agree (``pyserve_shadow_output_comparisons_total``).
Weights change only through the traffic policy (:class:`~pyserve.release.TrafficPolicies`): checked,
gated by golden samples, persisted and audited with ``who = "rollout"``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pyserve.errors import PyserveError, invalid, not_found
from pyserve.release.policy import EMPTY, TrafficPolicy, check_object
from pyserve.release.store import write_json_atomically
from pyserve.repository import version_number

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from pyserve.release.shadow import ShadowMetrics
    from pyserve.runtime import ModelRunner
    from pyserve.service.host import ModelHost

log = logging.getLogger("pyserve.release")

ROLLOUT_FILE = "rollout.json"
FIELDS = ("candidate", "stable", "steps", "min_duration_s", "min_requests", "gates")
GATES = ("error_rate", "p99_ratio", "agreement")
# Gate limits in the spec: limit field -> (gate it bounds, default, lowest, highest).
GATE_FIELDS: dict[str, tuple[str, float, float, float]] = {
    "max_error_rate": ("error_rate", 1.0, 0.0, 100.0),  # percent of the candidate's requests
    "max_p99_ratio": ("p99_ratio", 1.5, 0.0, math.inf),  # candidate p99 / stable p99
    "min_agreement": ("agreement", 99.0, 0.0, 100.0),  # percent of shadow-compared outputs that agree
}
DEFAULT_MIN_DURATION_S = 60.0
DEFAULT_MIN_REQUESTS = 100
# Argo Rollouts' phase names, lower case: terminal phases let a new rollout start.
PROGRESSING, PAUSED, SUCCEEDED, FAILED, ABORTED = "progressing", "paused", "succeeded", "failed", "aborted"
PHASES = (PROGRESSING, PAUSED, SUCCEEDED, FAILED, ABORTED)
ACTIVE = (PROGRESSING, PAUSED)
WHO = "rollout"
ERROR_KEYS = ("requests_failed", "requests_timed_out", "requests_rejected")
ANSWERED_KEYS = ("requests_succeeded", *ERROR_KEYS)  # cancelled requests are the client's, not counted
QUANTILE = 0.99


def _now_iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(doc: dict, key: str, where: str, default: float, low: float, high: float, *,
            integer: bool = False, open_low: bool = False) -> float:
    value = doc.get(key, default)
    ok = type(value) is int or (not integer and type(value) is float)
    if not ok or not math.isfinite(value) or value < low or value > high or (open_low and value == low):
        what = "an integer" if integer else "a number"
        bound = f"above {low:g}" if open_low else f"from {low:g}"
        rng = f"{bound}" + (f" to {high:g}" if math.isfinite(high) else "")
        raise invalid(f"{where}.{key}: expected {what} {rng}, got {value!r}")
    return value


@dataclass(frozen=True)
class RolloutSpec:
    """What a rollout does: ``candidate`` and ``stable`` (a version number or an alias), ``steps``
    (the candidate's weight in percent at each step, increasing, each above 0 and at most 100),
    ``min_duration_s`` (seconds) and ``min_requests`` (answered by the candidate) each step lasts at
    least, and ``gates``: limit field -> limit, None when the gate is off."""

    candidate: str
    stable: str
    steps: tuple[float, ...]
    min_duration_s: float = DEFAULT_MIN_DURATION_S
    min_requests: int = DEFAULT_MIN_REQUESTS
    gates: dict[str, float | None] = field(default_factory=lambda: {k: v[1] for k, v in GATE_FIELDS.items()})

    @classmethod
    def from_doc(cls, doc: Any, policy: TrafficPolicy, where: str = "rollout") -> RolloutSpec:
        """The spec of a JSON document, checked alone; ``stable`` defaults to the policy's only
        weighted target, else its alias ``stable``. INVALID_ARGUMENT naming the field."""
        check_object(doc, FIELDS, where)
        targets = {}
        for key in ("candidate", "stable"):
            value = doc.get(key)
            if type(value) is int and not isinstance(value, bool):
                value = str(value)
            if value is not None and (type(value) is not str or not value):
                raise invalid(f"{where}.{key}: expected a version number or an alias, got {value!r}")
            targets[key] = value
        if targets["candidate"] is None:
            raise invalid(f"{where}.candidate: required (the version to roll out: a number or an alias)")
        if targets["stable"] is None:
            full = [t for t, w in policy.weights.items() if w >= 100]
            if full:
                targets["stable"] = full[0]
            elif "stable" in policy.aliases:
                targets["stable"] = "stable"
            else:
                raise invalid(f"{where}.stable: required when the traffic policy has no alias 'stable' and no "
                              "target weighted 100%")
        steps = doc.get("steps")
        if type(steps) is not list or not steps:
            raise invalid(f"{where}.steps: expected a non-empty array of percentages (5, 25, 50, 100), got {steps!r}")
        previous = 0.0
        for i, step in enumerate(steps):
            if type(step) not in (int, float) or not math.isfinite(step) or not 0 < step <= 100:
                raise invalid(f"{where}.steps[{i}]: expected a percentage above 0 and at most 100, got {step!r}")
            if step <= previous:
                raise invalid(f"{where}.steps[{i}]: the steps must increase, got {step!r} after {previous:g}")
            previous = step
        duration = _number(doc, "min_duration_s", where, DEFAULT_MIN_DURATION_S, 0.0, math.inf)
        requests = int(_number(doc, "min_requests", where, DEFAULT_MIN_REQUESTS, 0, math.inf, integer=True))
        gates_doc = doc.get("gates", {})
        check_object(gates_doc, GATE_FIELDS, f"{where}.gates", "null turns a gate off")
        gates: dict[str, float | None] = {}
        for key, (_gate, default, low, high) in GATE_FIELDS.items():
            if key in gates_doc and gates_doc[key] is None:
                gates[key] = None
            else:
                gates[key] = float(_number(gates_doc, key, f"{where}.gates", default, low, high,
                                           open_low=key == "max_p99_ratio"))
        candidate, stable = targets["candidate"], targets["stable"]
        assert candidate is not None and stable is not None
        return cls(candidate, stable, tuple(float(s) for s in steps), float(duration),
                   requests, gates)

    def to_doc(self) -> dict[str, Any]:
        """The JSON form (what :meth:`from_doc` reads); whole numbers as integers."""
        return {"candidate": self.candidate, "stable": self.stable, "steps": [_num(s) for s in self.steps],
                "min_duration_s": _num(self.min_duration_s), "min_requests": self.min_requests,
                "gates": {k: _num(v) if v is not None else None for k, v in self.gates.items()}}


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


@dataclass
class Rollout:
    """The state of one model's rollout: its spec, ``phase`` (one of :data:`PHASES`), ``step`` (index
    into ``spec.steps``), ``weight`` (the candidate's percent now; ``weights`` in the document: the
    split it set, zero shares left out), the times (Unix seconds) it and
    its step started, the last ``gates`` measured, ``message`` (why it is where it is) and
    ``history`` (events, oldest first)."""

    spec: RolloutSpec
    phase: str
    step: int
    weight: float
    started: float
    step_started: float
    gates: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        """What ``GET .../rollout`` shows and ``rollout.json`` holds."""
        return {"spec": self.spec.to_doc(), "phase": self.phase, "step": self.step + 1,
                "steps": len(self.spec.steps), "weight": _num(self.weight),
                "weights": {t: _num(w) for t, w in ((self.spec.stable, 100 - self.weight),
                                                    (self.spec.candidate, self.weight)) if w > 0},
                "started": _now_iso(self.started), "step_started": _now_iso(self.step_started),
                "started_s": self.started, "step_started_s": self.step_started,
                "gates": self.gates, "message": self.message, "history": self.history}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], policy: TrafficPolicy) -> Rollout:
        """The state read back from ``rollout.json``; INVALID_ARGUMENT / KeyError when it is damaged."""
        spec = RolloutSpec.from_doc(doc["spec"], policy, where="rollout.spec")
        if doc["phase"] not in PHASES:
            raise invalid(f"rollout.phase: expected one of {', '.join(PHASES)}, got {doc['phase']!r}")
        return cls(spec, doc["phase"], int(doc["step"]) - 1, float(doc["weight"]), float(doc["started_s"]),
                   float(doc["step_started_s"]), dict(doc.get("gates", {})), str(doc.get("message", "")),
                   list(doc.get("history", [])))


@dataclass
class _Counts:
    """A version's core counters at one moment: answered and failed requests, latency buckets."""

    runner: ModelRunner
    answered: int
    errors: int
    buckets: list[int]
    bounds: list[float]

    @classmethod
    def of(cls, runner: ModelRunner) -> _Counts:
        s = runner.stats()
        h = s["request_us"]
        return cls(runner, sum(s[k] for k in ANSWERED_KEYS), sum(s[k] for k in ERROR_KEYS), list(h["counts"]),
                   list(h["upper_bounds"]))

    def since(self, base: _Counts | None) -> _Counts:
        """The counts of the window since ``base`` (all of them when base is another runner: the
        version was reloaded and its counters started again)."""
        if base is None or base.runner is not self.runner:
            return self
        return _Counts(self.runner, self.answered - base.answered, self.errors - base.errors,
                       [a - b for a, b in zip(self.buckets, base.buckets)], self.bounds)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the latency in seconds (linear within a bucket, as Prometheus'
        histogram_quantile; the highest finite bound when it falls in +Inf); None with no requests."""
        total = sum(self.buckets)
        if total == 0:
            return None
        rank = q * total
        running = 0
        for i, count in enumerate(self.buckets):
            if running + count >= rank and count > 0:
                if i >= len(self.bounds):
                    return self.bounds[-1] / 1e6
                low = self.bounds[i - 1] if i > 0 else 0.0
                return (low + (self.bounds[i] - low) * (rank - running) / count) / 1e6
            running += count
        return self.bounds[-1] / 1e6


class RolloutMetrics:
    """The rollout's Prometheus metrics (label ``model``): ``pyserve_rollout_step`` (1-based; 0 when
    none is in progress), ``pyserve_rollout_candidate_weight_percent``, ``pyserve_rollout_gate_value``
    (``gate``; NaN when not measured), ``pyserve_rollout_phase`` (1 for the current ``phase``) and
    ``pyserve_rollout_rollbacks_total`` (``cause``: the gate that failed, ``abort``, ``candidate_unloaded``)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter, Gauge

        kw: dict[str, Any] = {"registry": registry}
        self.step = Gauge("pyserve_rollout_step", "Step of the rollout in progress (1-based; 0: none).",
                          ["model"], **kw)
        self.weight = Gauge("pyserve_rollout_candidate_weight_percent", "The rollout candidate's share of "
                            "the traffic, in percent.", ["model"], **kw)
        self.gate = Gauge("pyserve_rollout_gate_value", "Last measured value of a rollout gate (error_rate and "
                          "agreement in percent, p99_ratio candidate/stable); NaN when not measured.",
                          ["model", "gate"], **kw)
        self.phase = Gauge("pyserve_rollout_phase", "1 for the rollout's current phase.", ["model", "phase"], **kw)
        self.rollbacks = Counter("pyserve_rollout_rollbacks", "Rollouts whose traffic went back to stable, by "
                                 "cause (the failed gate, abort, candidate_unloaded).", ["model", "cause"], **kw)

    def show(self, name: str, r: Rollout) -> None:
        active = r.phase in ACTIVE
        self.step.labels(name).set(r.step + 1 if active else 0)
        self.weight.labels(name).set(r.weight)
        for gate in GATES:
            value = r.gates.get(gate)
            self.gate.labels(name, gate).set(math.nan if value is None else value)
        for phase in PHASES:
            self.phase.labels(name, phase).set(1 if phase == r.phase else 0)


class RolloutController:
    """Runs the rollouts of a :class:`~pyserve.service.host.ModelHost`'s models.

    :meth:`run` ticks every ``interval_s`` seconds; tests call :meth:`tick` themselves with their own
    ``clock`` (Unix seconds). ``shadow``: the shadow mirror's metrics, read for the agreement gate."""

    def __init__(self, host: ModelHost, metrics: RolloutMetrics | None = None, shadow: ShadowMetrics | None = None,
                 clock: Callable[[], float] = time.time, interval_s: float = 1.0) -> None:
        self.host = host
        self.metrics = metrics
        self.shadow = shadow
        self.clock = clock
        self.interval_s = interval_s
        self._rollouts: dict[str, Rollout] = {}
        self._windows: dict[str, dict[int, _Counts]] = {}  # model -> version -> counts when the step began
        self._stable_p99: dict[str, float] = {}  # the last stable p99 measured (a 100% step has no stable)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- startup -----------------------------------------------------------------------------
    def load_all(self) -> None:
        """Reads every model's ``rollout.json``; a rollout in progress resumes, its step's window
        starting again (the counters of the old process are gone). A damaged file is logged at ERROR."""
        for name in self.host.repository.sources.names():
            path = self._path(name)
            if path is None or not path.is_file():
                continue
            try:
                r = Rollout.from_doc(orjson.loads(path.read_bytes()), self.host.traffic.policy_or_none(name) or EMPTY)
            except (PyserveError, orjson.JSONDecodeError, OSError, KeyError, TypeError, ValueError) as e:
                log.error("model %s: rollout state %s refused: %s", name, path, getattr(e, "message", e))
                continue
            self._rollouts[name] = r
            if r.phase in ACTIVE:
                r.step_started = self.clock()
                self._event(r, "restart", "the server restarted: the step's window starts again")
                self._begin_window(name, r)
                log.info("model %s: rollout resumed at step %d (%g%%), %s", name, r.step + 1, r.weight, r.phase)
            self._show(name, r)

    # -- reading -----------------------------------------------------------------------------
    def state(self, name: str) -> dict[str, Any]:
        """The rollout of ``name`` as ``GET .../rollout`` shows it; NOT_FOUND when it has none."""
        self.host.repository.sources.model_dir(name)  # INVALID_ARGUMENT / NOT_FOUND for no model
        r = self._rollouts.get(name)
        if r is None:
            raise not_found(f"model '{name}' has no rollout; start one with POST .../rollout")
        return r.to_doc()

    # -- control -----------------------------------------------------------------------------
    async def start(self, name: str, doc: Any, who: str, reason: str = "") -> dict[str, Any]:
        """Starts a rollout of ``name`` from the spec ``doc`` and sets its first step's weight.

        INVALID_ARGUMENT naming the field, changing nothing: a bad spec, a candidate or stable that
        is not loaded, a candidate equal to stable, a rollout already in progress, a model served
        from one file; or the first step's golden-sample gate failing."""
        if self._path(name) is None:
            raise invalid(f"model '{name}' is served from one file (--model): a rollout needs a model folder")
        async with self._lock(name):
            current = self._rollouts.get(name)
            if current is not None and current.phase in ACTIVE:
                raise invalid(f"rollout: model '{name}' has a rollout {current.phase} (candidate "
                              f"{current.spec.candidate}, step {current.step + 1} of {len(current.spec.steps)}): "
                              "abort it first")
            policy = self.host.traffic.get(name) or EMPTY
            spec = RolloutSpec.from_doc(doc, policy)
            loaded = set(self.host.registry.entry(name).versions)
            versions = {}
            for key in ("candidate", "stable"):
                target = getattr(spec, key)
                try:
                    versions[key] = policy.resolve(target)
                except PyserveError as e:
                    raise invalid(f"rollout.{key}: {e.message}") from None
                if versions[key] not in loaded:
                    served = ", ".join(map(str, sorted(loaded))) or "none"
                    raise invalid(f"rollout.{key}: model '{name}' version {versions[key]} is not loaded "
                                  f"(loaded: {served}); load it first")
            if versions["candidate"] == versions["stable"]:
                raise invalid(f"rollout.candidate: {spec.candidate!r} is version {versions['candidate']}, the "
                              f"stable version ({spec.stable!r}): roll out another version")
            now = self.clock()
            r = Rollout(spec, PROGRESSING, 0, spec.steps[0], now, now)
            self._event(r, "start", f"rollout of {spec.candidate} started by {who}" + (f": {reason}" if reason else ""))
            await self._set_weight(name, r, spec.steps[0], f"rollout step 1: {spec.candidate} at {spec.steps[0]:g}%")
            self._rollouts[name] = r
            self._begin_window(name, r)
            await self._save(name, r)
            log.info("model %s: rollout of %s started by %s: %s", name, spec.candidate, who,
                     orjson.dumps(spec.to_doc()).decode())
            return r.to_doc()

    async def pause(self, name: str, who: str, reason: str = "") -> dict[str, Any]:
        """Holds the rollout at its step (gates still roll back); INVALID_ARGUMENT unless progressing."""
        return await self._switch(name, PROGRESSING, PAUSED, "pause", f"paused by {who}", reason)

    async def resume(self, name: str, who: str, reason: str = "") -> dict[str, Any]:
        """Lets a paused rollout promote again; INVALID_ARGUMENT unless paused."""
        return await self._switch(name, PAUSED, PROGRESSING, "resume", f"resumed by {who}", reason)

    async def _switch(self, name: str, old: str, new: str, event: str, why: str, reason: str) -> dict[str, Any]:
        async with self._lock(name):
            r = self._active(name, (old,), event)
            r.phase = new
            self._event(r, event, why + (f": {reason}" if reason else ""))
            await self._save(name, r)
            return r.to_doc()

    async def promote(self, name: str, who: str, reason: str = "", full: bool = False) -> dict[str, Any]:
        """Promotes now, skipping the current step's analysis: to the next step, or (``full``, or
        from the last step) to the candidate serving everything; a paused rollout progresses again
        (as Argo Rollouts' promote). INVALID_ARGUMENT unless in progress."""
        async with self._lock(name):
            r = self._active(name, ACTIVE, "promote")
            r.phase = PROGRESSING
            why = f"promoted by {who}" + (f": {reason}" if reason else "")
            if full or r.step + 1 >= len(r.spec.steps):
                await self._succeed(name, r, why)
            else:
                await self._next_step(name, r, why)
            return r.to_doc()

    async def abort(self, name: str, who: str, reason: str = "") -> dict[str, Any]:
        """Sends all the traffic back to stable and ends the rollout (``aborted``)."""
        async with self._lock(name):
            r = self._active(name, ACTIVE, "abort")
            await self._roll_back(name, r, ABORTED, "abort", f"aborted by {who}" + (f": {reason}" if reason else ""))
            return r.to_doc()

    # -- the controller ----------------------------------------------------------------------
    async def run(self) -> None:
        """Ticks every ``interval_s`` until cancelled; a tick that fails is logged and the next one runs."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                # Shielded: a shutdown that cancels the controller lets a step's policy change and
                # state write finish together.
                await asyncio.shield(self.tick())
            except Exception:
                log.exception("rollout tick failed")

    async def tick(self) -> None:
        """Measures every rollout in progress over its step's window, then rolls back (a gate failed),
        promotes (the step lasted ``min_duration_s`` and saw ``min_requests`` with every gate holding;
        not while paused) or waits."""
        for name in [n for n, r in self._rollouts.items() if r.phase in ACTIVE]:
            async with self._lock(name):
                r = self._rollouts[name]
                if r.phase in ACTIVE:
                    try:
                        await self._analyse(name, r)
                    except PyserveError as e:
                        log.error("model %s: rollout step %d: %s", name, r.step + 1, e.message)

    async def _analyse(self, name: str, r: Rollout) -> None:
        spec = r.spec
        policy = self.host.traffic.policy_or_none(name) or EMPTY
        versions = self.host.registry.models.get(name)
        runners = versions.versions if versions is not None else {}
        candidate = runners.get(_version(policy, spec.candidate) or 0)
        if candidate is None:
            await self._roll_back(name, r, FAILED, "candidate_unloaded",
                                  f"candidate {spec.candidate} is not loaded any more")
            return
        window = self._windows.get(name, {})
        c = _Counts.of(candidate).since(window.get(int(candidate.version)))
        stable_runner = runners.get(_version(policy, spec.stable) or 0)
        stable_p99 = None
        if stable_runner is not None:
            s = _Counts.of(stable_runner).since(window.get(int(stable_runner.version)))
            stable_p99 = s.quantile(QUANTILE)
        if stable_p99 is not None and stable_p99 > 0:
            self._stable_p99[name] = stable_p99
        else:
            stable_p99 = self._stable_p99.get(name)
        p99 = c.quantile(QUANTILE)
        elapsed = self.clock() - r.step_started
        values: dict[str, Any] = {
            "requests": c.answered, "errors": c.errors, "elapsed_s": round(elapsed, 3),
            "error_rate": round(100 * c.errors / c.answered, 4) if c.answered else None,
            "p99_seconds": _round(p99), "stable_p99_seconds": _round(stable_p99),
            "p99_ratio": round(p99 / stable_p99, 4) if p99 is not None and stable_p99 else None,
            "agreement": None, "compared": 0,
        }
        agreement = self._agreement(name, candidate.version)
        if agreement is not None:
            values["agreement"], values["compared"] = round(agreement[0], 4), agreement[1]
        r.gates = values
        self._show(name, r)
        failed = self._failed_gate(spec, values)
        if failed is not None:
            gate, message = failed
            await self._roll_back(name, r, FAILED, gate, message)
            return
        if r.phase == PROGRESSING and elapsed >= spec.min_duration_s and c.answered >= spec.min_requests:
            held = f"step {r.step + 1} ({r.weight:g}%) held its gates: {_summary(values)}"
            if r.step + 1 >= len(spec.steps):
                await self._succeed(name, r, held)
            else:
                await self._next_step(name, r, held)

    @staticmethod
    def _failed_gate(spec: RolloutSpec, v: dict[str, Any]) -> tuple[str, str] | None:
        """(gate, message with the measured numbers) of the first gate that fails, else None."""
        limit = spec.gates.get("max_error_rate")
        # Fail fast: once the failures alone exceed the limit over min_requests, more requests cannot save it.
        if limit is not None and v["requests"] and 100 * v["errors"] / max(v["requests"], spec.min_requests) > limit:
            return "error_rate", (f"gate error_rate failed: {v['error_rate']:g}% of the candidate's requests failed "
                                  f"({v['errors']} of {v['requests']}), above max_error_rate {limit:g}%")
        limit = spec.gates.get("max_p99_ratio")
        if (limit is not None and v["requests"] >= max(spec.min_requests, 1) and v["p99_ratio"] is not None
                and v["p99_ratio"] > limit):
            return "p99_ratio", (f"gate p99_ratio failed: the candidate's p99 {v['p99_seconds'] * 1e3:.3g} ms is "
                                 f"{v['p99_ratio']:g} times stable's {v['stable_p99_seconds'] * 1e3:.3g} ms, above "
                                 f"max_p99_ratio {limit:g} ({v['requests']} requests)")
        limit = spec.gates.get("min_agreement")
        if limit is not None and v["agreement"] is not None and v["agreement"] < limit:
            return "agreement", (f"gate agreement failed: {v['agreement']:g}% of {v['compared']} shadow-compared "
                                 f"outputs agree with stable, below min_agreement {limit:g}%")
        return None

    def _agreement(self, name: str, version: str) -> tuple[float, int] | None:
        """(percent of compared outputs that agree, outputs compared) of the candidate's shadow
        comparisons; None when none ran."""
        if self.shadow is None:
            return None
        counts = {"agree": 0.0, "disagree": 0.0}
        for metric in self.shadow.comparisons.collect():
            for sample in metric.samples:
                labels = sample.labels
                if (sample.name.endswith("_total") and labels.get("model") == name
                        and labels.get("version") == version):
                    counts[labels["result"]] += sample.value
        total = counts["agree"] + counts["disagree"]
        return (100 * counts["agree"] / total, int(total)) if total else None

    # -- transitions -------------------------------------------------------------------------
    async def _next_step(self, name: str, r: Rollout, why: str) -> None:
        weight = r.spec.steps[r.step + 1]
        await self._set_weight(name, r, weight, f"rollout step {r.step + 2}: {r.spec.candidate} at {weight:g}% ({why})")
        r.step += 1
        r.step_started = self.clock()
        self._event(r, "step", f"{why}; step {r.step + 1}: {weight:g}%")
        self._begin_window(name, r)
        await self._save(name, r)
        log.info("model %s: rollout step %d: candidate %s at %g%% (%s)", name, r.step + 1, r.spec.candidate, weight, why)

    async def _succeed(self, name: str, r: Rollout, why: str) -> None:
        spec = r.spec

        def edit(old: TrafficPolicy) -> TrafficPolicy:
            doc = _end_shadow(old, spec.candidate)
            version = str(old.resolve(spec.candidate))
            if version_number(spec.stable) is None:  # the stable alias now names the candidate
                doc["aliases"] = {**doc["aliases"], spec.stable: version}
                doc["weights"] = {spec.stable: 100}
            else:
                doc["weights"] = {version: 100}
            return TrafficPolicy.from_doc(doc)

        await self.host.traffic.change(name, edit, action="rollout_succeeded", who=WHO,
                                       reason=f"rollout of {spec.candidate} succeeded ({why})")
        r.phase, r.weight, r.message = SUCCEEDED, 100.0, why
        self._event(r, "succeeded", f"{why}; {spec.candidate} serves all the traffic")
        await self._save(name, r)
        log.info("model %s: rollout of %s succeeded (%s)", name, spec.candidate, why)

    async def _roll_back(self, name: str, r: Rollout, phase: str, cause: str, message: str) -> None:
        stable = r.spec.stable

        def edit(old: TrafficPolicy) -> TrafficPolicy:
            return TrafficPolicy.from_doc({**old.to_doc(), "weights": {stable: 100}})

        await self.host.traffic.change(name, edit, action="rollout_rollback", who=WHO, reason=message)
        r.phase, r.weight, r.message = phase, 0.0, message
        self._event(r, "abort" if phase == ABORTED else "rollback", f"{message}; all the traffic back to {stable}")
        if self.metrics is not None:
            self.metrics.rollbacks.labels(name, cause).inc()
        await self._save(name, r)
        log.log(logging.INFO if phase == ABORTED else logging.WARNING, "model %s: rollout of %s rolled back: %s",
                name, r.spec.candidate, message)

    async def _set_weight(self, name: str, r: Rollout, weight: float, reason: str) -> None:
        spec = r.spec

        def edit(old: TrafficPolicy) -> TrafficPolicy:
            # The candidate last: widening its share only moves keys onto it (sticky users stay).
            if weight >= 100:
                return TrafficPolicy.from_doc({**_end_shadow(old, spec.candidate), "weights": {spec.candidate: 100}})
            weights = {spec.stable: 100 - weight, spec.candidate: weight}
            return TrafficPolicy.from_doc({**old.to_doc(), "weights": weights})

        await self.host.traffic.change(name, edit, action="rollout_step", who=WHO, reason=reason)
        r.weight = weight

    # -- helpers -----------------------------------------------------------------------------
    def _active(self, name: str, phases: tuple[str, ...], action: str) -> Rollout:
        self.host.repository.sources.model_dir(name)
        r = self._rollouts.get(name)
        if r is None or r.phase not in phases:
            now = r.phase if r is not None else "none"
            raise invalid(f"rollout {action}: model '{name}' has no rollout {' or '.join(phases)} (phase: {now})")
        return r

    def _begin_window(self, name: str, r: Rollout) -> None:
        versions = self.host.registry.models.get(name)
        self._windows[name] = {v: _Counts.of(runner) for v, runner in (versions.versions if versions else {}).items()}

    def _event(self, r: Rollout, event: str, message: str) -> None:
        r.message = message
        r.history.append({"time": _now_iso(self.clock()), "event": event, "step": r.step + 1,
                          "weight": _num(r.weight), "message": message, "gates": dict(r.gates)})

    def _show(self, name: str, r: Rollout) -> None:
        if self.metrics is not None:
            self.metrics.show(name, r)

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _path(self, name: str) -> Path | None:
        model_dir = self.host.repository.sources.model_dir(name)
        return model_dir / ROLLOUT_FILE if model_dir is not None else None

    async def _save(self, name: str, r: Rollout) -> None:
        self._show(name, r)
        path = self._path(name)
        assert path is not None
        await asyncio.get_running_loop().run_in_executor(None, write_json_atomically, path, r.to_doc())


def _version(policy: TrafficPolicy, target: str) -> int | None:
    """The version ``target`` names now; None when it names none (0 is no version either)."""
    try:
        return policy.resolve(target)
    except PyserveError:
        return None


def _end_shadow(policy: TrafficPolicy, candidate: str) -> dict[str, Any]:
    """The policy's document without its shadow when the shadow mirrors to ``candidate``: once the
    candidate serves every request itself it has nothing left to mirror (and the policy refuses
    a shadow of the version serving everything)."""
    doc = policy.to_doc()
    shadow = policy.shadow
    if shadow is not None and _version(policy, shadow.target) == _version(policy, candidate):
        del doc["shadow"]
    return doc


def _summary(v: dict[str, Any]) -> str:
    parts = [f"{v['requests']} requests"]
    for gate, unit in (("error_rate", "%"), ("p99_ratio", ""), ("agreement", "%")):
        if v.get(gate) is not None:
            parts.append(f"{gate} {v[gate]:g}{unit}")
    return ", ".join(parts)


def _round(seconds: float | None) -> float | None:
    return round(seconds, 6) if seconds is not None else None  # to the microsecond, the core's unit
