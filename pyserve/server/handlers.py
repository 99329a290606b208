"""HTTP handlers: each one decodes, calls the service layer (inference, model control), encodes.

What a request means (model lookup, parameters, outputs, errors) is the service's business
(:mod:`pyserve.service`); what is here is HTTP: paths, headers, bodies and statuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

import pyserve
from pyserve import metrics
from pyserve.errors import PyserveError, internal, invalid, not_found, unavailable
from pyserve.protocol import InferRequest, InputCheck, kserve, msgpack_codec, triton_config, triton_stats
from pyserve.protocol.http_status import kind_of_status
from pyserve.security import AccessControl, AccessSettings, ManagementAudit, Scope
from pyserve.server import dashboard
from pyserve.server.errors import async_endpoint, endpoint, error_response, unexpected
from pyserve.server.guard import audited_control, audited_read, guarded
from pyserve.server.messages import INTERNAL_ERROR, Deferred, Handler, Request, Response
from pyserve.server.router import Router
from pyserve.service import CallContext, InferenceService
from pyserve.workers import routes as workers
from pyserve.workers.channel import Siblings

log = logging.getLogger("pyserve.server")

MSGPACK = "application/msgpack"
SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json"
# Triton's extension names (GET /v2 lists them), and pyserve's own msgpack protocol.
EXTENSIONS = ("classification", "binary_tensor_data", "model_repository", "model_configuration", "parameters",
              "statistics", "msgpack")


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status)


def _service(request: Request) -> InferenceService:
    return request.app.service


# -- health and metadata ----------------------------------------------------------------------
@endpoint
def live(request: Request) -> Response:
    return _json({"live": True})


@endpoint
def ready(request: Request) -> Response:
    ok = request.app.ready()
    return _json({"ready": ok}, 200 if ok else 503)


@endpoint
def server_metadata(request: Request) -> Response:
    return _json(kserve.server_metadata("pyserve", pyserve.__version__, EXTENSIONS))


def _tensor_docs(specs: Any) -> list[dict]:
    """Tensors of a model config as JSON; ``"optional": true`` on an input a request may leave out."""
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
             **({"optional": True} if t.optional else {})} for t in specs]


def _fields(obj: Any) -> dict:
    """The fields of a config dataclass as a JSON-ready dict."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


@endpoint
def model_metadata(request: Request) -> Response:
    meta = _service(request).metadata(request.match_info["model"], request.match_info.get("version"))
    doc = kserve.model_metadata(meta.name, list(meta.versions), meta.platform, meta.inputs, meta.outputs)
    if meta.aliases:
        doc["aliases"] = meta.aliases  # pyserve's: KServe's metadata has no aliases
    if meta.parameters:
        doc["parameters"] = meta.parameters  # KServe v2's model metadata extension field
    return _json(doc)


@endpoint
def model_ready(request: Request) -> Response:
    name = request.match_info["model"]
    if request.app.draining:
        raise unavailable("the server is shutting down (draining)")
    if request.app.converging:  # a --workers worker replaying the control journal (pyserve.workers.journal)
        raise unavailable("this worker is applying the model control done since the server started")
    _service(request).ready(name, request.match_info.get("version"))  # 404 unknown; 503 not ready
    return _json({"name": name, "ready": True})


def _format(request: Request) -> str:
    """The ``format`` query parameter of /config and /stats: ``triton`` (the default) or ``pyserve``;
    anything else is INVALID (400)."""
    fmt = urllib.parse.parse_qs(request.query_string).get("format", ["triton"])[-1]
    if fmt not in ("triton", "pyserve"):
        raise invalid(f"format: expected triton (the default) or pyserve, got {fmt!r}")
    return fmt


@endpoint
def model_config(request: Request) -> Response:
    """Triton's model configuration extension (what tritonclient's get_model_config reads); with
    ``?format=pyserve``, pyserve's own form of the effective config."""
    service = _service(request)
    config = service.config(request.match_info["model"], request.match_info.get("version"))
    if _format(request) == "triton":
        return _json(triton_config.model_config_document(config, service.platform(config)))
    doc = {
        "name": config.name,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "instance_count": config.instance_count,
        "inputs": _tensor_docs(config.inputs),
        "outputs": _tensor_docs(config.outputs),
        "dynamic_batching": _fields(config.dynamic_batching),
        "version_policy": _fields(config.version_policy),
        # What pyserve filled in from the model file rather than the config (Triton: auto-complete).
        "auto_completed": list(config.auto_completed),
        "payload_log": _fields(config.payload_log),
        "drift": {**_fields(config.drift), "thresholds": dict(config.drift.thresholds)},
    }
    return _json(doc)


