"""Soak: does the server's memory stay flat over many requests and many model reloads?

Two phases against a fresh ``pyserve serve`` of a temporary repository (an ONNX model ``affine``,
x FP32 [-1, 4], and an identity model ``text``, BYTES [-1, -1]):

1. ``--requests`` mixed infer requests (default 1,000,000) from ``--clients`` keep-alive connections:
   JSON, binary tensors and msgpack in turn, every fifth one bad (malformed JSON, a wrong shape, an
   unknown model, a BYTES tensor whose data is short);
2. ``--cycles`` unload/load cycles of ``affine`` (default 1000) through the model-control API.

The server's RSS (VmRSS) is printed as it goes, and at the end the growth from the end of the
warm-up (the first tenth of each phase) to the end; the goal is a few MiB at most.

    python bench/bench_soak.py                                  # the full soak, about 6 minutes
    python bench/bench_soak.py --requests 100000 --cycles 100   # a shortened one
"""

from __future__ import annotations

import argparse
import http.client
import json
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import wait_ready  # noqa: E402


def write_repo(root: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    (root / "affine" / "1").mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.full(4, 2, np.float32), "w"), numpy_helper.from_array(np.ones(4, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "affine" / "1" / "model.onnx"))
    (root / "affine" / "config.toml").write_text('backend = "onnxruntime"\nmax_batch_size = 8\n')
    (root / "text").mkdir()
    spec = 'datatype = "BYTES"\nshape = [-1, -1]\n'
    (root / "text" / "config.toml").write_text(
        f'backend = "identity"\nmax_batch_size = 0\n[[inputs]]\nname = "s"\n{spec}[[outputs]]\nname = "t"\n{spec}')


def bodies() -> list[tuple[str, bytes, dict[str, str], int]]:
    """(path, body, headers, expected status), used in turn."""
    row = [1.0, 2.0, 3.0, 4.0]
    floats = struct.pack("<4f", *row)
    json_ok = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": row}]}).encode()
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    packed = msgpack.packb({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": floats}]})
    text = msgpack.packb({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1, 2],
                                      "data": struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)}]})
    short = msgpack.packb({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1, 3], "data": b"\1\0\0\0a"}]})
    j, m = {"Content-Type": "application/json"}, {"Content-Type": "application/msgpack"}
    infer = "/v2/models/affine/infer"
    return [
        (infer, json_ok, j, 200),
        (infer, header + floats, {"Inference-Header-Content-Length": str(len(header))}, 200),
        (infer, packed, m, 200),
        ("/v2/models/text/infer", text, m, 200),
        (infer, b'{"inputs": [', j, 400),  # malformed JSON
        (infer, json_ok, j, 200),
        (infer, header + floats, {"Inference-Header-Content-Length": str(len(header))}, 200),
        (infer, packed, m, 200),
        ("/v2/models/text/infer", text, m, 200),
        (infer, json_ok.replace(b"[1, 4]", b"[1, 5]"), j, 400),  # a wrong shape
        (infer, json_ok, j, 200),
        (infer, packed, m, 200),
        (infer, header + floats, {"Inference-Header-Content-Length": str(len(header))}, 200),
        ("/v2/models/text/infer", text, m, 200),
        ("/v2/models/nope/infer", json_ok, j, 404),  # an unknown model
        (infer, json_ok, j, 200),
        (infer, packed, m, 200),
        (infer, header + floats, {"Inference-Header-Content-Length": str(len(header))}, 200),
        ("/v2/models/text/infer", text, m, 200),
        ("/v2/models/text/infer", short, m, 400),  # BYTES data too short for its shape
    ]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def request_phase(port: int, pid: int, total: int, clients: int) -> list[tuple[int, float]]:
    plan = bodies()
    done = [0]
    wrong: list[str] = []
    lock = threading.Lock()
    per_client = total // clients

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(per_client):
            path, body, headers, status = plan[(i + k) % len(plan)]
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != status and len(wrong) < 10:
                wrong.append(f"{path}: {resp.status}, expected {status}")
            if i % 1000 == 999:
                with lock:
                    done[0] += 1000
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    samples = [(0, rss_mib(pid))]
    step = max(total // 20, 1000)
    next_print = step
    start = time.monotonic()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
        if done[0] >= next_print:
            samples.append((done[0], rss_mib(pid)))
            print(f"requests {done[0]:>9}  rss {samples[-1][1]:8.1f} MiB  "
                  f"{done[0] / (time.monotonic() - start):7.0f} req/s", flush=True)
            next_print += step
    samples.append((per_client * clients, rss_mib(pid)))
    if wrong:
        print("unexpected statuses:", wrong, flush=True)
    return samples


def reload_phase(port: int, pid: int, cycles: int) -> list[tuple[int, float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    samples = [(0, rss_mib(pid))]
    step = max(cycles // 20, 1)
    for i in range(1, cycles + 1):
        for action in ("unload", "load"):
            conn.request("POST", f"/v2/repository/models/affine/{action}", b"{}",
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, (action, resp.status)
        if i % step == 0:
            samples.append((i, rss_mib(pid)))
            print(f"cycles {i:>6}  rss {samples[-1][1]:8.1f} MiB", flush=True)
    return samples


def growth(samples: list[tuple[int, float]]) -> str:
    total = samples[-1][0]
    warm = next(rss for n, rss in samples if n >= total / 10)
    return f"{samples[-1][1] - warm:+.1f} MiB after warm-up ({warm:.1f} -> {samples[-1][1]:.1f} MiB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--port", type=int, default=18932)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_repo(Path(tmp) / "models")
        server = subprocess.Popen([sys.executable, "-m", "pyserve", "serve", str(Path(tmp) / "models"),
                                   "--port", str(args.port), "--log-level", "warning"])
        try:
            wait_ready(f"http://127.0.0.1:{args.port}")
            requests = request_phase(args.port, server.pid, args.requests, args.clients)
            reloads = reload_phase(args.port, server.pid, args.cycles)
            print(f"requests: {requests[-1][0]}, server RSS {growth(requests)}")
            print(f"reloads:  {reloads[-1][0]} cycles, server RSS {growth(reloads)}")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
