"""``pyserve serve --workers N``: N processes on one port (SO_REUSEPORT) that answer as one server:
/metrics sums every worker's series, model control applies to every worker (audited once),
readiness is true only when every worker is ready, and a worker that dies is restarted."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import Repo, Server, http_status, process_gone, wait_until
from pyserve import cli
from pyserve.server.app import ServerSettings
from pyserve.workers.metrics import merge
from pyserve.workers.supervisor import Supervisor

INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


def _fresh(method: str, url: str, **kw: Any) -> requests.Response:
    """A request on a new connection (the kernel picks the worker per connection)."""
    with requests.Session() as s:
        return s.request(method, url, timeout=60, headers={"Connection": "close"}, **kw)


def _value(text: str, sample: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {sample} {labels}")


def _worker_pids(server: Server) -> dict[int, int]:
    """The newest pid of each worker, from the supervisor's log."""
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", server.log())}


def _per_worker_successes(url: str, model: str) -> set[int]:
    """The success counts of ``model`` that its stats show, asked on many connections: one value per
    worker reached (the stats endpoint answers for the worker that takes the connection)."""
    seen = set()
    for _ in range(40):
        rows = _fresh("GET", f"{url}/v2/models/{model}/stats?format=pyserve").json()["model_stats"]
        seen.add(sum(r["requests_succeeded"] for r in rows))
    return seen


# -- unit: the supervisor's bookkeeping -------------------------------------------------------------
class _FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid, self.exitcode, self.sentinel = pid, None, None


def test_a_worker_dead_and_awaiting_its_restart_does_not_fail_a_clean_stop(tmp_path: Path) -> None:
    # Worker 0 crashed (status 1) and waits for its restart when SIGTERM comes: it is not restarted,
    # and it was counted already; the stop of the others is clean, so the server exits 0.
    sup = Supervisor(ServerSettings(), 2, tmp_path, "info")
    for w in sup.workers:
        w.process, w.listening, w.ever_listened = _FakeProcess(100 + w.index), threading.Event(), True
        w.listening.set()
    sup.workers[0].process.exitcode = 1
    sup._reap()
    assert sup.workers[0].restart_at is not None and sup.status == 0
    with mock.patch.object(os, "kill"):  # what SIGTERM would be passed on to
        sup._on_signal(signal.SIGTERM, None)
        sup._handle_signals()
    sup.workers[1].process.exitcode = 0  # worker 1 drained and stopped
    sup._reap()
    assert sup.status == 0 and sup.stopping
    assert not any(sup._alive(w) for w in sup.workers)


# -- unit: the merge of expositions -------------------------------------------------------------
def test_merge_sums_counters_histograms_and_count_gauges_and_takes_the_max_of_others() -> None:
    one = """# HELP pyserve_requests_total Requests by outcome.
# TYPE pyserve_requests_total counter
pyserve_requests_total{model="m",version="1",outcome="success"} 3.0
# HELP pyserve_inflight_requests Requests accepted and not yet answered.
# TYPE pyserve_inflight_requests gauge
pyserve_inflight_requests{model="m",version="1"} 2.0
# HELP pyserve_rollout_step Step.
# TYPE pyserve_rollout_step gauge
pyserve_rollout_step{model="m"} 2.0
# HELP pyserve_batch_size Samples per executed batch.
# TYPE pyserve_batch_size histogram
pyserve_batch_size_bucket{model="m",version="1",le="1.0"} 1.0
pyserve_batch_size_bucket{model="m",version="1",le="+Inf"} 3.0
pyserve_batch_size_count{model="m",version="1"} 3.0
pyserve_batch_size_sum{model="m",version="1"} 5.0
"""
    failure = 'pyserve_requests_total{model="m",version="1",outcome="failure"} 1.0'
    two = (one.replace("} 3.0", "} 4.0").replace("} 2.0", "} 1.0")
           .replace('outcome="success"} 4.0', 'outcome="success"} 4.0\n' + failure))
    text = merge([one, two]).decode()
    assert _value(text, "pyserve_requests_total", outcome="success") == 7
    assert _value(text, "pyserve_requests_total", outcome="failure") == 1  # a series of one worker only
    assert _value(text, "pyserve_inflight_requests") == 3  # a count: summed
    assert _value(text, "pyserve_rollout_step") == 2  # not a count: the largest
    assert _value(text, "pyserve_batch_size_bucket", le="+Inf") == 7
    assert _value(text, "pyserve_batch_size_sum") == 10
    assert "worker" not in text  # the same series and labels as one process


def test_merge_refuses_text_that_is_not_an_exposition() -> None:
    with pytest.raises(ValueError):
        merge(["this is { not prometheus"])


@pytest.mark.parametrize("text", ["0", "-1", "65", "two", ""])
def test_workers_flag_refuses_counts_out_of_range(text: str) -> None:
    with pytest.raises(SystemExit):
        cli.make_parser().parse_args(["serve", "--workers", text])


def test_workers_auto_is_the_cpu_count() -> None:
    args = cli.make_parser().parse_args(["serve", "--workers", "auto"])
    assert args.workers == max(1, min(cli.MAX_WORKERS, len(os.sched_getaffinity(0))))


# -- a real --workers 2 server ------------------------------------------------------------------
@pytest.fixture
def two_workers(serve: Any, repo: Repo) -> Server:
    repo.onnx("m")
    repo.onnx("n")
    server = serve([repo.root, "--workers", "2"], wait_ready=False)
    # Live once the first worker listens; ready once both are.
    wait_until(lambda: http_status(server.url + "/v2/health/ready") == 200, 120, "both workers ready")
    return server


