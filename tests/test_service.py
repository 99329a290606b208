"""The service layer in-process: ModelHost + InferenceService with no HTTP, hooks around each call,
error kinds that survive the C++ core, ONNX Runtime's refusals of a request's inputs, and the layering
of the package (transports import the service; nothing below imports a transport)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Repo, error_count as count, run_service as run, toml_tensors
from prometheus_client import Counter

from pyserve.backends import registry as backends
from pyserve.errors import ErrorKind, PyserveError, internal
from pyserve.protocol import InferRequest, RequestedOutput
from pyserve.service import CallContext, InferenceService, InferHooks

PACKAGE = Path(__file__).resolve().parent.parent / "pyserve"

# A Python model that reports bad input with pyserve's own error, and fails on another value.
PICKY_MODEL = """
import numpy as np
from pyserve.errors import invalid

class Model:
    def infer(self, inputs):
        x = inputs["x"]
        if (x < 0).any():
            raise invalid("input 'x': values must be >= 0")
        if (x > 100).any():
            raise ValueError("the model cannot handle this")
        return {"y": x * np.float32(2.0)}
"""
PICKY_CONFIG = 'backend = "python"\nmax_batch_size = 4\n' + toml_tensors("inputs", [("x", "FP32", [1])]) \
    + toml_tensors("outputs", [("y", "FP32", [1])])


def model_bytes(graph: Any) -> bytes:
    """An ONNX graph as a checked model file (opset 17, IR 8: read by every onnxruntime supported)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def two_input_add_onnx() -> bytes:
    """``y = a + b`` with a [N, K] and b [N, M]: K != M is the client's mistake, found by ORT."""
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "K"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "M"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])
    d = helper.make_tensor_value_info("d", TensorProto.FLOAT, [5])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])
    g = helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N"])
    nodes = [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Gather", ["d", "i"], ["g"])]
    graph = helper.make_graph(nodes, "add", [a, b, d, i], [y, g])
    return model_bytes(graph)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    repo = Repo(tmp_path / "models")
    repo.identity("echo", [("a", "FP32", [-1]), ("b", "INT32", [2])], max_batch_size=8)
    repo.python("picky", PICKY_MODEL, PICKY_CONFIG)
    (repo.model_dir("adder") / "1").mkdir()
    (repo.model_dir("adder") / "1" / "model.onnx").write_bytes(two_input_add_onnx())
    return repo.root


class Recorder(InferHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def before_request(self, ctx: CallContext, runner: Any, request: InferRequest) -> None:
        self.calls.append(("before", (ctx.protocol, runner.config.name, sorted(request.inputs))))

    def after_response(self, ctx: CallContext, runner: Any, request: InferRequest, response: Any) -> None:
        self.calls.append(("after", (response.model_name, sorted(response.outputs))))

    def on_error(self, ctx: Any, model_name: str, runner: Any, request: Any, error: PyserveError) -> None:
        self.calls.append(("error", (model_name, error.kind)))


class Exploding(InferHooks):
    def before_request(self, *args: Any) -> None:
        raise RuntimeError("a broken hook")

    def after_response(self, *args: Any) -> None:
        raise RuntimeError("a broken hook")


def test_in_process_inference_with_hooks(models: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1, 2], [3, 4]], np.int32)

    async def body(service: InferenceService, errors: Counter) -> Recorder:
        recorder = Recorder()
        service.add_hooks(Exploding())  # a hook that raises changes no answer
        service.add_hooks(recorder)
        out = await service.infer("echo", None, InferRequest({"in_a": a, "in_b": b}, id="r1"))
        assert out.model_name == "echo" and out.model_version == "1" and out.id == "r1"
        np.testing.assert_array_equal(out.outputs["out_a"], a)
        np.testing.assert_array_equal(out.outputs["out_b"], b)
        # Only the requested outputs come back.
        out = await service.infer("echo", "1", InferRequest({"in_a": a, "in_b": b},
                                                            outputs=[RequestedOutput("out_b")]))
        assert list(out.outputs) == ["out_b"]
        with pytest.raises(PyserveError) as info:
            await service.infer("echo", None, InferRequest({"in_a": a, "in_b": b}, outputs=[RequestedOutput("zz")]))
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT and "'zz'" in info.value.message
        with pytest.raises(PyserveError) as info:
            await service.infer("nope", None, InferRequest({}))
        assert info.value.kind is ErrorKind.NOT_FOUND
        with pytest.raises(PyserveError) as info:
            await service.infer("echo", "7", InferRequest({"in_a": a, "in_b": b}))
        assert info.value.kind is ErrorKind.NOT_FOUND and "serving: 1" in info.value.message
        assert count(errors, "echo", "invalid_argument") == 1
        assert count(errors, "echo", "not_found") == 1
        assert count(errors, "", "not_found") == 1  # an unknown name is not a label
        return recorder

    recorder = run(models, body)
    assert recorder.calls == [
        ("before", ("inprocess", "echo", ["in_a", "in_b"])), ("after", ("echo", ["out_a", "out_b"])),
        ("before", ("inprocess", "echo", ["in_a", "in_b"])), ("after", ("echo", ["out_b"])),
        ("error", ("echo", ErrorKind.INVALID_ARGUMENT)), ("error", ("nope", ErrorKind.NOT_FOUND)),
        ("error", ("echo", ErrorKind.NOT_FOUND)),
    ]


