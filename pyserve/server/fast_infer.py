"""The infer fast path: the common request served with a fraction of the general path's Python.

Most requests a server sees are ``POST /v2/models/{name}[/versions/{v}]/infer`` with KServe JSON, the
binary tensor extension or msgpack, without ``priority`` or ``timeout``, for a model with no traffic
policy and no hook that acts on it (no shadow; the payload log only observes). The general path
(:func:`pyserve.server.handlers.infer`) builds a :class:`~pyserve.server.messages.Request`, matches
the router's patterns, builds a :class:`~pyserve.service.CallContext`, resolves the traffic split
and runs the service's checks and hook loops. Here the request target's bytes are looked up in a
dict (model name and version, parsed once per target), the body decoded by the decode plans of the
model version (:mod:`pyserve.protocol.request_plans`: a body seen before but for its tensors' data
is decoded by its data alone), the inputs queued with ``ModelRunner.submit_callback`` (no asyncio
future: the completion drain calls the call's :meth:`_Call.completed`), and the reply written by
the lean writers or the general path's encoder (``docs/core.md``, "The infer fast path", has the
figures).

Whatever the fast path does not handle it leaves to the general path BEFORE any side effect
(:meth:`FastInfer.serve` answers None): a target that is not an infer path or holds ``%``, ``?`` or
``#``; an unknown or unready model or version; a model with a traffic policy (split, alias, shadow,
rollout) or a hook that neither is quiet for it nor only observes the answer
(:meth:`pyserve.service.InferenceService.fast_observers`; the observers, such as the payload log,
are called with the answer as the general path calls them); a
server whose inference needs a token; a content type other than JSON (none, ``application/json``,
``application/octet-stream`` with ``Inference-Header-Content-Length``),
``application/vnd.sagemaker-triton.binary+json;json-header-size=N`` or ``application/msgpack``
exactly; a body the general path would decode on a thread; a body that does not decode or that the
model's input check refuses (the general path decodes it again and answers the error); a requested
output the model does not have, or with a ``classification``; a request parameter other than
``binary_data_output``. From the submit on, errors are recorded and answered exactly as the
general path does (:meth:`~pyserve.service.InferenceService.failed`, the same statuses and bodies):
``tests/test_fast_infer.py`` checks byte-identical answers and metrics for both paths.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import orjson

from pyserve import _core
from pyserve.datatypes import NUMPY_DTYPES
from pyserve.errors import PyserveError, error_from_core, internal
from pyserve.protocol import InferRequest, InferResponse, kserve, msgpack_codec
from pyserve.protocol.request_plans import RequestPlans
from pyserve.server import errors as http_errors
from pyserve.server import handlers, messages
from pyserve.server.messages import INTERNAL_ERROR, Deferred, Pending, Response
from pyserve.service import CallContext, FastRoute, InferenceService

log = logging.getLogger("pyserve.server")

MSGPACK = handlers.MSGPACK
# Content types taken as they are sent, without parameters: anything else (a charset, upper case)
# goes to the general path, which parses the header.
_JSON_TYPES = frozenset(("application/json", "application/octet-stream"))
# SageMaker's binary+json with its one parameter, as Triton's clients send it; other spellings go
# to the general path.
_SAGEMAKER_PREFIX = handlers.SAGEMAKER_BINARY + ";json-header-size="
# Request targets remembered (hits and misses); a new one takes the place of the oldest.
MAX_TARGETS = 1024
# A longer target is parsed each time: a target may be as long as the headers allow (64 KiB), and
# 1,024 of those held over 100 MiB for good.
MAX_TARGET_BYTES = 1024
# Larger bodies are decoded on a thread by the general path.
DECODE_ON_LOOP_MAX_BYTES = handlers.DECODE_OFF_LOOP_BYTES


def parse_target(url: bytes) -> tuple[str, str | None] | None:
    """(model name, version or None) of an infer request target ``/v2/models/{m}[/versions/{v}]/infer``;
    None for anything else, including targets with ``%``, ``?`` or ``#`` (the general path decodes
    those) and non-ASCII ones."""
    if not url.isascii() or url.find(b"%") >= 0 or url.find(b"?") >= 0 or url.find(b"#") >= 0:
        return None
    parts = url.decode("ascii").split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer" and parts[3]:
        return parts[3], None
    if (len(parts) == 7 and parts[:3] == ["", "v2", "models"] and parts[4] == "versions"
            and parts[6] == "infer" and parts[3] and parts[5]):
        return parts[3], parts[5]
    return None


# The outputs the lean writers take: arrays of a numeric datatype in the machine's byte order.
_DATATYPES = {np.dtype(dtype): datatype for datatype, dtype in NUMPY_DTYPES.items() if datatype != "BYTES"}
_OUTPUTS_HEAD = b',"outputs":['
# packb's bytes (its defaults) without a Packer made and freed per reply; the loop's thread only.
_PACKER = msgpack.Packer()
# The bytes around the data of the lean replies, made once, by what they depend on. msgpack
# (_msgpack_reply): (output name, dtype, shape) for a tensor's entry up to its data, (model, version,
# outputs[, "id"]) for the reply's head. KServe JSON (_lean_reply): (output name, dtype, shape) for a
# binary output's entry, (model, version) for the head of a reply without an id. Each is emptied
# when it holds MAX_REPLY_PIECES (clients may send any batch size: the shapes are theirs to vary).
_MSGPACK_PIECES: dict[tuple, Any] = {}
_JSON_PIECES: dict[tuple, Any] = {}
MAX_REPLY_PIECES = 4096
# An empty id as packb writes it (a fixstr of length 0): the place of a reply's id in its head.
_PACKED_EMPTY_ID = _PACKER.pack("")


def _msgpack_reply(runner: Any, req: InferRequest, outputs: dict[str, Any]) -> Response | None:
    """The msgpack reply of ``req`` with all its ``outputs``: the packed bytes around the tensors'
    data made once (``msgpack_codec.reply_head`` and ``entry_head``, the bytes packb writes) and
    joined with the data; None for what :func:`_lean_reply` leaves to the general path."""
    pieces = _MSGPACK_PIECES
    parts: list[Any] = [b""]
    nbytes = 0
    for name, arr in outputs.items():
        if type(arr) is not np.ndarray or not arr.flags.c_contiguous:
            return None
        head = _entry_piece(pieces, name, arr, _msgpack_entry)
        if head is None:
            return None
        nbytes += arr.nbytes
        parts.append(head)
        parts.append(arr)  # a C-contiguous array is a buffer of its bytes: joined as they are
    if nbytes > msgpack_codec.JOIN_MIN_BYTES:
        return None
    model, version, request_id = runner.config.name, runner.version, req.id
    if request_id is None:
        parts[0] = _msgpack_head(model, version, len(outputs))
    else:
        # The id's place in the map between two pieces made once: {model_name, model_version, id, outputs}.
        id_key = (model, version, len(outputs), "id")
        around = pieces.get(id_key)
        if around is None:
            fields = {"model_name": model, "model_version": version, "id": ""}
            head = msgpack_codec.reply_head(fields, len(outputs))
            # It ends with the empty id, the "outputs" key and the array's header.
            after = _PACKER.pack("outputs") + _PACKER.pack_array_header(len(outputs))
            around = _keep_piece(pieces, id_key, (head[:-len(after) - len(_PACKED_EMPTY_ID)], after))
        parts[0] = around[0] + _PACKER.pack(request_id) + around[1]
    return Response(b"".join(parts), content_type=MSGPACK)


def _msgpack_head(model: str, version: str, outputs: int) -> bytes:
    """The packed bytes of a msgpack reply without an id before its first output's entry (kept)."""
    key = (model, version, outputs)
    head = _MSGPACK_PIECES.get(key)
    if head is None:
        fields = {"model_name": model, "model_version": version}
        head = _keep_piece(_MSGPACK_PIECES, key, msgpack_codec.reply_head(fields, outputs))
    return head


