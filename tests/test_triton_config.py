"""Triton's model configuration schema on ``GET /v2/models/{m}[/versions/{v}]/config``, as stock
tritonclient code reads it (``InferenceServerClient.get_model_config``), over a real server: an ONNX
model with batching, one without, a Python model and an identity model. Each document is checked
against Triton's ``ModelConfig`` protobuf: with the generated classes tritonclient ships
(``tritonclient/grpc/model_config_pb2.py``, loaded from its file so that the grpc extra is not
needed) when protobuf can load them, and always against the field names of ``model_config.proto``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Repo, toml_tensors

pytest.importorskip("onnx")
httpclient = pytest.importorskip("tritonclient.http")

ECHO_MODEL = """
class Model:
    def infer(self, inputs):
        return {"y": inputs["x"]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serve_module):  # type: ignore[no-untyped-def]
    repo = Repo(tmp_path_factory.mktemp("tconfig") / "models")
    batched = repo.onnx("batched", {1: 1.0, 2: 2.0}, config="""\
        max_batch_size = 8
        instance_count = 2

        [dynamic_batching]
        preferred_batch_sizes = [4, 8]
        max_queue_delay_us = 500
        max_queue_size = 16
        default_timeout_us = 20000
        priority_levels = 3
        default_priority_level = 2

        [version_policy]
        specific = [1, 2]

        [[outputs]]
        name = "y"
        datatype = "FP32"
        shape = [4]
        label_filename = "labels.txt"

        [[outputs]]
        name = "argmax"
        datatype = "INT64"
        shape = []
        """)
    (batched / "labels.txt").write_text("a\nb\nc\nd\n")
    repo.onnx("nobatch", {1: 1.0}, config="max_batch_size = 0\n")  # explicit 0: no batching, full shapes
    repo.onnx("auto", {1: 1.0})  # no config.toml: a dynamic first dimension everywhere, so batching
    tensors = toml_tensors("inputs", [("x", "FP32", [-1])]) + toml_tensors("outputs", [("y", "FP32", [-1])])
    repo.python("pymodel", ECHO_MODEL,
                'backend = "python"\nmax_batch_size = 4\n[version_policy]\nall = true\n' + tensors)
    repo.identity("ident", [("a", "BYTES", [2]), ("b", "BOOL", [-1, 3])])
    return serve_module([str(repo.root)])


def get_config(server: Any, model: str, version: str = "") -> dict:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        return client.get_model_config(model, version)
    finally:
        client.close()


# -- the proto -----------------------------------------------------------------------------------
# The fields of model_config.proto (triton-inference-server/common) for the messages pyserve prints.
PROTO_FIELDS = {
    "ModelConfig": {"name", "platform", "backend", "runtime", "version_policy", "max_batch_size",
                    "input", "output", "batch_input", "batch_output", "optimization", "dynamic_batching",
                    "sequence_batching", "ensemble_scheduling", "instance_group",
                    "default_model_filename", "cc_model_filenames", "metric_tags", "parameters",
                    "model_warmup", "model_operations", "model_transaction_policy",
                    "model_repository_agents", "response_cache", "model_metrics"},
    "ModelInput": {"name", "data_type", "format", "dims", "reshape", "is_shape_tensor",
                   "allow_ragged_batch", "optional", "is_non_linear_format_io"},
    "ModelOutput": {"name", "data_type", "dims", "reshape", "label_filename", "is_shape_tensor",
                    "is_non_linear_format_io"},
    "ModelDynamicBatching": {"preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering",
                             "priority_levels", "default_priority_level", "default_queue_policy",
                             "priority_queue_policy"},
    "ModelQueuePolicy": {"timeout_action", "default_timeout_microseconds", "allow_timeout_override",
                         "max_queue_size"},
    "ModelInstanceGroup": {"name", "kind", "count", "rate_limiter", "gpus", "secondary_devices", "profile",
                           "passive", "host_policy"},
    "ModelVersionPolicy": {"latest", "all", "specific"},
}
DATA_TYPES = {"TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
              "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64",
              "TYPE_STRING", "TYPE_BF16"}