@endpoint
def model_stats(request: Request) -> Response:
    """Triton's statistics extension (what tritonclient's get_inference_statistics reads); with
    ``?format=pyserve``, the core's own counters and histograms."""
    rows = _service(request).statistics(request.match_info.get("model"), request.match_info.get("version"))
    if _format(request) == "pyserve":
        return _json({"model_stats": [{"name": r.name, "version": r.version, **r.stats} for r in rows]})
    return _json(triton_stats.statistics_document(
        triton_stats.model_statistics(r.name, r.version, r.stats, r.last_inference_ms) for r in rows))


# -- inference --------------------------------------------------------------------------------
def infer(request: Request) -> Response | Deferred | Awaitable[Response]:
    """Decodes, submits to the service, and answers once the model has run (a Deferred until then).

    A body over :data:`DECODE_OFF_LOOP_BYTES` is decoded on a decoder thread, so that decoding it
    does not hold up the event loop's other clients."""
    service = _service(request)
    name = request.match_info["model"]
    version = request.match_info.get("version")
    runner = req = ctx = None
    try:
        runner = service.runner(name, version)  # 404 / 503 before decoding
        if len(request.body) > DECODE_OFF_LOOP_BYTES:
            return _infer_decoded_off_loop(request, runner)
        try:
            req, protocol = _decode_infer(request, service.input_check(runner))
        except PyserveError:
            req, ctx = _as_sent(request)  # for the error's hooks (the payload log): small bodies only
            raise
        request.body = b""  # what is needed is decoded: the rest may go while the model runs
        future, ctx, runner = _submit(request, service, name, version, runner, req, protocol)
    except Exception as e:
        return _infer_failed(request, e, ctx, runner, req)

    def failed(e: Exception) -> Response:
        return _infer_failed(request, e, ctx, runner, req)

    def finish(done: asyncio.Future) -> Response | Deferred:
        try:
            return encode_reply(req, service.complete(runner, req, ctx, done), protocol, failed)
        except Exception as e:
            return failed(e)

    return Deferred(future, finish)


# Bodies over this size are decoded on a decoder thread, whose JSON tensor decoding releases the GIL
# (pyserve.protocol.kserve_json): on the loop's thread, a 256 KiB JSON body costs its other clients
# about 1-6 ms, and the hop to a thread about 0.1-0.3 ms (bench/bench_json_decode.py --threshold).
DECODE_OFF_LOOP_BYTES = 256 << 10
DECODE_THREADS = 2  # large bodies decoded at once; more wait their turn (memory stays bounded)
_decoders: ThreadPoolExecutor | None = None


# A body the model's input check refused is decoded anyway up to this size, without the check, so
# that the error's hooks (the payload log) see its id and inputs as sent; larger ones are not.
DECODE_REFUSED_MAX_BYTES = 64 << 10


def _as_sent(request: Request) -> tuple[InferRequest | None, CallContext | None]:
    """The request as sent, and its context, when its body is small and decodes; else (None, None)."""
    if len(request.body) > DECODE_REFUSED_MAX_BYTES:
        return None, None
    try:
        req, protocol = _decode_infer(request)
    except PyserveError:
        return None, None
    return req, CallContext(protocol, req.id)


# Replies whose outputs hold more than this many bytes are encoded on a decoder thread: the JSON
# writer (pyserve.protocol.kserve_reply) releases the GIL, so the loop's other clients are not held up
# (bench/bench_json_encode.py --threshold measures the cost on the loop against the hop's).
ENCODE_OFF_LOOP_BYTES = 256 << 10


def _reply_nbytes(resp: Any) -> int:
    """The bytes of a reply's output arrays (what its encoding costs grows with)."""
    return sum(getattr(a, "nbytes", 0) for a in resp.outputs.values())


def encode_reply(req: InferRequest, resp: Any, protocol: str,
                 failed: Callable[[Exception], Response]) -> Response | Deferred:
    """The encoded reply of ``req`` (``resp``: its InferResponse) in ``protocol``'s encoding; a
    Deferred of it when its outputs hold more than :data:`ENCODE_OFF_LOOP_BYTES`, encoded on a decoder
    thread with the GIL released for JSON. ``failed(e)`` answers an encoder's error ``e`` on that
    thread (it is called in the ``except`` block); one on the loop's thread is raised."""
    if _reply_nbytes(resp) > ENCODE_OFF_LOOP_BYTES:
        future = asyncio.get_running_loop().run_in_executor(_decoder_pool(), _encode_infer, req, resp,
                                                            protocol, True)
        return Deferred(future, functools.partial(_encoded, failed))
    return _encode_infer(req, resp, protocol)


