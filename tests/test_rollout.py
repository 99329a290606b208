"""Progressive delivery (pyserve.release.rollout) in-process: steps promoted while the gates hold, a
failed gate rolling the traffic back to stable, pause/resume/promote/abort, bad specs, restarts.

The controller's clock is a list the test moves and its tick is called by the test: nothing sleeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Repo, toml_tensors
from prometheus_client import CollectorRegistry

from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol import InferRequest
from pyserve.release.rollout import ROLLOUT_FILE, RolloutController, RolloutMetrics
from pyserve.release.shadow import ShadowMetrics, ShadowMirror
from pyserve.service import InferenceService, ModelControl, ModelHost

# Each version reads behaviour.json: fail when int(x) % fail_every == 0, answer x + 1 (not x) when
# int(x) % differ_every == 0, sleep sleep_s first.
MODEL = """
import json
import time
from pathlib import Path


class Model:
    def __init__(self, config, version_dir):
        self.b = json.loads((Path(version_dir) / "behaviour.json").read_text())

    def infer(self, inputs):
        x = inputs["x"]
        v = int(x.ravel()[0])
        if self.b.get("fail_every") and v % self.b["fail_every"] == 0:
            raise RuntimeError("injected failure")
        time.sleep(self.b.get("sleep_s", 0))
        differ = self.b.get("differ_every")
        return {"y": x + 1 if differ and v % differ == 0 else x}
