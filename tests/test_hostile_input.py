"""Hostile and malformed input found in review: each case once answered a 500, a wrong status, an
uncounted error or left state behind. In-process (ModelHost + InferenceService, the HTTP handler
called directly) so no server process is needed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import Repo, error_count as count, run_service as run, toml_tensors
from prometheus_client import Counter

from pyserve.config import ConfigError, load_model_config
from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol import InferRequest, RequestedOutput, kserve
from pyserve.server import handlers
from pyserve.server.messages import Deferred, Request
from pyserve.service import InferenceService, InferHooks, ModelHost
from pyserve.service.inference import MAX_TIMEOUT_US

WAIT_MODEL = """
import time

class Model:
    def infer(self, inputs):
        time.sleep(0.02)  # long enough that the scheduler sees the request's deadline first
        return {"y": inputs["x"]}
"""
ONE_FP32 = 'backend = "python"\nmax_batch_size = 4\n' + toml_tensors("inputs", [("x", "FP32", [1])]) \
    + toml_tensors("outputs", [("y", "FP32", [1])])


@pytest.fixture
def models(tmp_path: Path) -> Path:
    repo = Repo(tmp_path / "models")
    repo.identity("echo", [("x", "FP32", [3])], max_batch_size=4)
    repo.python("wait", WAIT_MODEL, ONE_FP32)
    return repo.root


class Errors(InferHooks):
    def __init__(self) -> None:
        self.kinds: list[ErrorKind] = []

    def on_error(self, ctx: Any, model_name: str, runner: Any, request: Any, error: PyserveError) -> None:
        self.kinds.append(error.kind)


X = {"in_x": np.ones((1, 3), np.float32)}


def test_a_version_of_thousands_of_digits_is_not_found(models: Path) -> None:
    # int() of more than 4300 digits raises ValueError: that was a 500 for a client's typo.
    async def body(service: InferenceService, errors: Counter) -> None:
        with pytest.raises(PyserveError) as info:
            await service.infer("echo", "9" * 5000, InferRequest(dict(X)))
        assert info.value.kind is ErrorKind.NOT_FOUND and "serving: 1" in info.value.message
        with pytest.raises(PyserveError) as info:
            service.ready("echo", "1" + "0" * 19)  # 20 digits: past int64, not a version either
        assert info.value.kind is ErrorKind.NOT_FOUND

    run(models, body)


def test_an_unexpected_failure_in_process_is_counted_and_hooked(models: Path, monkeypatch: Any) -> None:
    import pyserve.service.inference as inference

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in classify")

    monkeypatch.setattr(inference, "classify", broken)

    async def body(service: InferenceService, errors: Counter) -> list[ErrorKind]:
        hooks = Errors()
        service.add_hooks(hooks)
        request = InferRequest(dict(X), outputs=[RequestedOutput("out_x", classification=2)])
        with pytest.raises(RuntimeError):
            await service.infer("echo", None, request)
        assert count(errors, "echo", "internal") == 1
        return hooks.kinds

    assert run(models, body) == [ErrorKind.INTERNAL]


def test_an_unexpected_failure_over_http_is_counted_and_hooked(models: Path, monkeypatch: Any,
                                                                caplog: Any) -> None:
    # The HTTP handler answered such failures 500 without counting them in
    # pyserve_infer_errors_total or calling on_error, unlike every other error it answers.
    import pyserve.service.inference as inference

    monkeypatch.setattr(inference, "classify", lambda *a, **k: 1 / 0)
    body_bytes = (b'{"inputs": [{"name": "in_x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],'
                  b' "outputs": [{"name": "out_x", "parameters": {"classification": 2}}]}')

    async def body(service: InferenceService, errors: Counter) -> list[ErrorKind]:
        hooks = Errors()
        service.add_hooks(hooks)
        app = SimpleNamespace(service=service)
        request = Request(app, "POST", "/v2/models/echo/infer", "", {}, body_bytes)
        request.match_info = {"model": "echo"}
        result = handlers.infer(request)
        assert type(result) is Deferred
        await asyncio.wait([result.future])
        response = result.finish(result.future)
        assert response.status == 500
        assert count(errors, "echo", "internal") == 1
        return hooks.kinds

    assert run(models, body) == [ErrorKind.INTERNAL]
    assert "ZeroDivisionError" in caplog.text  # the traceback is still logged


@pytest.mark.parametrize("k", [False, 0.0, "", [], {}, "0"])
def test_a_class_count_that_is_falsy_but_not_0_is_refused(models: Path, k: Any) -> None:
    # false, 0.0, "" ... were taken as "no classification" and answered the raw tensor.
    async def body(service: InferenceService, errors: Counter) -> None:
        request = InferRequest(dict(X), outputs=[RequestedOutput("out_x", classification=k)])
        with pytest.raises(PyserveError) as info:
            await service.infer("echo", None, request)
        assert info.value.kind is ErrorKind.INVALID_ARGUMENT
        assert "output 'out_x'" in info.value.message and "'classification'" in info.value.message
        # 0 (the integer) and an absent K still mean the tensor itself, as in Triton.
        for same in (0, None):
            out = await service.infer("echo", None, InferRequest(
                dict(X), outputs=[RequestedOutput("out_x", classification=same)]))
            assert out.outputs["out_x"].dtype == np.float32

    run(models, body)


def test_the_largest_timeout_does_not_time_out_at_once(models: Path) -> None:
    # The core added the timeout to its clock in an int64: near the documented maximum the sum
    # wrapped into the past and every request was answered 504 at once.
    async def body(service: InferenceService, errors: Counter) -> None:
        for timeout in (MAX_TIMEOUT_US, MAX_TIMEOUT_US - 10**6):
            out = await service.infer("wait", None, InferRequest({"x": np.ones((1, 1), np.float32)},
                                                                 parameters={"timeout": timeout}))
            np.testing.assert_array_equal(out.outputs["y"], np.ones((1, 1), np.float32))

    run(models, body)


@pytest.mark.parametrize("value", ["false", 0, 1, "true", [], None])
def test_binary_data_output_must_be_a_boolean(value: Any) -> None:
    # bool("false") is True: a string asked for binary outputs.
    import orjson

    doc = {"parameters": {"binary_data_output": value},
           "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    if value is None:  # null: absent
        assert kserve.decode_request(orjson.dumps(doc)).parameters == {"binary_data_output": None}
        return
    with pytest.raises(PyserveError) as info:
        kserve.decode_request(orjson.dumps(doc))
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "parameters.binary_data_output" in info.value.message


IDENTITY = {"backend": "identity", "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1]}],
            "outputs": [{"name": "b", "datatype": "FP32", "shape": [-1]}]}


@pytest.mark.parametrize("override, key, maximum", [
    ({"dynamic_batching": {"default_timeout_us": 18446744073709552}}, "dynamic_batching.default_timeout_us",
     MAX_TIMEOUT_US),
    ({"dynamic_batching": {"max_queue_delay_us": 9223372036854776}}, "dynamic_batching.max_queue_delay_us",
     MAX_TIMEOUT_US),
    ({"dynamic_batching": {"priority_levels": 2**31}}, "dynamic_batching.priority_levels", 1024),
    ({"instance_count": 2**32 + 1}, "instance_count", 1024),
    ({"max_batch_size": 2**63}, "max_batch_size", 2**63 - 1),
    ({"dynamic_batching": {"max_queue_size": 2**63}}, "dynamic_batching.max_queue_size", 2**63 - 1),
])
def test_config_integers_beyond_the_core_are_refused(tmp_path: Path, override: dict, key: str,
                                                     maximum: int) -> None:
    # They reached the core's SchedulerOptions: pybind11's "incompatible constructor arguments", or
    # µs * 1000 wrapped around in an int64 (18446744073709552 µs became a 384 ns default timeout).
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError) as info:
        load_model_config(tmp_path / "m", {**IDENTITY, **override}, "override")
    assert f"override: {key}: expected an integer from" in info.value.message
    assert f"to {maximum}, got" in info.value.message


def test_a_shape_dimension_beyond_int64_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    raw = {**IDENTITY, "inputs": [{"name": "a", "datatype": "FP32", "shape": [2**63]}]}
    with pytest.raises(ConfigError) as info:
        load_model_config(tmp_path / "m", raw, "override")
    assert "override: inputs[0].shape[0]: expected an integer >= 1 or -1" in info.value.message


def test_a_label_filename_with_a_nul_names_the_key(tmp_path: Path) -> None:
    # open() raises ValueError for it: the load failed as "embedded null byte", naming nothing.
    (tmp_path / "m").mkdir()
    raw = {**IDENTITY, "outputs": [{**IDENTITY["outputs"][0], "label_filename": "a\0b"}]}
    with pytest.raises(ConfigError) as info:
        load_model_config(tmp_path / "m", raw, "override")
    assert "override: outputs[0].label_filename: expected a file name without NUL" in info.value.message


TWO_VERSIONS = """
class Model:
    def __init__(self, version_dir):
        if version_dir.name == "2":
            raise RuntimeError("version 2 is broken")

    def infer(self, inputs):
        return {"y": inputs["x"]}

    def close(self):
        open(CLOSED, "a").write("closed\\n")
