"""Decode plans: a request body whose non-data bytes were seen before decodes by its data alone.

A client sends the same request, but its numbers (and its id), again and again: the same input
names, datatypes, shapes and parameters. Everything the decoder works out from those bytes (the
document, the checks of every field, the model's input check, the requested outputs) is then the
same as last time, and only the tensors' data differ. A :class:`RequestPlans` remembers, per body
"skeleton", what the full decoder (:func:`pyserve.protocol.kserve.decode_request`) made of it:

- KServe JSON: the skeleton is what ``pyserve._core.scan_kserve_request`` leaves once it lifted the
  inputs' ``data`` arrays out (the same bytes the full decoder parses with orjson), and the
  request's ``id`` when it is a string of printable ASCII without escapes; with a plan, each data
  array is decoded by ``pyserve._core.decode_json_tensor`` into the planned shape, and the id is
  the lifted text. The plan used last is tried first, in one pass over the body: its
  ``pyserve._core.JsonSkeleton`` compares the bytes around the spans and decodes each data array
  as it reads it (no scan, no skeleton built), and takes exactly the bodies that path would.
- The binary tensor extension: the skeleton is the JSON header (the first
  ``Inference-Header-Content-Length`` bytes, a plain id lifted as from a JSON body) and the length
  of the tensors' bytes after it; with a plan, each tensor is an array over its planned bytes of
  the body (no copy), as the full decoder makes it.
- msgpack: the body's length and its bytes but the tensors' ``bin`` payloads (found once by walking
  the body with ``msgpack.Unpacker``); a body equal to a plan's around the payloads is the same
  document but for the payloads' bytes, each then viewed as its planned array.

A plan is made only from a body the full decoder took, for one model version's input check (make
one :class:`RequestPlans` per model version); a body without a plan, or whose data the fast C++
decoder declines (NaN tokens in an integer tensor, out-of-range numbers...), is decoded by the full
decoder, with its errors. So the result is always the full decoder's: ``tests/test_request_plans.py``
checks it differentially. BYTES tensors, JSON data not lifted by the scanner, and mixed JSON and
binary inputs are never planned.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import orjson

from pyserve import _core
from pyserve.datatypes import NUMPY_DTYPES
from pyserve.protocol import InferRequest, InputCheck, kserve, msgpack_codec
from pyserve.protocol.kserve_json import ID_ENTRY, lifted_id

# Skeletons remembered per model version and encoding; a new one takes the place of the one used
# longest ago (see PLAN_EVERY_WHEN_FULL), so that skeletons seen once (a new parameter value each
# time) do not leave a version without plans for good.
MAX_PLANS = 16
MAX_SKELETON_BYTES = 4096  # a longer skeleton (many inputs, a long id) is not remembered
# msgpack plans are tried in turn (the bytes around the payloads compared): a few, of small bodies.
MAX_MSGPACK_PLANS = 4
# Once an encoding's plans are full, a body without a plan is planned (pushing out the plan used
# longest ago) only at every PLAN_EVERY_WHEN_FULL-th such body that could be planned (BYTES bodies,
# say, are not counted): a client whose every body is a new
# skeleton (a new parameter value each time) then pays for a plan it never uses one time in eight,
# and a steady client still gets its plan within a few requests.
PLAN_EVERY_WHEN_FULL = 8
MAX_MSGPACK_BODY_BYTES = 64 << 10


class _Plan:
    """What the full decoder made of one skeleton: the tensors in body order, and the request's
    other fields. A JSON plan's tensors are (name, datatype, shape, count); a binary or msgpack
    plan's (name, dtype, shape, start), the start of the data from the header's end (binary) or
    the body's start (msgpack)."""

    # length and pieces: a msgpack plan's body length, and its bytes but the payloads, as
    # (begin, end, bytes).
    # skeleton: a JSON plan's _core.JsonSkeleton, which matches and decodes a body in one pass.
    # served, reply: what the infer fast path keeps per plan (pyserve.server.fast_infer): whether its
    # requests are the fast path's (their parameters and requested outputs checked once), and the
    # form of their reply.
    __slots__ = ("id", "input_parameters", "length", "outputs", "parameters", "pieces", "reply", "served",
                 "skeleton", "tensors")

    def __init__(self, tensors: tuple, req: InferRequest) -> None:
        self.tensors = tensors
        self.id = req.id
        self.parameters = req.parameters
        self.outputs = req.outputs
        self.input_parameters = req.input_parameters
        self.served: bool | None = None
        self.reply: Any = None

    def request(self, inputs: dict[str, np.ndarray], request_id: str | None) -> InferRequest:
        # The fields are shared between the requests of one plan: the server only reads them.
        return InferRequest(inputs, request_id, self.parameters, self.outputs, self.input_parameters)