"""
CONFIG = ('backend = "python"\nmax_batch_size = 0\n[version_policy]\nall = true\n'
          + toml_tensors("inputs", [("x", "FP32", [1])]) + toml_tensors("outputs", [("y", "FP32", [1])]))
NO_P99: dict[str, Any] = {"max_p99_ratio": None}


def make_repo(root: Path, **behaviours: dict[str, Any]) -> Path:
    """Model ``m``, versions 1 (stable: always right) and 2 with ``behaviours['v2']``."""
    repo = Repo(root)
    repo.python("m", MODEL, CONFIG, versions=(1, 2))
    for version, behaviour in (("1", {}), ("2", behaviours.get("v2", {}))):
        (repo.root / "m" / version / "behaviour.json").write_text(json.dumps(behaviour))
    (repo.root / "m" / "traffic.json").write_text(json.dumps({"aliases": {"stable": "1"}, "weights": {"stable": 100}}))
    return repo.root


class World:
    """A started host with a service (shadow mirror attached), control and a rollout controller on
    a clock the test moves."""

    def __init__(self, host: ModelHost) -> None:
        self.now = [1_000_000.0]
        self.registry = CollectorRegistry()
        self.shadow = ShadowMetrics.register(self.registry)
        self.service = InferenceService(host, hooks=[ShadowMirror(host, self.shadow)])
        self.metrics = RolloutMetrics(self.registry)
        self.rollouts = RolloutController(host, self.metrics, self.shadow, clock=lambda: self.now[0])
        self.control = ModelControl(host, self.rollouts)
        self.host = host
        self.answers: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.sent = 0

    async def send(self, n: int) -> None:
        """``n`` requests with no version (split by weight), x = 1, 2, ...; tallies per version."""
        for _ in range(n):
            self.sent += 1
            try:
                resp = await self.service.infer("m", None, InferRequest({"x": np.array([self.sent], np.float32)},
                                                                         id=f"r{self.sent}"))
            except PyserveError as e:
                runner = e.message
                self.failures[runner] = self.failures.get(runner, 0) + 1
            else:
                self.answers[resp.model_version] = self.answers.get(resp.model_version, 0) + 1

    def weights(self) -> dict[str, Any]:
        return self.control.traffic("m")["weights"]

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {"model": "m", **labels})


def run(root: Path, body: Callable[[World], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with ModelHost(root) as host:
            world = World(host)
            world.rollouts.load_all()
            return await body(world)

    return asyncio.run(main())


SPEC: dict[str, Any] = {"candidate": "2", "steps": [10, 50, 100], "min_duration_s": 30, "min_requests": 20,
                        "gates": NO_P99}


def audit(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / ".pyserve" / "traffic-audit.jsonl").read_text().splitlines()]


def test_steps_promote_while_the_gates_hold_then_stable_names_the_candidate(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "models")

    async def body(w: World) -> None:
        state = await w.control.start_rollout("m", SPEC, "10.0.0.1:5", "release 2")
        assert state["phase"] == "progressing" and state["step"] == 1 and state["weight"] == 10
        assert w.weights() == {"stable": 90, "2": 10}
        for percent, step in ((10, 1), (50, 2), (100, 3)):
            assert w.weights() == ({"stable": 100 - percent, "2": percent} if percent < 100 else {"2": 100})
            await w.send(400)
            await w.rollouts.tick()  # enough requests, not enough time: stays
            assert w.rollouts.state("m")["step"] == step, "promoted before min_duration_s"
            w.now[0] += 31
            await w.rollouts.tick()
        state = w.control.rollout("m")
        assert state["phase"] == "succeeded", state["message"]
        assert w.control.traffic("m") == {"aliases": {"stable": "2"}, "weights": {"stable": 100}}
        assert [h["event"] for h in state["history"]] == ["start", "step", "step", "succeeded"]
        assert w.gauge("pyserve_rollout_step") == 0 and w.gauge("pyserve_rollout_candidate_weight_percent") == 100
        assert w.gauge("pyserve_rollout_phase", phase="succeeded") == 1
        assert not w.failures
        # The split followed each step: version 2 served about 10%, then 50%, then all of the requests.
        assert 400 * 1.45 < w.answers["2"] < 400 * 1.75

    run(root, body)
    records = audit(root)
    assert [r["action"] for r in records] == ["rollout_step", "rollout_step", "rollout_step", "rollout_succeeded"]
    assert {r["who"] for r in records} == {"rollout"}
    assert "held its gates" in records[1]["reason"]


def test_a_step_waits_for_min_requests(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.control.start_rollout("m", {**SPEC, "min_requests": 1000}, "t")
        await w.send(200)
        w.now[0] += 3600
        await w.rollouts.tick()
        state = w.control.rollout("m")
        assert state["step"] == 1 and state["gates"]["requests"] < 1000
        assert 0 < state["gates"]["requests"] == w.answers["2"]

    run(make_repo(tmp_path / "models"), body)


def test_error_rate_gate_rolls_back_at_once_naming_the_numbers(tmp_path: Path) -> None:
    # Version 2 fails every 10th input: 10% of its requests, above max_error_rate 5%.
    root = make_repo(tmp_path / "models", v2={"fail_every": 10})

    async def body(w: World) -> None:
        await w.control.start_rollout("m", {**SPEC, "steps": [50, 100], "gates": {**NO_P99, "max_error_rate": 5}}, "t")
        for _ in range(20):
            await w.send(20)
            await w.rollouts.tick()  # no time passes: the rollback does not wait for min_duration_s
            if w.control.rollout("m")["phase"] != "progressing":
                break
        state = w.control.rollout("m")
        assert state["phase"] == "failed"
        assert "gate error_rate failed" in state["message"] and "above max_error_rate 5%" in state["message"]
        errors, requests = state["gates"]["errors"], state["gates"]["requests"]
        assert f"({errors} of {requests})" in state["message"] and errors > 0
        assert w.weights() == {"stable": 100} and state["weight"] == 0
        assert w.gauge("pyserve_rollout_rollbacks_total", cause="error_rate") == 1
        assert w.gauge("pyserve_rollout_gate_value", gate="error_rate") == state["gates"]["error_rate"] > 5
        # After the rollback every request is served by stable, and none fails.
        w.failures.clear()
        before = w.answers.get("1", 0)
        await w.send(100)
        assert w.answers["1"] == before + 100 and not w.failures

    run(root, body)
    assert audit(root)[-1]["action"] == "rollout_rollback" and "error_rate" in audit(root)[-1]["reason"]


def test_error_rate_gate_fails_fast_before_min_requests(tmp_path: Path) -> None:
    # 10% failing, min_requests 1000, limit 0.5%: 6 failures already exceed 0.5% of 1000.
    async def body(w: World) -> None:
        spec = {**SPEC, "steps": [50], "min_requests": 1000, "gates": {**NO_P99, "max_error_rate": 0.5}}
        await w.control.start_rollout("m", spec, "t")
        await w.send(200)
        await w.rollouts.tick()
        state = w.control.rollout("m")
        assert state["phase"] == "failed" and state["gates"]["requests"] < 1000, state["message"]

    run(make_repo(tmp_path / "models", v2={"fail_every": 10}), body)


def test_error_rate_gate_holds_under_its_limit(tmp_path: Path) -> None:
    # 1 failure in 50 (2%) with max_error_rate 5: promoted.
    async def body(w: World) -> None:
        await w.control.start_rollout("m", {**SPEC, "steps": [50], "gates": {**NO_P99, "max_error_rate": 5}}, "t")
        await w.send(200)
        w.now[0] += 31
        await w.rollouts.tick()
        state = w.control.rollout("m")
        assert state["phase"] == "succeeded", state["message"]
        assert 0 < state["history"][-1]["gates"]["error_rate"] < 5

    run(make_repo(tmp_path / "models", v2={"fail_every": 50}), body)


@pytest.mark.parametrize("slow_version, outcome", [("2", "failed"), ("1", "succeeded")])
def test_p99_ratio_gate(tmp_path: Path, slow_version: str, outcome: str) -> None:
    # The slow version sleeps 20 ms; the other answers in microseconds.
    root = make_repo(tmp_path / "models", v2={"sleep_s": 0.02} if slow_version == "2" else {})
    if slow_version == "1":
        (root / "m" / "1" / "behaviour.json").write_text(json.dumps({"sleep_s": 0.02}))

    async def body(w: World) -> None:
        spec = {**SPEC, "steps": [50], "min_requests": 10, "gates": {"max_error_rate": 1, "max_p99_ratio": 2}}
        await w.control.start_rollout("m", spec, "t")
        await w.send(40)
        w.now[0] += 31
        await w.rollouts.tick()
        state = w.control.rollout("m")
        assert state["phase"] == outcome, state["message"]
        ratio = state["history"][-1]["gates"]["p99_ratio"]
        if outcome == "failed":
            assert ratio > 2 and "gate p99_ratio failed" in state["message"]
            assert f"{ratio:g} times stable's" in state["message"]
        else:
            assert ratio < 1

    run(root, body)


@pytest.mark.parametrize("differ_every, outcome", [(10, "failed"), (0, "succeeded")])
def test_agreement_gate_reads_the_shadow_phase(tmp_path: Path, differ_every: int, outcome: str) -> None:
    root = make_repo(tmp_path / "models", v2={"differ_every": differ_every})

    async def body(w: World) -> None:
        await w.control.set_traffic("m", {"aliases": {"stable": "1"}, "weights": {"stable": 100},
                                          "shadow": {"target": "2", "percent": 100}}, "t")
        await w.send(100)
        for _ in range(200):  # the mirrors are answered on the loop, after the stable answers
            if w.shadow.requests.labels("m", "2", "compared")._value.get() == 100:
                break
            await asyncio.sleep(0.01)
        await w.control.start_rollout("m", {**SPEC, "steps": [50], "min_requests": 0,
                                            "gates": {**NO_P99, "min_agreement": 95}}, "t")
        w.now[0] += 31
        await w.rollouts.tick()
        state = w.control.rollout("m")
        assert state["phase"] == outcome, state["message"]
        gates = state["history"][-1]["gates"]
        assert gates["compared"] >= 100
        if outcome == "failed":
            assert 80 <= gates["agreement"] <= 92  # 10% of the 100 mirrored inputs differ (more may follow)
            assert "gate agreement failed" in state["message"] and "below min_agreement 95%" in state["message"]
            assert w.weights() == {"stable": 100}
        else:
            assert gates["agreement"] == 100
            # The candidate serves everything: the shadow to it has ended with the shadow phase.
            assert w.control.traffic("m") == {"aliases": {"stable": "2"}, "weights": {"stable": 100}}

    run(root, body)


def test_pause_holds_resume_promote_and_abort(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "models")

    async def body(w: World) -> None:
        await w.control.start_rollout("m", {**SPEC, "steps": [5, 25, 50, 100]}, "t")
        state = await w.control.rollout_action("m", "pause", "ops", "look at the dashboards")
        assert state["phase"] == "paused"
        await w.send(1000)  # about 50 to the candidate at 5%
        w.now[0] += 3600
        await w.rollouts.tick()
        assert w.control.rollout("m")["step"] == 1, "a paused rollout was promoted"
        with pytest.raises(PyserveError, match="no rollout progressing"):
            await w.control.rollout_action("m", "pause", "ops")
        state = await w.control.rollout_action("m", "resume", "ops")
        assert state["phase"] == "progressing"
        await w.rollouts.tick()
        assert w.control.rollout("m")["step"] == 2 and w.weights() == {"stable": 75, "2": 25}
        await w.control.rollout_action("m", "pause", "ops")
        state = await w.control.rollout_action("m", "promote", "ops")  # now, without waiting; no longer paused
        assert state["step"] == 3 and state["phase"] == "progressing" and w.weights() == {"stable": 50, "2": 50}
        state = await w.control.rollout_action("m", "abort", "ops", "saw a bug")
        assert state["phase"] == "aborted" and "aborted by ops: saw a bug" in state["message"]
        assert w.weights() == {"stable": 100}
        assert w.gauge("pyserve_rollout_rollbacks_total", cause="abort") == 1
        with pytest.raises(PyserveError, match="no rollout progressing or paused"):
            await w.control.rollout_action("m", "abort", "ops")
        # A finished rollout lets a new one start; promote --full ends it at once.
        await w.control.start_rollout("m", SPEC, "t")
        state = await w.control.rollout_action("m", "promote", "ops", full=True)
        assert state["phase"] == "succeeded" and w.control.traffic("m")["aliases"] == {"stable": "2"}
        assert [h["event"] for h in state["history"]] == ["start", "succeeded"]

    run(root, body)


def test_rollout_state_survives_a_restart(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "models")

    async def first(w: World) -> dict:
        await w.control.start_rollout("m", SPEC, "t")
        await w.send(200)
        w.now[0] += 31
        await w.rollouts.tick()
        await w.control.rollout_action("m", "pause", "ops")
        return w.control.rollout("m")

    async def second(w: World) -> None:
        state = w.control.rollout("m")
        assert (state["phase"], state["step"], state["weight"], state["spec"]) == (
            before["phase"], before["step"], before["weight"], before["spec"])
        assert state["history"][:-1] == before["history"] and state["history"][-1]["event"] == "restart"
        assert w.weights() == {"stable": 50, "2": 50}
        assert w.gauge("pyserve_rollout_step") == 2
        await w.control.rollout_action("m", "resume", "ops")
        await w.send(200)
        await w.rollouts.tick()
        assert w.control.rollout("m")["step"] == 2, "the window did not start again after the restart"
        w.now[0] += 31
        await w.rollouts.tick()
        assert w.control.rollout("m")["step"] == 3

    before = run(root, first)
    assert before["step"] == 2 and before["phase"] == "paused"
    assert json.loads((root / "m" / ROLLOUT_FILE).read_text())["phase"] == "paused"
    run(root, second)


@pytest.mark.parametrize("spec, message", [
    ({**SPEC, "steps": [10, 10, 100]}, "rollout.steps[1]: the steps must increase, got 10 after 10"),
    ({**SPEC, "steps": [50, 25]}, "rollout.steps[1]: the steps must increase"),
    ({**SPEC, "steps": [10, 150]}, "rollout.steps[1]: expected a percentage above 0 and at most 100, got 150"),
    ({**SPEC, "steps": []}, "rollout.steps: expected a non-empty array"),
    ({**SPEC, "candidate": "7"}, "rollout.candidate: model 'm' version 7 is not loaded (loaded: 1, 2)"),
    ({**SPEC, "candidate": "nightly"}, "rollout.candidate: 'nightly' is neither a version number nor an alias"),
    ({**SPEC, "candidate": "1"}, "rollout.candidate: '1' is version 1, the stable version ('stable')"),
    ({**SPEC, "candidate": "stable"}, "rollout.candidate: 'stable' is version 1, the stable version"),
    ({k: v for k, v in SPEC.items() if k != "candidate"}, "rollout.candidate: required"),
    ({**SPEC, "min_requests": -1}, "rollout.min_requests: expected an integer from 0, got -1"),
    ({**SPEC, "gates": {"max_error_rate": 101}}, "rollout.gates.max_error_rate: expected a number from 0 to 100"),
    ({**SPEC, "gates": {"max_p99_ratio": 0}}, "rollout.gates.max_p99_ratio: expected a number above 0"),
    ({**SPEC, "gates": {"max_latency": 1}}, "rollout.gates: unknown field(s) 'max_latency'"),
    ({**SPEC, "step": [1]}, "rollout: unknown field(s) 'step'"),
])
def test_bad_specs_are_refused_naming_the_field_and_change_nothing(tmp_path: Path, spec: dict, message: str) -> None:
    root = make_repo(tmp_path / "models")
    policy = (root / "m" / "traffic.json").read_text()

    async def body(w: World) -> None:
        with pytest.raises(PyserveError) as e:
            await w.control.start_rollout("m", spec, "t")
        assert e.value.kind is ErrorKind.INVALID_ARGUMENT and message in e.value.message
        with pytest.raises(PyserveError, match="has no rollout"):
            w.control.rollout("m")

    run(root, body)
    assert (root / "m" / "traffic.json").read_text() == policy
    assert not (root / "m" / ROLLOUT_FILE).exists() and not (root / ".pyserve").exists()


def test_a_second_rollout_is_refused_while_one_runs(tmp_path: Path) -> None:
    async def body(w: World) -> None:
        await w.control.start_rollout("m", SPEC, "t")
        before = w.control.rollout("m")
        with pytest.raises(PyserveError, match="has a rollout progressing .*: abort it first"):
            await w.control.start_rollout("m", {**SPEC, "steps": [90]}, "t")
        assert w.control.rollout("m") == before and w.weights() == {"stable": 90, "2": 10}

    run(make_repo(tmp_path / "models"), body)


def test_stable_defaults_and_must_be_given_without_a_stable_target(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "models")
    (root / "m" / "traffic.json").unlink()

    async def body(w: World) -> None:
        with pytest.raises(PyserveError, match="rollout.stable: required"):
            await w.control.start_rollout("m", SPEC, "t")
        state = await w.control.start_rollout("m", {**SPEC, "stable": "1"}, "t")
        assert state["weights"] == {"1": 90, "2": 10} and w.weights() == {"1": 90, "2": 10}
        await w.control.rollout_action("m", "promote", "t", full=True)
        assert w.control.traffic("m") == {"aliases": {}, "weights": {"2": 100}}

    run(root, body)