def _json_head(model: str, version: str) -> bytes:
    """The bytes of a KServe reply without an id up to its first output's entry (kept)."""
    key = (model, version)
    head = _JSON_PIECES.get(key)
    if head is None:
        fields = {"model_name": model, "model_version": version}
        head = _keep_piece(_JSON_PIECES, key, orjson.dumps(fields)[:-1] + _OUTPUTS_HEAD)
    return head


def _reply_items(req: InferRequest, outputs: dict[str, Any]) -> list[tuple[str, Any]]:
    """(output name, binary or not) for each output a KServe reply to ``req`` holds, in its order:
    every output, or the requested ones; binary as requested, else as ``binary_data_output``."""
    params = req.parameters
    binary_default = bool(params.get("binary_data_output", False)) if params else False
    requested = req.outputs
    if requested is None:
        return [(name, binary_default) for name in outputs]
    return [(r.name, binary_default if r.binary is None else r.binary) for r in requested]


def _entry_piece(pieces: dict[tuple, Any], name: str, arr: np.ndarray,
                 make: Callable[[str, str, np.ndarray], bytes]) -> bytes | None:
    """The bytes of output ``name``'s entry before its data, kept in ``pieces`` by (name, dtype,
    shape) and made by ``make(name, datatype, arr)`` the first time; None for a dtype the lean
    writers do not take (BYTES, another byte order)."""
    key = (name, arr.dtype, arr.shape)
    piece = pieces.get(key)
    if piece is None:
        datatype = _DATATYPES.get(arr.dtype)
        if datatype is None:
            return None
        piece = _keep_piece(pieces, key, make(name, datatype, arr))
    return piece


