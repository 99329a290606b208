"""What one request costs the server, in instructions (callgrind) and in microseconds, per encoding.

A shared machine's wall clock is noisy; instruction counts are not. The server runs under valgrind's
callgrind with collection off (``--instr-atstart=no``, one output file per thread); a client in this
process sends, for each encoding (KServe JSON, the binary tensor extension, msgpack), a warm-up and
then N requests on one keep-alive connection per client (``--clients``, 1 by default: one request
after another; with more, each connection sends its next request when its answer is in, so batches
form as under load) to the tiny MLP (32-64-10 of bench_server.py) or, with ``--model heavy``, the
heavy one (512-2048-2048-2048-10), at most 32 samples per batch, 2 ms delay, one ONNX Runtime
thread, with collection switched on (``callgrind_control -i on``) for exactly those N; the counts are
dumped and divided by N. With ``--payload-log [RATE]`` the model's payload log is on at sample rate
RATE (1.0 when not given: issue 9's cost); the measure starts once the log's first file is open
(pyarrow's first use and the Parquet writer's creation are not a request's cost).

Printed per encoding: the instructions per request of the event loop's thread (the server's main
thread) and of every other thread together (ONNX Runtime, the core's instance threads, the payload
log's writer), and the loop thread's instructions split into stages by the C functions where they are
spent, inclusive of what they call (see STAGES; "python" is what is left: the interpreter running
pyserve's own code). A second run without valgrind gives microseconds: the client's round trip and
the server's CPU time per request (the scheduler's run time from /proc, all threads), both noisy on
a shared machine (quote same-run ratios). With ``--clients`` above 1 the server is pinned to CPU 1 and this
client to CPU 0 (as bench_server.py and the peers harness pin them), the server's CPU is split into
the event loop's thread and the others (/proc/PID/task), and the batch sizes the server reported
(``pyserve_batch_size`` on /metrics) are printed beside the figures: the heavy model at 64 clients is
the peers harness's setting, where the loop's CPU per request decides how close the server gets to
ONNX Runtime's own limit.

    python bench/bench_request_cost.py                      # ~3 min: callgrind, then wall clock
    python bench/bench_request_cost.py --payload-log        # the same with the log at rate 1.0
    python bench/bench_request_cost.py --payload-log 0.1    # ... at the default rate
    python bench/bench_request_cost.py -n 500 --no-wall     # quicker, instructions only
    python bench/bench_request_cost.py --keep DIR           # keep callgrind's files in DIR
    python bench/bench_request_cost.py --model heavy --clients 64 -n 1000   # the peers harness's load
    python bench/bench_request_cost.py --model heavy --clients 64 --json-decimals 5   # ... and its JSON body

Needs valgrind (``apt-get install valgrind``) and the ``test`` extra (onnx); ``--payload-log`` needs
the ``log`` extra (pyarrow).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import CLIENT_CPU, LAYERS, SERVER_CPU, pinned, wait_ready, write_mlp  # noqa: E402

ENCODINGS = ("json", "binary", "msgpack")
# "sagemaker": the binary extension with its header length in the content type, as Triton's clients
# and the peers harness's binary target send it.
ALL_ENCODINGS = (*ENCODINGS, "sagemaker")
# A fixed hash seed: string hashes decide dict probe sequences, which move the counts between runs
# by a few thousand instructions per request otherwise.
SERVER_ENV = {**os.environ, "PYTHONHASHSEED": "0"}
# Stages of the loop thread: a name and the C functions (a regular expression over callgrind's function
# names) whose inclusive costs, summed, are the stage. Stages nest as indented: a request is read,
# parsed (one C++ call for a plain request, llhttp's callbacks for others) and handled inside uvloop's
# on_read (the handler right after the parse, or inside llhttp's on_message_complete callback); the
# answer is written from a loop callback (Handle._run: the future's done callbacks, the core's flush);
# what they leave is the interpreter running pyserve's Python code and the loop's own work (reading,
# writing, polling).
STAGES = (
    ("request read, parsed, handled (on_read)", r"__pyx_f_6uvloop_4loop___uv_stream_on_read$"),
    ("  plain request parse (C++)", r"pyserve::ParsePlainRequest\("),
    ("  llhttp parse + handler (not plain)", r"^llhttp_execute$"),
    ("    headers (httptools callbacks)",
     r"6parser_cb_on_(url|header_field|header_value|headers_complete|message_begin)$"),
    ("    handler (on_message_complete)", r"6parser_cb_on_message_complete$"),
    ("loop callbacks (Handle._run)", r"loop_6Handle__run$"),
    ("JSON tensor decode (C++)", r"pyserve::(ScanRequest|DecodeData|JsonSkeleton::Match)\("),
    ("orjson (dumps + loads)", r"^(dumps|loads)$"),
    ("msgpack", r"^__pyx_pw_7msgpack_9_cmsgpack_(3unpackb|6Packer_7pack)$"),
    ("asyncio futures (C)", r"^(_asyncio_Future_set_result|future_schedule_callbacks|FutureObj_dealloc|"
                            r"_asyncio_Future_add_done_callback)$"),
    ("garbage collector", r"^gc_collect_main$"),
)



def bodies(dim: int, decimals: int | None = None) -> dict[str, tuple[bytes, dict[str, str]]]:
    """One request of one sample per encoding: (body, extra headers). ``decimals``: the JSON body's
    numbers rounded to that many decimals (the peers harness's body has 5), else as ``tolist()`` of
    FP32 values writes them (up to 17 significant digits, as a numpy client sends them)."""
    import msgpack

    x = np.random.default_rng(0).standard_normal((1, dim)).astype(np.float32)
    data = x.ravel().tolist() if decimals is None else [round(v, decimals) for v in x.ravel().tolist()]
    doc = {"inputs": [{"name": "x", "shape": [1, dim], "datatype": "FP32", "data": data}]}
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, dim], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    packed = msgpack.packb({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, dim], "data": x.tobytes()}]})
    return {
        "json": (json.dumps(doc).encode(), {"Content-Type": "application/json"}),
        "binary": (header + x.tobytes(), {"Content-Type": "application/octet-stream",
                                          "Inference-Header-Content-Length": str(len(header))}),
        "msgpack": (packed, {"Content-Type": "application/msgpack"}),
        "sagemaker": (header + x.tobytes(), {
            "Content-Type": f"application/vnd.sagemaker-triton.binary+json;json-header-size={len(header)}"}),
    }


class Client:
    """Sends one request at a time on one keep-alive connection and reads its whole answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw: bytes) -> int:
        """Sends ``raw`` (a whole HTTP request) and returns the answer's status; raises on a short read."""
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\ncontent-length: *(\d+)", head).group(1))
        while len(self.buf) < length:
            self._read()
        self.buf = self.buf[length:]
        return int(head[9:12])

    def _read(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk


def raw_request(model: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST /v2/models/{model}/infer HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Clients:
    """``count`` keep-alive connections, each sending its next request once its answer is in (a closed
    loop, as wrk and the peers harness drive a server)."""

    def __init__(self, port: int, count: int) -> None:
        self.clients = [Client(port) for _ in range(count)]

    def send(self, raw: bytes, n: int) -> None:
        """Sends ``raw`` ``n`` times in all over the connections and reads every answer; raises
        SystemExit on an answer other than 200."""
        sel = selectors.DefaultSelector()
        sent = 0
        for c in self.clients[:n]:
            c.sock.sendall(raw)
            sel.register(c.sock, selectors.EVENT_READ, c)
            sent += 1
        answered = 0
        while answered < n:
            for key, _ in sel.select():
                c = key.data
                c._read()
                while True:  # every whole answer in the buffer
                    end = c.buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    length = int(re.search(rb"(?i)\ncontent-length: *(\d+)", c.buf[:end]).group(1))
                    if len(c.buf) < end + 4 + length:
                        break
                    if c.buf[9:12] != b"200":
                        raise SystemExit(f"the server answered {c.buf[9:12].decode()}")
                    c.buf = c.buf[end + 4 + length:]
                    answered += 1
                    if sent < n:
                        c.sock.sendall(raw)
                        sent += 1
                    else:
                        sel.unregister(c.sock)
                        break
        sel.close()


def send(client: Client | Clients, raw: bytes, n: int) -> None:
    if isinstance(client, Clients):
        client.send(raw, n)
        return
    for _ in range(n):
        status = client.request(raw)
        if status != 200:
            raise SystemExit(f"the server answered {status}")


def connect(args: argparse.Namespace, port: int) -> Client | Clients:
    return Client(port) if args.clients == 1 else Clients(port, args.clients)


def batch_sizes(port: int, model: str) -> tuple[float, float]:
    """(batches, samples) the server has run for ``model``, from pyserve_batch_size on /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        m = re.match(r'pyserve_batch_size_(count|sum)\{[^}]*model="([^"]*)"[^}]*\} (\S+)$', line)
        if m and m.group(2) == model:
            found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(3))
    return found.get("count", 0.0), found.get("sum", 0.0)


def write_repository(root: Path, payload_log: float | None, model: str = "tiny") -> Path:
    repo = root / "models"
    (repo / model / "1").mkdir(parents=True)
    write_mlp(repo / model / "1" / "model.onnx", LAYERS[model])
    table = f"[payload_log]\nsample_rate = {payload_log}\n" if payload_log is not None else ""
    (repo / model / "config.toml").write_text(
        "max_batch_size = 32\ninstance_count = 1\n[dynamic_batching]\nmax_queue_delay_us = 2000\n"
        "[onnxruntime]\nintra_op_num_threads = 1\n" + table)
    return repo


def server_argv(repo: Path, port: int, log_dir: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "pyserve", "serve", str(repo), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]
    return argv + (["--payload-log-dir", str(log_dir)] if log_dir is not None else [])


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def thread_totals(files: list[Path]) -> dict[int, int]:
    """Instructions per thread number (1: the main thread, the event loop's) of one dump's files."""
    totals = {}
    for f in files:
        text = f.read_text(errors="replace")
        thread = int(re.search(r"^thread: (\d+)", text, re.M).group(1))
        m = re.search(r"^totals: (\d+)", text, re.M)
        totals[thread] = int(m.group(1)) if m else 0
    return totals


def inclusive(file: Path) -> list[tuple[int, str]]:
    """(inclusive instructions, function) of one thread's dump, from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(file)],
                         check=True, capture_output=True, text=True).stdout
    costs: dict[str, int] = {}  # a function inlined in several files is listed once per file: keep one
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(?:\*\s+)?(\S.*)$", line)
        if m and ":" in m.group(2):
            fn = m.group(2).split(":", 1)[1].split(" [")[0].strip()
            costs[fn] = max(costs.get(fn, 0), int(m.group(1).replace(",", "")))
    return [(c, fn) for fn, c in costs.items()]


def split_stages(rows: list[tuple[int, str]]) -> list[int]:
    """The loop thread's instructions per stage (STAGES): the summed inclusive costs of the functions
    each stage names, recursive calls (callgrind's ``'N`` names) left out as they are counted already."""
    out = []
    for _, pattern in STAGES:
        rx = re.compile(pattern)
        out.append(sum(c for c, fn in rows if "'" not in fn and rx.search(fn)))
    return out


def wait_for_log_file(log_dir: Path, timeout_s: float = 300.0) -> None:
    """Waits until the payload log's writer has opened its first file (the warm-up's records built):
    that one-time cost (the Parquet writer's creation, pyarrow's first use) is not a request's."""
    deadline = time.monotonic() + timeout_s
    while not any(log_dir.rglob("*.parquet.tmp")):
        if time.monotonic() > deadline:
            raise SystemExit(f"the payload log opened no file in {log_dir} within {timeout_s:.0f} s")
        time.sleep(0.1)


def server_pinning(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """With several clients, the server on CPU 1 and this client on CPU 0 (bench_server.py's pinning)."""
    if args.clients == 1:
        return argv
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    return pinned(SERVER_CPU, argv)


def run_callgrind(args: argparse.Namespace, repo: Path, log_dir: Path | None, work: Path) -> dict:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    out = work / "callgrind"
    out.mkdir()
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={out}/callgrind.out.%p", *server_argv(repo, args.port, log_dir)]
    server = subprocess.Popen(server_pinning(args, argv), stdout=subprocess.DEVNULL,
                              stderr=open(work / "valgrind.log", "w"), env=SERVER_ENV)
    results = {}
    try:
        wait_ready(f"http://127.0.0.1:{args.port}", timeout_s=600)
        client = connect(args, args.port)
        for part, enc in enumerate(args.encodings, start=1):
            body, headers = bodies(LAYERS[args.model][0], args.json_decimals)[enc]
            raw = raw_request(args.model, body, headers)
            send(client, raw, args.warmup)
            if log_dir is not None and part == 1:
                wait_for_log_file(log_dir)
            batches0 = batch_sizes(args.port, args.model)
            callgrind_control(server.pid, "--zero")
            callgrind_control(server.pid, "-i", "on")
            send(client, raw, args.n)
            callgrind_control(server.pid, "-i", "off")
            callgrind_control(server.pid, f"--dump={enc}")
            batches1 = batch_sizes(args.port, args.model)
            files = sorted(out.glob(f"callgrind.out.{server.pid}.{part}-*"))
            totals = thread_totals(files)
            main = next(f for f in files if f.name.endswith("-01"))
            results[enc] = {"totals": totals, "stages": split_stages(inclusive(main)),
                            "batches": (batches1[0] - batches0[0], batches1[1] - batches0[1])}
    finally:
        server.terminate()
        server.wait(120)
    if args.keep:
        shutil.copytree(out, Path(args.keep), dirs_exist_ok=True)
    return results


def cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds of a process (all its threads) or of one of its threads: the scheduler's run time
    in nanoseconds (``/proc/PID/task/TID/schedstat``) where the kernel keeps it, else user + system
    time from ``stat`` (in clock ticks, 10 ms: too coarse for a short run)."""
    root = Path(f"/proc/{pid}/task")
    tasks = [root / str(tid)] if tid is not None else list(root.iterdir())
    total = 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            if tid is None and not task.exists():
                continue  # a thread that ended meanwhile
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_wall(args: argparse.Namespace, repo: Path, log_dir: Path | None) -> dict:
    port = args.port + 1
    argv = server_pinning(args, server_argv(repo, port, log_dir))
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=SERVER_ENV)
    results = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        client = connect(args, port)
        n = args.n * 5
        for enc in args.encodings:
            body, headers = bodies(LAYERS[args.model][0], args.json_decimals)[enc]
            raw = raw_request(args.model, body, headers)
            send(client, raw, args.warmup * 5)
            batches0 = batch_sizes(port, args.model)
            cpu0, loop0, t0 = cpu_s(server.pid), cpu_s(server.pid, server.pid), time.perf_counter()
            send(client, raw, n)
            t1, cpu1, loop1 = time.perf_counter(), cpu_s(server.pid), cpu_s(server.pid, server.pid)
            batches1 = batch_sizes(port, args.model)
            results[enc] = {"round_trip_us": (t1 - t0) / n * 1e6, "cpu_us": (cpu1 - cpu0) / n * 1e6,
                            "loop_cpu_us": (loop1 - loop0) / n * 1e6, "rps": n / (t1 - t0),
                            "batches": (batches1[0] - batches0[0], batches1[1] - batches0[1])}
    finally:
        server.terminate()
        server.wait(60)
    return results


def mean_batch(batches: tuple[float, float]) -> float:
    return batches[1] / batches[0] if batches[0] else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000, help="requests measured per encoding (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="requests sent before measuring (default 200)")
    p.add_argument("--model", choices=sorted(LAYERS), default="tiny",
                   help="tiny (32-64-10, default) or heavy (512-2048-2048-2048-10)")
    p.add_argument("--clients", type=int, default=1,
                   help="keep-alive connections, each with one request in flight (default 1; above 1 the "
                        "server is pinned to CPU 1 and the client to CPU 0)")
    p.add_argument("--payload-log", type=float, nargs="?", const=1.0, metavar="RATE",
                   help="the model's payload log on, at sample rate RATE (default 1.0)")
    p.add_argument("--json-decimals", type=int, metavar="D",
                   help="round the JSON body's numbers to D decimals (the peers harness's body: 5; "
                        "default: as tolist() writes FP32 values, up to 17 significant digits)")
    p.add_argument("--port", type=int, default=8151)
    p.add_argument("--no-wall", action="store_true", help="skip the run without valgrind (microseconds)")
    p.add_argument("--no-callgrind", action="store_true", help="skip the run under valgrind (instructions)")
    p.add_argument("--keep", metavar="DIR", help="copy callgrind's output files to DIR")
    p.add_argument("--encodings", default=",".join(ENCODINGS),
                   help=f"comma-separated, of {', '.join(ALL_ENCODINGS)} (default {','.join(ENCODINGS)})")
    args = p.parse_args()
    args.encodings = args.encodings.split(",")
    if not set(args.encodings) <= set(ALL_ENCODINGS) or len(set(args.encodings)) != len(args.encodings):
        p.error(f"--encodings: expected some of {', '.join(ALL_ENCODINGS)}, each once, "
                f"got {','.join(args.encodings)}")
    if args.clients < 1:
        p.error("--clients must be at least 1")
    with tempfile.TemporaryDirectory(prefix="pyserve-cost-") as tmp:
        work = Path(tmp)
        repo = write_repository(work, args.payload_log, args.model)
        log_dir = work / "payload-log" if args.payload_log is not None else None
        cg = {} if args.no_callgrind else run_callgrind(args, repo, log_dir, work)
        wall = {} if args.no_wall else run_wall(args, repo, log_dir)
    n = args.n
    dims = "-".join(map(str, LAYERS[args.model]))
    print(f"# pyserve request cost, {args.model} model ({dims}), {args.clients} client"
          f"{'s, each' if args.clients > 1 else ','} one request at a time, N={n} per encoding, "
          f"payload log {'off' if args.payload_log is None else f'on, rate {args.payload_log}'}")
    encodings = args.encodings
    if cg:
        print("# instructions/request (callgrind); loop = the event loop's thread, other = every other thread")
        print(f"{'stage':40s}" + "".join(f"{e:>12s}" for e in encodings))
        rows = [("loop thread, total", [cg[e]["totals"].get(1, 0) for e in encodings]),
                ("other threads, total",
                 [sum(v for t, v in cg[e]["totals"].items() if t != 1) for e in encodings])]
        for i, (name, _) in enumerate(STAGES):
            rows.append((f"  {name}", [cg[e]["stages"][i] for e in encodings]))
        for name, values in rows:
            print(f"{name:40s}" + "".join(f"{v / n:12,.0f}" for v in values))
        print(f"{'samples per batch (mean)':40s}"
              + "".join(f"{mean_batch(cg[e]['batches']):12.2f}" for e in encodings))
    if wall:
        m = n * 5
        print(f"# microseconds/request, no valgrind, N={m} (noisy on a shared machine: compare within one run)")
        trip = "client round trip (us)" if args.clients == 1 else "wall time / requests (us)"
        for key, name, fmt in (("round_trip_us", trip, "{:12.1f}"),
                               ("cpu_us", "server CPU, all threads (us)", "{:12.1f}"),
                               ("loop_cpu_us", "  of it the loop's thread (us)", "{:12.1f}"),
                               ("rps", "requests/s", "{:12,.0f}")):
            print(f"{name:40s}" + "".join(fmt.format(wall[e][key]) for e in encodings))
        # With a costly model and the server bound by its core: the part of the in-process limit it serves.
        print(f"{'other threads (ORT) share of server CPU':40s}"
              + "".join(f"{100 * (1 - wall[e]['loop_cpu_us'] / wall[e]['cpu_us']):11.1f}%" for e in encodings))
        print(f"{'samples per batch (mean)':40s}"
              + "".join(f"{mean_batch(wall[e]['batches']):12.2f}" for e in encodings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