@pytest.mark.parametrize("params, needle", [
    ({"priority": 2}, "from 0 to 1"), ({"priority": -1}, "from 0 to 1"), ({"priority": 2**63}, "from 0 to 1"),
    ({"timeout": 2**63}, "from 0 to 9223372036854775"), ({"timeout": "5"}, "got '5'"),
    ({"timeout": 1.5}, "got 1.5"), ({"priority": True}, "got True"),
])
def test_parameters_out_of_range_are_invalid(models: Path, params: dict, needle: str) -> None:
    a, b = np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int32)

    async def body(service: InferenceService, errors: Counter) -> None:
        with pytest.raises(PyserveError) as info:
            await service.infer("echo", None, InferRequest({"in_a": a, "in_b": b}, parameters=params))
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT
        key = next(iter(params))
        assert f"parameters.{key}" in info.value.message and needle in info.value.message

    run(models, body)


def test_backend_error_kind_survives_the_core(models: Path) -> None:
    async def body(service: InferenceService, errors: Counter) -> None:
        ok = await service.infer("picky", None, InferRequest({"x": np.ones((2, 1), np.float32)}))
        np.testing.assert_array_equal(ok.outputs["y"], np.full((2, 1), 2, np.float32))
        # The model's own invalid(): the client's mistake, a 400, with the model's words.
        with pytest.raises(PyserveError) as info:
            await service.infer("picky", None, InferRequest({"x": -np.ones((1, 1), np.float32)}))
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT
        assert "values must be >= 0" in info.value.message
        # Anything else the model raises is its fault.
        with pytest.raises(PyserveError) as info:
            await service.infer("picky", None, InferRequest({"x": np.full((1, 1), 1e3, np.float32)}))
        assert info.value.kind is ErrorKind.INTERNAL and "ValueError" in info.value.message

    run(models, body)


def test_onnxruntime_refusals_of_inputs_are_invalid_argument(models: Path, caplog: Any) -> None:
    d = np.arange(5, dtype=np.float32)
    ok_i = np.array([0], np.int64)

    async def body(service: InferenceService, errors: Counter) -> None:
        good = {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 3), np.float32), "d": d, "i": ok_i}
        out = await service.infer("adder", None, InferRequest(good))
        np.testing.assert_array_equal(out.outputs["y"], np.full((1, 3), 2, np.float32))
        # Dimensions that disagree: ORT's FAIL from the Add node.
        with pytest.raises(PyserveError) as info:
            await service.infer("adder", None, InferRequest({**good, "b": np.ones((1, 4), np.float32)}))
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT, info.value.message
        message = info.value.message
        assert "a [1, 3]" in message and "b [1, 4]" in message and "Add node" in message
        assert "onnxruntime_src" not in message  # ORT's source path is not for clients
        # A value the model cannot take: an index out of range.
        with pytest.raises(PyserveError) as info:
            await service.infer("adder", None, InferRequest({**good, "i": np.array([9], np.int64)}))
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT and "out of data bounds" in info.value.message

    run(models, body)
    assert "backend call failed" not in caplog.text  # client mistakes are not logged as faults


