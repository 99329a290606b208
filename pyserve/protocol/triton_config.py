"""Triton's model configuration extension: the JSON of ``GET /v2/models/{m}[/versions/{v}]/config``.

tritonclient's ``InferenceServerClient.get_model_config`` (tritonclient.http) fetches it and hands
back the parsed JSON as is; tools built on it (perf_analyzer, model_analyzer) read ``max_batch_size``,
``input``/``output`` and ``dynamic_batching`` from it.

The schema is the ``ModelConfig`` message of Triton's ``model_config.proto``
(triton-inference-server/common ``protobuf/model_config.proto``; the meaning of each field in
Triton server ``docs/user_guide/model_configuration.md``). Triton prints it as core
``src/model_config_utils.cc`` ``ModelConfigToJson`` does: protobuf's JSON mapping with
``preserve_proto_field_names`` (snake_case names) and ``always_print_primitive_fields`` (scalars and
repeated fields at their defaults are printed too; unset sub-messages are not), after which the
64-bit integer fields that protobuf would print as strings (``dims``, ``version_policy.specific.
versions``, ``max_queue_delay_microseconds``, ``default_timeout_microseconds``) are rewritten as JSON
numbers. This module does the same: every integer is a JSON number.

Only what pyserve has is printed: no ``optimization``, ``sequence_batching``, ``ensemble_scheduling``
(pyserve has none of them; Triton omits unset messages too). ``dispatch_when_idle`` has no field in
Triton's schema and is left out (``?format=pyserve`` shows it).
"""

from __future__ import annotations

from typing import Any

from pyserve.config import DynamicBatching, ModelConfig, TensorSpec, VersionPolicy

__all__ = ["data_type", "model_config_document"]

# KServe datatype -> Triton's DataType enum name (model_config.proto ``enum DataType``).
_DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}


def data_type(datatype: str) -> str:
    """Triton's ``DataType`` name (``TYPE_FP32``) of a KServe datatype (``FP32``); ``BYTES`` is
    ``TYPE_STRING``, as in Triton's ``model_config.h``."""
    return _DATA_TYPES.get(datatype, "TYPE_INVALID")


def _input(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "data_type": data_type(spec.datatype),
        "format": "FORMAT_NONE",
        "dims": list(spec.shape),
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": spec.optional,  # Triton: a request may leave the input out
        "is_non_linear_format_io": False,
    }


def _output(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "data_type": data_type(spec.datatype),
        "dims": list(spec.shape),
        "label_filename": spec.label_filename,
        "is_shape_tensor": False,
        "is_non_linear_format_io": False,
    }


def _version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if policy.kind == "all":
        return {"all": {}}
    if policy.kind == "specific":
        return {"specific": {"versions": list(policy.versions)}}
    return {"latest": {"num_versions": policy.latest}}


def _dynamic_batching(db: DynamicBatching) -> dict[str, Any]:
    # pyserve's queue: a request waits at most default_timeout_us (0: no limit), may set its own
    # ``timeout`` parameter (allow_timeout_override) and is rejected when it times out.
    return {
        "preferred_batch_size": list(db.preferred_batch_sizes),
        "max_queue_delay_microseconds": db.max_queue_delay_us,
        "preserve_ordering": False,
        "priority_levels": db.priority_levels,
        "default_priority_level": db.default_priority_level,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": db.default_timeout_us,
            "allow_timeout_override": True,
            "max_queue_size": db.max_queue_size,
        },
        "priority_queue_policy": {},
    }


def model_config_document(config: ModelConfig, platform: str) -> dict[str, Any]:
    """The Triton model configuration (the JSON form of ``model_config.proto`` ``ModelConfig``, as
    Triton's ``ModelConfigToJson`` prints it) of a pyserve model config.

    ``platform`` is the backend's Triton platform name (``onnxruntime_onnx``), from the backend
    registry. ``dims`` exclude the batch dimension when ``max_batch_size > 0``, as pyserve's config
    shapes already do. ``dynamic_batching`` is printed when the model batches or its queue settings
    differ from the defaults; one ``instance_group`` of ``KIND_CPU`` with the instance count."""
    doc: dict[str, Any] = {
        "name": config.name,
        "platform": platform,
        "backend": config.backend,
        "runtime": "",
        "version_policy": _version_policy(config.version_policy),
        "max_batch_size": config.max_batch_size,
        "input": [_input(t) for t in config.inputs],
        "output": [_output(t) for t in config.outputs],
        "batch_input": [],
        "batch_output": [],
    }
    if config.max_batch_size > 0 or config.dynamic_batching != DynamicBatching():
        doc["dynamic_batching"] = _dynamic_batching(config.dynamic_batching)
    doc["instance_group"] = [{
        "name": config.name,
        "kind": "KIND_CPU",
        "count": config.instance_count,
        "gpus": [],
        "secondary_devices": [],
        "profile": [],
        "passive": False,
        "host_policy": "",
    }]
    doc["default_model_filename"] = config.model_filename
    doc["cc_model_filenames"] = {}
    doc["metric_tags"] = {}
    doc["parameters"] = {}
    doc["model_warmup"] = []
    return doc
