"""Hostile and careless clients against a real ``pyserve serve``: slow headers, trickled and stalled
bodies, many idle connections, pipelining without reading, connection floods and descriptor
exhaustion. Each test runs a normal client beside the abuse and asserts that it stays served.

The latency bound (:data:`NORMAL_LATENCY_S`) is loose on purpose: these tests must pass on a loaded
2-core machine; it only catches a server that stops answering (the failures this suite guards
against were stalls of seconds, or every request refused). Speed figures belong in bench/.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Repo, Server, start_server, wait_until
from test_http import Conn, assert_infer, crash_reports, infer_request, request_bytes

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 60
NORMAL_LATENCY_S = 3.0  # a normal request's worst latency under abuse (robust to a loaded machine)
ROW = [1.0, 2.0, 3.0, 4.0]


@pytest.fixture(scope="module")
def server(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An identity model behind short deadlines and a small connection cap."""
    repo = Repo(tmp_path_factory.mktemp("hostile") / "models")
    repo.identity("ident", [("x", "FP32", [4])], max_batch_size=8)
    srv = serve_module([repo.root, "--header-timeout-s", HEADER_TIMEOUT_S, "--body-timeout-s", BODY_TIMEOUT_S,
                        "--max-connections", MAX_CONNECTIONS])
    yield srv
    assert not crash_reports(srv.log()), "\n\n".join(crash_reports(srv.log()))[-3000:]


def metric(server: Server, name: str) -> float:
    """The value of one sample of ``/metrics`` (``name`` with its labels, as written)."""
    with Conn(server) as c:
        text = c.request("GET", "/metrics").body.decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


class NormalClient:
    """Infers on one keep-alive connection, in a thread, until stopped; records each latency and
    any failure."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NormalClient:
        self._conn = Conn(self.server)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self._conn.send(infer_request(ROW))
                assert_infer(self._conn.read_response(), ROW)
            except Exception as e:  # recorded: the test asserts there were none
                self.errors.append(repr(e))
                return
            self.latencies.append(time.monotonic() - start)
            self._stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()

    def assert_served(self, at_least: int = 5) -> None:
        assert not self.errors, self.errors
        assert len(self.latencies) >= at_least, f"only {len(self.latencies)} requests answered"
        assert max(self.latencies) < NORMAL_LATENCY_S, f"worst latency {max(self.latencies):.2f} s"


def read_status(sock: socket.socket, timeout_s: float) -> int | None:
    """The status of the response the server sends on ``sock`` within ``timeout_s``; None when it
    closes without one."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    except ConnectionResetError:
        return None
    return int(data.split(b" ", 2)[1])


def test_slow_headers_get_408(server: Server) -> None:
    """Headers sent a byte at a time, never finished: 408 once the header deadline passes, then the
    connection ends; the normal client is served all along."""
    before = metric(server, 'pyserve_http_request_timeouts_total{phase="header"}')
    with NormalClient(server) as normal:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            for b in b"POST /v2/models/ident/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ":
                s.sendall(bytes([b]))
                time.sleep(HEADER_TIMEOUT_S / 40)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # keep trickling: the deadline holds however active
                try:
                    s.sendall(b"a")
                except OSError:
                    break
                s.settimeout(0.1)
                try:
                    data = s.recv(4096)
                except TimeoutError:
                    continue
                assert data.startswith(b"HTTP/1.1 408 "), data[:200]
                assert b"headers not received within" in data
                break
            else:
                pytest.fail("no 408 within 10 s of trickled headers")
    normal.assert_served()
    assert metric(server, 'pyserve_http_request_timeouts_total{phase="header"}') == before + 1


@pytest.mark.parametrize("stall", [False, True], ids=["trickled", "stalled"])
def test_a_body_that_does_not_arrive_in_time_gets_408(server: Server, stall: bool) -> None:
    """A body trickled a byte at a time forever, or half sent and then stalled: 408 once the body
    deadline passes (counted as the model's error), the connection ends; the normal client is
    served all along."""
    errors = 'pyserve_infer_errors_total{kind="invalid_argument",model="ident"}'
    before = metric(server, 'pyserve_http_request_timeouts_total{phase="body"}')
    with NormalClient(server) as normal:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(request_bytes("POST", "/v2/models/ident/infer", None,
                                    {"Content-Type": "application/json", "Content-Length": "100000"}))
            s.sendall(b'{"inputs": [')
            status = None
            deadline = time.monotonic() + 10
            while status is None and time.monotonic() < deadline:
                if not stall:
                    try:
                        s.sendall(b" ")
                    except OSError:
                        break
                status = read_status_nowait(s)
            assert status == 408, status
    normal.assert_served()
    assert metric(server, 'pyserve_http_request_timeouts_total{phase="body"}') == before + 1
    assert metric(server, errors) >= 1