def broken_reshape_onnx() -> bytes:
    """``y = x + reshape(c[6], [4])``: the Reshape fails whatever ``x`` is (the model's own fault)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    inits = [helper.make_tensor("c", TensorProto.FLOAT, [6], [1.0] * 6),
             helper.make_tensor("s", TensorProto.INT64, [1], [4])]
    nodes = [helper.make_node("Reshape", ["c", "s"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    return model_bytes(helper.make_graph(nodes, "broken", [x], [y], initializer=inits))


def test_a_model_broken_in_itself_is_internal(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "models")
    (repo.model_dir("broken") / "1").mkdir()
    (repo.model_dir("broken") / "1" / "model.onnx").write_bytes(broken_reshape_onnx())
    # Without optimisation ORT runs the Reshape at every request instead of folding it at load.
    repo.config("broken", '[onnxruntime]\ngraph_optimization_level = "disable"\n')

    async def body(service: InferenceService, errors: Counter) -> None:
        for _ in range(2):
            with pytest.raises(PyserveError) as info:
                await service.infer("broken", None, InferRequest({"x": np.ones((1, 4), np.float32)}))
            assert info.value.kind is ErrorKind.INTERNAL, info.value.message
            assert "Reshape" in info.value.message

    run(repo.root, body)


def test_backends_are_named_only_in_the_registry() -> None:
    """No module but the registry compares a backend's name: a new backend is one registry entry."""
    names = set(backends.REGISTRY)
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "registry.py" and path.parent.name == "backends":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                consts = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in names]
                offenders += [f"{path.relative_to(PACKAGE)}:{c.lineno} {c.value!r}" for c in consts]
    assert offenders == []


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("below", ["service", "release", "repository", "backends", "protocol", "runtime.py", "config.py",
                                   "errors.py", "metrics.py", "datatypes.py", "payload_log",
                                   "dashboard", "drift", "security", "artifact"])
def test_nothing_below_the_transports_imports_them(below: str) -> None:
    paths = [PACKAGE / below] if below.endswith(".py") else sorted((PACKAGE / below).rglob("*.py"))
    for path in paths:
        bad = {m for m in _imports(path) if m == "pyserve.server" or m.startswith("pyserve.server.")}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_http_transport_reaches_models_through_the_service() -> None:
    for path in sorted((PACKAGE / "server").rglob("*.py")):
        direct = {m for m in _imports(path) if m.startswith(("pyserve.repository", "pyserve.runtime", "pyserve._core"))}
        assert not direct, f"{path.relative_to(PACKAGE)} imports {direct}: go through pyserve.service"


def gather_onnx() -> bytes:
    """``g = table[i]`` with a table of 5 values: an index past 4 is a value the model cannot take."""
    from onnx import TensorProto, helper

    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])
    g = helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N"])
    table = helper.make_tensor("table", TensorProto.FLOAT, [5], [10.0, 11.0, 12.0, 13.0, 14.0])
    graph = helper.make_graph([helper.make_node("Gather", ["table", "i"], ["g"])], "gather", [i], [g],
                              initializer=[table])
    return model_bytes(graph)


