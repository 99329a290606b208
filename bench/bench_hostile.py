"""What one large, hostile body costs the server and its other clients: peak memory and event-loop stall.

For each case a fresh ``pyserve serve`` (so that its peak RSS, VmHWM, is the case's own) serves an
identity model ``echo`` (FP32 [4], max_batch_size 8) and ``text`` (BYTES [-1, -1]); one client sends
the case's body (about 60 MiB) while a probe client on its own keep-alive connection asks
``/v2/health/live`` every 10 ms. Printed per case: the answer's status and time, the server's peak
RSS over its idle peak, and the probe's worst latency (how long the event loop was held).

    python bench/bench_hostile.py                    # every case, ~1 min
    python bench/bench_hostile.py --cases json-nested-refused --rows 1000000

Cases: ``json-nested-refused`` (nested rows of 4, a batch far over max_batch_size),
``json-flat-refused`` (one row of the wrong width), ``msgpack-bytes-refused`` (millions of empty
BYTES elements sent to the FP32 model), ``json-nested-valid`` and ``binary-valid`` (bodies the model
accepts, sent to ``text`` / ``echo`` of a large max_batch_size: the decoding itself),
``json-nested-valid-binary-reply`` (the same JSON body, its output asked for as a binary tensor:
the probe's latency is then the decoding's, not the 60 MiB JSON reply's), ``msgpack-valid`` (the
same tensor as msgpack raw bytes, and a msgpack reply of 56 MiB).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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

ROWS = 3_500_000  # rows of 4 numbers: a ~60 MiB JSON body


def write_repo(root: Path, max_batch_size: int) -> None:
    for name, datatype, shape, mbs in (("echo", "FP32", [4], max_batch_size), ("text", "BYTES", [-1, -1], 0)):
        (root / name).mkdir(parents=True)
        spec = f'datatype = "{datatype}"\nshape = {json.dumps(shape)}\n'
        (root / name / "config.toml").write_text(
            f'backend = "identity"\nmax_batch_size = {mbs}\n[[inputs]]\nname = "x"\n{spec}'
            f'[[outputs]]\nname = "y"\n{spec}')


def body_of(case: str, rows: int) -> tuple[str, bytes, dict[str, str]]:
    """The model, the body and the headers of a case."""
    if case in ("json-nested-refused", "json-nested-valid", "json-nested-valid-binary-reply"):
        data = "[" + ",".join(["[1.5,2.5,3.5,4.5]"] * rows) + "]"
        # A binary reply: the probe then measures the decoding, not the writing of 60 MiB of JSON.
        binary_reply = ',"outputs":[{"name":"y","parameters":{"binary_data":true}}]'
        outputs = binary_reply if case.endswith("binary-reply") else ""
        doc = '{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,4],"data":%s}]%s}' % (rows, data, outputs)
        return "echo", doc.encode(), {"Content-Type": "application/json"}
    if case == "json-flat-refused":
        data = "[" + ",".join(["1.5"] * (rows * 4)) + "]"
        doc = '{"inputs":[{"name":"x","datatype":"FP32","shape":[1,%d],"data":%s}]}' % (rows * 4, data)
        return "echo", doc.encode(), {"Content-Type": "application/json"}
    if case == "msgpack-bytes-refused":
        count = rows * 4
        doc = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, count], "data": b"\0\0\0\0" * count}]}
        return "echo", msgpack.packb(doc), {"Content-Type": "application/msgpack"}
    if case == "msgpack-valid":  # a 56 MiB msgpack reply: the same raw bytes back
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4],
                           "data": struct.pack("<f", 1.5) * (rows * 4)}]}
        return "echo", msgpack.packb(doc), {"Content-Type": "application/msgpack"}
    if case == "binary-valid":
        raw = struct.pack("<f", 1.5) * (rows * 4)
        header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4],
                                         "parameters": {"binary_data_size": len(raw)}}],
                             "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
        return "echo", header + raw, {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(header))}
    raise SystemExit(f"unknown case {case}")


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def run_case(case: str, rows: int, port: int) -> dict:
    model, body, headers = body_of(case, rows)
    valid = "-valid" in case
    with tempfile.TemporaryDirectory() as tmp:
        write_repo(Path(tmp) / "models", rows if valid else 8)
        server = subprocess.Popen([sys.executable, "-m", "pyserve", "serve", str(Path(tmp) / "models"),
                                   "--port", str(port), "--log-level", "warning"])
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            idle_kib = vm_hwm_kib(server.pid)
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            worst = [0.0]
            done = threading.Event()

            def probing() -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    probe.request("GET", "/v2/health/live")
                    probe.getresponse().read()
                    worst[0] = max(worst[0], time.perf_counter() - t)
                    time.sleep(0.01)

            thread = threading.Thread(target=probing)
            thread.start()
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            t = time.perf_counter()
            client.request("POST", f"/v2/models/{model}/infer", body, headers)
            resp = client.getresponse()
            answer = resp.read()
            elapsed = time.perf_counter() - t
            time.sleep(0.2)
            done.set()
            thread.join()
            return {"case": case, "body_mib": round(len(body) / 2**20, 1), "status": resp.status,
                    "answer_s": round(elapsed, 3), "peak_rss_over_idle_mib": round((vm_hwm_kib(server.pid) - idle_kib) / 1024),
                    "probe_worst_ms": round(worst[0] * 1000, 1),
                    "error": json.loads(answer).get("error", "")[:90] if resp.status != 200 else ""}
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="json-nested-refused,json-flat-refused,msgpack-bytes-refused,"
                                            "json-nested-valid,json-nested-valid-binary-reply,binary-valid")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows of 4 elements per body (default {ROWS})")
    parser.add_argument("--port", type=int, default=18931)
    args = parser.parse_args()
    print(f"pid {os.getpid()}: {', '.join(args.cases.split(','))}", file=sys.stderr)
    for case in args.cases.split(","):
        print(json.dumps(run_case(case, args.rows, args.port)), flush=True)


if __name__ == "__main__":
    main()
