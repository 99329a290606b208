"""HTTP handlers: each one decodes, calls the repository or a model runner, encodes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import orjson
from aiohttp import web

import pyserve
from pyserve.errors import ErrorKind, PyserveError, invalid, not_found
from pyserve.protocol import InferRequest, InferResponse
from pyserve.protocol import kserve, msgpack_codec
from pyserve.repository import ModelRepository
from pyserve.server import metrics
from pyserve.server.errors import endpoint
from pyserve.server.state import INFER_ERRORS, REGISTRY, REPOSITORY, SETTINGS

log = logging.getLogger("pyserve.server")

JSON = "application/json"
MSGPACK = "application/msgpack"
SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json"
EXTENSIONS = ("binary_tensor_data", "model_repository", "msgpack")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "python": "python", "identity": "identity", "tensorrt": "tensorrt_plan"}


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type=JSON)


def _repo(request: web.Request) -> ModelRepository:
    return request.app[REPOSITORY]


# -- health and metadata ----------------------------------------------------------------------
@endpoint
async def live(request: web.Request) -> web.Response:
    return _json({"live": True})


@endpoint
async def ready(request: web.Request) -> web.Response:
    repo = _repo(request)
    ok = repo.all_ready() if request.app[SETTINGS].strict_readiness else repo.startup_done
    return _json({"ready": ok}, 200 if ok else 503)


@endpoint
async def server_metadata(request: web.Request) -> web.Response:
    return _json(kserve.server_metadata("pyserve", pyserve.__version__, EXTENSIONS))


def _tensor_docs(specs: Any, batch_dim: bool = False) -> list[dict]:
    """Tensors as metadata; ``batch_dim`` prepends the -1 batch dimension, as Triton reports it."""
    lead = [-1] if batch_dim else []
    return [{"name": t.name, "datatype": t.datatype, "shape": [*lead, *t.shape]} for t in specs]


def _fields(obj: Any) -> dict:
    """The fields of a config dataclass as a JSON-ready dict."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


@endpoint
async def model_metadata(request: web.Request) -> web.Response:
    name, version = request.match_info["model"], request.match_info.get("version")
    entry = _repo(request).entry(name)
    runner = entry.runner(version)
    config = runner.config
    batching = config.max_batch_size > 0
    versions = [str(v) for v in sorted(entry.versions)] if version is None else [runner.version]
    doc = kserve.model_metadata(
        name, versions, PLATFORMS.get(config.backend, config.backend),
        _tensor_docs(config.inputs, batching), _tensor_docs(config.outputs, batching),
    )
    return _json(doc)


@endpoint
async def model_ready(request: web.Request) -> web.Response:
    name, version = request.match_info["model"], request.match_info.get("version")
    entry = _repo(request).entry(name)  # unknown model: 404
    entry.runner(version)  # unknown version: 404; not ready: 503 with the reason
    return _json({"name": name, "ready": True})


@endpoint
async def model_config(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    config = _repo(request).runner(name, request.match_info.get("version")).config
    doc = {
        "name": config.name,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "instance_count": config.instance_count,
        "inputs": _tensor_docs(config.inputs),
        "outputs": _tensor_docs(config.outputs),
        "dynamic_batching": _fields(config.dynamic_batching),
        "version_policy": _fields(config.version_policy),
    }
    return _json(doc)


@endpoint
async def model_stats(request: web.Request) -> web.Response:
    name, version = request.match_info["model"], request.match_info.get("version")
    entry = _repo(request).entry(name)
    runners = [entry.runner(version)] if version is not None else [r for _, r in sorted(entry.versions.items())]
    rows = [{"name": name, "version": r.version, **r.stats()} for r in runners]
    return _json({"model_stats": rows})


# -- inference --------------------------------------------------------------------------------
def _content_type_param(request: web.Request, key: str) -> str | None:
    for part in request.headers.get("Content-Type", "").split(";")[1:]:
        name, _, value = part.partition("=")
        if name.strip().lower() == key:
            return value.strip()
    return None


def _int_parameter(params: dict, key: str) -> int:
    value = params.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"parameters.{key}: expected a non-negative integer, got {value!r}")
    return value


