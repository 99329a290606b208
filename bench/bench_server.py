"""Server benchmark: requests/s and p50/p99 latency at 1, 16 and 64 concurrent clients for KServe
JSON, the binary tensor extension and msgpack, beside in-process ONNX Runtime, in the same run.

Two MLPs like the peers harness's (tiny 32-64-10, heavy 512-2048-2048-2048-10, seeded random weights)
are written to a temporary folder; the server runs pinned to one core (CPU 1) with at most 32 samples
per batch and a 2 ms delay; `pyserve bench` drives it from the other core (CPU 0). Each request is
one sample. Needs the `test` (onnx) and `bench` extras.

    python bench/bench_server.py                       # ~6 min
    python bench/bench_server.py --models heavy --concurrency 64 --window-s 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

LAYERS = {"tiny": [32, 64, 10], "heavy": [512, 2048, 2048, 2048, 10]}
SERVER_CPU, CLIENT_CPU = "1", "0"


def write_mlp(path: Path, dims: list[int], seed: int = 42) -> None:
    """An MLP with ReLU between layers, input x [N, dims[0]] and output y [N, dims[-1]]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        out = "y" if i == len(dims) - 2 else f"h{i}"
        mm = f"mm{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [mm]), helper.make_node("Add", [mm, f"b{i}"], [out if out == "y" else f"a{i}"])]
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dims[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else argv


def in_process(path: Path, dim: int, batch: int, seconds: float = 2.0) -> float:
    """Samples/s of one onnxruntime session (1 intra-op thread) on this process's core."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float32)
    for _ in range(3):
        sess.run(["y"], {"x": x})
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sess.run(["y"], {"x": x})
        n += 1
    return n * batch / (time.perf_counter() - start)


def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} not ready within {timeout_s} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,heavy")
    p.add_argument("--protocols", default="json,binary,msgpack")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--window-s", type=float, default=3.0)
    p.add_argument("--port", type=int, default=8131)
    args = p.parse_args()
    models = args.models.split(",")
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as tmp:
        paths = {m: Path(tmp) / f"{m}.onnx" for m in models}
        for m in models:
            write_mlp(paths[m], LAYERS[m])
        if shutil.which("taskset"):
            os.sched_setaffinity(0, {int(SERVER_CPU)})  # in-process figures on the server's core
        inproc = {(m, b): in_process(paths[m], LAYERS[m][0], b) for m in models for b in (1, 32)}
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        serve = [sys.executable, "-m", "pyserve", "serve", "--port", str(args.port), "--log-level", "warning",
                 "--max-batch-size", "32", "--max-queue-delay-us", "2000", "--intra-op-threads", "1"]
        serve += [f"--model={m}={paths[m]}" for m in models]
        server = subprocess.Popen(pinned(SERVER_CPU, serve))
        rows = []
        try:
            wait_ready(url)
            for m in models:
                for proto in args.protocols.split(","):
                    out = Path(tmp) / f"{m}-{proto}.json"
                    cmd = [sys.executable, "-m", "pyserve", "bench", "-q", "-m", m, "-u", url, "--protocol", proto,
                           "--concurrency", args.concurrency, "--warmup-s", "1", "--window-s", str(args.window_s),
                           "--max-windows", "5", "--json", str(out)]
                    subprocess.run(pinned(CLIENT_CPU, cmd), check=False, stdout=subprocess.DEVNULL)
                    for level in json.loads(out.read_text())["levels"]:
                        lat = level["latency_ms"]
                        rows.append((m, proto, int(level["concurrency"]), level["throughput_rps"], lat["p50"], lat["p99"],
                                     level["errors"], level.get("generator_cpu_pct")))
        finally:
            server.terminate()
            server.wait(30)
    print("\nIn-process onnxruntime, 1 thread, samples/s (same core as the server):")
    for m in models:
        print(f"  {m:6s} batch 1: {inproc[(m, 1)]:12,.0f}   batch 32: {inproc[(m, 32)]:12,.0f}")
    print("\nServer, one sample per request, at most 32 samples per batch:")
    print(f"  {'model':6s} {'protocol':8s} {'clients':>7s} {'req/s':>10s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} {'gen cpu':>8s}")
    for m, proto, c, rps, p50, p99, errors, gcpu in rows:
        g = f"{gcpu:.0f}%" if gcpu is not None else "-"
        print(f"  {m:6s} {proto:8s} {c:7d} {rps:10,.0f} {p50:8.2f} {p99:8.2f} {errors:7d} {g:>8s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