def _encoded(failed: Callable[[Exception], Response], done: asyncio.Future) -> Response:
    """The Response a decoder thread encoded (:func:`encode_reply`), or ``failed``'s answer to its error."""
    try:
        return done.result()
    except Exception as e:
        return failed(e)


def _decoder_pool() -> ThreadPoolExecutor:
    global _decoders
    if _decoders is None:
        _decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="pyserve-decode")
    return _decoders


def _submit(request: Request, service: InferenceService, name: str, version: str | None, runner: Any,
            req: InferRequest, protocol: str) -> tuple[asyncio.Future, CallContext, Any]:
    """Routes a decoded request for model ``name`` at ``version`` (the weighted split) and queues it;
    returns its future, its context and the runner that serves it."""
    header = service.routing_header(name)
    ctx = CallContext(protocol, req.id, request.headers.get(header) if header else None)
    runner = service.route(name, version, ctx, runner)  # the split
    return service.submit(runner, req, ctx), ctx, runner


async def _infer_decoded_off_loop(request: Request, runner: Any) -> Response:
    """:func:`infer` for a large body: decoded on a decoder thread, the inputs checked against
    ``runner``'s model (what :meth:`InferenceService.runner` resolved) before their data is."""
    service = _service(request)
    req = ctx = None
    try:
        check = service.input_check(runner)
        req, protocol = await asyncio.get_running_loop().run_in_executor(_decoder_pool(), _decode_infer,
                                                                         request, check)
        request.body = b""
        future, ctx, runner = _submit(request, service, request.match_info["model"],
                                      request.match_info.get("version"), runner, req, protocol)
        try:
            await future  # a client that hangs up cancels this task, and so the request
        except PyserveError:
            pass  # complete() raises it
        reply = encode_reply(req, service.complete(runner, req, ctx, future), protocol,
                             lambda e: _infer_failed(request, e, ctx, runner, req))
        return await reply.future if isinstance(reply, Deferred) else reply  # its error: answered below
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return _infer_failed(request, e, ctx, runner, req)


def _infer_failed(request: Request, e: Exception, ctx: CallContext | None, runner: Any,
                  req: InferRequest | None) -> Response:
    """The answer to an infer request that raised ``e`` (call it in the ``except`` block): the error's
    status, or a 500 with the traceback logged; either way recorded by the service."""
    service = _service(request)
    name = request.match_info["model"]
    if isinstance(e, PyserveError):
        service.failed(name, e, ctx, runner, req)
        return error_response(e.kind, e.message)
    response = unexpected(request)
    service.failed(name, internal(INTERNAL_ERROR), ctx, runner, req)  # a 500 is an error answered too
    return response


def _decode_infer(request: Request, check: InputCheck | None = None) -> tuple[InferRequest, str]:
    """The request and its wire form ("http+msgpack", "http+binary" or "http+json"); ``check`` is
    given the inputs' headers before their data is decoded."""
    content_type = request.content_type
    if content_type == MSGPACK:
        return msgpack_codec.decode_request(request.body, check), "http+msgpack"
    header_length = request.headers.get("inference-header-content-length")
    if header_length is None and content_type == SAGEMAKER_BINARY:
        # Triton's form for clients that cannot set headers: the length rides in the content type.
        header_length = request.content_type_param("json-header-size")
    req = kserve.decode_request(request.body, header_length, check)
    return req, "http+json" if header_length is None else "http+binary"


