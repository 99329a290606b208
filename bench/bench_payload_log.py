"""What the payload log costs: throughput of the tiny model with the log off, on at sample rate 1.0,
and on at the default rate (0.1), at 64 clients, as `pyserve bench` measures it.

The tiny MLP of bench_server.py (32-64-10) is served from a repository whose config.toml has (or has
not) a [payload_log] table, at most 32 samples per batch and a 2 ms delay; the server runs on CPU 1 and
`pyserve bench` on CPU 0 (as bench_server.py). The three settings are run in turn, ``--rounds`` times
(a shared machine is noisy: the rounds show how much), and the median of each is compared with the
median with the log off. Goal (issue 9): >= 85% at rate 1.0, >= 97% at the default rate. Needs the
`test` (onnx) and `log` extras.

    python bench/bench_payload_log.py                  # ~3 min
    python bench/bench_payload_log.py --rounds 5 --protocol binary
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import CLIENT_CPU, LAYERS, SERVER_CPU, pinned, wait_ready, write_mlp  # noqa: E402

SETTINGS = {"off": None, "rate 1.0": 1.0, "default rate": "default"}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used, all its threads (the writer's included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def answered(url: str) -> float:
    """pyserve_requests_total{outcome="success"} of the tiny model, from /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("pyserve_requests_total{") and 'outcome="success"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def measure(root: Path, rate: float | str | None, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """Requests/s of one server run with the log at ``rate`` (None: off; "default": no sample_rate),
    and the server's CPU µs per request answered over the whole run (warm-up included): a measure
    of cost that other processes on the machine disturb far less than throughput."""
    table = "" if rate is None else "[payload_log]\n" + ("" if rate == "default" else f"sample_rate = {rate}\n")
    (root / "models" / "tiny" / "config.toml").write_text(
        "max_batch_size = 32\n[dynamic_batching]\nmax_queue_delay_us = 2000\n"
        "[onnxruntime]\nintra_op_num_threads = 1\n" + table)
    url = f"http://127.0.0.1:{args.port}"
    serve = [sys.executable, "-m", "pyserve", "serve", str(root / "models"), "--port", str(args.port),
             "--log-level", "warning"]
    if rate is not None:  # off: no hooks at all
        serve += ["--payload-log-dir", str(root / "log")]
    server = subprocess.Popen(pinned(SERVER_CPU, serve))
    try:
        wait_ready(url)
        cpu0, done0 = cpu_s(server.pid), answered(url)
        cmd = [sys.executable, "-m", "pyserve", "bench", "-q", "-m", "tiny", "-u", url, "--protocol", args.protocol,
               "--concurrency", str(args.concurrency), "--warmup-s", "2", "--window-s", str(args.window_s),
               "--max-windows", "3", "--json", str(out)]
        subprocess.run(pinned(CLIENT_CPU, cmd), check=True, stdout=subprocess.DEVNULL)
        cpu_per_request_us = (cpu_s(server.pid) - cpu0) / max(1.0, answered(url) - done0) * 1e6
        level = json.loads(out.read_text())["levels"][0]
        if level["errors"]:
            raise SystemExit(f"{level['errors']} requests failed with the log {rate}")
        return float(level["throughput_rps"]), cpu_per_request_us
    finally:
        server.terminate()
        server.wait(60)


def hook_cost_us(rate: float | None, n: int = 200_000) -> float:
    """µs per call of the payload log's after_response hook alone, in this process, on the tiny
    model's tensors (rate None: a model without [payload_log])."""
    import timeit
    import types

    import numpy as np

    from pyserve.config import ModelConfig, PayloadLogConfig, TensorSpec
    from pyserve.payload_log import PayloadLog, PayloadLogSettings
    from pyserve.protocol import InferRequest, InferResponse
    from pyserve.service import CallContext

    config = ModelConfig("tiny", "onnxruntime", (TensorSpec("x", "FP32", (32,)),), (TensorSpec("y", "FP32", (10,)),),
                         max_batch_size=32, payload_log=PayloadLogConfig(enabled=rate is not None,
                                                                         sample_rate=rate or 0.0))
    runner = types.SimpleNamespace(config=config, version="1")
    plog = PayloadLog(PayloadLogSettings(queue_size=n + 1), lambda name: None)  # never started: nothing drains
    request = InferRequest({"x": np.zeros((1, 32), np.float32)})
    response = InferResponse("tiny", "1", {"y": np.zeros((1, 10), np.float32)})
    ctx = CallContext("http+json")
    spent = timeit.timeit(lambda: plog.after_response(ctx, runner, request, response), number=n)
    empty = timeit.timeit(lambda: None, number=n)
    return (spent - empty) / n * 1e6


