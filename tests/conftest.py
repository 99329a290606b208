"""Shared fixtures of the real-server tests: model repositories written into tmp folders, and
``pyserve serve`` started as a subprocess on a free 127.0.0.1 port.

A :class:`Repo` writes models of the three kinds the tests need: ONNX models built with
``onnx.helper`` (``y = x * scale + bias``, so each version gives different numbers), Python-backend
models from source text, and identity-backend models from tensor specs. :func:`start_server` runs
``python -m pyserve serve ...`` and waits until it answers; :meth:`Server.stop` sends SIGTERM and
asserts the process exits 0 within 30 s (every server fixture stops its server that way).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import requests

START_TIMEOUT_S = 60.0  # a cold start imports numpy, aiohttp and onnxruntime on a busy 2-core box
STOP_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------------------------
# Model repositories

def onnx_affine_bytes(scale: float, bias: float, width: int = 4, batch: bool = True) -> bytes:
    """An ONNX model ``y = x * scale + bias`` (FP32 [N, width] in and out; N dynamic when ``batch``),
    plus ``argmax`` (INT64 [N]) of ``y``, so one model has two outputs of two datatypes."""
    import onnx
    from onnx import TensorProto, helper

    first: Any = "N" if batch else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, width])
    am = helper.make_tensor_value_info("argmax", TensorProto.INT64, [first])
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["xs"]),
        helper.make_node("Add", ["xs", "bias"], ["y"]),
        helper.make_node("ArgMax", ["y"], ["argmax"], axis=1, keepdims=0),
    ]
    # A per-column weight: argmax then depends on more than the input's own argmax.
    weights = [scale * (1.0 + 0.25 * i) for i in range(width)]
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [width], weights),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [bias]),
    ]
    graph = helper.make_graph(nodes, "affine", [x], [y, am], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of an ONNX file run in-process with onnxruntime (the reference numbers)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x})))


def toml_tensors(kind: str, specs: Sequence[tuple[str, str, Sequence[int]]]) -> str:
    """``[[inputs]]`` / ``[[outputs]]`` tables for ``(name, datatype, shape)`` specs."""
    return "".join(
        f'[[{kind}]]\nname = "{n}"\ndatatype = "{d}"\nshape = {json.dumps(list(s))}\n\n' for n, d, s in specs
    )


@dataclass
class Repo:
    """A model repository folder under construction."""

    root: Path

    def model_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def config(self, name: str, text: str) -> Path:
        """Write ``name/config.toml``."""
        path = self.model_dir(name) / "config.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def onnx_version(self, name: str, version: int, scale: float, bias: float = 0.0, width: int = 4) -> Path:
        """Write ``name/<version>/model.onnx`` (an affine model, see :func:`onnx_affine_bytes`)."""
        vdir = self.model_dir(name) / str(version)
        vdir.mkdir(exist_ok=True)
        path = vdir / "model.onnx"
        path.write_bytes(onnx_affine_bytes(scale, bias, width))
        return path

    def onnx(self, name: str, versions: dict[int, float] | None = None, config: str | None = None,
             width: int = 4) -> Path:
        """An ONNX model: one affine version per ``{version: scale}`` (default ``{1: 1.0}``)."""
        for version, scale in (versions or {1: 1.0}).items():
            self.onnx_version(name, version, scale, bias=float(version), width=width)
        if config is not None:
            self.config(name, config)
        return self.root / name

    def python(self, name: str, source: str, config: str, versions: Sequence[int] = (1,)) -> Path:
        """A Python-backend model: ``source`` as ``<version>/model.py`` of each version."""
        self.config(name, config)
        for version in versions:
            vdir = self.model_dir(name) / str(version)
            vdir.mkdir(exist_ok=True)
            (vdir / "model.py").write_text(textwrap.dedent(source))
        return self.root / name

    def identity(self, name: str, specs: Sequence[tuple[str, str, Sequence[int]]],
                 max_batch_size: int = 0, extra: str = "") -> Path:
        """An identity-backend model: one input ``in_<n>`` and output ``out_<n>`` per spec."""
        inputs = [(f"in_{n}", d, s) for n, d, s in specs]
        outputs = [(f"out_{n}", d, s) for n, d, s in specs]
        self.config(name, f'backend = "identity"\nmax_batch_size = {max_batch_size}\n{extra}\n'
                    + toml_tensors("inputs", inputs) + toml_tensors("outputs", outputs))
        return self.root / name


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    """An empty repository in a fresh tmp folder."""
    return Repo(tmp_path / "models")


# ---------------------------------------------------------------------------------------------
# Servers

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout_s: float = 5.0) -> int | None:
    """The status of ``GET url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited and closed its sockets. A process killed with SIGKILL keeps
    its listening sockets until its last thread has exited: a connection the kernel hands it
    meanwhile is reset. The leader of a threaded process (a worker: ONNX Runtime's and the core's
    threads) shows as a zombie while its other threads still tear down and still hold the sockets,
    so every thread must be a zombie or gone."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):  # reaped
        return True
    for thread in threads:
        try:
            stat = (thread / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # that thread is gone
            continue
        if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
            return False
    return True


@dataclass
class Server:
    """A ``pyserve serve`` subprocess."""

    proc: subprocess.Popen
    url: str
    port: int
    log_path: Path
    returncode: int | None = field(default=None)

    def log(self) -> str:
        """What the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """The exit status; fails the test when the process does not exit in time."""
        try:
            self.returncode = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"server did not exit within {timeout_s} s of SIGTERM; log:\n{self.log()[-3000:]}")
        return self.returncode

    def stop(self) -> None:
        """SIGTERM, then assert exit status 0 within 30 s."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        code = self.wait()
        assert code == 0, f"server exited {code}; log:\n{self.log()[-3000:]}"


def start_server(args: Sequence[str], log_dir: Path, *, env: dict[str, str] | None = None,
                 wait_ready: bool = True, preexec_fn: Any = None) -> Server:
    """Run ``python -m pyserve serve *args --port P`` and wait until it listens (and is ready).

    Models load before the listener opens, so once /v2/health/live answers, startup is over;
    ``wait_ready`` then also requires /v2/health/ready to be 200. ``preexec_fn`` runs in the
    server's process before it starts (e.g. to lower its resource limits).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for attempt in range(3):  # another process may take the free port before the server binds it
        port = free_port()
        log_path = log_dir / f"server-{port}.log"
        # No drain grace unless a test asks for it: tests stop servers with SIGTERM and wait.
        grace = [] if "--drain-grace-s" in args else ["--drain-grace-s", "0"]
        cmd = [sys.executable, "-m", "pyserve", "serve", *args, *grace, "--host", "127.0.0.1", "--port",
               str(port), "--log-level", "info"]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                                    preexec_fn=preexec_fn)
        server = Server(proc, f"http://127.0.0.1:{port}", port, log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        # Polling: a subprocess gives no event to await for "listening"; 20 ms steps cost nothing.
        while time.monotonic() < deadline and proc.poll() is None:
            if http_status(server.url + "/v2/health/live", 1.0) == 200:
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            if "address already in use" in server.log().lower() and attempt < 2:
                continue
            pytest.fail(f"server exited {proc.returncode} at startup; log:\n{server.log()[-3000:]}")
        if http_status(server.url + "/v2/health/live") != 200:
            proc.kill()
            proc.wait()
            pytest.fail(f"server not live within {START_TIMEOUT_S} s; log:\n{server.log()[-3000:]}")
        if wait_ready and http_status(server.url + "/v2/health/ready") != 200:
            server.stop()
            pytest.fail(f"server live but not ready; log:\n{server.log()[-3000:]}")
        return server
    raise AssertionError("unreachable")


def _server_factory(log_dir: Path) -> Iterator[Any]:
    """Yields ``serve(args, env=None, wait_ready=True) -> Server``; then stops every server it
    started (asserting a clean exit) unless the test stopped it already."""
    started: list[Server] = []

    def _serve(args: Sequence[str], env: dict[str, str] | None = None, wait_ready: bool = True) -> Server:
        server = start_server([str(a) for a in args], log_dir, env=env, wait_ready=wait_ready)
        started.append(server)
        return server

    yield _serve
    for server in started:
        if server.returncode is None:
            server.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """A factory ``serve(args, env=None, wait_ready=True) -> Server`` for one test."""
    yield from _server_factory(tmp_path / "logs")


@pytest.fixture(scope="module")
def serve_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """As :func:`serve`, for servers shared by the tests of one module."""
    yield from _server_factory(tmp_path_factory.mktemp("logs"))


# ---------------------------------------------------------------------------------------------
# In-process service

def run_service(models: Path, body: Any) -> Any:
    """Runs ``await body(service, errors)`` on a started ModelHost over the repository ``models``;
    ``errors`` is the service's error counter (labels ``model``, ``kind``)."""
    import asyncio

    from prometheus_client import CollectorRegistry, Counter

    from pyserve.service import InferenceService, ModelHost

    async def main() -> Any:
        errors = Counter("errors", "errors", ["model", "kind"], registry=CollectorRegistry())
        async with ModelHost(models) as host:
            return await body(InferenceService(host, errors), errors)

    return asyncio.run(main())


def error_count(errors: Any, model: str, kind: str) -> float:
    """The value of the error counter of :func:`run_service` for ``model`` and ``kind``."""
    return errors.labels(model, kind)._value.get()


# ---------------------------------------------------------------------------------------------
# Cross-process helpers

def wait_until(predicate: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true. Only for state inside the server process, which gives the test
    no event to await (queue depth, in-flight count)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def model_stats(url: str, model: str) -> dict[str, Any]:
    """The stats row of the newest served version of ``model`` (GET /v2/models/{m}/stats)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats?format=pyserve", timeout=5) as resp:
        rows = json.loads(resp.read())["model_stats"]
    return max(rows, key=lambda r: int(r["version"]))


class Gate:
    """A lock file that Python models of the test repositories wait on (``GATE_MODEL``).

    While the test holds it closed (an exclusive flock), every batch of such a model blocks inside
    ``infer`` in the server process (flock releases the GIL, so the server keeps serving others);
    opening it lets them all run. Usable as a context manager: closed inside, open after."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.touch()
        self._fd: int | None = None

    def close(self) -> None:
        import fcntl

        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def open(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Gate:
        self.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()


# A Python model that waits for the Gate at ``<model folder>/gate.lock`` in every batch, then returns
# ``y = x * SCALE`` and ``seq``, the number of the batch (1, 2, ...) in this model instance, so a test
# sees in which order requests were executed.
GATE_MODEL = """
import fcntl
import itertools
from pathlib import Path

import numpy as np

SCALE = {scale}


class Model:
    def __init__(self, version_dir):
        self.lock = Path(version_dir).parent / "gate.lock"
        self.batches = itertools.count(1)

    def infer(self, inputs):
        with open(self.lock, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            fcntl.flock(f, fcntl.LOCK_UN)
        x = inputs["x"]
        seq = np.full((x.shape[0], 1), next(self.batches), dtype=np.int64)
        return {{"y": x * np.float32(SCALE), "seq": seq}}
"""


def gate_config(max_batch_size: int = 1, extra: str = "") -> str:
    """config.toml of a GATE_MODEL: x FP32 [1] -> y FP32 [1], seq INT64 [1]."""
    return (f'backend = "python"\nmax_batch_size = {max_batch_size}\n'
            + toml_tensors("inputs", [("x", "FP32", [1])])
            + toml_tensors("outputs", [("y", "FP32", [1]), ("seq", "INT64", [1])])
            + textwrap.dedent(extra))


# ---------------------------------------------------------------------------------------------
# Wire encoding written for the tests (independent of pyserve.protocol, so that a codec bug
# cannot cancel itself out)

DTYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BYTES": np.dtype(object),
}


PASSTHROUGH_MODEL = """
class Model:
    def infer(self, inputs):
        return {"out_" + name[3:]: value for name, value in inputs.items()}
"""

RAISER_MODEL = """
class Model:
    def infer(self, inputs):
        raise ValueError("bad luck")
"""


def add_pytypes_and_raiser(repo: Repo) -> None:
    """Two python models: pytypes (every datatype in ``in_<datatype>`` [-1, -1], passed through to
    ``out_<datatype>``, no batching) and raiser (FP32 x [-1] -> y, fails every batch)."""
    specs = [(d.lower(), d, [-1, -1]) for d in DTYPES]
    repo.python("pytypes", PASSTHROUGH_MODEL, 'backend = "python"\n'
                + toml_tensors("inputs", [(f"in_{n}", d, s) for n, d, s in specs])
                + toml_tensors("outputs", [(f"out_{n}", d, s) for n, d, s in specs]))
    repo.python("raiser", RAISER_MODEL, 'backend = "python"\n'
                + toml_tensors("inputs", [("x", "FP32", [-1])]) + toml_tensors("outputs", [("y", "FP32", [-1])]))

def wire_datatype(arr: np.ndarray) -> str:
    """The KServe datatype of an array (object arrays hold BYTES)."""
    if arr.dtype == object:
        return "BYTES"
    return next(k for k, v in DTYPES.items() if v == arr.dtype.newbyteorder("<") and k != "BYTES")


def raw(arr: np.ndarray) -> bytes:
    """Raw little-endian tensor bytes; BYTES as 4-byte little-endian lengths, each before its bytes."""
    if arr.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in arr.ravel())
    return np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()


def from_raw(datatype: str, shape: list[int], raw: bytes) -> np.ndarray:
    """The array of raw tensor bytes (the inverse of :func:`raw`)."""
    if datatype != "BYTES":
        return np.frombuffer(raw, DTYPES[datatype]).reshape(shape)
    out, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr.reshape(shape)


def _json_data(arr: np.ndarray) -> list:
    if arr.dtype == object:
        return [v.decode() for v in arr.ravel()]
    return arr.ravel().tolist()


def encode(protocol: str, inputs: dict[str, np.ndarray], **doc: Any) -> tuple[bytes, dict[str, str]]:
    """An infer request body and its headers; ``doc`` adds top-level keys (id, parameters, outputs)."""
    if protocol == "msgpack":
        tensors = [{"name": n, "datatype": wire_datatype(a), "shape": list(a.shape), "data": raw(a)}
                   for n, a in inputs.items()]
        return msgpack.packb({**doc, "inputs": tensors}), {"Content-Type": "application/msgpack"}
    binary = protocol == "binary"
    tensors, raws = [], []
    for name, arr in inputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": wire_datatype(arr), "shape": list(arr.shape)}
        if binary:
            raws.append(raw(arr))
            entry["parameters"] = {"binary_data_size": len(raws[-1])}
        else:
            entry["data"] = _json_data(arr)
        tensors.append(entry)
    if binary:
        doc.setdefault("parameters", {})["binary_data_output"] = True
    header = json.dumps({**doc, "inputs": tensors}).encode()
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(raws), {"Inference-Header-Content-Length": str(len(header)),
                                     "Content-Type": "application/octet-stream"}


def decode(resp: requests.Response) -> tuple[dict, dict[str, np.ndarray]]:
    """The reply document (without tensors) and its outputs as arrays."""
    assert resp.status_code == 200, (resp.status_code, resp.text[:500])
    body = resp.content
    outputs: dict[str, np.ndarray] = {}
    if resp.headers["Content-Type"].startswith("application/msgpack"):
        doc = msgpack.unpackb(body)
        for t in doc.pop("outputs"):
            outputs[t["name"]] = from_raw(t["datatype"], t["shape"], t["data"])
        return doc, outputs
    length = resp.headers.get("Inference-Header-Content-Length")
    pos = int(length) if length else len(body)
    doc = json.loads(body[:pos])
    for t in doc.pop("outputs"):
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            outputs[t["name"]] = from_raw(t["datatype"], t["shape"], body[pos:pos + size])
            pos += size
        elif t["datatype"] == "BYTES":
            arr = np.empty(len(t["data"]), dtype=object)
            arr[:] = [s.encode() for s in t["data"]]
            outputs[t["name"]] = arr.reshape(t["shape"])
        else:
            outputs[t["name"]] = np.array(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
    assert pos == len(body), "binary data left over in the reply"
    return doc, outputs


def infer(url: str, model: str, protocol: str, inputs: dict[str, np.ndarray], version: str | None = None,
          **doc: Any) -> requests.Response:
    """POST an infer request to ``model`` (at ``version``)."""
    body, headers = encode(protocol, inputs, **doc)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return requests.post(url + path, data=body, headers=headers, timeout=30)