def _msgpack_entry(name: str, datatype: str, arr: np.ndarray) -> bytes:
    return msgpack_codec.entry_head(name, datatype, arr.shape, arr.nbytes)


def _binary_entry(name: str, datatype: str, arr: np.ndarray) -> bytes:
    """A binary output's JSON entry, as ``kserve.encode_response`` writes it."""
    return orjson.dumps({"name": name, "datatype": datatype, "shape": list(arr.shape),
                         "parameters": {"binary_data_size": arr.nbytes}})


def _keep_piece(pieces: dict[tuple, Any], key: tuple, piece: Any) -> Any:
    """Keeps ``piece`` for ``key`` in ``pieces`` (emptied when full) and returns it."""
    if len(pieces) >= MAX_REPLY_PIECES:
        pieces.clear()
    pieces[key] = piece
    return piece


def _lean_reply(runner: Any, req: InferRequest, outputs: dict[str, Any], protocol: str) -> Response | None:
    """The reply of ``req`` with ``outputs`` (the requested ones), written as the general path's
    encoders write it (``kserve.encode_response``, ``msgpack_codec.encode_response``: the same
    bytes) with fewer Python frames and objects; None when it is not the small numeric reply these
    take (BYTES, another byte order, a reply the general path writes with orjson or joins off the
    GIL)."""
    requested = req.outputs
    if protocol == "http+msgpack":
        return _msgpack_reply(runner, req, outputs) if requested is None else None
    pieces = _JSON_PIECES
    model, version, request_id = runner.config.name, runner.version, req.id
    if request_id is None:
        head = _json_head(model, version)
    else:
        doc = {"model_name": model, "model_version": version, "id": request_id}
        head = orjson.dumps(doc)[:-1] + _OUTPUTS_HEAD
    items = _reply_items(req, outputs)
    entries: list[Any] = []
    parts: list[Any] = []
    count = nbytes = 0
    for name, binary in items:
        arr = outputs[name]
        if type(arr) is not np.ndarray:
            return None
        if binary:  # as protocol.raw_bytes: the array's bytes, after its JSON header
            if not arr.flags.c_contiguous:
                return None
            entry = _entry_piece(pieces, name, arr, _binary_entry)
            if entry is None:
                return None
            entries.append(entry)
            parts.append(arr)  # a C-contiguous array is a buffer of its bytes
            nbytes += arr.nbytes
        else:
            datatype = _DATATYPES.get(arr.dtype)
            if datatype is None:
                return None
            count += arr.size
            entries.append((name, datatype, arr.shape, arr.ravel()))
    if count > kserve.WRITER_ON_LOOP_MAX_ELEMENTS or nbytes > handlers.ENCODE_OFF_LOOP_BYTES:
        return None
    if not parts:
        body = _core.encode_json_reply(head, entries, b"]}", parts)
        return Response(body) if type(body) is bytes else None
    if len(parts) < len(entries):  # JSON data and binary data in one reply (a JSON output may be empty)
        raws = [memoryview(a.reshape(-1)).cast("B") for a in parts]
        body = _core.encode_json_reply(head, entries, b"]}", raws)
        if type(body) is not bytes:
            return None
        header_length = len(body) - nbytes
    else:  # binary data only: the header is made of pieces made once
        header = b"".join((head, b",".join(entries), b"]}"))
        header_length = len(header)
        body = b"".join((header, *parts))
    return Response(body, content_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


class _ReplyForm:
    """The lean reply of a decode plan's requests made of pieces made once: the requests of one plan
    without an id ask for the same reply but for the outputs' data, so everything else in it is
    what it was for the plan's first. For the binary extension with every output binary, the JSON
    header before the outputs' bytes; for msgpack, the packed bytes before each output's data.
    :meth:`reply` joins them with the data, in ``names``' order, when each output has the dtype and
    shape the form was made for (``tests/test_fast_infer.py`` checks the bytes against the general
    encoder's)."""

    __slots__ = ("content_type", "dtypes", "header_length", "names", "pieces", "shapes")

    def __init__(self, names: tuple[str, ...], arrays: list[np.ndarray], pieces: tuple[bytes, ...],
                 content_type: str, header_length: str | None) -> None:
        self.names = names
        self.dtypes = tuple(a.dtype for a in arrays)
        self.shapes = tuple(a.shape for a in arrays)
        self.pieces = pieces  # pieces[i] goes before output i's data
        self.content_type = content_type
        self.header_length = header_length  # the binary extension's Inference-Header-Content-Length

    def reply(self, outputs: dict[str, Any]) -> Response | None:
        """The reply with ``outputs`` (the core's, by name); None when one of the form's outputs is
        missing or not the C-contiguous array of the dtype and shape the form was made for."""
        names = self.names
        if len(names) == 1:  # the common reply: no loop, no list
            arr = outputs.get(names[0])
            if (type(arr) is not np.ndarray or arr.shape != self.shapes[0] or arr.dtype != self.dtypes[0]
                    or not arr.flags.c_contiguous):
                return None
            body = b"".join((self.pieces[0], arr))  # type: ignore[arg-type]  # an array is a buffer
        else:
            parts: list[Any] = []
            for name, dtype, shape, piece in zip(names, self.dtypes, self.shapes, self.pieces):
                arr = outputs.get(name)
                if (type(arr) is not np.ndarray or arr.shape != shape or arr.dtype != dtype
                        or not arr.flags.c_contiguous):
                    return None
                parts.append(piece)
                parts.append(arr)
            body = b"".join(parts)
        if self.header_length is None:
            return Response(body, content_type=self.content_type)
        return Response(body, content_type=self.content_type,
                        headers={"Inference-Header-Content-Length": self.header_length})


# A plan whose replies the form it was given did not fit (its outputs' shapes vary): none is made
# for it again, so that such a model pays for one form, not one per reply.
_NO_FORM = object()


def reply_form(runner: Any, req: InferRequest, outputs: dict[str, Any], protocol: str) -> _ReplyForm | None:
    """The form of the lean reply to ``req`` (no id) with ``outputs`` (the core's, every output by
    name) for a plan's requests like it: a msgpack reply of every output, or a KServe reply whose
    outputs are all binary (the binary extension); None for any other reply (an id, JSON data, a
    datatype or size :func:`_lean_reply` leaves to the general path). Made of the pieces the lean
    writers keep, so its bytes are theirs."""
    if req.id is not None:
        return None
    msgpack_form = protocol == "http+msgpack"
    if msgpack_form:
        if req.outputs is not None:
            return None  # requested outputs in msgpack: the general path's, as in _lean_reply
        names = tuple(outputs)
    else:
        items = _reply_items(req, outputs)
        if not all(binary for _, binary in items):
            return None
        names = tuple(name for name, _ in items)
    if not names:
        return None  # a reply without outputs: _lean_reply's to write
    kept, entry = (_MSGPACK_PIECES, _msgpack_entry) if msgpack_form else (_JSON_PIECES, _binary_entry)
    arrays: list[np.ndarray] = []
    heads: list[bytes] = []
    for name in names:
        arr = outputs.get(name)
        if type(arr) is not np.ndarray or not arr.flags.c_contiguous:
            return None
        head = _entry_piece(kept, name, arr, entry)
        if head is None:
            return None
        arrays.append(arr)
        heads.append(head)
    nbytes = sum(arr.nbytes for arr in arrays)
    model, version = runner.config.name, runner.version
    if msgpack_form:
        if nbytes > msgpack_codec.JOIN_MIN_BYTES:
            return None
        pieces = (_msgpack_head(model, version, len(names)) + heads[0], *heads[1:])
        return _ReplyForm(names, arrays, pieces, MSGPACK, None)
    if nbytes > handlers.ENCODE_OFF_LOOP_BYTES:
        return None
    header = b"".join((_json_head(model, version), b",".join(heads), b"]}"))
    pieces = (header, *(b"" for _ in names[1:]))
    return _ReplyForm(names, arrays, pieces, "application/octet-stream", str(len(header)))


class _Target(FastRoute):
    """An infer request target: the model name and version it names, what serves them
    (:class:`~pyserve.service.FastRoute`), and the decode plans of that runner
    (:mod:`pyserve.protocol.request_plans`; shared by the targets that name that version)."""

    __slots__ = ("planned", "plans")

    def __init__(self, name: str, version: str | None) -> None:
        super().__init__(name, version)
        # By weak reference: the plans live as long as their runner (FastInfer._plans), not as long
        # as a target that is never asked for again after its version was reloaded.
        self.plans: Callable[[], RequestPlans | None] = lambda: None
        self.planned: Any = None  # the route's runner reference the plans were taken for


class _Call(CallContext, Pending):
    """One call on the fast path, from its submit to its answer: its :class:`CallContext` too (what
    observers and errors are given), as the general path would make it, at no extra object; and the
    connection's :class:`Pending` answer, given to it by the completion drain calling
    :meth:`completed` (``ModelRunner.submit_callback``): no future, no done callback."""

    __slots__ = ("runner", "req", "plan", "observers", "fast", "queue_us", "compute_us", "answer",
                 "on_answer", "request_handle", "state")

    def __init__(self, fast: FastInfer, runner: Any, req: InferRequest, plan: Any, protocol: str,
                 observers: tuple) -> None:
        # CallContext's fields set here, not by its dataclass __init__ (a default factory and a
        # frame more for every call): no routing key, no timeout or priority on this path.
        self.protocol = protocol
        self.request_id = req.id
        self.routing_key = None
        self.timeout_us = 0
        self.priority = 0
        self.started_ns = time.monotonic_ns()
        self.future = None
        self.runner = runner
        self.req = req
        self.plan = plan  # the decode plan of its body (request_plans._Plan), None if decoded in full
        self.observers = observers  # the after_response hooks that only observe (the payload log)
        self.fast = fast
        self.queue_us = self.compute_us = -1  # the core's timings, once answered (-1: never ran)
        self.answer: Response | Deferred | None = None  # answered before the connection asked
        self.on_answer = None
        self.request_handle = -1  # the core's id of the queued request, for cancel
        self.state = _QUEUED

    def completed(self, code: int, message: str, outputs: dict[str, Any] | None, queue_us: int,
                  compute_us: int) -> None:
        """The completion drain's call (``ModelRunner.submit_callback``): answers the call."""
        if self.state is not _QUEUED:
            return  # cancelled: its client is gone
        self.state = _ANSWERED
        self.queue_us, self.compute_us = queue_us, compute_us
        try:
            if code == 0:
                resp = self.fast._finish(self, outputs)  # type: ignore[arg-type]
            else:
                resp = self.fast._failed(self, error_from_core(code, message))
        except Exception:  # a bug (the failure's own recording raised): answered, never left owed
            log.exception("unexpected error while answering an infer request of model %s",
                          self.runner.config.name)
            resp = messages.internal_error()
        on_answer = self.on_answer
        if on_answer is None:
            self.answer = resp  # answered inline, before serve returned
        else:
            self.on_answer = None  # the connection's partial: no cycle left behind
            on_answer(resp)

    def timings(self) -> tuple[int | None, int | None]:
        return self.queue_us, self.compute_us

    def done(self) -> bool:
        return self.state is not _QUEUED

    def cancel(self) -> bool:
        if self.state is not _QUEUED:
            return False
        self.state = _CANCELLED
        self.on_answer = None
        if self.request_handle >= 0:
            self.runner.cancel(self.request_handle)
        return True


_QUEUED, _ANSWERED, _CANCELLED = "queued", "answered", "cancelled"


class FastInfer:
    """Serves the common infer request without the general path's objects (see the module's text).

    Make one per server, only when inference needs no token (the general path's token check is the
    router's). :meth:`serve` is called by :class:`pyserve.server.http.Connection` for each complete
    POST request."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self._targets: dict[bytes, _Target | None] = {}
        # The decode plans of each version, whatever target names it ("1", "01", none for the newest):
        # their memory is bounded by the versions loaded. By weak reference, as _Target.runner.
        self._plans: weakref.WeakKeyDictionary[Any, RequestPlans] = weakref.WeakKeyDictionary()

    def serve(self, url: bytes, headers: dict[str, str],
              body: bytes | bytearray) -> Response | Deferred | None:
        """The answer (or the answer to come) of a POST to ``url``; None to leave the request to
        the general path, with nothing done. ``headers``: lower-case names, as the connection
        gives them."""
        targets = self._targets
        target = targets.get(url, False)
        if target is False:
            parsed = parse_target(url)
            target = _Target(*parsed) if parsed is not None else None
            if len(url) <= MAX_TARGET_BYTES:
                if len(targets) >= MAX_TARGETS:
                    del targets[next(iter(targets))]  # the oldest: dicts keep insertion order
                targets[bytes(url)] = target
        if target is None or len(body) > DECODE_ON_LOOP_MAX_BYTES:
            return None
        runner = self.service.fast_route(target)
        if runner is None:
            return None
        observers = target.observers
        plans = target.plans()
        if target.planned is not target.runner or plans is None:  # a new runner (or the first)
            plans = self._plans.get(runner)
            if plans is None:
                plans = self._plans[runner] = RequestPlans({s.name: s.datatype for s in runner.config.inputs},
                                                           self.service.input_check(runner))
            target.plans, target.planned = weakref.ref(plans), target.runner
        content_type = headers.get("content-type")
        try:
            if content_type == MSGPACK:
                req = plans.decode_msgpack(body)
                protocol = "http+msgpack"
            elif content_type is None or content_type in _JSON_TYPES:
                header_length = headers.get("inference-header-content-length")
                if header_length is None:
                    req, protocol = plans.decode_json(body), "http+json"
                else:
                    req, protocol = plans.decode_binary(body, header_length), "http+binary"
            elif content_type.startswith(_SAGEMAKER_PREFIX):
                # Triton's form for clients that cannot set headers: the length in the content type
                # (as handlers._decode_infer reads it, when the header is absent).
                header_length = headers.get("inference-header-content-length")
                if header_length is None:
                    header_length = content_type[len(_SAGEMAKER_PREFIX):]
                    if not (header_length.isascii() and header_length.isdigit()):
                        return None
                req, protocol = plans.decode_binary(body, header_length), "http+binary"
            else:
                return None
        except Exception:  # noqa: BLE001 - refused or a fault: the general path decodes it again and answers
            return None
        plan = plans.hit
        # A plan's requests share their parameters and requested outputs (and the plans are the
        # runner's): checked for its first request only.
        served = plan.served if plan is not None else None
        if served is None:
            served = self._served(runner, req)
            if plan is not None:
                plan.served = served
        if not served:
            return None
        # From here on, as the general path: errors are recorded and answered, never handed back.
        call = _Call(self, runner, req, plan, protocol, observers)
        try:
            handle = runner.submit_callback(req.inputs, call.completed)
        except Exception as e:  # noqa: BLE001 - answered as the general path answers it
            return self._failed(call, e)
        if call.answer is not None:
            return call.answer  # the batch ran inline: answered already
        call.request_handle = handle
        return call

    @staticmethod
    def _served(runner: Any, req: InferRequest) -> bool:
        """Whether ``req``'s parameters and requested outputs are the fast path's."""
        params = req.parameters
        if params and (len(params) != 1 or "binary_data_output" not in params):
            return False  # priority, timeout or a parameter the general path should see
        requested = req.outputs
        if requested is not None:
            declared = runner.output_names
            for r in requested:
                k = r.classification
                # A classification (Triton's extension) is the general path's, and so is the error
                # of an output the model does not have.
                if r.name not in declared or not (k is None or (type(k) is int and k == 0)):
                    return False
        return True

    def _finish(self, call: _Call, outputs: dict[str, Any]) -> Response | Deferred:
        """The reply of ``call`` with its outputs (``ModelRunner.submit_callback``'s)."""
        try:
            runner = call.runner
            runner.last_inference_ms = time.time_ns() // 1_000_000
            req = call.req
            plan = call.plan
            if plan is not None and not call.observers and req.id is None:
                form = plan.reply
                if form is None:  # the plan's first reply
                    form = plan.reply = reply_form(runner, req, outputs, call.protocol) or _NO_FORM
                if form is not _NO_FORM:
                    lean = form.reply(outputs)
                    if lean is not None:
                        return lean
                    plan.reply = _NO_FORM  # this plan's outputs vary: no form for it again
            if req.outputs is not None:
                outputs = InferenceService.requested_outputs(runner, req, outputs)
            resp = self._observe(call, outputs) if call.observers else None
            lean = _lean_reply(runner, req, outputs, call.protocol)
            if lean is not None:
                return lean
            if resp is None:
                resp = InferResponse(runner.config.name, runner.version, outputs, req.id, None)
            # The general path's encoders, so that the bytes cannot differ.
            return handlers.encode_reply(req, resp, call.protocol, functools.partial(self._failed, call))
        except Exception as e:  # noqa: BLE001 - answered as the general path answers it
            return self._failed(call, e)

    @staticmethod
    def _observe(call: _Call, outputs: dict[str, Any]) -> InferResponse:
        """Calls the observing after_response hooks with the answer (``outputs``: the requested
        ones), as :meth:`~pyserve.service.InferenceService.complete` does; returns that answer."""
        runner, req = call.runner, call.req
        response = InferResponse(runner.config.name, runner.version, outputs, req.id, None)
        for hook, hooks in call.observers:
            try:
                hook(call, runner, req, response)
            except Exception:  # noqa: BLE001 - as the general path: a hook's fault never fails a call
                log.exception("after_response hook %s failed", type(hooks).__name__)
        return response

    def _failed(self, call: _Call, e: Exception) -> Response:
        """The answer to a call that raised ``e`` (call it in the ``except`` block), recorded as the
        general path records it (:func:`pyserve.server.handlers._infer_failed`)."""
        runner = call.runner
        if isinstance(e, PyserveError):
            self.service.failed(runner.config.name, e, call, runner, call.req)
            return http_errors.error_response(e.kind, e.message)
        log.exception("unexpected error in an infer request of model %s", runner.config.name)
        self.service.failed(runner.config.name, internal(INTERNAL_ERROR), call, runner, call.req)
        return messages.internal_error()