def check_by_hand(doc: dict) -> None:
    """The field names of ``doc`` are those of model_config.proto, integers are JSON numbers (as
    Triton's ModelConfigToJson prints even the 64-bit ones) and enums are names."""
    assert set(doc) <= PROTO_FIELDS["ModelConfig"], set(doc) - PROTO_FIELDS["ModelConfig"]
    messages = (("input", "ModelInput"), ("output", "ModelOutput"), ("instance_group", "ModelInstanceGroup"))
    for key, message in messages:
        for item in doc[key]:
            assert set(item) <= PROTO_FIELDS[message], (key, set(item) - PROTO_FIELDS[message])
    for item in doc["input"] + doc["output"]:
        assert item["data_type"] in DATA_TYPES
        assert all(type(d) is int for d in item["dims"]), item
    assert set(doc["version_policy"]) <= PROTO_FIELDS["ModelVersionPolicy"]
    assert len(doc["version_policy"]) == 1
    if "dynamic_batching" in doc:
        db = doc["dynamic_batching"]
        assert set(db) <= PROTO_FIELDS["ModelDynamicBatching"], set(db)
        assert set(db["default_queue_policy"]) <= PROTO_FIELDS["ModelQueuePolicy"]
        assert type(db["max_queue_delay_microseconds"]) is int
        assert type(db["default_queue_policy"]["default_timeout_microseconds"]) is int


