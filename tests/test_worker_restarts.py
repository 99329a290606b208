"""A ``--workers`` server across a worker's death: the whole-server counters never go backwards
(retired totals and a monotonic floor, pyserve.workers.counters), and a restarted worker serves
what its siblings serve (the control journal, pyserve.workers.journal)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Repo, Server, http_status, process_gone, wait_until
from prometheus_client.parser import text_string_to_metric_families

from pyserve.workers import counters
from pyserve.workers.journal import ControlJournal, classify

INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


def _exposition(requests_total: float, inflight: float, count: float = 0.0) -> str:
    return f"""# HELP pyserve_requests_total Requests by outcome.
# TYPE pyserve_requests_total counter
pyserve_requests_total{{model="m",outcome="success"}} {requests_total}
# HELP pyserve_inflight_requests Requests accepted and not yet answered.
# TYPE pyserve_inflight_requests gauge
pyserve_inflight_requests{{model="m"}} {inflight}
# HELP pyserve_batch_size Samples per executed batch.
# TYPE pyserve_batch_size histogram
pyserve_batch_size_bucket{{model="m",le="+Inf"}} {count}
pyserve_batch_size_count{{model="m"}} {count}
pyserve_batch_size_sum{{model="m"}} {count * 2}
"""


def _value(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples ``sample`` with ``labels`` (over the labels not given)."""
    found = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, f"no sample {sample} {labels}"
    return sum(found)


# -- unit: retired totals and the floor ---------------------------------------------------------
def test_retire_keeps_the_counters_of_each_exited_incarnation_and_drops_its_gauges(tmp_path: Path) -> None:
    assert not counters.retire(tmp_path, 1)  # nothing saved: nothing to keep
    assert counters.read_retired(tmp_path).generation == 0
    counters.write_atomically(counters.exposition_path(tmp_path, 1), _exposition(5, 3, 4).encode())
    assert counters.retire(tmp_path, 1)
    assert not counters.exposition_path(tmp_path, 1).exists()  # never counted twice
    counters.write_atomically(counters.exposition_path(tmp_path, 1), _exposition(2, 1, 1).encode())
    assert counters.retire(tmp_path, 1)
    retired = counters.read_retired(tmp_path)
    assert retired.generation == 2
    assert _value(retired.exposition, "pyserve_requests_total") == 7
    assert _value(retired.exposition, "pyserve_batch_size_count") == 5
    assert "pyserve_inflight_requests" not in retired.exposition  # a dead process holds nothing now


def test_whole_server_adds_the_retired_totals_to_the_live_workers(tmp_path: Path) -> None:
    counters.write_atomically(counters.exposition_path(tmp_path, 1), _exposition(30, 0, 30).encode())
    counters.retire(tmp_path, 1)
    # Worker 0 lives on; worker 1 restarted and counted 4 since.
    text = counters.whole_server(tmp_path, [_exposition(10, 2, 10), _exposition(4, 1, 4)], []).decode()
    assert _value(text, "pyserve_requests_total") == 44
    assert _value(text, "pyserve_batch_size_bucket", le="+Inf") == 44
    assert _value(text, "pyserve_batch_size_sum") == 88
    assert _value(text, "pyserve_inflight_requests") == 3


def test_a_silent_worker_counts_by_its_saved_counters(tmp_path: Path) -> None:
    # Worker 1 saved 7 when it answered the last scrape, then stopped answering (dying, or slow).
    counters.write_atomically(counters.exposition_path(tmp_path, 1), _exposition(7, 5, 7).encode())
    text = counters.whole_server(tmp_path, [_exposition(12, 1, 12)], [1]).decode()
    assert _value(text, "pyserve_requests_total") == 19
    assert _value(text, "pyserve_batch_size_count") == 19
    assert _value(text, "pyserve_inflight_requests") == 1  # its gauges say nothing of now
    # Retired (it died) between a scrape's answers and its sum: that scrape is taken again.
    generation = counters.read_retired(tmp_path).generation
    counters.retire(tmp_path, 1)
    with pytest.raises(counters.RetiredMeanwhile):
        counters.whole_server(tmp_path, [_exposition(12, 1, 12), _exposition(7, 5, 7)], [], generation)
    text = counters.whole_server(tmp_path, [_exposition(12, 1, 12)], [1],
                                 counters.read_retired(tmp_path).generation).decode()
    assert _value(text, "pyserve_requests_total") == 19


