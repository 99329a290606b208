"""Triton's statistics extension (pyserve.protocol.triton_stats): the JSON schema of
docs/protocol/extension_statistics.md, checked against Triton's own protobuf messages and read back
through tritonclient.http, and the mapping of the core's statistics onto it."""

from __future__ import annotations

import bisect
import importlib
import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pyserve import _core
from pyserve.protocol.triton_stats import DURATION_KEYS, model_statistics, statistics_document

# ------------------------------------------------------------------------------------- snapshots


@pytest.fixture(scope="module")
def core_bounds() -> dict[str, list[float]]:
    """The histogram bucket bounds of the real core, so the tests follow it if they change."""
    cq = _core.CompletionQueue()
    sched = _core.Scheduler(
        _core.SchedulerOptions(
            model_name="m", model_version="1", inputs=[("x", "FP32", [1])], outputs=[("y", "FP32", [1])]
        ),
        _core.IdentityBackend(),
        cq,
    )
    stats = sched.stats()
    sched.stop()
    return {key: stats[key]["upper_bounds"] for key in ("request_us", "queue_us", "compute_us", "batch_size")}


def histogram(bounds: list[float], observations: list[float]) -> dict:
    """A histogram as the core fills it: bucket i holds bounds[i-1] < v <= bounds[i]."""
    counts = [0] * (len(bounds) + 1)
    for v in observations:
        counts[bisect.bisect_left(bounds, v)] += 1
    return {
        "upper_bounds": list(bounds),
        "counts": counts,
        "sum": float(sum(observations)),
        "count": len(observations),
    }


def snapshot(bounds, *, request=(), queue=(), compute=(), batches=(), **counters) -> dict:
    stats = {
        "requests_succeeded": 0,
        "requests_failed": 0,
        "requests_timed_out": 0,
        "requests_rejected": 0,
        "requests_cancelled": 0,
        "samples_inferred": 0,
        "batches_executed": len(batches),
        "queue_depth": 0,
        "in_flight": 0,
        "request_us": histogram(bounds["request_us"], list(request)),
        "queue_us": histogram(bounds["queue_us"], list(queue)),
        "compute_us": histogram(bounds["compute_us"], list(compute)),
        "batch_size": histogram(bounds["batch_size"], list(batches)),
    }
    stats.update(counters)
    return stats


# ------------------------------------------------------------------- the schema, from Triton's side


def triton_service_pb2():
    """tritonclient's copy of Triton's grpc_service.proto messages, without needing grpcio.

    tritonclient.grpc's package __init__ refuses to import without grpcio; its generated
    service_pb2 module only needs protobuf, so it is loaded under a bare package module.
    """
    pytest.importorskip("google.protobuf")
    http = pytest.importorskip("tritonclient.http")
    folder = Path(http.__file__).parent.parent / "grpc"
    if not (folder / "service_pb2.py").exists():
        pytest.skip("tritonclient has no generated service_pb2")
    def ours(name: str) -> bool:
        return name == "tritonclient.grpc" or name.startswith("tritonclient.grpc.")

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    package = types.ModuleType("tritonclient.grpc")
    package.__path__ = [str(folder)]
    sys.modules["tritonclient.grpc"] = package
    try:
        return importlib.import_module("tritonclient.grpc.service_pb2")
    except Exception as e:  # noqa: BLE001 - protobuf older than the generated code, ...
        pytest.skip(f"cannot load tritonclient's service_pb2: {e}")
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def pb2():
    return triton_service_pb2()


def busy_row(core_bounds) -> dict:
    stats = snapshot(
        core_bounds,
        requests_succeeded=6,
        requests_failed=1,
        requests_timed_out=1,
        samples_inferred=9,
        request=[120.5, 80.25, 300, 95, 110, 130, 400, 5000],
        queue=[20, 30, 10, 40, 15, 25, 35],
        compute=[50.5, 60.25, 70, 80],
        batches=[2, 1, 2, 2],
    )
    return model_statistics("resnet", "3", stats, last_inference_ms=1_700_000_000_123)