def writer_cost_us(n: int = 5000, rounds: int = 5) -> tuple[float, float]:
    """CPU µs per record of the writer thread's work, in this process: a batch of ``n`` calls of the
    tiny model (random inputs, one sample each) built into Arrow columns and written as a Parquet row
    group; the best of ``rounds`` (other processes can only add to it). Also the file's bytes per record."""
    import tempfile
    import types

    import numpy as np

    from pyserve.config import ModelConfig, PayloadLogConfig, TensorSpec
    from pyserve.payload_log import PayloadLog, PayloadLogSettings
    from pyserve.payload_log.files import ParquetFiles, completed_files
    from pyserve.protocol import InferRequest, InferResponse
    from pyserve.service import CallContext

    config = ModelConfig("tiny", "onnxruntime", (TensorSpec("x", "FP32", (32,)),), (TensorSpec("y", "FP32", (10,)),),
                         max_batch_size=32, payload_log=PayloadLogConfig(enabled=True, sample_rate=1.0))
    runner = types.SimpleNamespace(config=config, version="1")
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((32, 10), dtype=np.float32)
    calls = [(CallContext("http+json", f"request-{i}"), InferRequest({"x": rng.standard_normal((1, 32), np.float32)}),
              InferResponse("tiny", "1", {"y": batch[i % 32:i % 32 + 1]})) for i in range(n)]
    best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        plog = PayloadLog(PayloadLogSettings(log_dir=Path(tmp), queue_size=n + 1), lambda name: None)
        files = plog._files = ParquetFiles(Path(tmp), 1 << 40, 1e9, 1 << 40, 1e9)  # the thread is not started
        for _ in range(rounds + 1):  # the first round pays for first use (imports, caches)
            for ctx, request, response in calls:
                plog.after_response(ctx, runner, request, response)
            started = time.thread_time()
            plog._drain()
            plog._build()  # the batch's tables (the writer builds once it has gathered enough)
            files._write_pending("tiny", files._open["tiny"])  # what a full row group triggers
            best = min(best, time.thread_time() - started)
        files.close_all()
        size = sum(p.stat().st_size for p in completed_files(Path(tmp)))
    return best / n * 1e6, size / (n * (rounds + 1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--protocol", default="json", choices=("json", "binary", "msgpack"))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--window-s", type=float, default=3.0)
    p.add_argument("--port", type=int, default=8132)
    args = p.parse_args()
    from pyserve.config import PayloadLogConfig

    print("after_response hook alone: " + ", ".join(
        f"{name} {hook_cost_us(rate if rate != 'default' else PayloadLogConfig().sample_rate):.2f} us"
        for name, rate in SETTINGS.items()) + " per call", flush=True)
    us, size = writer_cost_us()
    print(f"writer thread alone: {us:.2f} us CPU per record (batches of 5,000, Arrow columns + Parquet zstd), "
          f"{size:.0f} file bytes per record", flush=True)
    results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    cpu: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models" / "tiny" / "1").mkdir(parents=True)
        write_mlp(root / "models" / "tiny" / "1" / "model.onnx", LAYERS["tiny"])
        for r in range(args.rounds):
            for name, rate in SETTINGS.items():
                rps, us = measure(root, rate, args, root / "bench.json")
                results[name].append(rps)
                cpu[name].append(us)
                print(f"round {r + 1}: log {name:12s} {rps:10,.0f} req/s {us:7.1f} server CPU us/request",
                      flush=True)
        logged = sum(1 for _ in (root / "log").rglob("*.parquet"))
    base = statistics.median(results["off"])
    print(f"\ntiny model, {args.concurrency} clients, {args.protocol}, {args.rounds} rounds "
          f"({logged} log files written):")
    base_cpu = statistics.median(cpu["off"])
    print(f"  {'payload log':14s} {'median req/s':>12s} {'of off':>7s} {'CPU us/req':>10s} {'off/on':>7s}   "
          "rounds (req/s)")
    for name, values in results.items():
        median, us = statistics.median(values), statistics.median(cpu[name])
        print(f"  {name:14s} {median:12,.0f} {median / base:7.1%} {us:10.1f} {base_cpu / us:7.1%}   "
              f"{', '.join(f'{v:,.0f}' for v in values)}")
    print("(off/on: the throughput a CPU-bound server keeps, from its CPU time per request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