@endpoint
async def infer(request: web.Request) -> web.Response:
    try:
        return await _infer(request)
    except PyserveError as e:
        name = request.match_info["model"]
        known = name in _repo(request).models  # unknown names would grow the label set without bound
        request.app[INFER_ERRORS].labels(name if known else "", str(e.kind.http_status)).inc()
        raise


async def _infer(request: web.Request) -> web.Response:
    name, version = request.match_info["model"], request.match_info.get("version")
    # Unknown or unready models are refused before the body is read...
    _repo(request).runner(name, version)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise PyserveError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body too large: {e.text}") from None
    is_msgpack = request.content_type == MSGPACK
    if is_msgpack:
        req: InferRequest = msgpack_codec.decode_request(body)
    else:
        header_length = request.headers.get("Inference-Header-Content-Length")
        if header_length is None and request.content_type == SAGEMAKER_BINARY:
            # Triton's form for clients that cannot set headers: the length rides in the content type.
            header_length = _content_type_param(request, "json-header-size")
        req = kserve.decode_request(body, header_length)
    # ...and looked up again after the last await before submit: a load that swapped versions while
    # the body was read has begun draining the old runner, which would refuse the request (503).
    runner = _repo(request).runner(name, version)
    if req.outputs is not None:
        declared = {o.name for o in runner.config.outputs}
        for r in req.outputs:
            if r.name not in declared:
                raise invalid(
                    f"requested output '{r.name}' is not an output of model '{name}' "
                    f"(outputs: {', '.join(sorted(declared))})"
                )
    params = req.parameters
    priority = _int_parameter(params, "priority") if params else 0
    timeout_us = _int_parameter(params, "timeout") if params else 0
    outputs = await runner.submit(req.inputs, priority=priority, timeout_us=timeout_us)
    resp = InferResponse(name, runner.version, outputs, req.id, None)
    if is_msgpack:
        return web.Response(body=msgpack_codec.encode_response(resp, req.outputs), content_type=MSGPACK)
    binary_default = bool(params.get("binary_data_output", False)) if params else False
    out, header_length = kserve.encode_response(resp, req.outputs, binary_default)
    if header_length is None:
        return web.Response(body=out, content_type=JSON)
    return web.Response(
        body=out,
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


# -- model control and metrics ----------------------------------------------------------------
@endpoint
async def repository_index(request: web.Request) -> web.Response:
    rows = _repo(request).index()
    if request.method == "POST" and request.can_read_body:
        body = await request.read()
        try:
            doc = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as e:
            raise invalid(f"repository index request: body is not JSON: {e}") from None
        if isinstance(doc, dict) and doc.get("ready") is True:
            rows = [r for r in rows if r["state"] == "READY"]
    return _json(rows)


def _control_allowed(request: web.Request) -> None:
    if not request.app[SETTINGS].model_control:
        raise not_found("model control is disabled on this server (start it without --disable-model-control)")


@endpoint
async def load_model(request: web.Request) -> web.Response:
    _control_allowed(request)
    name = request.match_info["model"]
    try:
        # Shielded: a client that hangs up must not leave a model half loaded.
        await asyncio.shield(_repo(request).load(name))
    except PyserveError as e:
        log.error("load of model %s refused: %s", name, e.message)
        raise
    return _json({})


@endpoint
async def unload_model(request: web.Request) -> web.Response:
    _control_allowed(request)
    await asyncio.shield(_repo(request).unload(request.match_info["model"]))
    return _json({})


@endpoint
async def metrics_endpoint(request: web.Request) -> web.Response:
    body = metrics.render(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    """The URL table: KServe v2 paths as Triton and KServe serve them."""
    r = app.router
    # Infer first: the router tries routes in order, and infer is the hot path.
    r.add_post("/v2/models/{model}/infer", infer)
    r.add_post("/v2/models/{model}/versions/{version}/infer", infer)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    r.add_get("/v2", server_metadata)
    r.add_get("/metrics", metrics_endpoint)
    r.add_route("*", "/v2/repository/index", repository_index)
    r.add_post("/v2/repository/models/{model}/load", load_model)
    r.add_post("/v2/repository/models/{model}/unload", unload_model)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(prefix, model_metadata)
        r.add_get(prefix + "/ready", model_ready)
        r.add_get(prefix + "/config", model_config)
        r.add_get(prefix + "/stats", model_stats)
