"""What requests built to fill the infer fast path's caches cost the server's memory.

The fast path (pyserve/server/fast_infer.py) remembers request targets and, per model version,
decode plans keyed on request bytes (pyserve/protocol/request_plans.py). This probe starts a fresh
``pyserve serve`` on an identity model, with the fast path and with ``--no-infer-fast-path``, and
prints the server's resident memory (VmRSS, Linux) before and after each attack, on one keep-alive
connection:

- ``targets``: ``--targets`` POSTs, each to another 60 KB request target (an unknown model: 404);
- ``plans``: ``--bodies`` JSON and msgpack bodies, each a new skeleton (a new request id; for JSON,
  whose plain ids are lifted out of the skeleton, a new parameter value too) and the largest
  skeleton a plan keeps (a 4 KB JSON skeleton; a 60 KB msgpack body of small ints in ``parameters``).

    python bench/bench_fast_caches.py
    python bench/bench_fast_caches.py --targets 2000 --bodies 500

Before the caches were bounded by size (commit 2731549), the targets attack held over 100 MiB for
good with the fast path, and nothing without it. Figures vary by a few MiB between runs.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import wait_ready  # noqa: E402


def write_repo(root: Path) -> None:
    (root / "ident").mkdir(parents=True)
    spec = 'datatype = "FP32"\nshape = [2]\n'
    tensors = f'[[inputs]]\nname = "x"\n{spec}[[outputs]]\nname = "y"\n{spec}'
    (root / "ident" / "config.toml").write_text(f'backend = "identity"\nmax_batch_size = 8\n{tensors}')


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


class Client:
    """One keep-alive connection; :meth:`ask` sends a POST and returns the answer's status line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def ask(self, target: str, body: bytes, content_type: str) -> bytes:
        self.sock.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 16)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(self.buf) < length:
            self.buf += self.sock.recv(1 << 16)
        self.buf = self.buf[length:]
        return head.split(b"\r\n")[0]


def attack_targets(client: Client, count: int) -> bytes:
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2]}]}'
    status = b""
    for i in range(count):
        status = client.ask(f"/v2/models/m{i}{'a' * 60_000}/infer", body, "application/json")
    return status


def attack_plans(client: Client, count: int) -> bytes:
    x = np.ones((1, 2), np.float32).tobytes()
    lists = ",".join(["[]"] * 1300)
    status = b""
    for i in range(count):
        body = msgpack.packb({"id": str(i), "parameters": {"p": [1] * 30_000},
                              "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": x}]})
        client.ask("/v2/models/ident/infer", body, "application/msgpack")
        # A new parameter value (a new skeleton; a new plain id alone would share one plan).
        doc = (f'{{"id": "{i}", "parameters": {{"n": {i}, "p": [{lists}]}}, "inputs": [{{"name": "x", '
               f'"datatype": "FP32", "shape": [1, 2], "data": [1, 2]}}]}}')
        status = client.ask("/v2/models/ident/infer", doc.encode(), "application/json")
    return status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=int, default=1100, help="POSTs to distinct 60 KB targets")
    p.add_argument("--bodies", type=int, default=200, help="bodies of each encoding with a new request id")
    p.add_argument("--port", type=int, default=8133)
    args = p.parse_args()
    print(f"# pyserve fast path caches: {args.targets} targets of 60 KB, {args.bodies} bodies per encoding; "
          "VmRSS MiB before -> after")
    print("server,attack,last_status,rss_before_mib,rss_after_mib")
    with tempfile.TemporaryDirectory() as tmp:
        write_repo(Path(tmp) / "models")
        for label, flags in (("fast path", []), ("--no-infer-fast-path", ["--no-infer-fast-path"])):
            server = subprocess.Popen([sys.executable, "-m", "pyserve", "serve", str(Path(tmp) / "models"),
                                       "--port", str(args.port), "--log-level", "warning", *flags])
            try:
                wait_ready(f"http://127.0.0.1:{args.port}")
                client = Client(args.port)
                for name, attack, count in (("targets", attack_targets, args.targets),
                                            ("plans", attack_plans, args.bodies)):
                    before = rss_mib(server.pid)
                    status = attack(client, count).decode()
                    print(f"{label},{name},{status},{before:.1f},{rss_mib(server.pid):.1f}")
            finally:
                server.terminate()
                server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