def test_one_bad_value_fails_only_its_own_request(tmp_path: Path) -> None:
    """Requests batched together: the one whose index is out of range is a 400, the others answer."""
    repo = Repo(tmp_path / "models")
    (repo.model_dir("gather") / "1").mkdir()
    (repo.model_dir("gather") / "1" / "model.onnx").write_bytes(gather_onnx())
    repo.config("gather", "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 200000\n")

    async def body(service: InferenceService, errors: Any) -> None:
        runner = service.runner("gather")
        # The first batch of a fresh model: ORT's own INVALID_ARGUMENT is trusted before any answer.
        indexes = [1, 9, 2, 3]
        futures = [runner.submit({"i": np.array([k], np.int64)}) for k in indexes]  # one batch of 4
        await asyncio.wait(futures)
        for k, future in zip(indexes, futures):
            if k < 5:
                assert float(future.result()["g"][0]) == 10.0 + k
            else:
                assert isinstance(future.exception(), PyserveError)
                assert future.exception().kind is ErrorKind.INVALID_ARGUMENT
        assert runner.stats()["batch_size"]["count"] >= 2

    run(repo.root, body)


REFUSES_NEGATIVES = '''
import numpy as np
from pyserve.errors import invalid

class Model:
    def __init__(self, version_dir):
        self.calls = version_dir / "calls.txt"

    def infer(self, inputs):
        x = inputs["x"]
        with open(self.calls, "a") as f:
            f.write(f"{x.shape[0]}\\n")
        if (x < 0).any():
            raise invalid("negative value")
        return {"y": x * 2}
'''


def test_a_batch_refused_for_every_request_answers_each_once(tmp_path: Path) -> None:
    """A Python model raising invalid() for every request of a batch: the batch runs again one
    request at a time, each request gets exactly one INVALID_ARGUMENT, and the counters add up
    (the refused batch counts among batches_executed: backend calls, failed ones included)."""
    repo = Repo(tmp_path / "models")
    repo.python("p", REFUSES_NEGATIVES,
                'backend = "python"\nmax_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 300000\n'
                + toml_tensors("inputs", [("x", "FP32", [1])]) + toml_tensors("outputs", [("y", "FP32", [1])]))
    calls = repo.model_dir("p") / "1" / "calls.txt"

    async def body(service: InferenceService, errors: Any) -> None:
        runner = service.runner("p")
        answered = 0
        for keys in ([-1, -2, -3, -4, -5, -6, -7, -8], [1, -1, 2, -2]):
            futures = [runner.submit({"x": np.array([[k]], np.float32)}) for k in keys]
            _, pending = await asyncio.wait(futures, timeout=10)
            assert not pending
            for k, future in zip(keys, futures):
                if k < 0:
                    assert isinstance(future.exception(), PyserveError)
                    assert future.exception().kind is ErrorKind.INVALID_ARGUMENT
                else:
                    assert float(future.result()["y"][0, 0]) == 2 * k
                answered += 1
        runs = [int(n) for n in calls.read_text().split()]
        # Every batch of several requests holds a negative (batches are runs of the submission
        # order), so it is refused and each request then runs alone: exactly once, whatever batches
        # formed (8 + 4 when the machine keeps up).
        assert runs.count(1) == 12 and len(runs) == 12 + sum(1 for n in runs if n > 1), runs
        stats = runner.stats()
        assert (stats["requests_failed"], stats["requests_succeeded"], stats["in_flight"]) == (10, 2, 0)
        assert stats["batches_executed"] == len(runs) and stats["samples_inferred"] == 2
        assert answered == 12

    run(repo.root, body)


def test_hooks_inherited_from_a_subclass_run_and_no_ops_are_skipped() -> None:
    """A hook point's method is called when any class above the hooks' own overrides it (here a
    parent); InferHooks' no-ops are not called at all."""
    seen: list[str] = []

    class Parent(InferHooks):
        def on_error(self, ctx: Any, model_name: str, runner: Any, request: Any, error: Any) -> None:
            seen.append(f"{type(self).__name__}:{model_name}")

    class Child(Parent):
        pass

    service = InferenceService(None, hooks=[Child()])  # type: ignore[arg-type]
    service.failed("m", internal("boom"))
    assert seen == ["Child:m"]
    assert [h for _, h in service._before] == [] and [type(h) for _, h in service._on_error] == [Child]