def _model_config_pb2() -> Any:
    """tritonclient's generated ``model_config_pb2`` (loaded from its file: importing it as
    ``tritonclient.grpc.model_config_pb2`` needs the grpc extra); None when it cannot load."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.exists():
        return None
    try:
        module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception:  # protobuf missing or of another major version than the generated code
        return None
    return module


PB2 = _model_config_pb2()


def check(doc: dict) -> None:
    """``doc`` is a valid ModelConfig: by hand, and with protobuf when it loads (unknown fields or
    wrong types are an error there)."""
    check_by_hand(doc)
    if PB2 is not None:
        from google.protobuf import json_format

        message = json_format.ParseDict(doc, PB2.ModelConfig(), ignore_unknown_fields=False)
        assert message.name == doc["name"]


# -- tests ------------------------------------------------------------------------------------------
def test_onnx_model_with_batching(server) -> None:  # type: ignore[no-untyped-def]
    doc = get_config(server, "batched")
    check(doc)
    assert (doc["name"], doc["platform"], doc["backend"]) == ("batched", "onnxruntime_onnx", "onnxruntime")
    assert doc["max_batch_size"] == 8
    # dims exclude the batch dimension when max_batch_size > 0
    assert doc["input"] == [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [4],
                             "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False,
                             "is_non_linear_format_io": False}]
    assert [(o["name"], o["data_type"], o["dims"], o["label_filename"]) for o in doc["output"]] == [
        ("y", "TYPE_FP32", [4], "labels.txt"), ("argmax", "TYPE_INT64", [], "")]
    db = doc["dynamic_batching"]
    assert db["preferred_batch_size"] == [4, 8] and db["max_queue_delay_microseconds"] == 500
    assert db["priority_levels"] == 3 and db["default_priority_level"] == 2
    assert db["default_queue_policy"] == {"timeout_action": "REJECT", "default_timeout_microseconds": 20000,
                                          "allow_timeout_override": True, "max_queue_size": 16}
    assert doc["instance_group"][0]["kind"] == "KIND_CPU" and doc["instance_group"][0]["count"] == 2
    assert doc["version_policy"] == {"specific": {"versions": [1, 2]}}
    assert doc["default_model_filename"] == "model.onnx"
    # A version's config is the same document.
    assert get_config(server, "batched", "1") == doc


def test_onnx_model_without_batching(server) -> None:  # type: ignore[no-untyped-def]
    doc = get_config(server, "nobatch")
    check(doc)
    assert doc["max_batch_size"] == 0
    assert [(t["name"], t["data_type"], t["dims"]) for t in doc["input"]] == [("x", "TYPE_FP32", [-1, 4])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in doc["output"]] == [
        ("y", "TYPE_FP32", [-1, 4]), ("argmax", "TYPE_INT64", [-1])]
    assert "dynamic_batching" not in doc  # neither batching nor queue settings: Triton omits it too
    assert doc["version_policy"] == {"latest": {"num_versions": 1}}
    assert doc["instance_group"][0]["count"] == 1


def test_onnx_model_without_config_batches(server) -> None:  # type: ignore[no-untyped-def]
    doc = get_config(server, "auto")
    check(doc)
    assert doc["max_batch_size"] == 32  # pyserve's default maximum (--default-max-batch-size)
    assert [(t["name"], t["dims"]) for t in doc["input"]] == [("x", [4])]
    assert [(t["name"], t["dims"]) for t in doc["output"]] == [("y", [4]), ("argmax", [])]
    # Triton's auto-complete adds dynamic_batching with its defaults, and so does pyserve.
    assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert doc["dynamic_batching"]["preferred_batch_size"] == []
    own = requests.get(server.url + "/v2/models/auto/config?format=pyserve", timeout=10).json()
    assert own["max_batch_size"] == 32 and own["auto_completed"] == ["inputs", "outputs", "max_batch_size"]
    none = requests.get(server.url + "/v2/models/nobatch/config?format=pyserve", timeout=10).json()
    assert none["max_batch_size"] == 0 and none["auto_completed"] == ["inputs", "outputs"]
    # Shapes in metadata keep the Triton convention: the batch dimension as -1 in front.
    meta = requests.get(server.url + "/v2/models/auto", timeout=10).json()
    assert [t["shape"] for t in meta["inputs"]] == [[-1, 4]]
    assert [t["shape"] for t in meta["outputs"]] == [[-1, 4], [-1]]


def test_python_model(server) -> None:  # type: ignore[no-untyped-def]
    doc = get_config(server, "pymodel")
    check(doc)
    assert (doc["platform"], doc["backend"], doc["max_batch_size"]) == ("python", "python", 4)
    assert doc["input"][0]["dims"] == [-1] and doc["output"][0]["name"] == "y"
    assert doc["dynamic_batching"]["preferred_batch_size"] == []
    assert doc["version_policy"] == {"all": {}}
    assert doc["default_model_filename"] == "model.py"


def test_identity_model(server) -> None:  # type: ignore[no-untyped-def]
    doc = get_config(server, "ident")
    check(doc)
    assert (doc["platform"], doc["backend"]) == ("identity", "identity")
    assert [(t["name"], t["data_type"], t["dims"]) for t in doc["input"]] == [
        ("in_a", "TYPE_STRING", [2]), ("in_b", "TYPE_BOOL", [-1, 3])]
    assert [t["name"] for t in doc["output"]] == ["out_a", "out_b"]


def test_pyserve_form_and_bad_format(server) -> None:  # type: ignore[no-untyped-def]
    own = requests.get(server.url + "/v2/models/batched/config?format=pyserve", timeout=10).json()
    assert own["dynamic_batching"]["max_queue_delay_us"] == 500 and own["instance_count"] == 2
    assert own["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [4]}
    assert own["auto_completed"] == ["inputs"]  # the config gives max_batch_size and the outputs
    explicit = requests.get(server.url + "/v2/models/batched/config?format=triton", timeout=10).json()
    assert explicit == get_config(server, "batched")
    resp = requests.get(server.url + "/v2/models/batched/config?format=yaml", timeout=10)
    assert resp.status_code == 400 and "format" in resp.json()["error"]
    assert requests.get(server.url + "/v2/models/nope/config", timeout=10).status_code == 404


def test_the_proto_check_refuses_an_unknown_field() -> None:
    """The validation can fail: a pyserve-only key is not a ModelConfig field."""
    from pyserve.config import ModelConfig, TensorSpec
    from pyserve.protocol.triton_config import model_config_document

    doc = model_config_document(ModelConfig("m", "identity", (TensorSpec("x", "FP32", (1,)),),
                                            (TensorSpec("y", "FP32", (1,)),)), "identity")
    check(doc)
    doc["dynamic_batching"] = {"dispatch_when_idle": True}
    with pytest.raises(AssertionError):
        check_by_hand(doc)
    if PB2 is not None:
        from google.protobuf import json_format

        with pytest.raises(json_format.ParseError):
            json_format.ParseDict(doc, PB2.ModelConfig(), ignore_unknown_fields=False)
