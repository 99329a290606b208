"""HTTP handlers: each one decodes, calls the repository or a model runner, encodes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import orjson

import pyserve
from pyserve.errors import PyserveError, invalid, not_found
from pyserve.protocol import InferRequest, InferResponse
from pyserve.protocol import kserve, msgpack_codec
from pyserve.repository import ModelRepository
from pyserve.server import metrics
from pyserve.server.errors import async_endpoint, endpoint, error_response, unexpected
from pyserve.server.messages import Deferred, Request, Response
from pyserve.server.router import Router

log = logging.getLogger("pyserve.server")

JSON = "application/json"
MSGPACK = "application/msgpack"
SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json"
EXTENSIONS = ("binary_tensor_data", "model_repository", "msgpack")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "python": "python", "identity": "identity", "tensorrt": "tensorrt_plan"}


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status)


def _repo(request: Request) -> ModelRepository:
    return request.app.repository


# -- health and metadata ----------------------------------------------------------------------
@endpoint
def live(request: Request) -> Response:
    return _json({"live": True})


@endpoint
def ready(request: Request) -> Response:
    repo = _repo(request)
    ok = repo.all_ready() if request.app.settings.strict_readiness else repo.startup_done
    return _json({"ready": ok}, 200 if ok else 503)


@endpoint
def server_metadata(request: Request) -> Response:
    return _json(kserve.server_metadata("pyserve", pyserve.__version__, EXTENSIONS))


def _tensor_docs(specs: Any, batch_dim: bool = False) -> list[dict]:
    """Tensors as metadata; ``batch_dim`` prepends the -1 batch dimension, as Triton reports it."""
    lead = [-1] if batch_dim else []
    return [{"name": t.name, "datatype": t.datatype, "shape": [*lead, *t.shape]} for t in specs]


def _fields(obj: Any) -> dict:
    """The fields of a config dataclass as a JSON-ready dict."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


@endpoint
def model_metadata(request: Request) -> Response:
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
def model_ready(request: Request) -> Response:
    name, version = request.match_info["model"], request.match_info.get("version")
    entry = _repo(request).entry(name)  # unknown model: 404
    entry.runner(version)  # unknown version: 404; not ready: 503 with the reason
    return _json({"name": name, "ready": True})


@endpoint
def model_config(request: Request) -> Response:
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
def model_stats(request: Request) -> Response:
    name, version = request.match_info["model"], request.match_info.get("version")
    entry = _repo(request).entry(name)
    runners = [entry.runner(version)] if version is not None else [r for _, r in sorted(entry.versions.items())]
    rows = [{"name": name, "version": r.version, **r.stats()} for r in runners]
    return _json({"model_stats": rows})


# -- inference --------------------------------------------------------------------------------
def _int_parameter(params: dict, key: str) -> int:
    value = params.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"parameters.{key}: expected a non-negative integer, got {value!r}")
    return value


def infer(request: Request) -> Response | Deferred:
    """Decodes, queues in the core, and answers once the model has run (a Deferred until then)."""
    name = request.match_info["model"]
    try:
        req, runner, is_msgpack = _decode_infer(request, name)
        request.body = b""  # what is needed is decoded: the rest may go while the model runs
        params = req.parameters
        priority = _int_parameter(params, "priority") if params else 0
        timeout_us = _int_parameter(params, "timeout") if params else 0
        future = runner.submit(req.inputs, priority=priority, timeout_us=timeout_us)
    except PyserveError as e:
        return _infer_error(request, name, e)
    except Exception:
        return unexpected(request)

    def finish(done: asyncio.Future) -> Response:
        try:
            return _encode_infer(req, InferResponse(name, runner.version, done.result(), req.id, None), is_msgpack)
        except PyserveError as e:
            return _infer_error(request, name, e)
        except Exception:
            return unexpected(request)

    return Deferred(future, finish)


