"""Shadow traffic in-process: mirrored requests compared with the stable answer, which the client
alone receives, whatever the candidate does (differs, fails, hangs)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import GATE_MODEL, Gate, Repo, gate_config

from pyserve.protocol import InferRequest, RequestedOutput
from pyserve.release.shadow import ShadowMirror
from pyserve.service import InferenceService, ModelControl, ModelHost

pytest.importorskip("onnx")

X = np.arange(4, dtype=np.float32).reshape(1, 4)
N = 40

UNGATED = """
import numpy as np

class Model:
    def infer(self, inputs):
        x = inputs["x"]
        return {"y": x * np.float32(2.0), "seq": np.zeros((x.shape[0], 1), np.int64)}
"""
FAILING = """
class Model:
    def infer(self, inputs):
        raise RuntimeError("the candidate is broken")
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    repo = Repo(tmp_path / "models")
    config = "max_batch_size = 8\n[version_policy]\nall = true\n"
    repo.onnx("every", {1: 1.0, 3: 3.0}, config=config)
    repo.onnx("twins", {1: 1.0}, config=config)
    shutil.copytree(repo.root / "twins" / "1", repo.root / "twins" / "2")  # the same model again
    extra = "[version_policy]\nall = true\n"
    repo.python("stuck", UNGATED, gate_config(1, extra))
    (repo.root / "stuck" / "2").mkdir()
    (repo.root / "stuck" / "2" / "model.py").write_text(GATE_MODEL.format(scale=2.0))
    repo.python("flaky", UNGATED, gate_config(1, extra), versions=(1, 2))
    (repo.root / "flaky" / "2" / "model.py").write_text(FAILING)
    return repo.root


def run(models: Path, body: Any) -> Any:
    async def main() -> Any:
        async with ModelHost(models) as host:
            mirror = ShadowMirror(host)
            service = InferenceService(host, hooks=[mirror])
            return await body(service, ModelControl(host), mirror)

    return asyncio.run(main())


async def settled(mirror: ShadowMirror, model: str) -> None:
    """Waits until no mirrored request of ``model`` is waiting on its candidate (bounded: 30 s)."""
    for _ in range(3000):
        if not mirror.in_flight.get(model):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"mirrored requests of {model} still waiting: {mirror.in_flight}")


def value(metric: Any, *labels: str) -> float:
    return metric.labels(*labels)._value.get()


def test_the_client_gets_the_stable_answer_and_the_difference_is_measured(models: Path) -> None:
    async def body(service: InferenceService, control: ModelControl, mirror: ShadowMirror) -> None:
        await control.set_traffic("every", {"aliases": {"stable": "1"}, "weights": {"stable": 100},
                                            "shadow": {"target": "3"}}, "tester", "shadow 3")
        direct = await service.infer("every", "1", InferRequest({"x": X}))
        for _ in range(N):
            resp = await service.infer("every", None, InferRequest({"x": X}))
            assert resp.model_version == "1"
            np.testing.assert_array_equal(resp.outputs["y"], direct.outputs["y"])
        await settled(mirror, "every")
        m = mirror.metrics
        # The direct call to version 1 was mirrored too: it is served by a version other than the shadow.
        assert value(m.requests, "every", "3", "compared") == N + 1
        assert value(m.comparisons, "every", "3", "y", "disagree") == N + 1
        assert value(m.elements, "every", "3", "y", "disagree") == 4 * (N + 1)
        assert value(m.comparisons, "every", "3", "argmax", "agree") == N + 1  # both pick the last column
        # y differs by 2 x w + 2 at most: x = 3, w = 1.75 on the last column: 12.5 - 0 ... largest 12.5.
        hist = m.difference.labels("every", "3", "y")
        assert hist._sum.get() == pytest.approx(12.5 * (N + 1))
        # Requests the candidate serves itself are not mirrored.
        await service.infer("every", "3", InferRequest({"x": X}))
        await settled(mirror, "every")
        assert value(m.requests, "every", "3", "compared") == N + 1

    run(models, body)


def test_identical_candidate_agrees_and_classification_outputs_are_not_compared(models: Path) -> None:
    async def body(service: InferenceService, control: ModelControl, mirror: ShadowMirror) -> None:
        await control.set_traffic("twins", {"weights": {"1": 100}, "shadow": {"target": "2", "percent": 100}},
                                  "tester")
        for _ in range(N):
            request = InferRequest({"x": X}, outputs=[RequestedOutput("y"), RequestedOutput("argmax", classification=2)])
            await service.infer("twins", None, request)
        await settled(mirror, "twins")
        m = mirror.metrics
        assert value(m.comparisons, "twins", "2", "y", "agree") == N
        assert value(m.elements, "twins", "2", "y", "disagree") == 0
        assert m.difference.labels("twins", "2", "y")._sum.get() == 0
        assert value(m.comparisons, "twins", "2", "argmax", "agree") == 0  # classified: not compared

    run(models, body)


def test_a_failing_candidate_changes_nothing_for_the_client(models: Path) -> None:
    async def body(service: InferenceService, control: ModelControl, mirror: ShadowMirror) -> None:
        await control.set_traffic("flaky", {"weights": {"1": 100}, "shadow": {"target": "2"}}, "tester")
        x = np.ones((1, 1), np.float32)
        for _ in range(N):
            resp = await service.infer("flaky", None, InferRequest({"x": x}))
            assert resp.model_version == "1" and resp.outputs["y"].tolist() == [[2.0]]
        await settled(mirror, "flaky")
        assert value(mirror.metrics.requests, "flaky", "2", "error") == N
        assert value(mirror.metrics.requests, "flaky", "2", "compared") == 0

    run(models, body)


def test_a_hanging_candidate_is_bounded_and_mirrors_are_dropped(models: Path) -> None:
    gate = Gate(models / "stuck" / "gate.lock")

    async def body(service: InferenceService, control: ModelControl, mirror: ShadowMirror) -> None:
        await control.set_traffic("stuck", {"weights": {"1": 100}, "shadow": {"target": "2", "max_in_flight": 3}},
                                  "tester")
        x = np.ones((1, 1), np.float32)
        with gate:  # version 2 blocks in every batch
            for _ in range(N):
                resp = await service.infer("stuck", None, InferRequest({"x": x}))
                assert resp.model_version == "1" and resp.outputs["y"].tolist() == [[2.0]]
            await asyncio.sleep(0)  # the last mirror is scheduled with call_soon
            assert mirror.in_flight["stuck"] == 3
            assert value(mirror.metrics.requests, "stuck", "2", "dropped") == N - 3
        await settled(mirror, "stuck")
        assert value(mirror.metrics.requests, "stuck", "2", "compared") == 3
        assert value(mirror.metrics.comparisons, "stuck", "2", "y", "agree") == 3
        assert value(mirror.metrics.comparisons, "stuck", "2", "seq", "disagree") == 3

    run(models, body)


def test_percent_mirrors_a_share(models: Path) -> None:
    async def body(service: InferenceService, control: ModelControl, mirror: ShadowMirror) -> None:
        await control.set_traffic("twins", {"weights": {"1": 100}, "shadow": {"target": "2", "percent": 0}}, "tester")
        for _ in range(N):
            await service.infer("twins", None, InferRequest({"x": X}))
        await settled(mirror, "twins")
        assert value(mirror.metrics.requests, "twins", "2", "compared") == 0
        with pytest.raises(Exception) as e:
            await control.unload_version("twins", "2")
        assert "is the shadow target" in str(e.value)

    run(models, body)