def test_document_parses_as_tritons_protobuf_strictly(pb2, core_bounds) -> None:
    from google.protobuf import json_format

    doc = statistics_document([busy_row(core_bounds), model_statistics("idle", "1", snapshot(core_bounds))])
    # ParseDict refuses unknown fields and values of the wrong type: the JSON fits Triton's
    # ModelStatisticsResponse message, the gRPC twin of the HTTP schema.
    message = json_format.ParseDict(json.loads(json.dumps(doc)), pb2.ModelStatisticsResponse())
    first = message.model_stats[0]
    assert (first.name, first.version, first.last_inference) == ("resnet", "3", 1_700_000_000_123)
    assert first.inference_stats.success.count == 6
    assert [b.batch_size for b in first.batch_stats] == [1, 2]
    assert message.model_stats[1].name == "idle"


def test_every_field_of_tritons_messages_is_present(pb2, core_bounds) -> None:
    # ParseDict accepts missing fields; the HTTP schema wants them all (Triton sends them all).
    row = busy_row(core_bounds)

    def names(message) -> set[str]:
        return {f.name for f in message.DESCRIPTOR.fields}

    assert set(row) == names(pb2.ModelStatistics)
    assert set(row["inference_stats"]) == names(pb2.InferStatistics) == set(DURATION_KEYS)
    for duration in row["inference_stats"].values():
        assert set(duration) == names(pb2.StatisticDuration)
    assert row["batch_stats"]
    for entry in row["batch_stats"]:
        assert set(entry) == names(pb2.InferBatchStatistics)
        for key in ("compute_input", "compute_infer", "compute_output"):
            assert set(entry[key]) == names(pb2.StatisticDuration)
    assert set(statistics_document([row])) == names(pb2.ModelStatisticsResponse)


def check_schema(doc: dict) -> None:
    """The $stats_model_response of extension_statistics.md: keys and JSON types; every $number a
    non-negative integer (the proto's uint64)."""

    def duration(value) -> None:
        assert set(value) == {"count", "ns"}
        for v in value.values():
            assert type(v) is int and v >= 0

    assert set(doc) == {"model_stats"} and type(doc["model_stats"]) is list
    for row in doc["model_stats"]:
        assert set(row) == {
            "name", "version", "last_inference", "inference_count", "execution_count",
            "inference_stats", "response_stats", "batch_stats", "memory_usage",
        }
        assert type(row["name"]) is str and type(row["version"]) is str
        for key in ("last_inference", "inference_count", "execution_count"):
            assert type(row[key]) is int and row[key] >= 0
        assert set(row["inference_stats"]) == {
            "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
            "cache_hit", "cache_miss",
        }
        for value in row["inference_stats"].values():
            duration(value)
        assert type(row["response_stats"]) is dict
        assert type(row["batch_stats"]) is list and type(row["memory_usage"]) is list
        for entry in row["batch_stats"]:
            assert set(entry) == {"batch_size", "compute_input", "compute_infer", "compute_output"}
            assert type(entry["batch_size"]) is int and entry["batch_size"] >= 1
            for key in ("compute_input", "compute_infer", "compute_output"):
                duration(entry[key])