@pytest.mark.slow
def test_metrics_count_every_workers_requests(two_workers: Server) -> None:
    url = two_workers.url
    sent = 0
    # Until both workers served some (each connection goes to one, chosen by the kernel's hash).
    while sent < 400:
        for _ in range(20):
            assert _fresh("POST", f"{url}/v2/models/m/infer", json=INFER).status_code == 200
        sent += 20
        if len(_per_worker_successes(url, "m")) == 2:
            break
    per_worker = _per_worker_successes(url, "m")
    assert len(per_worker) == 2 and sum(per_worker) == sent, per_worker
    text = _fresh("GET", f"{url}/metrics").text
    assert _value(text, "pyserve_requests_total", model="m", outcome="success") == sent
    assert _value(text, "pyserve_request_duration_seconds_count", model="m") == sent
    # The dashboard shows one worker's figures, and says so.
    assert re.search(r"worker [01] of 2: the figures of the one process", _fresh("GET", f"{url}/dashboard").text)


@pytest.mark.slow
def test_model_control_applies_to_every_worker_and_is_audited_once(two_workers: Server, repo: Repo) -> None:
    url = two_workers.url
    assert _fresh("POST", f"{url}/v2/repository/models/n/unload").status_code == 200
    statuses = {_fresh("POST", f"{url}/v2/models/n/infer", json=INFER).status_code for _ in range(30)}
    assert 200 not in statuses, statuses
    assert http_status(f"{url}/v2/models/n/ready") != 200
    assert _fresh("POST", f"{url}/v2/repository/models/n/load").status_code == 200
    statuses = {_fresh("POST", f"{url}/v2/models/n/infer", json=INFER).status_code for _ in range(30)}
    assert statuses == {200}
    # A traffic policy change: every worker routes by it; the policy file, its audit record and its
    # counter are written once.
    put = _fresh("PUT", f"{url}/v2/repository/models/m/aliases/stable", json={"version": "1", "reason": "t"})
    assert put.status_code == 200, put.text
    aliases = {json.dumps(_fresh("GET", f"{url}/v2/repository/models/m/traffic").json().get("aliases"))
               for _ in range(30)}
    assert aliases == {json.dumps({"stable": "1"})}
    traffic_audit = (repo.root / ".pyserve" / "traffic-audit.jsonl").read_text().splitlines()
    assert len(traffic_audit) == 1
    text = _fresh("GET", f"{url}/metrics").text
    assert _value(text, "pyserve_traffic_policy_changes_total", model="m") == 1
    records = [json.loads(line) for line in (repo.root / ".pyserve" / "audit.jsonl").read_text().splitlines()]
    assert [r["action"] for r in records] == ["unload", "load", "set_alias"]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_readiness_is_false_meanwhile(two_workers: Server) -> None:
    url = two_workers.url
    pids = _worker_pids(two_workers)
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGKILL)
    wait_until(lambda: process_gone(pids[1]), 30, "worker 1 gone")  # its socket closed: no reset
    # Worker 0 still serves, but the server is not ready until worker 1 is back.
    wait_until(lambda: http_status(url + "/v2/health/ready") == 503, 30, "readiness 503")
    assert "worker 1 is not answering" in _fresh("GET", url + "/v2/health/ready").text
    assert _fresh("POST", f"{url}/v2/models/m/infer", json=INFER).status_code == 200
    wait_until(lambda: _worker_pids(two_workers).get(1, pids[1]) != pids[1], 60, "worker 1 restarted")
    wait_until(lambda: http_status(url + "/v2/health/ready") == 200, 60, "readiness 200 again")
    assert "worker 1 (pid %d) was killed by SIGKILL" % pids[1] in two_workers.log()
    statuses = {_fresh("POST", f"{url}/v2/models/m/infer", json=INFER).status_code for _ in range(20)}
    assert statuses == {200}


def test_the_port_of_a_running_reuseport_server_is_refused() -> None:
    """SO_REUSEPORT would let a second server of the same user share a port another one listens on
    (a second ``--workers`` server started while the first runs or drains): reserving the port must
    fail as a plain bind would, and --port 0 must still give one port of its own."""
    import errno
    import socket

    from pyserve.workers.supervisor import reserve_port

    with socket.socket() as running:
        running.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        running.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        running.bind(("127.0.0.1", 0))
        running.listen()
        port = running.getsockname()[1]
        with pytest.raises(OSError) as refused:
            reserve_port("127.0.0.1", port)
        assert refused.value.errno == errno.EADDRINUSE
    with reserve_port("127.0.0.1", 0) as mine:
        assert mine.getsockname()[1] != 0
        assert mine.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1


@pytest.mark.slow
def test_control_calls_taken_at_once_by_two_workers_leave_them_agreeing(serve: Any, repo: Repo) -> None:
    # Each call is applied by the worker that took it, then forwarded: two calls taken at once by
    # two workers used to reach each worker in the opposite order, leaving one worker routing
    # `stable` to version 1 and the other to version 2 for good.
    repo.onnx("m", {1: 1.0, 2: 2.0}, config="[version_policy]\nall = true\n")
    server = serve([repo.root, "--workers", "2"], wait_ready=False)
    wait_until(lambda: http_status(server.url + "/v2/health/ready") == 200, 120, "both workers ready")

    def put(version: str) -> int:
        return _fresh("PUT", f"{server.url}/v2/repository/models/m/aliases/stable",
                      json={"version": version}).status_code

    for _ in range(4):
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(put, ["1", "2"] * 4)) == {200}
        policies = {_fresh("GET", f"{server.url}/v2/repository/models/m/traffic").text for _ in range(30)}
        assert len(policies) == 1, policies
