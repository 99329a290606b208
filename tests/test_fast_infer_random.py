"""The infer fast path against the general path with random requests, byte for byte.

``tests/test_fast_infer.py`` sends a fixed corpus; these send what a client may vary at will, as
its bytes arrive: every numeric datatype, empty and small batches, ids of any length (which shift
the tensors' data to any alignment in msgpack and binary bodies), requested outputs with and
without ``binary_data`` beside ``binary_data_output``, bodies sent in chunks (a bytearray for the
decode plans) or pipelined, the same skeleton again (the plans' hits); and model control (loads,
unloads, reloads with another config, failed loads) between requests, which the fast path's kept
lookups must follow. Two servers over one repository, one with ``--no-infer-fast-path``: every
answer must be the same bytes but the Date header.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
from conftest import DTYPES, Repo, Server, encode
from test_fast_infer import RawClient, _req, build_repo

pytest.importorskip("onnx")

NUMERIC = [d for d in DTYPES if d != "BYTES"]


@pytest.fixture(scope="module")
def servers(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, Server]:
    """(fast path on, fast path off) over test_fast_infer's repository."""
    repo = Repo(tmp_path_factory.mktemp("random") / "models")
    build_repo(repo)
    return serve_module([repo.root]), serve_module([repo.root, "--no-infer-fast-path"])


def _numeric_request(rng: random.Random, skeleton: dict[str, Any]) -> bytes:
    """A request to the ``numeric`` model (every numeric datatype, identity) of the shape, id,
    parameters and requested outputs kept in ``skeleton`` (chosen at its first request), with new
    data each time."""
    rows = skeleton.setdefault("rows", rng.choice([0, 0, 1, 2, 3, 4]))
    batch = skeleton.setdefault("batch", rng.choice([1, 2]) if rows % 2 == 0 else 1)
    protocol = skeleton.setdefault("protocol", rng.choice(["json", "binary", "msgpack"]))
    inputs = {}
    for d in NUMERIC:
        dtype = DTYPES[d]
        data = bytes(rng.getrandbits(8) for _ in range(rows * dtype.itemsize))
        arr = np.frombuffer(data, np.uint8).astype(bool) if d == "BOOL" else np.frombuffer(data, dtype)
        if dtype.kind == "f":  # JSON has no NaN in other datatypes than these: keep them finite
            arr = np.where(np.isfinite(arr), arr, 0).astype(dtype)
        inputs[f"in_{d.lower()}"] = arr.reshape(batch, -1)
    doc: dict[str, Any] = {}
    rid = skeleton.setdefault("id", rng.choice([None, "", "a", "ab", "\u00e9", "x" * rng.randint(0, 40),
                                                'q"\\\n']))
    if rid is not None:
        doc["id"] = rid if rng.random() < 0.7 else rid + str(rng.randint(0, 99))
    if skeleton.setdefault("some outputs", rng.random() < 0.5):
        chosen = skeleton.setdefault("chosen", rng.sample(NUMERIC, rng.randint(1, len(NUMERIC))))
        flags = skeleton.setdefault("flags", [rng.choice([None, True, False]) for _ in chosen])
        doc["outputs"] = [{"name": f"out_{c.lower()}"} if f is None or protocol == "msgpack"
                          else {"name": f"out_{c.lower()}", "parameters": {"binary_data": f}}
                          for c, f in zip(chosen, flags)]
    binary_output = skeleton.setdefault("binary_data_output", rng.choice([None, True, False]))
    body, headers = encode(protocol, inputs, **doc)
    if protocol == "binary":
        length = int(headers["Inference-Header-Content-Length"])
        header = json.loads(body[:length])
        header["parameters"]["binary_data_output"] = binary_output
        if binary_output is None:
            del header["parameters"]
        new = json.dumps(header).encode()
        body, headers = new + body[length:], {**headers, "Inference-Header-Content-Length": str(len(new))}
    elif protocol == "json" and binary_output is not None:
        body = json.dumps({**json.loads(body), "parameters": {"binary_data_output": binary_output}}).encode()
    return _req("/v2/models/numeric/infer", body, headers, rng if rng.random() < 0.4 else None)


