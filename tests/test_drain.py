"""SIGTERM drains as a Kubernetes pod should (``--drain-grace-s``): readiness goes false at once, the
server keeps accepting and serving for the grace period, then finishes what it accepted and exits;
behind a round-robin client that drops a backend once its readiness is false, a rolling restart
loses no request."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from conftest import Repo, http_status, wait_until

X = {"x": np.ones((1, 4), np.float32)}


def _infer(session: requests.Session, url: str) -> int:
    resp = session.post(f"{url}/v2/models/m/infer", timeout=30, json={
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 1.0, 1.0, 1.0]}]})
    return resp.status_code


def test_sigterm_turns_readiness_false_but_keeps_serving_for_the_grace(serve: Any, repo: Repo) -> None:
    repo.onnx("m")
    # A grace longer than the test may wait: the second SIGTERM must cut it short.
    server = serve([repo.root, "--drain-grace-s", "600"])
    server.signal(signal.SIGTERM)
    wait_until(lambda: http_status(server.url + "/v2/health/ready") == 503, 30, "readiness 503 after SIGTERM")
    assert http_status(server.url + "/v2/models/m/ready") == 503
    assert http_status(server.url + "/v2/health/live") == 200
    # New connections are still accepted and served during the grace.
    with requests.Session() as s:
        assert _infer(s, server.url) == 200
    assert "draining: readiness is false" in server.log()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def test_answers_during_the_grace_close_kept_alive_connections(serve: Any, repo: Repo) -> None:
    # A kept-alive connection (a pooling client, a proxy) stays on this server whatever readiness
    # says: each answer of the grace says Connection: close, so the client opens its next
    # connection where the load balancer sends it, instead of losing a request when the grace ends.
    repo.onnx("m")
    server = serve([repo.root, "--drain-grace-s", "600"])
    host, port = server.url.removeprefix("http://").split(":")
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}'
    head = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    request = head + body
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        reader = sock.makefile("rb")

        def answer() -> tuple[bytes, bytes]:
            status = reader.readline()
            head = b""
            while (line := reader.readline()) not in (b"\r\n", b""):
                head += line.lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            reader.read(length)
            return status, head

        sock.sendall(request)
        status, head = answer()
        assert status.startswith(b"HTTP/1.1 200") and b"connection: close" not in head
        server.signal(signal.SIGTERM)
        wait_until(lambda: http_status(server.url + "/v2/health/ready") == 503, 30,
                   "readiness 503 after SIGTERM")
        sock.sendall(request)  # the same connection, during the grace
        status, head = answer()
        assert status.startswith(b"HTTP/1.1 200") and b"connection: close" in head
        assert reader.read() == b""  # and the server closed it
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


class RoundRobin:
    """A client in the manner of a Kubernetes Service: an endpoint controller polls each backend's
    readiness and keeps the rotation (those ready); senders send requests round-robin over the
    rotation as they last saw it (so a backend leaves it only after the next poll, as in Kubernetes)."""

    POLL_S = 0.1

    def __init__(self, urls: list[str]) -> None:
        self.backends = list(urls)
        self.rotation = list(urls)
        self.served: dict[str, int] = {}
        self.failures: list[str] = []
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._poll, daemon=True)]
        self.threads += [threading.Thread(target=self._send, daemon=True) for _ in range(2)]

    def __enter__(self) -> RoundRobin:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join(60)

    def add(self, url: str) -> None:
        with self.lock:
            self.backends.append(url)

    def count(self, url: str) -> int:
        with self.lock:
            return self.served.get(url, 0)

    def _poll(self) -> None:
        while not self.done.wait(self.POLL_S):
            with self.lock:
                backends = list(self.backends)
            ready = [u for u in backends if http_status(u + "/v2/health/ready", 2.0) == 200]
            with self.lock:
                self.rotation = ready

    def _send(self) -> None:
        sessions: dict[str, requests.Session] = {}
        i = 0
        while not self.done.is_set():
            with self.lock:
                rotation = list(self.rotation)
            if not rotation:
                self.done.wait(0.01)
                continue
            url = rotation[i % len(rotation)]
            i += 1
            try:
                status = _infer(sessions.setdefault(url, requests.Session()), url)
            except requests.RequestException as e:
                with self.lock:
                    self.failures.append(f"{url}: {e}")
                continue
            with self.lock:
                if status == 200:
                    self.served[url] = self.served.get(url, 0) + 1
                else:
                    self.failures.append(f"{url}: status {status}")


@pytest.mark.slow
def test_rolling_restart_behind_a_round_robin_client_fails_no_request(serve: Any, repo: Repo,
                                                                      tmp_path: Path) -> None:
    repo.onnx("m")
    # The grace covers the client's readiness polling many times over.
    args = [repo.root, "--drain-grace-s", "3"]
    a, b = serve(args), serve(args)
    with RoundRobin([a.url, b.url]) as client:
        wait_until(lambda: client.count(a.url) >= 20 and client.count(b.url) >= 20, 60, "traffic on both")
        a.signal(signal.SIGTERM)  # the rolling update replaces a
        assert a.wait() == 0
        served_by_b = client.count(b.url)
        wait_until(lambda: client.count(b.url) >= served_by_b + 20, 60, "traffic on b alone")
        a2 = serve(args)  # its replacement, at its own address as a new pod would be
        client.add(a2.url)
        wait_until(lambda: client.count(a2.url) >= 20, 60, "traffic on the replacement")
    assert client.failures == []
    assert client.count(b.url) > served_by_b