def _encode_infer(req: InferRequest, resp: Any, protocol: str, gil_free: bool = False) -> Response:
    if protocol == "http+msgpack":
        return Response(msgpack_codec.encode_response(resp, req.outputs), content_type=MSGPACK)
    params = req.parameters
    binary_default = bool(params.get("binary_data_output", False)) if params else False
    out, header_length = kserve.encode_response(resp, req.outputs, binary_default, gil_free)
    if header_length is None:
        return Response(out)
    return Response(out, content_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


def count_refused(app: Any, router: Router, method: str, path: str, status: int) -> None:
    """Records an infer request the transport refused before its handler ran (413, 431, ...)."""
    handler, captures, _ = router.resolve(method, path)
    if getattr(handler, "__wrapped__", handler) is infer:
        message = f"refused by the HTTP transport with status {status}"
        app.service.failed(captures["model"], PyserveError(kind_of_status(status), message))


# -- model control and metrics ----------------------------------------------------------------
def _json_body(request: Request, what: str) -> dict:
    """The body as a JSON object ({} when empty); INVALID_ARGUMENT when it is anything else."""
    body = request.body
    if not body or not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid(f"{what}: the body is not JSON: {e}") from None
    if type(doc) is not dict:
        raise invalid(f"{what}: the body must be a JSON object, got {kserve.json_type(doc)}")
    return doc


@endpoint
def repository_index(request: Request) -> Response:
    ready_only = False
    if request.method == "POST":
        ready_only = _json_body(request, "repository index request").get("ready", False)
        if type(ready_only) is not bool:
            raise invalid(f"repository index request: 'ready' must be true or false, got {ready_only!r}")
    return _json(request.app.control.index(ready_only))


def _control_allowed(request: Request) -> None:
    if not request.app.settings.model_control:
        raise not_found("model control is disabled on this server (start it without --disable-model-control)")


def _config_override(doc: dict) -> dict | None:
    """The ``parameters.config`` of a load request (Triton's form: a JSON string; an object is taken
    too), as a mapping in config.toml's shape; None when absent."""
    params = doc.get("parameters", {})
    if type(params) is not dict:
        raise invalid(f"load request: 'parameters' must be a JSON object, got {kserve.json_type(params)}")
    unknown = sorted(set(params) - {"config"})
    if unknown:
        raise invalid(f"load request: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                      "expected 'config' (the model's config as JSON, in config.toml's shape)")
    config = params.get("config")
    if config is None:
        return None
    if type(config) is str:
        try:
            config = orjson.loads(config)
        except orjson.JSONDecodeError as e:
            raise invalid(f"load request: parameters.config is not JSON: {e}") from None
    if type(config) is not dict:
        raise invalid(f"load request: parameters.config must be a JSON object (config.toml's keys), "
                      f"got {kserve.json_type(config)}")
    return config


@async_endpoint
async def load_model(request: Request) -> Response:
    """Loads a model (``parameters.config``: a config override), or one version of it."""
    _control_allowed(request)
    override = _config_override(_json_body(request, "load request"))
    name, version = request.match_info["model"], request.match_info.get("version")
    if version is None:
        await request.app.control.load(name, override)
    elif override is not None:
        raise invalid("load request: a version loads with the config its model serves with; "
                      "parameters.config is for the load of the whole model")
    else:
        await request.app.control.load_version(name, version)
    return _json({})


@async_endpoint
async def unload_model(request: Request) -> Response:
    """Unloads a model, or one version of it."""
    _control_allowed(request)
    _json_body(request, "unload request")
    name, version = request.match_info["model"], request.match_info.get("version")
    if version is None:
        await request.app.control.unload(name)
    else:
        await request.app.control.unload_version(name, version)
    return _json({})


@async_endpoint
async def payload_logs(request: Request) -> Response:
    """``GET /v2/logs``: the payload log's records, newest first, as JSON (docs/payload-log.md)."""
    from pyserve.payload_log import query as logs

    plog = request.app.payload_log
    if plog is None or plog.settings.log_dir is None:
        raise not_found("this server keeps no payload log files (start it with --payload-log-dir)")
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(request.query_string).items()}
    unknown = sorted(set(params) - {"model", "version", "since", "until", "outcome", "limit"})
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise invalid(f"unknown query parameter(s) {shown}; expected model, version, since, until, outcome, limit")
    limit = params.get("limit", str(logs.DEFAULT_LIMIT))
    if not limit.isdigit():
        raise invalid(f"limit: expected an integer from 1 to {logs.MAX_LIMIT}, got {limit!r}")
    q = logs.LogQuery(params.get("model"), params.get("version"),
                      logs.parse_time(params["since"], "since") if "since" in params else None,
                      logs.parse_time(params["until"], "until") if "until" in params else None,
                      params.get("outcome"), int(limit))
    # DuckDB reads the files off the event loop's thread.
    rows = await asyncio.to_thread(lambda: logs.records(logs.select(plog.settings.log_dir, q)))
    return Response(orjson.dumps({"records": rows}, option=orjson.OPT_SERIALIZE_NUMPY))


@endpoint
def drift(request: Request) -> Response:
    """``GET /v2/drift[?model=NAME]``: the last tested window of every watched feature (docs/drift.md)."""
    monitor = request.app.drift
    if monitor is None:
        raise not_found("this server watches no drift (it needs a payload log: start it with --payload-log-dir)")
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(request.query_string).items()}
    unknown = sorted(set(params) - {"model"})
    if unknown:
        raise invalid(f"unknown query parameter(s) {', '.join(map(repr, unknown))}; expected model")
    model = params.get("model")
    if model is not None and model not in request.app.host.registry.models:
        raise not_found(f"unknown model '{model}'")
    return _json({"features": [f.to_json() for f in monitor.snapshot(model)]})


