"""The infer fast path's reply forms (a decode plan's reply made of pieces kept from its first
reply, :class:`pyserve.server.fast_infer._ReplyForm`) against the general path, byte for byte.

``tests/test_fast_infer.py`` and ``test_fast_infer_random.py`` send requests to models whose
outputs are the same shapes for the same inputs (ONNX, identity). A form is only right while the
model's outputs keep the dtypes and shapes it was made for; these tests use Python models whose
outputs do not: an output whose length changes from call to call, or only after a few calls (once
the form is in use) and back, beside 0-d, empty, boolean, non-contiguous, big-endian (cast by the
backend) and BYTES outputs; each body sent several times (the later ones decoded by a plan, and
answered by its form where it has one), one at a time or pipelined on one connection. And, in
process: that a form is in fact made and used (or dropped), that an observer added once a form
exists still sees every answer, and that a plan's requests left to the general path stay left.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
from conftest import Repo, Server, encode, run_service, toml_tensors
from test_fast_infer import RawClient, _req, _split, answer_of, reply_outputs

pytest.importorskip("onnx")


def _python(repo: Repo, name: str, source: str, outputs: list[tuple[str, str, list[int]]],
            max_batch_size: int = 0) -> None:
    repo.python(name, source, f'backend = "python"\nmax_batch_size = {max_batch_size}\n'
                + toml_tensors("inputs", [("x", "FP32", [-1])]) + toml_tensors("outputs", outputs))


def build_repo(repo: Repo) -> None:
    """Python models, one FP32 input ``x`` [-1] each, whose outputs a reply form must follow or refuse:
    vary (y's length changes at every call, s 0-d, e empty, b BOOL, d FP64), late (y as x for three
    calls, then twice as long for three, and so on), fixed (fixed shapes of several dtypes: a
    transposed INT32, a big-endian FP32 the backend casts, UINT16, a 0-d INT8) and strs (y beside a
    BYTES output whose length changes)."""
    _python(repo, "vary", """
        import itertools
        import numpy as np
        class Model:
            def __init__(self):
                self.calls = itertools.count()
            def infer(self, inputs):
                k = next(self.calls)
                x = inputs["x"]
                return {"y": x[: 1 + k % 3], "s": np.int64(k), "e": np.zeros(0, np.float16),
                        "b": np.array([[k % 2 == 0], [True]]), "d": x.astype(np.float64)}
        """, [("y", "FP32", [-1]), ("s", "INT64", []), ("e", "FP16", [-1]), ("b", "BOOL", [-1, -1]),
              ("d", "FP64", [-1])])
    _python(repo, "late", """
        import itertools
        import numpy as np
        class Model:
            def __init__(self):
                self.calls = itertools.count()
            def infer(self, inputs):
                x = inputs["x"]
                return {"y": x if (next(self.calls) // 3) % 2 == 0 else np.concatenate([x, x]),
                        "n": np.arange(2, dtype=np.int32)}
        """, [("y", "FP32", [-1]), ("n", "INT32", [2])])
    _python(repo, "fixed", """
        import numpy as np
        class Model:
            def infer(self, inputs):
                x = inputs["x"]
                return {"y": x * 2, "t": np.arange(6, dtype=np.int32).reshape(2, 3).T, "be": x.astype(">f4"),
                        "u": np.arange(3, dtype=np.uint16), "z": np.zeros((), np.int8)}
        """, [("y", "FP32", [-1]), ("t", "INT32", [3, 2]), ("be", "FP32", [-1]), ("u", "UINT16", [3]),
              ("z", "INT8", [])])
    _python(repo, "strs", """
        import itertools
        import numpy as np
        class Model:
            def __init__(self):
                self.calls = itertools.count()
            def infer(self, inputs):
                return {"y": inputs["x"], "w": np.array([b"w" * next(self.calls)], dtype=object)}
        """, [("y", "FP32", [-1]), ("w", "BYTES", [1])])


MODELS = ("vary", "late", "fixed", "strs")
OUTPUTS = {"vary": ["y", "s", "e", "b", "d"], "late": ["y", "n"], "fixed": ["y", "t", "be", "u", "z"],
           "strs": ["y", "w"]}
X = np.arange(4, dtype=np.float32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    r = Repo(tmp_path_factory.mktemp("forms") / "models")
    build_repo(r)
    return r


@pytest.fixture(scope="module")
def servers(serve_module: Any, repo: Repo) -> tuple[Server, Server]:
    """(fast path on, fast path off) over the same repository."""
    return serve_module([repo.root]), serve_module([repo.root, "--no-infer-fast-path"])


def bodies(model: str, x: np.ndarray = X) -> dict[str, bytes]:
    """Requests to ``model`` by name: msgpack, binary (every output binary), JSON asking for binary
    outputs, requested outputs (binary, JSON, one of several), plain JSON; each without an id (a
    form's) and with two ids (the same plan for JSON and binary bodies, which lift the id)."""
    path = f"/v2/models/{model}/infer"
    y_json = {"outputs": [{"name": "y", "parameters": {"binary_data": False}}]}
    out = {}
    for tag, doc in (("", {}), ("-id1", {"id": "r1"}), ("-id2", {"id": "r2"})):
        for name, protocol, extra in [
                ("msgpack", "msgpack", {}),
                ("binary", "binary", {}),
                ("json-bdo", "json", {"parameters": {"binary_data_output": True}}),
                ("json-y-binary", "json", {"outputs": [{"name": "y", "parameters": {"binary_data": True}}]}),
                ("binary-y", "binary", {"outputs": [{"name": "y"}]}),
                ("binary-y-json", "binary", y_json),
                ("binary-reversed", "binary", {"outputs": [{"name": n} for n in OUTPUTS[model][::-1]]}),
                ("json", "json", {})]:
            body, headers = encode(protocol, {"x": x}, **extra, **doc)
            out[name + tag] = _req(path, body, headers)
    return out


def test_replies_of_models_whose_outputs_change_are_the_general_paths(servers: tuple[Server, Server]) -> None:
    """Every body of :func:`bodies`, for each model, sent four times in a shuffled order (the same on
    both servers, whose models count their calls): the same status, headers (but Date) and body on
    both paths, all 200 but the BYTES model's (its binary replies are the general encoder's)."""
    clients = [RawClient(s.port) for s in servers]
    rng = random.Random(8)
    try:
        for model in MODELS:
            reqs = bodies(model)
            for round_ in range(4):
                names = sorted(reqs)
                rng.shuffle(names)
                for name in names:
                    got_fast, got_general = (c.exchange(reqs[name]) for c in clients)
                    assert got_fast == got_general, (model, name, round_)
                    assert got_fast[0] == b"HTTP/1.1 200 OK", (model, name, got_fast)
    finally:
        for c in clients:
            c.close()


def test_pipelined_replies_of_one_plan_are_the_general_paths(servers: tuple[Server, Server]) -> None:
    """Twelve bodies of one skeleton (no id; new data each) sent at once on one connection, for each
    model and encoding: the answers, in order, are the general path's."""
    for model in MODELS:
        for name in ("msgpack", "binary", "json-bdo", "binary-y"):
            raws = b"".join(bodies(model, X + i)[name] for i in range(12))
            answers = []
            for server in servers:
                client = RawClient(server.port)
                try:
                    client.sock.sendall(raws)
                    answers.append([client.exchange(b"") for _ in range(12)])
                finally:
                    client.close()
            assert answers[0] == answers[1], (model, name)


def _late_expected(call: int, x: np.ndarray) -> np.ndarray:
    return x if (call // 3) % 2 == 0 else np.concatenate([x, x])


@pytest.mark.parametrize("name", ["msgpack", "binary", "json-bdo", "binary-y"])
def test_a_plans_form_is_made_used_and_dropped_when_the_shapes_change(repo: Repo, name: str) -> None:
    """In process, ``late`` (y as x for three calls, then twice as long): the plan's second request
    makes its form, the third is answered by it, the fourth (y longer) drops it for good; every
    answer holds the model's outputs (y as the model returned it), as the general path would."""
    from pyserve.server.fast_infer import _NO_FORM, FastInfer, _ReplyForm

    async def body(service: Any, errors: Any) -> list[tuple[str, list[int]]]:
        fast = FastInfer(service)
        seen = []
        for call in range(8):
            x = X + call
            url, headers, payload = _split(bodies("late", x)[name])
            result = fast.serve(url, headers, payload)
            assert result is not None, call  # the fast path's
            outputs = reply_outputs(await answer_of(result))
            plan = fast._targets[url].plans().hit
            kept = None if plan is None else plan.reply
            form = ("none" if kept is None else "form" if isinstance(kept, _ReplyForm)
                    else "dropped" if kept is _NO_FORM else "?")
            y = outputs["y"]
            assert y["shape"] == list(_late_expected(call, x).shape), (call, y)
            seen.append((form, y["shape"]))
        return seen

    seen = run_service(repo.root, body)
    # The first body is decoded in full (no plan yet); the second by the plan, which makes the form.
    assert [form for form, _ in seen] == ["none", "form", "form", "dropped", "dropped", "dropped",
                                          "dropped", "dropped"], seen


def test_an_observer_added_once_a_form_exists_sees_every_answer(repo: Repo) -> None:
    """A plan answered by its form, then an observing hook added (the payload log switched on): the
    observer is called for each later request of that plan, with the outputs of its answer."""
    from pyserve.server.fast_infer import FastInfer, _ReplyForm
    from pyserve.service.hooks import InferHooks

    seen: list[dict[str, Any]] = []

    class Observer(InferHooks):
        def observes(self, runner: Any) -> bool:
            return True

        def after_response(self, ctx: Any, runner: Any, request: Any, response: Any) -> None:
            seen.append({k: np.array(v) for k, v in response.outputs.items()})

    async def body(service: Any, errors: Any) -> None:
        fast = FastInfer(service)
        for call in range(5):
            if call == 3:
                service.add_hooks(Observer())
            url, headers, payload = _split(bodies("fixed", X + call)["binary"])
            result = fast.serve(url, headers, payload)
            assert result is not None, call
            assert reply_outputs(await answer_of(result))["y"]["shape"] == [4]
            if call == 2:
                plan = fast._targets[url].plans().hit
                assert isinstance(plan.reply, _ReplyForm)  # the form answers this plan now

    run_service(repo.root, body)
    assert len(seen) == 2
    for call, outputs in zip((3, 4), seen):
        assert sorted(outputs) == ["be", "t", "u", "y", "z"]
        np.testing.assert_array_equal(outputs["y"], (X + call) * 2)


@pytest.mark.parametrize("extra", [
    {"parameters": {"priority": 1}},
    {"parameters": {"timeout": 10_000_000}},
    {"outputs": [{"name": "y", "parameters": {"classification": 2}}]},
    {"parameters": {"binary_data_output": True, "color": "red"}},
])
def test_a_plans_requests_left_to_the_general_path_stay_left(repo: Repo, extra: dict[str, Any]) -> None:
    """Bodies of one skeleton whose parameters or requested outputs are the general path's: left to
    it (serve answers None) every time, the ones decoded by a plan (which keeps that verdict) too,
    while a plain body of the same model is taken each time."""
    from pyserve.server.fast_infer import FastInfer

    async def body(service: Any, errors: Any) -> list[bool]:
        fast = FastInfer(service)
        taken = []
        for call in range(4):
            for protocol in ("json", "binary"):
                doc = json.loads(json.dumps(extra))  # encode() adds to a binary body's parameters
                left = _split(_req("/v2/models/fixed/infer", *encode(protocol, {"x": X + call}, **doc)))
                plain = _split(_req("/v2/models/fixed/infer", *encode(protocol, {"x": X + call})))
                result = fast.serve(*plain)
                assert result is not None, (call, protocol)
                await answer_of(result)
                taken.append(fast.serve(*left) is not None)
        return taken

    assert run_service(repo.root, body) == [False] * 8