def test_a_save_rendered_earlier_never_replaces_a_later_one(tmp_path: Path) -> None:
    # Two saves in flight at once (a scrape, the periodic save) may finish their writes in either
    # order; the file must keep the later render, which a scrape may have published already.
    renders = iter([_exposition(5, 0).encode(), _exposition(9, 0).encode()])
    saver = counters.CountSaver(counters.exposition_path(tmp_path, 0), lambda: next(renders))
    older, newer = saver.render(), saver.render()
    assert saver.write(*newer)
    assert not saver.write(*older)
    assert _value(saver.path.read_text(), "pyserve_requests_total") == 9
    counters.retire(tmp_path, 0)  # and a kill -9 now keeps the 9 the scrape may have shown
    assert _value(counters.whole_server(tmp_path, [], []).decode(), "pyserve_requests_total") == 9


def test_save_returns_what_it_saved(tmp_path: Path) -> None:
    saver = counters.CountSaver(counters.exposition_path(tmp_path, 1), lambda: _exposition(3, 1).encode())
    text = asyncio.run(saver.save())
    assert saver.path.read_bytes() == text and _value(text.decode(), "pyserve_requests_total") == 3


# -- unit: the control journal ------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "key"), [
    ("POST", "/v2/repository/models/m/load", ["model", "m"]),
    ("POST", "/v2/repository/models/m/versions/2/unload", ["version", "m", "2"]),
    ("PUT", "/v2/repository/models/m/traffic", ["traffic", "m"]),
    ("DELETE", "/v2/repository/models/m/aliases/stable", ["alias", "m", "stable"]),
    ("POST", "/v2/repository/models/m/rollout/pause", ["rollout", "m"]),
    ("GET", "/v2/repository/models/m/traffic", None),
    ("POST", "/v2/models/m/infer", None),
], ids=lambda v: v if isinstance(v, str) else None)
def test_journal_classifies_the_fanned_out_control_calls(method: str, path: str, key: list[str] | None) -> None:
    got = classify(method, path)
    assert (got[1] if got is not None else None) == key


def test_journal_keeps_the_latest_call_per_key_in_order(tmp_path: Path) -> None:
    journal = ControlJournal(tmp_path)

    def rec(method: str, path: str, body: bytes = b"") -> None:
        journal.record(method, path, body, "application/json" if body else "", "127.0.0.1:1")

    rec("POST", "/v2/repository/models/n/versions/1/load")
    rec("POST", "/v2/repository/models/n/unload")  # the whole model: replaces its versions' calls
    rec("POST", "/v2/repository/models/o/load")
    rec("PUT", "/v2/repository/models/m/aliases/stable", b'{"version": "1"}')
    rec("PUT", "/v2/repository/models/m/aliases/canary", b'{"version": "2"}')
    rec("DELETE", "/v2/repository/models/m/aliases/canary")
    assert journal.record("GET", "/v2/repository/index", b"", "", "") is None
    calls = journal.calls()
    assert [(c.method, c.target) for c in calls] == [
        ("POST", "/v2/repository/models/n/unload"), ("POST", "/v2/repository/models/o/load"),
        ("PUT", "/v2/repository/models/m/aliases/stable"), ("DELETE", "/v2/repository/models/m/aliases/canary")]
    assert calls[2].body_bytes == b'{"version": "1"}' and calls[2].content_type == "application/json"
    assert [c.seq for c in calls] == sorted(c.seq for c in calls)
    # A whole policy replaces the aliases; a rollout (its own files are read back) drops the policy.
    rec("PUT", "/v2/repository/models/m/traffic", b'{"aliases": {"stable": "2"}}')
    assert [c.target for c in journal.calls()][-1] == "/v2/repository/models/m/traffic"
    assert not any("aliases" in c.target for c in journal.calls())
    rec("POST", "/v2/repository/models/m/rollout", b"{}")
    assert [c.target for c in journal.calls()] == ["/v2/repository/models/n/unload",
                                                   "/v2/repository/models/o/load"]


# -- a real --workers 2 server with a worker killed ---------------------------------------------
def _fresh(method: str, url: str, **kw: Any) -> requests.Response:
    """A request on a new connection (the kernel picks the worker per connection)."""
    with requests.Session() as s:
        return s.request(method, url, timeout=60, headers={"Connection": "close"}, **kw)


def _worker_pids(server: Server) -> dict[int, int]:
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", server.log())}


def _counters(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter, histogram and summary sample of an exposition (``_created`` aside)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) if fam.type in ("counter", "histogram", "summary")
            for s in fam.samples if not s.name.endswith("_created")}


def _never_decrease(before: dict, after: dict) -> None:
    went_back = {k: (v, after[k]) for k, v in before.items() if k in after and after[k] < v}
    assert not went_back, went_back


