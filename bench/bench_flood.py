"""A flood of trickling connections at full scale: does a normal client stay served?

Reproduces the probe that found the hole: ``--connections`` (default 20,000) connections, each sending
the headers of a 1,000-byte POST and then nothing, against a fresh ``pyserve serve`` with its default
connection cap (sized from its open file limit) and ``--body-timeout-s``. The flood is opened by
``--flooders`` processes (each process has its own descriptor limit). Meanwhile a normal client,
connected before the flood on a keep-alive connection, infers every 20 ms (a client that connects
while the flood holds more connections than the cap is refused at once: that is the cap's price, see
docs/security.md), and the server's metrics are read on another connection made before. Printed: the server's cap, connections refused, and per phase (during the flood,
once its bodies time out, after it ends) the normal client's requests, failures and latency.

    python bench/bench_flood.py                         # 20,000 connections, about 2 minutes
    python bench/bench_flood.py --connections 5000 --body-timeout-s 20

Before the cap (before commit 032db65), 20,000 such connections used up the server's descriptors:
``accept()`` failed with EMFILE and every new client failed for over a minute.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import wait_ready  # noqa: E402

BODY = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
HEAD = (b"POST /v2/models/ident/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n")


def write_repo(root: Path) -> None:
    (root / "ident").mkdir(parents=True)
    spec = 'datatype = "FP32"\nshape = [4]\n'
    (root / "ident" / "config.toml").write_text(
        f'backend = "identity"\nmax_batch_size = 8\n[[inputs]]\nname = "x"\n{spec}[[outputs]]\nname = "y"\n{spec}')


def flood(port: int, count: int, hold_s: float, opened: multiprocessing.Value) -> None:
    """One flooding process: opens ``count`` trickling connections (as many as it can), holds them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(HEAD)
            held.append(s)
        except OSError:
            pass  # refused by the cap (reset at once), or our own limit
        with opened.get_lock():
            opened.value += 1
    time.sleep(hold_s)
    for s in held:
        s.close()


class Metrics:
    """Reads the server's metrics on one keep-alive connection, made before the flood."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def __call__(self, name: str) -> float:
        self.conn.request("GET", "/metrics")
        return metric_in(self.conn.getresponse().read().decode(), name)


def metric_in(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


class Probe:
    """The normal client: a request on a new connection every ``every_s``, its outcomes by phase."""

    def __init__(self, port: int, every_s: float = 0.02) -> None:
        self.port, self.every_s = port, every_s
        self.phase = "before"
        self.results: dict[str, list[tuple[bool, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            t = time.perf_counter()
            ok = False
            try:
                conn.request("POST", "/v2/models/ident/infer", BODY, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                ok = resp.status == 200 and json.loads(resp.read())["outputs"][0]["data"] == [1, 2, 3, 4]
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()  # counted as failed; the next request reconnects
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.results.setdefault(self.phase, []).append((ok, time.perf_counter() - t))
            time.sleep(max(0.0, self.every_s - (time.perf_counter() - t)))

    def summary(self, phase: str) -> str:
        rows = self.results.get(phase, [])
        if not rows:
            return f"{phase:>14}: no requests"
        lat = sorted(t for _, t in rows)
        failed = sum(1 for ok, _ in rows if not ok)
        pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000  # noqa: E731
        return (f"{phase:>14}: {len(rows):5d} requests, {failed:4d} failed, latency p50 {pct(0.5):7.1f} ms, "
                f"p99 {pct(0.99):7.1f} ms, max {lat[-1] * 1000:7.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=20_000, help="trickling connections in all (20000)")
    p.add_argument("--flooders", type=int, default=4, help="processes opening them (4)")
    p.add_argument("--body-timeout-s", type=float, default=60.0,
                   help="the server's body deadline (60, its default): the flood is held until it passes")
    p.add_argument("--port", type=int, default=8187)
    args = p.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as tmp:
        write_repo(Path(tmp) / "models")
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_file:
            server = subprocess.Popen([sys.executable, "-m", "pyserve", "serve", str(Path(tmp) / "models"),
                                       "--port", str(args.port), "--body-timeout-s", str(args.body_timeout_s)],
                                      stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_ready(url)
            metric = Metrics(args.port)
            cap = metric("pyserve_http_max_connections")
            print(f"server: connection cap {cap:.0f} (from its open file limit); body deadline {args.body_timeout_s} s")
            hold_s = args.body_timeout_s + 5
            opened = multiprocessing.Value("i", 0)
            with Probe(args.port) as probe:
                time.sleep(1)
                probe.phase = "flood opening"
                t0 = time.monotonic()
                share = -(-args.connections // args.flooders)
                procs = [multiprocessing.Process(target=flood, args=(args.port, share, hold_s, opened))
                         for _ in range(args.flooders)]
                for proc in procs:
                    proc.start()
                while opened.value < share * args.flooders and time.monotonic() - t0 < 120:
                    time.sleep(0.1)
                print(f"flood: {opened.value} connections attempted in {time.monotonic() - t0:.1f} s; "
                      f"open at the server: {metric('pyserve_http_connections'):.0f}, refused so far: "
                      f"{metric('pyserve_http_connections_refused_total'):.0f}")
                probe.phase = "flood held"
                # The trickled bodies time out at the server's deadline (408, closed).
                time.sleep(max(5.0, t0 + args.body_timeout_s + 2 - time.monotonic()))
                probe.phase = "after deadline"
                for proc in procs:
                    proc.join()
                probe.phase = "flood ended"
                time.sleep(3)
            for phase in ("before", "flood opening", "flood held", "after deadline", "flood ended"):
                print(probe.summary(phase))
            print(f"server: open connections now {metric('pyserve_http_connections'):.0f}, refused in all "
                  f"{metric('pyserve_http_connections_refused_total'):.0f}")
            fresh = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
            fresh.request("POST", "/v2/models/ident/infer", BODY, {"Content-Type": "application/json"})
            print(f"a new client after the flood: HTTP {fresh.getresponse().status}")
            log = log_path.read_text(errors="replace")
            print(f"server log: {log.count('Too many open files')} 'Too many open files' lines")
        finally:
            server.terminate()
            server.wait(60)


if __name__ == "__main__":
    main()