"""


def test_a_failed_load_stops_the_versions_it_had_started(tmp_path: Path) -> None:
    # Version 1 started, version 2 failed: version 1's runner was dropped without stop(), so its
    # model's close() never ran and its module stayed in sys.modules, once per failed load.
    repo = Repo(tmp_path / "models")
    closed = tmp_path / "closed"
    config = ONE_FP32 + "[version_policy]\nall = true\n"
    repo.python("two", f"CLOSED = {str(closed)!r}\n" + TWO_VERSIONS, config, versions=(1, 2))

    def modules() -> int:
        return sum(1 for m in sys.modules if m.startswith("pyserve_model_two_"))

    async def main() -> None:
        async with ModelHost(repo.root) as host:
            assert host.repository.index()[0]["state"] == "UNAVAILABLE"
            before = modules()
            for _ in range(3):
                with pytest.raises(PyserveError):
                    await host.repository.load("two")
            assert modules() == before == 0
            assert closed.read_text().count("closed") == 4  # startup's load and the three above

    asyncio.run(main())


def test_a_label_file_may_not_lead_out_of_the_model_folder(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n")
    (tmp_path / "m" / "labels.txt").symlink_to(secret)
    raw = {**IDENTITY, "outputs": [{**IDENTITY["outputs"][0], "label_filename": "labels.txt"}]}
    with pytest.raises(ConfigError) as info:
        load_model_config(tmp_path / "m", raw, "override")
    assert "outputs[0].label_filename" in info.value.message and "leads out of it" in info.value.message
    # A file of the folder, through a link inside it, is fine.
    (tmp_path / "m" / "real.txt").write_text("a\nb\n")
    (tmp_path / "m" / "link.txt").symlink_to(tmp_path / "m" / "real.txt")
    raw = {**IDENTITY, "outputs": [{**IDENTITY["outputs"][0], "label_filename": "link.txt"}]}
    assert load_model_config(tmp_path / "m", raw, "override").outputs[0].labels == ("a", "b")


@pytest.mark.parametrize("key, value", [("instance_count", 1025), ("dynamic_batching.priority_levels", 1025)])
def test_a_config_cannot_ask_for_a_million_threads_or_queues(tmp_path: Path, key: str, value: int) -> None:
    (tmp_path / "m").mkdir()
    table, _, leaf = key.rpartition(".")
    raw: dict = {**IDENTITY, **({table: {leaf: value}} if table else {leaf: value})}
    with pytest.raises(ConfigError) as info:
        load_model_config(tmp_path / "m", raw, "override")
    assert f"override: {key}: expected an integer from 1 to 1024, got {value}" in info.value.message


def test_stats_of_an_unloaded_model_are_unavailable(models: Path) -> None:
    async def body(service: InferenceService, errors: Counter) -> None:
        await service.host.repository.unload("echo")
        for version in (None, "1"):
            with pytest.raises(PyserveError) as info:
                service.statistics("echo", version)
            assert info.value.kind is ErrorKind.UNAVAILABLE
        assert [s.name for s in service.statistics()] == ["wait"]

    run(models, body)
