"""Release benchmark: figures for the goals of progressive delivery and shadow traffic (issue 10).

1. **Canary rollback.** Version 2 of a Python model fails 5% of its inputs (every 20th). A rollout
   (steps 5, 25, 50, 100; max_error_rate 1%) starts under an open-loop load of ``--rate`` requests/s
   (default 100) with no version named; the time from the start to the rollback is measured, and
   every request is checked: answered once (its id echoed), none lost, none failed on stable.
2. **Shadow agreement.** Version 3 answers differently on 3% of inputs (x mod 100 < 3); with the
   shadow at 100% to version 3, ``--shadow-requests`` requests run and the agreement rate of
   ``pyserve_shadow_output_comparisons_total`` is set beside the truth; a rollout of version 3 with
   min_agreement 99 is then started and its rollback message printed.
3. **Shadow overhead.** The client's p99 at ``--overhead-rate`` requests/s on version 1, with the
   shadow off and at 100% (alternated, ``--rounds`` times each), for an ONNX MLP (64-256-256-10).

Figures, not a test: the machine's other load shows in them. Needs the ``test`` extra (onnx)::

    python bench/bench_release.py                 # about 2 minutes
    python bench/bench_release.py --rate 100 --overhead-rate 200 --rounds 3
    python bench/bench_release.py --only overhead --server-cpu ''   # the server not pinned
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import SERVER_CPU, pinned, wait_ready, write_mlp  # noqa: E402

MODEL = """
from pathlib import Path


class Model:
    def __init__(self, config, version_dir):
        self.version = int(Path(version_dir).name)

    def infer(self, inputs):
        x = inputs["x"]
        v = int(x.ravel()[0])
        if self.version == 2 and v % 20 == 0:
            raise RuntimeError("injected failure of version 2")
        if self.version == 3 and v % 100 < 3:
            return {"y": x + 1}
        return {"y": x}