class _StatsServer:
    """A bare HTTP server answering the three statistics URLs tritonclient asks for."""

    def __init__(self, documents: dict[str, dict]) -> None:
        docs = documents

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                doc = docs.get(self.path)
                body = json.dumps(doc if doc is not None else {"error": f"no {self.path}"}).encode()
                self.send_response(200 if doc is not None else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_tritonclient_http_reads_the_document_back(core_bounds) -> None:
    http = pytest.importorskip("tritonclient.http")
    busy = busy_row(core_bounds)
    idle = model_statistics("idle", "1", snapshot(core_bounds))
    documents = {
        "/v2/models/stats": statistics_document([busy, idle]),
        "/v2/models/resnet/stats": statistics_document([busy]),
        "/v2/models/resnet/versions/3/stats": statistics_document([busy]),
    }
    server = _StatsServer(documents)
    client = http.InferenceServerClient(server.url)
    try:
        got_all = client.get_inference_statistics()
        got_model = client.get_inference_statistics(model_name="resnet")
        got_version = client.get_inference_statistics(model_name="resnet", model_version="3")
    finally:
        client.close()
        server.close()
    # tritonclient hands back the parsed JSON as is: what was served is what the caller reads.
    assert got_all == documents["/v2/models/stats"]
    assert got_model == got_version == documents["/v2/models/resnet/stats"]
    for doc in (got_all, got_model, got_version):
        check_schema(doc)


# ------------------------------------------------------------------------------------ the mapping


def test_counts_and_durations_of_a_busy_version(core_bounds) -> None:
    row = busy_row(core_bounds)
    assert row["name"] == "resnet" and row["version"] == "3"
    assert row["last_inference"] == 1_700_000_000_123
    assert row["inference_count"] == 9 and row["execution_count"] == 4
    s = row["inference_stats"]
    # success: the succeeded requests, the whole request-time sum (failures' time included).
    request_us = 120.5 + 80.25 + 300 + 95 + 110 + 130 + 400 + 5000
    assert s["success"] == {"count": 6, "ns": round(request_us * 1000)}
    # fail: failed + timed out (+ rejected + cancelled); their time is not kept apart.
    assert s["fail"] == {"count": 2, "ns": 0}
    assert s["queue"] == {"count": 6, "ns": (20 + 30 + 10 + 40 + 15 + 25 + 35) * 1000}
    # compute_infer: mean execution time x successful requests, 65.1875 us x 6.
    assert s["compute_infer"] == {"count": 6, "ns": round((50.5 + 60.25 + 70 + 80) / 4 * 6 * 1000)}
    assert s["compute_input"] == s["compute_output"] == {"count": 6, "ns": 0}
    assert s["cache_hit"] == s["cache_miss"] == {"count": 0, "ns": 0}
    # perf_analyzer refuses statistics whose three compute counts differ.
    assert s["compute_input"]["count"] == s["compute_infer"]["count"] == s["compute_output"]["count"]
    assert row["response_stats"] == {} and row["memory_usage"] == []
    check_schema(statistics_document([row]))


def test_every_failure_outcome_counts_as_fail(core_bounds) -> None:
    stats = snapshot(
        core_bounds, requests_failed=1, requests_timed_out=2, requests_rejected=4, requests_cancelled=8
    )
    assert model_statistics("m", "1", stats)["inference_stats"]["fail"]["count"] == 15


def test_without_batching_compute_is_exact(core_bounds) -> None:
    # One request per execution: the per-request compute total is the per-execution sum.
    compute = [12.5, 40.0, 7.25]
    stats = snapshot(
        core_bounds, requests_succeeded=3, samples_inferred=3, compute=compute, batches=[1, 1, 1]
    )
    row = model_statistics("m", "1", stats)
    assert row["inference_stats"]["compute_infer"] == {"count": 3, "ns": 59750}
    assert row["batch_stats"] == [
        {
            "batch_size": 1,
            "compute_input": {"count": 3, "ns": 0},
            "compute_infer": {"count": 3, "ns": 59750},
            "compute_output": {"count": 3, "ns": 0},
        }
    ]


def test_batch_stats_when_every_bucket_is_one_size(core_bounds) -> None:
    # The core's bucket bounds 1, 2, 4, ...: "<= 1" and "(1, 2]" hold a single size each.
    stats = snapshot(core_bounds, requests_succeeded=5, compute=[10, 20, 30], batches=[2, 1, 2])
    row = model_statistics("m", "1", stats)
    assert [(e["batch_size"], e["compute_infer"]["count"]) for e in row["batch_stats"]] == [(1, 1), (2, 2)]
    # Two sizes ran: how the compute time splits between them is unknown.
    assert all(e["compute_infer"]["ns"] == 0 for e in row["batch_stats"])
    assert sum(e["compute_infer"]["count"] for e in row["batch_stats"]) == row["execution_count"]

    only_twos = model_statistics("m", "1", snapshot(core_bounds, compute=[10, 20], batches=[2, 2]))
    assert only_twos["batch_stats"][0]["batch_size"] == 2
    assert only_twos["batch_stats"][0]["compute_infer"] == {"count": 2, "ns": 30000}


@pytest.mark.parametrize("batches", [[3], [4], [1, 2, 8], [5000]])
def test_batch_stats_empty_once_a_shared_bucket_ran(core_bounds, batches) -> None:
    # (2, 4] holds 3 and 4, (4, 8] holds 5..8, ...: listing only the exact buckets would hide
    # executions, so no batch statistics at all.
    stats = snapshot(core_bounds, compute=[10] * len(batches), batches=batches)
    assert model_statistics("m", "1", stats)["batch_stats"] == []


def test_exact_buckets_follow_the_bounds_not_a_fixed_list() -> None:
    bounds = {"request_us": [1.0], "queue_us": [1.0], "compute_us": [1.0], "batch_size": [1, 2, 3, 4, 8]}
    stats = snapshot(bounds, compute=[1, 1, 1, 1], batches=[1, 3, 4, 4])
    rows = model_statistics("m", "1", stats)["batch_stats"]
    assert [(e["batch_size"], e["compute_input"]["count"]) for e in rows] == [(1, 1), (3, 1), (4, 2)]
    half = {**bounds, "batch_size": [1.5, 2.5, 4.0]}  # (1.5, 2.5] holds 2 only; (2.5, 4] holds 3 and 4
    rows = model_statistics("m", "1", snapshot(half, batches=[1, 2]))["batch_stats"]
    assert [e["batch_size"] for e in rows] == [1, 2]
    assert model_statistics("m", "1", snapshot(half, batches=[3]))["batch_stats"] == []


def test_a_version_that_never_ran(core_bounds) -> None:
    row = model_statistics("m", "2", snapshot(core_bounds))
    assert row["last_inference"] == 0 and row["inference_count"] == 0 and row["execution_count"] == 0
    assert all(v == {"count": 0, "ns": 0} for v in row["inference_stats"].values())
    assert row["batch_stats"] == []


def test_a_real_core_snapshot(core_bounds) -> None:
    cq = _core.CompletionQueue()
    options = _core.SchedulerOptions(
        model_name="m", model_version="1", inputs=[("x", "FP32", [4])], outputs=[("y", "FP32", [4])]
    )
    sched = _core.Scheduler(options, _core.IdentityBackend(), cq)  # no batching: one request per execution
    try:
        for i in range(5):
            sched.submit({"x": np.full(4, i, np.float32)}, i)
        got: list = []
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            cq.wait(50)
            got.extend(cq.drain())
        assert len(got) == 5
        stats = sched.stats()
    finally:
        sched.stop()
    row = model_statistics("m", "1", stats)
    check_schema(statistics_document([row]))
    assert row["inference_count"] == 5 and row["execution_count"] == 5
    s = row["inference_stats"]
    assert s["success"] == {"count": 5, "ns": round(stats["request_us"]["sum"] * 1000)}
    assert s["queue"] == {"count": 5, "ns": round(stats["queue_us"]["sum"] * 1000)}
    assert s["compute_infer"] == {"count": 5, "ns": round(stats["compute_us"]["sum"] * 1000)}
    assert [(e["batch_size"], e["compute_infer"]["count"]) for e in row["batch_stats"]] == [(1, 5)]


def test_durations_are_whole_nanoseconds(core_bounds) -> None:
    stats = snapshot(core_bounds, requests_succeeded=3, request=[0.0004, 1.0006, 2.5], compute=[1 / 3])
    row = model_statistics("m", "1", stats)
    assert row["inference_stats"]["success"]["ns"] == round((0.0004 + 1.0006 + 2.5) * 1000) == 3501
    assert row["inference_stats"]["compute_infer"]["ns"] == 1000  # 333.33 ns x 3 requests
    check_schema(statistics_document([row]))


def test_bad_arguments(core_bounds) -> None:
    stats = snapshot(core_bounds)
    for bad in (-1, 1.5, "0", True, None):
        with pytest.raises(ValueError, match="last_inference_ms"):
            model_statistics("m", "1", stats, last_inference_ms=bad)
    incomplete = dict(stats)
    del incomplete["compute_us"]
    with pytest.raises(KeyError, match="compute_us"):
        model_statistics("m", "1", incomplete)


def test_statistics_document_keeps_the_order_given() -> None:
    assert statistics_document([]) == {"model_stats": []}
    rows = [{"name": "b"}, {"name": "a"}]
    assert [r["name"] for r in statistics_document(iter(rows))["model_stats"]] == ["b", "a"]