class RequestPlans:
    """The decode plans of one model version (``datatypes``: its inputs' datatypes by name;
    ``check``: its input check). Not thread-safe: use it from the event loop's thread.

    ``hit`` is the plan that decoded the last body (None when the full decoder did): a caller may
    keep what it works out of a plan's requests on it (:class:`_Plan`'s ``served`` and ``reply``)."""

    def __init__(self, datatypes: dict[str, str], check: InputCheck | None) -> None:
        self._datatypes = datatypes
        self._check = check
        self._json: dict[bytes, _Plan] = {}
        self._binary: dict[tuple[bytes, int], _Plan] = {}
        self._msgpack: list[_Plan] = []
        self._misses_when_full = {"json": 0, "binary": 0, "msgpack": 0}
        self.hit: _Plan | None = None

    def decode_json(self, body: bytes | bytearray) -> InferRequest:
        """``kserve.decode_request(body, None, check)``; raises what it raises."""
        self.hit = tried = None
        if self._json and type(body) is bytes:
            # The plan used last (a steady client's) matched in one pass, data decoded as it goes.
            tried = next(reversed(self._json.values()))
            hit = tried.skeleton.match(body)
            if hit is not None:
                inputs, request_id = hit
                self.hit = tried
                return tried.request(inputs, tried.id if request_id is None else request_id)
        scanned = _core.scan_kserve_request(body) if type(body) is bytes else None
        if scanned is not None:
            skeleton, spans = scanned
            id_span = spans[-1] if spans and spans[-1][0] == ID_ENTRY else None
            # A plain id is lifted like the data: requests that differ in their ids alone share a plan.
            request_id = lifted_id(body, spans)
            plan = self._json.get(skeleton)
            # The plan match refused takes no second try: it holds exactly when this would.
            if plan is not None and plan is not tried and len(spans) == len(plan.tensors):
                inputs = {}
                decode = _core.decode_json_tensor
                for (name, datatype, shape, count), (_, begin, end) in zip(plan.tensors, spans):
                    # As kserve_json.array_from_json: a count the span cannot hold is not tried.
                    fits = count <= (end - begin) // 2 + 1
                    flat = decode(body, begin, end, datatype, count) if fits else None
                    if type(flat) is not np.ndarray:
                        break  # declined or refused: the full decoder decides, with its messages
                    inputs[name] = flat.reshape(shape)
                else:
                    _used(self._json, skeleton, plan)
                    self.hit = plan
                    return plan.request(inputs, plan.id if request_id is None else request_id)
        req = kserve.decode_request(body, None, self._check)
        if (scanned is not None and len(scanned[0]) <= MAX_SKELETON_BYTES
                and self._plannable(req) and self._may_plan("json", len(self._json), MAX_PLANS)):
            self._plan_json(body, scanned, id_span, req)
        return req

    def _plannable(self, req: InferRequest) -> bool:
        """Whether a plan can be made of ``req`` as far as its arrays say (inputs of the model, not
        BYTES, not empty): a body that cannot be planned in any case is no miss for
        :meth:`_may_plan` (a client of BYTES bodies, say, took the every-PLAN_EVERY_WHEN_FULL-th
        turns in a steady pattern, and another's new skeleton then waited for good)."""
        datatypes = self._datatypes
        for name, arr in req.inputs.items():
            datatype = datatypes.get(name)
            if datatype is None or datatype == "BYTES" or arr.size == 0:
                return False
        return True

    def _may_plan(self, encoding: str, plans: int, limit: int) -> bool:
        """Whether a body without a plan is planned, ``encoding`` holding ``plans`` of ``limit``."""
        if plans < limit:
            return True
        misses = self._misses_when_full[encoding] = self._misses_when_full[encoding] + 1
        return misses % PLAN_EVERY_WHEN_FULL == 0

    def _plan_json(self, body: bytes, scanned: tuple[bytes, list], id_span: tuple | None,
                   req: InferRequest) -> None:
        skeleton, spans = scanned  # spans without the id's (lifted_id took it off)
        # Every input's data lifted, in entry order, numeric (BYTES data stay in the skeleton).
        if [entry for entry, _, _ in spans] != list(range(len(req.inputs))):
            return
        # The inputs are the model's, numeric and not empty: the caller asked _plannable.
        tensors = [(name, self._datatypes[name], arr.shape, arr.size) for name, arr in req.inputs.items()]
        plan = _Plan(tuple(tensors), req)
        plan.skeleton = _core.JsonSkeleton(
            body, spans if id_span is None else [*spans, id_span],
            [(name, datatype, shape) for name, datatype, shape, _ in tensors])
        if id_span is not None:
            # Each body of this skeleton brings its own id: the plan need not hold this one (which
            # the skeleton's size limit does not bound: up to the body's size, 16 plans of it).
            plan.id = None
        _remember(self._json, skeleton, plan)

    def decode_binary(self, body: bytes | bytearray, header_length: str) -> InferRequest:
        """``kserve.decode_request(body, header_length, check)``; raises what it raises."""
        # Plain ASCII digits only (int() also takes "+3", "1_0", other scripts' digits, blanks): any
        # other form is the full decoder's to read or refuse.
        plain = header_length.isascii() and header_length.isdigit() and len(header_length) < 10
        length = int(header_length) if plain else -1
        self.hit = key = None
        if 0 <= length <= min(len(body), MAX_SKELETON_BYTES):
            header = bytes(body[:length])
            request_id = None
            if b'"id"' in header:  # a plain id is lifted, as from a JSON body: new ids, one plan
                scanned = _core.scan_kserve_request(header)
                lifted = lifted_id(header, scanned[1]) if scanned is not None else None
                if lifted is not None and not scanned[1]:  # the id alone lifted (no JSON data)
                    header, request_id = scanned[0], lifted
            key = (header, len(body) - length)  # the tensors' bytes follow the header, whatever its id
            plan = self._binary.get(key)
            if plan is not None:
                _used(self._binary, key, plan)
                inputs = _arrays(body, plan.tensors, length)
                self.hit = plan
                return plan.request(inputs, plan.id if request_id is None else request_id)
        req = kserve.decode_request(body, header_length, self._check)
        if (key is not None and self._plannable(req)
                and self._may_plan("binary", len(self._binary), MAX_PLANS)):
            self._plan_binary(key, req)
        return req

    def _plan_binary(self, key: tuple[bytes, int], req: InferRequest) -> None:
        try:
            entries = orjson.loads(key[0])["inputs"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return  # NaN tokens and the like: the full decoder's reading, not planned
        tensors = []
        offset = 0  # from the header's end
        for entry, (name, arr) in zip(entries, req.inputs.items()):
            params: Any = entry.get("parameters")
            size = params.get("binary_data_size") if type(params) is dict else None
            if type(size) is not int or entry.get("name") != name:
                return  # JSON data among binary tensors: not planned (BYTES ones _plannable refused)
            tensors.append((name, NUMPY_DTYPES[self._datatypes[name]], arr.shape, offset))
            offset += size
        if len(tensors) == len(req.inputs) == len(entries):
            _remember(self._binary, key, _Plan(tuple(tensors), req))

    def decode_msgpack(self, body: bytes | bytearray) -> InferRequest:
        """``msgpack_codec.decode_request(body, check)``; raises what it raises."""
        size = len(body)
        self.hit = None
        for plan in self._msgpack:
            # The same bytes but the tensors' bin payloads, at the same places: the same document.
            if plan.length != size:
                continue
            for begin, end, piece in plan.pieces:
                if body[begin:end] != piece:
                    break
            else:
                if plan is not self._msgpack[-1]:
                    self._msgpack.remove(plan)  # the plan used last goes last: the first goes first
                    self._msgpack.append(plan)
                self.hit = plan
                return plan.request(_arrays(body, plan.tensors, 0), plan.id)
        req = msgpack_codec.decode_request(body, self._check)
        held = len(self._msgpack)
        if (size <= MAX_MSGPACK_BODY_BYTES and self._plannable(req)
                and self._may_plan("msgpack", held, MAX_MSGPACK_PLANS)):
            self._plan_msgpack(bytes(body), req)
        return req

    def _plan_msgpack(self, body: bytes, req: InferRequest) -> None:
        spans = _msgpack_data_spans(body)
        if spans is None or len(spans) != len(req.inputs):
            return
        tensors = []
        pieces = []
        at = 0
        for (begin, end), (name, arr) in zip(spans, req.inputs.items()):  # _plannable was asked
            tensors.append((name, NUMPY_DTYPES[self._datatypes[name]], arr.shape, begin))
            pieces.append((at, begin, body[at:begin]))
            at = end
        pieces.append((at, len(body), body[at:]))
        plan = _Plan(tuple(tensors), req)
        plan.length, plan.pieces = len(body), tuple(pieces)
        if len(self._msgpack) >= MAX_MSGPACK_PLANS:
            del self._msgpack[0]  # the one used longest ago
        self._msgpack.append(plan)


def _arrays(body: bytes | bytearray, tensors: tuple, offset: int) -> dict[str, np.ndarray]:
    """The inputs of a binary or msgpack plan's ``tensors`` (name, dtype, shape, start) over the bytes
    of ``body`` (no copy), each from ``offset + start``; the plan's body length vouches for the size."""
    ndarray = np.ndarray
    if len(tensors) == 1:  # the common request: no comprehension (a function made and called)
        name, dtype, shape, start = tensors[0]
        return {name: ndarray(shape, dtype, body, offset + start)}
    return {name: ndarray(shape, dtype, body, offset + start) for name, dtype, shape, start in tensors}


def _remember(plans: dict, key: Any, plan: _Plan) -> None:
    """``plans[key] = plan``, last; the plan used longest ago forgotten first when there are
    MAX_PLANS (none when ``key`` has one: a skeleton whose data the C++ decoder declined is planned
    again, and must not push out another)."""
    if plans.pop(key, None) is None and len(plans) >= MAX_PLANS:
        del plans[next(iter(plans))]  # dicts keep insertion order: the first is the one used longest ago
    plans[key] = plan


def _used(plans: dict, key: Any, plan: _Plan) -> None:
    """Moves the plan just used last in ``plans`` (dicts keep insertion order: the first is then the
    one used longest ago). At every hit, not only once full: the order of the hits before the plans
    were full decides which plan goes too (a plan used just before they filled up went first, in
    place of one used once long before)."""
    del plans[key]
    plans[key] = plan


def _msgpack_data_spans(body: bytes) -> list[tuple[int, int]] | None:
    """Where the ``data`` payload of each entry of ``inputs`` lies in a msgpack request ``body``
    (byte offsets of the bin's bytes, its header excluded), in entry order; None when the body is
    not that simple (a repeated key, data that is not bin)."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(body) or 1)
    unpacker.feed(body)
    spans: list[tuple[int, int]] | None = None
    try:
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() != "inputs":
                unpacker.skip()
                continue
            if spans is not None:
                return None  # "inputs" twice: msgpack keeps the last, whose payloads are not these
            spans = []
            for _ in range(unpacker.read_array_header()):
                found = 0
                for _ in range(unpacker.read_map_header()):
                    if unpacker.unpack() != "data":
                        unpacker.skip()
                        continue
                    data = unpacker.unpack()
                    end = unpacker.tell()
                    if type(data) is not bytes:
                        return None
                    spans.append((end - len(data), end))
                    found += 1
                if found != 1:
                    return None
    except Exception:  # noqa: BLE001 - the decoder took it; anything unusual is just not planned
        return None
    return spans