@pytest.mark.parametrize("seed", range(4))
def test_random_requests_get_the_same_bytes_on_both_paths(servers: tuple[Server, Server], seed: int) -> None:
    """Skeletons of 1 to 5 requests, one at a time or pipelined: an empty JSON output beside a
    binary one, say, which the fast path once answered 500."""
    rng = random.Random(seed)
    fast, general = (RawClient(s.port) for s in servers)
    statuses: dict[bytes, int] = {}
    try:
        for _ in range(30):
            skeleton: dict[str, Any] = {}
            requests = [_numeric_request(rng, skeleton) for _ in range(rng.randint(1, 5))]
            pipelined = rng.random() < 0.5
            if pipelined:  # all at once: answered in order
                fast.sock.sendall(b"".join(requests))
                general.sock.sendall(b"".join(requests))
            for raw in requests:
                answer = fast.exchange(b"" if pipelined else raw)
                assert answer == general.exchange(b"" if pipelined else raw), raw[:600]
                statuses[answer[0]] = statuses.get(answer[0], 0) + 1
    finally:
        fast.close()
        general.close()
    assert statuses.keys() == {b"HTTP/1.1 200 OK"}  # answers, not refusals of a malformed corpus


def test_tensors_at_any_alignment_are_read_as_the_full_decoder_reads_them(
        servers: tuple[Server, Server]) -> None:
    """msgpack and binary bodies whose tensors' data start at every offset modulo 8 (the id's
    length shifts them), each sent three times with new data (the plan's hits), to an ONNX, a
    Python and an identity model."""
    fast, general = (RawClient(s.port) for s in servers)
    try:
        for protocol in ("msgpack", "binary"):
            for k in range(9):
                for model in ("affine", "pytypes", "numeric"):
                    for rep in range(3):
                        if model == "affine":
                            inputs = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) * (rep + 1) + k}
                        else:
                            inputs = {f"in_{d.lower()}": (np.arange(6) % 2 == rep % 2 if d == "BOOL" else
                                                          (np.arange(6) * (rep + 1) + k).astype(DTYPES[d])
                                                          ).reshape(2, 3) for d in NUMERIC}
                            if model == "pytypes":
                                inputs["in_bytes"] = np.array([[b"ab", b"c"]], dtype=object)
                        body, headers = encode(protocol, inputs, id="i" * k)
                        raw = _req(f"/v2/models/{model}/infer", body, headers)
                        answer = fast.exchange(raw)
                        assert answer == general.exchange(raw), (protocol, k, model)
                        assert answer[0] == b"HTTP/1.1 200 OK", answer
    finally:
        fast.close()
        general.close()


def test_model_control_between_requests_is_followed_by_both_paths(serve: Any, tmp_path: Any) -> None:
    """Loads, unloads and reloads (another config, a config that fails) of a model and of its
    versions between requests naming no version, a version, or one spelled with a leading zero:
    the fast path's kept lookups answer what the general path's fresh ones answer."""
    repo = Repo(tmp_path / "models")
    repo.onnx("affine", {1: 1.5, 2: 2.5, 3: 3.5}, config="max_batch_size = 16\n[version_policy]\nall = true")
    fast, general = serve([repo.root]), serve([repo.root, "--no-infer-fast-path"])
    a, b = RawClient(fast.port), RawClient(general.port)
    rng = random.Random(6)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    control = ["/v2/repository/models/affine/load", "/v2/repository/models/affine/unload"] + [
        f"/v2/repository/models/affine/versions/{v}/{what}" for v in (1, 2, 3) for what in ("load", "unload")]
    configs = [b'{"parameters": {"config": "{\\"max_batch_size\\": 4}"}}',
               b'{"parameters": {"config": "{\\"max_batch_size\\": 16}"}}',
               b'{"parameters": {"config": "{\\"backend\\": \\"nope\\"}"}}']
    try:
        for step in range(80):
            op = rng.choice(control)
            body = rng.choice(configs) if op.endswith("affine/load") and rng.random() < 0.6 else b""
            assert a.exchange(_req(op, body, {}))[0] == b.exchange(_req(op, body, {}))[0], (op, body)
            for _ in range(rng.randint(1, 4)):
                protocol = rng.choice(["json", "binary", "msgpack"])
                version = rng.choice([None, "1", "2", "3", "02"])
                rows = rng.choice([1, 2, 5])
                payload, headers = encode(protocol, {"x": np.resize(x, (rows, 4)) + step}, id=f"r{step}")
                path = "/v2/models/affine" + (f"/versions/{version}" if version else "") + "/infer"
                raw = _req(path, payload, headers)
                assert a.exchange(raw) == b.exchange(raw), (step, op, path)
    finally:
        a.close()
        b.close()