def read_status_nowait(sock: socket.socket) -> int | None:
    """The status of a response already arriving on ``sock`` (waits at most 0.1 s), else None."""
    sock.settimeout(0.1)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return None
    except ConnectionResetError:
        pytest.fail("connection reset without an answer")
    if not data:
        pytest.fail("connection closed without an answer")
    return int(data.split(b" ", 2)[1])


def test_a_slow_but_steady_body_within_the_deadline_is_served(server: Server) -> None:
    """The deadline is on the whole body, not between reads: a body sent in pieces that all arrive
    before it is served."""
    body = infer_request(ROW)
    head, _, payload = body.partition(b"\r\n\r\n")
    with Conn(server) as c:
        c.send(head + b"\r\n\r\n")
        for i in range(0, len(payload), 16):
            c.send(payload[i:i + 16])
            time.sleep(BODY_TIMEOUT_S / 4 / (len(payload) / 16))
        assert_infer(c.read_response(), ROW)


def test_many_idle_connections_below_the_cap_cost_a_normal_client_nothing(server: Server) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS - 10)]
    try:
        with NormalClient(server) as normal:
            time.sleep(1.0)
        normal.assert_served()
    finally:
        for s in idle:
            s.close()


@pytest.mark.slow
def test_pipelining_without_reading_does_not_hold_up_others(server: Server) -> None:
    """A client that pipelines thousands of requests and never reads the answers: the server stops
    reading from it; the normal client is served meanwhile."""
    with Conn(server) as greedy, NormalClient(server) as normal:
        greedy.sock.setblocking(False)
        payload = infer_request(ROW) * 2000
        sent = 0
        end = time.monotonic() + 3
        while time.monotonic() < end and sent < len(payload):
            try:
                sent += greedy.sock.send(payload[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.05)  # the server stopped reading: its buffers and ours are full
        time.sleep(1.0)
    normal.assert_served()


def test_a_connection_flood_over_the_cap_is_refused_at_once(server: Server) -> None:
    """Connections beyond --max-connections are closed as soon as they are accepted (counted);
    the normal client, connected before, is served; once the flood ends a new client is served."""
    before = metric(server, "pyserve_http_connections_refused_total")
    flood: list[socket.socket] = []
    with NormalClient(server) as normal:
        try:
            for _ in range(MAX_CONNECTIONS + 40):
                flood.append(socket.create_connection(("127.0.0.1", server.port)))
            time.sleep(1.0)
            closed = 0
            for s in flood:  # the ones over the cap ended at once, without a byte sent
                s.settimeout(0.01)
                try:
                    closed += s.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
                except TimeoutError:
                    pass  # open: under the cap
            # The normal client holds one slot; a metrics scrape below takes another.
            assert closed >= 40, closed
        finally:
            for s in flood:
                s.close()
    normal.assert_served()
    wait_until(lambda: metric(server, "pyserve_http_connections") <= 2, what="the flood's connections closed")
    assert metric(server, "pyserve_http_connections_refused_total") >= before + 40
    with Conn(server) as c:
        assert_infer(c.request("POST", "/v2/models/ident/infer", infer_request(ROW).partition(b"\r\n\r\n")[2],
                               {"Content-Type": "application/json"}), ROW)


FD_LIMIT = 256


def _low_fd_limit() -> None:  # runs in the server's process before exec
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptor limits")
def test_trickling_connections_past_the_descriptor_limit(repo: Repo, tmp_path: Any) -> None:
    """Reproduces, scaled down, 20,000 trickling connections against a process's descriptor limit:
    more connections than descriptors, each trickling its body. Without a cap, accept() failed with
    EMFILE and asyncio stopped accepting for a second at a time: every new client failed. With the
    default cap (sized from the limit) the extra connections are refused at once, the normal client
    is served throughout, the trickling ones get 408 at the body deadline, and new clients are
    served again."""
    repo.identity("ident", [("x", "FP32", [4])], max_batch_size=8)
    server = start_server([str(repo.root), "--body-timeout-s", "2"], tmp_path / "logs", preexec_fn=_low_fd_limit)
    try:
        cap = int(metric(server, "pyserve_http_max_connections"))
        assert cap < FD_LIMIT  # sized from the limit, leaving descriptors for the rest of the process
        trickling: list[socket.socket] = []
        with NormalClient(server) as normal:
            for _ in range(FD_LIMIT + 100):
                try:
                    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    s.sendall(request_bytes("POST", "/v2/models/ident/infer", None, {"Content-Length": "1000"}))
                    trickling.append(s)
                except OSError:
                    pass  # refused at once: what the cap is for
            time.sleep(1.0)
            normal.assert_served()
        for s in trickling:
            s.close()
        # Without the cap: "socket.accept() out of system resource ... Too many open files".
        assert "Too many open files" not in server.log(), server.log()[-3000:]
        assert metric(server, "pyserve_http_connections_refused_total") > 0
        with Conn(server) as c:
            assert_infer(c.request("POST", "/v2/models/ident/infer",
                                   infer_request(ROW).partition(b"\r\n\r\n")[2],
                                   {"Content-Type": "application/json"}), ROW)
    finally:
        server.stop()