def _decode_infer(request: Request, name: str) -> tuple[InferRequest, Any, bool]:
    runner = _repo(request).runner(name, request.match_info.get("version"))  # 404 / 503 first
    content_type = request.content_type
    is_msgpack = content_type == MSGPACK
    if is_msgpack:
        req: InferRequest = msgpack_codec.decode_request(request.body)
    else:
        header_length = request.headers.get("inference-header-content-length")
        if header_length is None and content_type == SAGEMAKER_BINARY:
            # Triton's form for clients that cannot set headers: the length rides in the content type.
            header_length = request.content_type_param("json-header-size")
        req = kserve.decode_request(request.body, header_length)
    if req.outputs is not None:
        declared = runner.output_names
        for r in req.outputs:
            if r.name not in declared:
                raise invalid(
                    f"requested output '{r.name}' is not an output of model '{name}' "
                    f"(outputs: {', '.join(sorted(declared))})"
                )
    return req, runner, is_msgpack


def _encode_infer(req: InferRequest, resp: InferResponse, is_msgpack: bool) -> Response:
    if is_msgpack:
        return Response(msgpack_codec.encode_response(resp, req.outputs), content_type=MSGPACK)
    params = req.parameters
    binary_default = bool(params.get("binary_data_output", False)) if params else False
    out, header_length = kserve.encode_response(resp, req.outputs, binary_default)
    if header_length is None:
        return Response(out)
    return Response(out, content_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


def _infer_error(request: Request, name: str, e: PyserveError) -> Response:
    _count_infer_error(request.app, name, e.kind.http_status)
    return error_response(e.kind, e.message)


def _count_infer_error(app: Any, name: str, status: int) -> None:
    known = name in app.repository.models  # unknown names would grow the label set without bound
    app.infer_errors.labels(name if known else "", str(status)).inc()


def count_refused(app: Any, router: Router, method: str, path: str, status: int) -> None:
    """Counts an infer request the transport refused before its handler ran (413, 431, ...)."""
    handler, captures, _ = router.resolve(method, path)
    if handler is infer:
        _count_infer_error(app, captures["model"], status)


# -- model control and metrics ----------------------------------------------------------------
@endpoint
def repository_index(request: Request) -> Response:
    rows = _repo(request).index()
    body = request.body
    if request.method == "POST" and body:
        try:
            doc = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as e:
            raise invalid(f"repository index request: body is not JSON: {e}") from None
        if isinstance(doc, dict) and doc.get("ready") is True:
            rows = [r for r in rows if r["state"] == "READY"]
    return _json(rows)


def _control_allowed(request: Request) -> None:
    if not request.app.settings.model_control:
        raise not_found("model control is disabled on this server (start it without --disable-model-control)")


@async_endpoint
async def load_model(request: Request) -> Response:
    _control_allowed(request)
    name = request.match_info["model"]
    try:
        # Shielded: a client that hangs up must not leave a model half loaded.
        await asyncio.shield(_repo(request).load(name))
    except PyserveError as e:
        log.error("load of model %s refused: %s", name, e.message)
        raise
    return _json({})


@async_endpoint
async def unload_model(request: Request) -> Response:
    _control_allowed(request)
    await asyncio.shield(_repo(request).unload(request.match_info["model"]))
    return _json({})


@endpoint
def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(request.app.registry), content_type=metrics.CONTENT_TYPE)


def make_router() -> Router:
    """The URL table: KServe v2 paths as Triton and KServe serve them."""
    r = Router()
    r.add("POST", "/v2/models/{model}/infer", infer)
    r.add("POST", "/v2/models/{model}/versions/{version}/infer", infer)
    r.add("GET", "/v2/health/live", live)
    r.add("GET", "/v2/health/ready", ready)
    r.add("GET", "/v2", server_metadata)
    r.add("GET", "/metrics", metrics_endpoint)
    r.add("GET", "/v2/repository/index", repository_index)
    r.add("POST", "/v2/repository/index", repository_index)
    r.add("POST", "/v2/repository/models/{model}/load", load_model)
    r.add("POST", "/v2/repository/models/{model}/unload", unload_model)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add("GET", prefix, model_metadata)
        r.add("GET", prefix + "/ready", model_ready)
        r.add("GET", prefix + "/config", model_config)
        r.add("GET", prefix + "/stats", model_stats)
    return r