"""
CONFIG = """backend = "python"
max_batch_size = 0
[version_policy]
all = true
[[inputs]]
name = "x"
datatype = "FP32"
shape = [1]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [1]
"""


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, doc: Any = None) -> Any:
        data = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        return json.loads(body) if body.startswith((b"{", b"[")) else body.decode()


class Load:
    """Open-loop load: one request every 1/rate s (x = 1, 2, ...), sent from a pool of connections;
    each answer recorded as (x, status, answered id, version or error, latency s)."""

    def __init__(self, url: str, model: str, rate: float, width: int = 1, threads: int = 32) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port, self.model, self.rate, self.width = int(port), model, rate, width
        self.pool = ThreadPoolExecutor(threads)
        self.local = threading.local()
        self.answers: list[tuple[int, int, str, str, float]] = []
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _one(self, x: int) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        data = [float(x)] + [0.0] * (self.width - 1)
        shape = [1] if self.width == 1 else [1, self.width]
        body = json.dumps({"id": str(x), "inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]})
        start = time.perf_counter()
        conn.request("POST", f"/v2/models/{self.model}/infer", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        took = time.perf_counter() - start
        self.answers.append((x, resp.status, doc.get("id", ""), doc.get("model_version", doc.get("error", "")), took))

    def _run(self) -> None:
        period, t0 = 1.0 / self.rate, time.perf_counter()
        while not self.stop.is_set():
            self.sent += 1
            self.pool.submit(self._one, self.sent)
            delay = t0 + self.sent * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=True)


def p99(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99)) * 1e3


def canary(server: Server, rate: float) -> None:
    print(f"\n1. Canary failing 5% of its requests, {rate:g} requests/s, steps 5/25/50/100, max_error_rate 1%")
    server.call("PUT", "/v2/repository/models/py/traffic", {"aliases": {"stable": "1"}, "weights": {"stable": 100}})
    with Load(server.url, "py", rate) as load:
        time.sleep(2)
        start = time.monotonic()
        server.call("POST", "/v2/repository/models/py/rollout", {
            "candidate": "2", "steps": [5, 25, 50, 100], "min_duration_s": 30, "min_requests": 100,
            "gates": {"max_error_rate": 1, "max_p99_ratio": None}, "reason": "bench"})
        state: dict = {}
        while time.monotonic() - start < 120:
            state = server.call("GET", "/v2/repository/models/py/rollout")
            if state["phase"] != "progressing":
                break
            time.sleep(0.1)
        rolled_back_s = time.monotonic() - start
        time.sleep(2)
    answers = load.answers
    xs = sorted(a[0] for a in answers)
    stable_failed = [a for a in answers if a[1] != 200 and "version 2" not in a[3]]
    canary_failed = [a for a in answers if a[1] != 200 and "version 2" in a[3]]
    wrong_id = [a for a in answers if a[1] == 200 and a[2] != str(a[0])]  # errors carry no id
    print(f"   phase {state.get('phase')} after {rolled_back_s:.1f} s: {state.get('message')}")
    print(f"   requests sent {load.sent}, answered {len(answers)}, lost {load.sent - len(set(xs))}, "
          f"answered twice {len(xs) - len(set(xs))}, wrong id {len(wrong_id)}")
    print(f"   failed on the canary {len(canary_failed)}, failed on stable {len(stable_failed)}; "
          f"served by 2 {sum(a[3] == '2' for a in answers)}, by 1 {sum(a[3] == '1' for a in answers)}")


def shadow_agreement(server: Server, n: int) -> None:
    print(f"\n2. Shadow of a candidate differing on 3% of inputs, {n} requests")
    server.call("PUT", "/v2/repository/models/py/traffic", {
        "aliases": {"stable": "1"}, "weights": {"stable": 100},
        "shadow": {"target": "3", "percent": 100, "max_in_flight": 64}, "reason": "bench"})
    with Load(server.url, "py", 400) as load:
        while load.sent < n:
            time.sleep(0.05)
        load.stop.set()
    time.sleep(1)
    counts: dict[str, float] = {}
    for line in server.call("GET", "/metrics").splitlines():
        if line.startswith("pyserve_shadow_output_comparisons_total{") and 'version="3"' in line:
            result = line.split('result="')[1].split('"')[0]
            counts[result] = counts.get(result, 0) + float(line.rsplit(" ", 1)[1])
        if line.startswith("pyserve_shadow_requests_total{") and 'outcome="dropped"' in line:
            counts["dropped"] = float(line.rsplit(" ", 1)[1])
    compared = counts.get("agree", 0) + counts.get("disagree", 0)
    truth = 100 * sum(1 for x in range(1, load.sent + 1) if x % 100 >= 3) / load.sent
    print(f"   compared {compared:.0f} of {load.sent} (dropped {counts.get('dropped', 0):.0f}); agreement reported "
          f"{100 * counts.get('agree', 0) / compared:.2f}%, truth {truth:.2f}% over the inputs sent")
    state = server.call("POST", "/v2/repository/models/py/rollout", {
        "candidate": "3", "steps": [5, 100], "min_duration_s": 30, "min_requests": 100,
        "gates": {"min_agreement": 99, "max_p99_ratio": None}})
    start = time.monotonic()
    while state["phase"] == "progressing" and time.monotonic() - start < 10:
        time.sleep(0.1)
        state = server.call("GET", "/v2/repository/models/py/rollout")
    print(f"   rollout of 3 with min_agreement 99: {state['phase']} after {time.monotonic() - start:.1f} s: "
          f"{state['message']}")


def shadow_overhead(server: Server, rate: float, rounds: int, seconds: float) -> None:
    print(f"\n3. Shadow overhead: client p99 at {rate:g} requests/s on an ONNX MLP, {seconds:g} s per run")
    results: dict[str, list[float]] = {"off": [], "100%": []}
    for _ in range(rounds):
        for mode in ("off", "100%"):
            policy: dict = {"weights": {"1": 100}}
            if mode != "off":
                policy["shadow"] = {"target": "2", "percent": 100, "max_in_flight": 64}
            server.call("PUT", "/v2/repository/models/mlp/traffic", policy)
            with Load(server.url, "mlp", rate, width=64) as load:
                time.sleep(seconds)
            lat = [a[4] for a in load.answers[len(load.answers) // 10:]]  # the first tenth warms up
            failed = sum(a[1] != 200 for a in load.answers)
            results[mode].append(p99(lat))
            print(f"   shadow {mode:>4}: p99 {p99(lat):.2f} ms, p50 {float(np.median(lat)) * 1e3:.2f} ms, "
                  f"{len(load.answers)} requests, {failed} failed")
    off, on = float(np.median(results["off"])), float(np.median(results["100%"]))
    print(f"   median of the runs: p99 off {off:.2f} ms, with 100% shadow {on:.2f} ms ({100 * (on / off - 1):+.1f}%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8731)
    ap.add_argument("--rate", type=float, default=100, help="requests/s of the canary run")
    ap.add_argument("--shadow-requests", type=int, default=5000)
    ap.add_argument("--overhead-rate", type=float, default=200, help="requests/s of the overhead runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10, help="seconds per overhead run")
    ap.add_argument("--server-cpu", default=SERVER_CPU, help=f"the CPU the server is pinned to (default {SERVER_CPU}); "
                    "'' for none")
    ap.add_argument("--only", choices=("canary", "agreement", "overhead"), default=None, help="run one part only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        for v in (1, 2, 3):
            (root / "py" / str(v)).mkdir(parents=True)
            (root / "py" / str(v) / "model.py").write_text(MODEL)
        (root / "py" / "config.toml").write_text(CONFIG)
        for v, seed in ((1, 1), (2, 2)):
            (root / "mlp" / str(v)).mkdir(parents=True)
            write_mlp(root / "mlp" / str(v) / "model.onnx", [64, 256, 256, 10], seed)
        (root / "mlp" / "config.toml").write_text("max_batch_size = 32\n[version_policy]\nall = true\n")
        url = f"http://127.0.0.1:{args.port}"
        # The server on CPU 1, this load generator wherever the OS puts it (as bench_server.py does).
        argv = [sys.executable, "-m", "pyserve", "serve", str(root), "--port", str(args.port), "--log-level", "error"]
        proc = subprocess.Popen(pinned(args.server_cpu, argv) if args.server_cpu else argv,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(url)
            server = Server(url)
            if args.only in (None, "canary"):
                canary(server, args.rate)
            if args.only in (None, "agreement"):
                shadow_agreement(server, args.shadow_requests)
            if args.only in (None, "overhead"):
                shadow_overhead(server, args.overhead_rate, args.rounds, args.seconds)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