@pytest.mark.slow
def test_a_restarted_worker_serves_the_control_state_and_counters_never_go_back(serve: Any, repo: Repo) -> None:
    repo.onnx("m", {1: 1.0, 2: 2.0})
    repo.onnx("n")
    server = serve([repo.root, "--workers", "2"], wait_ready=False)
    url = server.url
    wait_until(lambda: http_status(url + "/v2/health/ready") == 200, 120, "both workers ready")
    for _ in range(40):
        assert _fresh("POST", f"{url}/v2/models/m/infer", json=INFER).status_code == 200
    # Control after the start: a model unloaded, one loaded, an alias set.
    assert _fresh("POST", f"{url}/v2/repository/models/n/unload").status_code == 200
    repo.onnx("o")
    assert _fresh("POST", f"{url}/v2/repository/models/o/load").status_code == 200
    put = _fresh("PUT", f"{url}/v2/repository/models/m/aliases/stable", json={"version": "2", "reason": "t"})
    assert put.status_code == 200, put.text
    # The scrape saves both workers' counts: the kill below then loses nothing.
    before = _fresh("GET", f"{url}/metrics").text
    sent_before = _value(before, "pyserve_requests_total", model="m", outcome="success")
    assert sent_before == 40
    pids = _worker_pids(server)
    os.kill(pids[1], signal.SIGKILL)
    wait_until(lambda: process_gone(pids[1]), 30, "worker 1 gone")
    wait_until(lambda: http_status(url + "/v2/health/ready") == 503, 30, "readiness 503")
    during = _fresh("GET", f"{url}/metrics").text  # worker 1 gone: only worker 0 answers
    _never_decrease(_counters(before), _counters(during))
    wait_until(lambda: _worker_pids(server).get(1, pids[1]) != pids[1], 60, "worker 1 restarted")
    wait_until(lambda: http_status(url + "/v2/health/ready") == 200, 120, "readiness 200 again")
    assert "control journal: 3 call(s) replayed" in server.log()
    after = _fresh("GET", f"{url}/metrics").text
    _never_decrease(_counters(during), _counters(after))
    # Every connection (either worker) answers by the control state.
    n_statuses, o_statuses, aliases = set(), set(), set()
    for _ in range(30):
        n_statuses.add(_fresh("POST", f"{url}/v2/models/n/infer", json=INFER).status_code)
        o_statuses.add(_fresh("POST", f"{url}/v2/models/o/infer", json=INFER).status_code)
        assert _fresh("POST", f"{url}/v2/models/m/infer", json=INFER).status_code == 200
        aliases.add(json.dumps(_fresh("GET", f"{url}/v2/repository/models/m/traffic").json().get("aliases")))
    assert 200 not in n_statuses, n_statuses
    assert o_statuses == {200}
    assert aliases == {json.dumps({"stable": "2"})}
    # Counted once each: the 40 before the kill (worker 1's share retired) and the 30 since.
    final = _fresh("GET", f"{url}/metrics").text
    _never_decrease(_counters(after), _counters(final))
    assert _value(final, "pyserve_requests_total", model="o", outcome="success") == 30
    assert _value(final, "pyserve_requests_total", model="m", outcome="success") == 70


def test_a_worker_replaying_the_journal_is_not_ready_nor_are_its_models() -> None:
    from types import SimpleNamespace

    from pyserve.server import handlers
    from pyserve.server.app import App, ServerSettings
    from pyserve.server.messages import Request

    app = object.__new__(App)  # no models needed: the host says every model is ready
    app.settings, app.draining, app.converging = ServerSettings(), False, True
    app.host = SimpleNamespace(ready=lambda strict: True)
    app.service = SimpleNamespace(ready=lambda name, version: None)

    def status(handler: Any, path: str) -> int:
        request = Request(app, "GET", path, "", {}, b"")
        request.match_info = {"model": "m"}
        return handler(request).status

    assert status(handlers.ready, "/v2/health/ready") == 503
    assert status(handlers.model_ready, "/v2/models/m/ready") == 503
    app.converging = False
    assert status(handlers.ready, "/v2/health/ready") == 200
    assert status(handlers.model_ready, "/v2/models/m/ready") == 200


def test_a_damaged_journal_is_refused_naming_the_file(tmp_path: Path) -> None:
    import asyncio

    from pyserve.workers import WorkerSettings
    from pyserve.workers.journal import JOURNAL_FILE, ReplayError, converge

    (tmp_path / JOURNAL_FILE).write_text("{not json")
    with pytest.raises(ReplayError, match=JOURNAL_FILE):
        asyncio.run(converge(WorkerSettings(1, 2, tmp_path)))