def _reason(doc: dict) -> str:
    """The ``reason`` of a change request (kept in the audit log; "" when absent)."""
    reason = doc.pop("reason", "")
    if type(reason) is not str:
        raise invalid(f"reason: expected a string, got {kserve.json_type(reason)}")
    return reason


@endpoint
def get_traffic(request: Request) -> Response:
    return _json(request.app.control.traffic(request.match_info["model"]))


@async_endpoint
async def put_traffic(request: Request) -> Response:
    _control_allowed(request)
    if not request.body or not request.body.strip():
        # Not taken as {}: a PUT whose body went missing would remove every alias and weight.
        raise invalid("traffic policy: the body is empty; send the whole policy "
                      "({} removes every alias and weight)")
    doc = _json_body(request, "traffic policy")
    reason = _reason(doc)
    return _json(await request.app.control.set_traffic(request.match_info["model"], doc, request.peer, reason))


@async_endpoint
async def put_alias(request: Request) -> Response:
    _control_allowed(request)
    doc = _json_body(request, "alias request")
    reason = _reason(doc)
    unknown = sorted(set(doc) - {"version"})
    if unknown or "version" not in doc:
        raise invalid("alias request: expected {\"version\": \"<version or alias>\", \"reason\": \"...\"}"
                      + (f"; unknown field(s) {', '.join(map(repr, unknown))}" if unknown else ""))
    return _json(await request.app.control.set_alias(request.match_info["model"], request.match_info["alias"],
                                                     doc["version"], request.peer, reason))


@async_endpoint
async def delete_alias(request: Request) -> Response:
    _control_allowed(request)
    doc = _json_body(request, "alias request")
    reason = _reason(doc)
    if doc:
        raise invalid(f"alias request: unknown field(s) {', '.join(map(repr, sorted(doc)))}; expected reason")
    return _json(await request.app.control.remove_alias(request.match_info["model"], request.match_info["alias"],
                                                        request.peer, reason))


@endpoint
def get_rollout(request: Request) -> Response:
    return _json(request.app.control.rollout(request.match_info["model"]))


@async_endpoint
async def start_rollout(request: Request) -> Response:
    _control_allowed(request)
    doc = _json_body(request, "rollout")
    reason = _reason(doc)
    return _json(await request.app.control.start_rollout(request.match_info["model"], doc, request.peer, reason))


@async_endpoint
async def rollout_action(request: Request) -> Response:
    """pause, resume, promote (``{"full": true}``: to 100% now) or abort a rollout."""
    _control_allowed(request)
    action = request.match_info["action"]
    doc = _json_body(request, f"rollout {action[:40]}")
    reason = _reason(doc)
    full = doc.pop("full", False) if action == "promote" else False
    if type(full) is not bool:
        raise invalid(f"rollout promote: 'full' must be true or false, got {full!r}")
    if doc:
        raise invalid(f"rollout {action[:40]}: unknown field(s) {', '.join(map(repr, sorted(doc)))}; expected reason"
                      + (", full" if action == "promote" else ""))
    return _json(await request.app.control.rollout_action(request.match_info["model"], action, request.peer,
                                                          reason, full))


@endpoint
def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(request.app.registry), content_type=metrics.CONTENT_TYPE)


ROLLOUT_ACTIONS = ("pause", "resume", "promote", "abort")


def make_router(access: AccessControl | None = None, audit: ManagementAudit | None = None,
                siblings: Siblings | None = None) -> Router:
    """The URL table: KServe v2 paths as Triton and KServe serve them, each behind the token check of
    its scope (:mod:`pyserve.security.access`); the model-control routes write the audit log.
    Without ``access``, nothing needs a token; without ``audit``, nothing is audited. With
    ``siblings`` (a ``--workers`` server), readiness,
    ``/metrics`` and model control answer for every worker (:mod:`pyserve.workers.routes`)."""
    access = access if access is not None else AccessControl(AccessSettings())

    def scoped(scope: Scope, handler: Handler) -> Handler:
        return guarded(access, scope, handler)

    def control(action: Any, handler: Any) -> Handler:
        if siblings is not None:
            handler = workers.fan_out(siblings, handler)  # audited once, by the worker that took the call
        return audited_control(access, audit, action, handler) if audit is not None else scoped(
            Scope.CONTROL, handler)

    def read(handler: Handler) -> Handler:
        return audited_read(access, audit, handler) if audit is not None else scoped(Scope.CONTROL, handler)

    def whole(handler: Handler) -> Handler:
        return workers.all_ready(siblings, handler) if siblings is not None else handler

    def rollout(request: Request) -> str:
        # A fixed set: the action labels a metric, and the path is the caller's to choose.
        action = request.match_info["action"]
        return f"rollout_{action}" if action in ROLLOUT_ACTIONS else "rollout_unknown"

    r = Router()
    r.add("POST", "/v2/models/{model}/infer", scoped(Scope.INFERENCE, infer))
    r.add("POST", "/v2/models/{model}/versions/{version}/infer", scoped(Scope.INFERENCE, infer))
    r.add("GET", "/v2/health/live", live)
    r.add("GET", "/v2/health/ready", whole(ready))
    r.add("GET", "/v2", scoped(Scope.INFERENCE, server_metadata))
    r.add("GET", "/metrics", scoped(Scope.METRICS, metrics_endpoint if siblings is None
                                    else workers.whole_server_metrics(siblings)))
    r.add("GET", "/v2/logs", read(payload_logs))
    r.add("GET", "/v2/drift", scoped(Scope.METRICS, drift))  # statistics, like /metrics
    r.add("GET", "/v2/repository/index", read(repository_index))
    r.add("POST", "/v2/repository/index", read(repository_index))
    _add_control_routes(r, control, rollout)
    r.add("GET", "/v2/repository/models/{model}/traffic", read(get_traffic))
    r.add("GET", "/v2/repository/models/{model}/rollout", read(get_rollout))
    r.add("GET", "/v2/models/stats", scoped(Scope.INFERENCE, model_stats))  # every model; exact paths win
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add("GET", prefix, scoped(Scope.INFERENCE, model_metadata))
        r.add("GET", prefix + "/ready", whole(model_ready))  # a readiness probe, as Triton's health API
        r.add("GET", prefix + "/config", scoped(Scope.INFERENCE, model_config))
        r.add("GET", prefix + "/stats", scoped(Scope.INFERENCE, model_stats))
    dashboard.add_routes(r, functools.partial(scoped, Scope.METRICS))  # the page's inputs: see App
    return r


def _add_control_routes(r: Router, control: Any, rollout: Any) -> None:
    """The model-control routes, each handler wrapped by ``control(action, handler)``."""
    r.add("POST", "/v2/repository/models/{model}/load", control("load", load_model))
    r.add("POST", "/v2/repository/models/{model}/unload", control("unload", unload_model))
    r.add("POST", "/v2/repository/models/{model}/versions/{version}/load", control("load", load_model))
    r.add("POST", "/v2/repository/models/{model}/versions/{version}/unload", control("unload", unload_model))
    r.add("PUT", "/v2/repository/models/{model}/traffic", control("set_traffic", put_traffic))
    r.add("PUT", "/v2/repository/models/{model}/aliases/{alias}", control("set_alias", put_alias))
    r.add("DELETE", "/v2/repository/models/{model}/aliases/{alias}", control("remove_alias", delete_alias))
    r.add("POST", "/v2/repository/models/{model}/rollout", control("start_rollout", start_rollout))
    r.add("POST", "/v2/repository/models/{model}/rollout/{action}", control(rollout, rollout_action))


def make_channel_router() -> Router:
    """The URL table of a worker's private channel (:mod:`pyserve.workers.channel`): this worker's
    own readiness and metrics, and the model-control calls its siblings forward, applied here
    only (no token: only the server's user can reach the channel; not audited: the worker that
    took the call audits it)."""
    r = Router()
    r.add("GET", "/v2/health/ready", ready)
    r.add("GET", "/metrics", workers.own_metrics)  # saved as the worker's last known counts
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add("GET", prefix + "/ready", model_ready)
    _add_control_routes(r, lambda _action, handler: workers.as_forwarded(handler), lambda request: "")
    return r
