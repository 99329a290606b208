"""The payload log's batch-wise writer: a batch's columns hold each call's values whichever path built
them (numpy over the whole batch, or call by call), the files' encodings, the queue's records kept out
of the garbage collector's walks, config keys across reloads, and the writer's cadence."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import wait_until

import pyserve.payload_log as payload_log
import pyserve.payload_log.table as table
from pyserve.config import ModelConfig, PayloadLogConfig, TensorSpec
from pyserve.errors import internal
from pyserve.payload_log import PayloadLog, PayloadLogSettings, next_wait
from pyserve.payload_log.files import ParquetFiles, completed_files
from pyserve.payload_log.table import Layout, Records, build_table
from pyserve.protocol import InferRequest, InferResponse
from pyserve.runtime import CallFuture
from pyserve.service import CallContext

LOGGED = PayloadLogConfig(enabled=True, sample_rate=1.0)


def model(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], batching: bool = True,
          config: PayloadLogConfig = LOGGED) -> ModelConfig:
    return ModelConfig("m", "onnxruntime", inputs, outputs, max_batch_size=8 if batching else 0, payload_log=config)


def records(inputs: list[dict | None], outputs: list[dict | None]) -> Records:
    n = len(inputs)
    return Records(tuple(1_764_000_000_000_000_000 + i * 1000 for i in range(n)), (2_000,) * n, ("1",) * n,
                   tuple(f"r{i}" for i in range(n)), ("http+json",) * n, ("ok",) * n, (None,) * n, (True,) * n,
                   tuple(inputs), tuple(outputs), (3,) * n, (4,) * n)


def call_by_call(monkeypatch: pytest.MonkeyPatch, layout: Layout, recs: Records) -> list[dict]:
    """The rows as the call-by-call path builds them (the batch path turned off)."""
    with monkeypatch.context() as m:
        m.setattr(table, "_fast_columns", lambda *args: None)
        return build_table(layout, recs).to_pylist()


RNG = np.random.default_rng(7)
CASES = {
    # one sample per call: one shape, offsets from it
    "one shape": (model((TensorSpec("x", "FP32", (5,)),), (TensorSpec("y", "INT64", (2,)),)),
                  [{"x": RNG.standard_normal((1, 5), dtype=np.float32)} for _ in range(6)],
                  [{"y": RNG.integers(-9, 9, (1, 2))} for _ in range(6)]),
    # batches of several sizes (an empty one too): only the first dimension varies
    "batch sizes": (model((TensorSpec("x", "FP64", (3,)),), (TensorSpec("y", "BOOL", (3,)),)),
                    [{"x": RNG.standard_normal((k, 3))} for k in (1, 3, 0, 2)],
                    [{"y": RNG.random((k, 3)) > 0.5} for k in (1, 3, 0, 2)]),
    # rank 3, shapes that differ past the first dimension (-1 dims), FP16 widened
    "rank 3": (model((TensorSpec("x", "FP16", (-1, 2)),), (TensorSpec("y", "INT8", (2, 2)),)),
               [{"x": RNG.standard_normal((k, j, 2)).astype(np.float16)} for k, j in ((1, 3), (2, 1), (1, 3))],
               [{"y": RNG.integers(-5, 5, (k, 2, 2), dtype=np.int8)} for k in (1, 2, 1)]),
    # no batching: rank 1
    "no batching": (model((TensorSpec("x", "UINT16", (-1,)),), (TensorSpec("y", "FP32", (1,)),), batching=False),
                    [{"x": RNG.integers(0, 60000, (k,), dtype=np.uint16)} for k in (4, 4, 2)],
                    [{"y": RNG.standard_normal((1,), dtype=np.float32)} for _ in range(3)]),
    # views that are not contiguous: every other column, a transposed array
    "strided views": (model((TensorSpec("x", "FP32", (3,)),), (TensorSpec("y", "FP32", (2,)),)),
                      [{"x": RNG.standard_normal((2, 6), dtype=np.float32)[:, ::2]} for _ in range(3)],
                      [{"y": np.asfortranarray(RNG.standard_normal((4, 2), dtype=np.float32))} for _ in range(3)]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_calls_values_land_in_its_row(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    config, inputs, outputs = CASES[case]
    layout = Layout(config)
    recs = records(inputs, outputs)
    rows = build_table(layout, recs).to_pylist()
    for row, i, o in zip(rows, inputs, outputs, strict=True):
        x, y = i["x"], o["y"]
        assert row["inputs"]["x"] == (x.astype(np.float32) if x.dtype == np.float16 else x).tolist()
        assert row["outputs"]["y"] == y.tolist()
        assert row["other_tensors"] is None
    assert rows == call_by_call(monkeypatch, layout, recs)
    assert [r["time"].timestamp() * 1e9 for r in rows] == pytest.approx([t for t in recs.time_ns], abs=1000)
    assert {(r["model"], r["version"], r["outcome"], r["status"], r["queue_us"], r["compute_us"], r["sampled"])
            for r in rows} == {("m", "1", "success", "ok", 3, 4, True)}


def test_a_batch_with_calls_that_do_not_fit_keeps_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    config = model((TensorSpec("x", "FP32", (2,)),), (TensorSpec("y", "FP32", (2,)),),
                   config=dataclasses.replace(LOGGED, max_tensor_bytes=64))
    fits = np.array([[1.0, 2.0]], np.float32)
    inputs = [{"x": fits}, {"x": np.array([[1.5, 2.5]])},  # FP64 for an FP32 column
              {"x": fits, "extra": np.array([7], np.int32)},  # a tensor the model does not declare
              {"x": np.broadcast_to(np.zeros((), np.float32), (100, 2))},  # over max_tensor_bytes
              None]  # a body that did not decode
    outputs = [{"y": fits}, {"y": fits}, {"y": fits}, {"y": fits}, None]
    recs = records(inputs, outputs)
    rows = build_table(Layout(config), recs).to_pylist()
    assert [r["inputs"]["x"] if r["inputs"] else None for r in rows] == [[[1.0, 2.0]], None, [[1.0, 2.0]], None, None]
    assert [r["outputs"]["y"] if r["outputs"] else None for r in rows] == [[[1.0, 2.0]]] * 4 + [None]
    others = [json.loads(r["other_tensors"]) if r["other_tensors"] else None for r in rows]
    assert others[0] is None and others[4] is None
    assert others[1] == {"inputs": {"x": {"datatype": "FP64", "shape": [1, 2], "data": [[1.5, 2.5]]}}}
    assert others[2] == {"inputs": {"extra": {"datatype": "INT32", "shape": [1], "data": [7]}}}
    assert others[3] == {"inputs": {"x": {"datatype": "FP32", "shape": [100, 2], "data": None}}}
    assert rows == call_by_call(monkeypatch, Layout(config), recs)

    # Every call fits its columns, one also has a tensor the model does not declare: still kept.
    recs = records([{"x": fits}, {"x": fits, "extra": np.array([7], np.int32)}], [{"y": fits}, {"y": fits}])
    rows = build_table(Layout(config), recs).to_pylist()
    assert [r["inputs"]["x"] for r in rows] == [[[1.0, 2.0]]] * 2
    extra = {"inputs": {"extra": {"datatype": "INT32", "shape": [1], "data": [7]}}}
    assert [r["other_tensors"] for r in rows] == [None, json.dumps(extra, separators=(",", ":"))]


def test_mixed_outcomes_and_versions_keep_their_values() -> None:
    config = model((TensorSpec("x", "FP32", (1,)),), (TensorSpec("y", "FP32", (1,)),))
    x = {"x": np.ones((1, 1), np.float32)}
    recs = records([x, x, x], [{"y": np.ones((1, 1), np.float32)}, None, None])._replace(
        version=("1", "2", "1"), status=("ok", "internal", "deadline_exceeded"),
        error=(None, "boom", "too late"), sampled=(True, False, True), queue_us=(3, -1, None), compute_us=(4, -1, None),
        protocol=("http+json", "shadow", "http+msgpack"))
    rows = build_table(Layout(config), recs).to_pylist()
    assert [(r["version"], r["outcome"], r["status"], r["error"], r["sampled"], r["protocol"]) for r in rows] == [
        ("1", "success", "ok", None, True, "http+json"), ("2", "failure", "internal", "boom", False, "shadow"),
        ("1", "timeout", "deadline_exceeded", "too late", True, "http+msgpack")]
    assert [(r["queue_us"], r["compute_us"]) for r in rows] == [(3, 4), (None, None), (None, None)]
    assert [r["outputs"]["y"] if r["outputs"] else None for r in rows] == [[[1.0]], None, None]


def test_files_encode_repeated_strings_by_dictionary_and_numbers_plainly(tmp_path: Path) -> None:
    config = model((TensorSpec("x", "FP32", (4,)), TensorSpec("label", "BYTES", (1,))),
                   (TensorSpec("y", "FP32", (4,)),))
    label = np.array([[b"cat"]], dtype=object)
    n = 50
    recs = records([{"x": RNG.standard_normal((1, 4), dtype=np.float32), "label": label} for _ in range(n)],
                   [{"y": RNG.standard_normal((1, 4), dtype=np.float32)} for _ in range(n)])
    files = ParquetFiles(tmp_path, 1 << 30, 60, 1 << 30, 1e9)
    files.append("m", build_table(Layout(config), recs))
    files.close_all()
    meta = pq.ParquetFile(completed_files(tmp_path, "m")[0]).metadata.row_group(0)
    chunks = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}

    def dictionary(path: str) -> bool:
        return any("DICTIONARY" in e for e in chunks[path].encodings)

    assert dictionary("model") and dictionary("status") and dictionary("inputs.label.list.element.list.element")
    assert not dictionary("inputs.x.list.element.list.element") and not dictionary("request_id")
    assert chunks["time"].is_stats_set and chunks["duration_us"].is_stats_set
    assert not chunks["inputs.x.list.element.list.element"].is_stats_set
    assert chunks["inputs.x.list.element.list.element"].compression == "ZSTD"


def hooks_call(plog: PayloadLog, config: ModelConfig, ctx: CallContext) -> None:
    runner = types.SimpleNamespace(config=config, version="1")
    x = {"x": np.ones((1, 4), np.float32)}
    plog.after_response(ctx, runner, InferRequest(x), InferResponse("m", "1", {"y": np.ones((1, 4), np.float32)}))
    plog.on_error(ctx, config.name, runner, InferRequest(x), internal("boom"))
    plog.on_error(None, config.name, None, None, internal("refused"))


def test_queued_records_refer_to_nothing_the_collector_walks() -> None:
    config = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    plog = PayloadLog(PayloadLogSettings(), lambda name: config)
    loop = asyncio.new_event_loop()
    try:
        ctx = CallContext("http+json", "r1")
        ctx.future = future = CallFuture(loop=loop)
        future.queue_us, future.compute_us = 12, 34
        hooks_call(plog, config, ctx)
    finally:
        loop.close()
    # A collection that walks the queue stops at each record's fields: no future (its callbacks,
    # its loop), no config; the request's dicts of arrays are not tracked either.
    assert len(plog._queue) == 3
    assert not [v for r in plog._queue for v in r if gc.is_tracked(v)]
    captures = [plog._capture(r, payload_log._wall_offset_ns()) for r in plog._queue]
    assert [c.timings_us() for c in captures] == [(12, 34), (12, 34), (None, None)]
    assert {c.model for c in captures} == {"m"} and captures[0].config is config.payload_log


def test_records_queued_across_config_reloads_keep_their_config(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(payload_log, "MAX_CONFIGS", 2)
    first = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    configs = [dataclasses.replace(first, name=f"m{i}") for i in range(3)]  # three reloads, two generations
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path), {c.name: c for c in configs}.get)
    for config in configs:
        hooks_call(plog, config, CallContext("http+json"))
    plog.start()
    plog.close()
    rows = [r for p in completed_files(tmp_path) for r in pq.read_table(p).to_pylist()]
    assert sorted((r["model"], r["status"], r["version"]) for r in rows) == [
        (f"m{i}", status, version) for i in range(3)
        for status, version in (("internal", ""), ("internal", "1"), ("ok", "1"))]


def test_the_writer_wakes_sooner_when_records_come_fast() -> None:
    # 100 records in 0.5 s with room for 10,000: the usual half second
    assert next_wait(0.5, 100, 10_000, 0.5) == 0.5
    # 8,000 in 0.5 s would fill the queue before the next drain: wake when about a quarter is there
    assert next_wait(0.5, 8_000, 10_000, 0.5) == pytest.approx(0.15625)
    assert next_wait(0.15625, 2_500, 10_000, 0.5) == pytest.approx(0.15625)
    # however fast, never a busy loop; back to the half second when nothing came
    assert next_wait(0.5, 10_000_000, 10_000, 0.5) == payload_log.MIN_WAIT_S
    assert next_wait(0.02, 0, 10_000, 0.5) == 0.5


def drain_calls(plog: PayloadLog, config: ModelConfig, n: int) -> None:
    runner = types.SimpleNamespace(config=config, version="1")
    for i in range(n):
        x = {"x": np.full((1, 4), i, np.float32)}
        plog.after_response(CallContext("http+json", f"r{i}"), runner, InferRequest(x),
                            InferResponse("m", "1", {"y": np.ones((1, 4), np.float32)}))
    plog._drain()


def test_small_drains_are_built_together_and_all_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path), lambda name: config)
    plog._files = files = ParquetFiles(tmp_path, 1 << 30, 3600, 1 << 30, 1e9, on_closed=plog._written)  # no thread
    built: list[int] = []
    real = table.build_table
    monkeypatch.setattr(table, "build_table", lambda layout, recs: built.append(len(recs.version)) or real(layout, recs))
    for _ in range(3):  # three drains of a few records: one build (its fixed cost paid once)
        drain_calls(plog, config, 5)
    assert built == [] and plog._gathered_rows == 15
    monkeypatch.setattr(payload_log, "BUILD_ROWS", 20)
    drain_calls(plog, config, 5)  # the fourth reaches BUILD_ROWS
    assert built == [20] and plog._gathered_rows == 0
    drain_calls(plog, config, 3)
    plog._build()  # what a flush, a stop or a due rotation does first
    files.close_all()
    assert built == [20, 3]
    rows = [r for p in completed_files(tmp_path) for r in pq.read_table(p).to_pylist()]
    assert [r["inputs"]["x"][0][0] for r in rows] == [float(i) for _ in range(4) for i in range(5)] + [0.0, 1.0, 2.0]
    assert plog.records_total.labels("m", "written")._value.get() == 23


def test_a_due_rotation_publishes_the_records_gathered_before_it(tmp_path: Path) -> None:
    config = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path, rotate_s=3600), lambda name: config)
    plog._files = files = ParquetFiles(tmp_path, 1 << 30, 3600, 1 << 30, 1e9)  # the thread is not started
    plog._build_s = 3600.0  # no build for the gathered records' age here, however slow the machine
    drain_calls(plog, config, 1)
    plog._build()  # a file open, holding call 0
    drain_calls(plog, config, 2)  # gathered
    now = time.time()
    plog._rotate(now)  # nothing due: still gathered
    assert plog._gathered_rows == 2 and len(completed_files(tmp_path)) == 0
    plog._rotate(now + 3600)  # the file is due: it takes the gathered calls, then is published
    assert plog._gathered_rows == 0 and not files._open
    drain_calls(plog, config, 1)
    plog._build()
    files.close_all()
    assert [[r[0][0] for r in pq.read_table(p).column("inputs").combine_chunks().field("x").to_pylist()]
            for p in completed_files(tmp_path)] == [[0.0, 0.0, 1.0], [0.0]]


def test_gathered_records_are_built_once_build_s_has_passed(tmp_path: Path) -> None:
    config = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path, rotate_s=3600), lambda name: config)
    plog._files = files = ParquetFiles(tmp_path, 1 << 30, 3600, 1 << 30, 1e9)  # the thread is not started
    assert plog._build_s == payload_log.BUILD_S  # never longer than a file stays open
    assert PayloadLog(PayloadLogSettings(log_dir=tmp_path, rotate_s=0.5), lambda name: config)._build_s == 0.5
    plog._build_s = 0.0  # the gathered records are as old as BUILD_S at once
    drain_calls(plog, config, 2)
    plog._rotate(time.time())
    assert plog._gathered_rows == 0 and files._open["m"].pending_rows == 2


def test_a_batch_is_transposed_without_an_object_per_record() -> None:
    """The writer turns thousands of records into columns without thousands of objects alive at once
    (``zip(*records)`` makes an iterator per record): those would start collections of the young
    generation, which walk the loop's new objects too."""
    n = 5000
    records = [tuple(range(i, i + payload_log._FIELDS)) for i in range(n)]
    collections: list[int] = []

    def started(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()  # the young generation's count starts at 0 (a collection at 700 more objects)
    gc.callbacks.append(started)
    try:
        fields = payload_log._transposed(records)
    finally:
        gc.callbacks.remove(started)
    assert len(fields) == payload_log._FIELDS
    assert all(fields[k] == tuple(range(k, k + n)) for k in range(payload_log._FIELDS))
    assert collections == [], f"{len(collections)} collections while {n} records were transposed"


def test_pyarrow_is_set_up_before_the_server_freezes_its_start_up(tmp_path: Path) -> None:
    """Whatever pyarrow imports on first use (pandas, when installed; compute functions; the Parquet
    writer) is imported when the payload log is made, not at its first write on the writer's
    thread: the server freezes what start-up built, and modules imported later would be walked by
    every full collection. Checked in a fresh interpreter, where nothing is imported yet."""
    script = f"""
import sys, types
from pathlib import Path
import numpy as np
from pyserve.config import ModelConfig, PayloadLogConfig, TensorSpec
from pyserve.payload_log import PayloadLog, PayloadLogSettings
from pyserve.protocol import InferRequest, InferResponse
from pyserve.service import CallContext

config = ModelConfig("m", "onnxruntime", (TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "INT64", (1,)),),
                     max_batch_size=8, payload_log=PayloadLogConfig(enabled=True, sample_rate=1.0))
plog = PayloadLog(PayloadLogSettings(log_dir=Path({str(tmp_path)!r})), lambda name: config)
before = set(sys.modules)
runner = types.SimpleNamespace(config=config, version="1")
plog.start()
for i in range(50):
    plog.after_response(CallContext("http+json", str(i)), runner,
                        InferRequest({{"x": np.full((1, 4), i, np.float32)}}),
                        InferResponse("m", "1", {{"y": np.full((1, 1), i)}}))
plog.flush()
plog.close()
print(sorted(m for m in set(sys.modules) - before if not m.startswith("encodings."))[:10])
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    assert sum(pq.read_metadata(p).num_rows for p in completed_files(tmp_path)) == 50


def test_the_writer_threads_cpu_time_is_counted(tmp_path: Path) -> None:
    """pyserve_payload_log_writer_cpu_seconds_total grows with the writer's work (its thread's CPU
    time, not wall time: waiting between batches costs nothing)."""
    config = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path), lambda name: config)
    plog.start()
    try:
        for _ in range(200):
            hooks_call(plog, config, CallContext("http+json"))
        plog.flush()
    finally:
        plog.close()
    spent = plog.writer_cpu_seconds._value.get()
    assert plog.records_total.labels("m", "written")._value.get() == 600
    assert 0 < spent <= time.process_time()  # some, and no more than the whole process spent


def test_a_queue_filling_up_wakes_the_writer_at_once(tmp_path: Path) -> None:
    """A burst after a quiet spell: the writer, waiting out a long flush_s, is woken when a quarter
    of the queue is there, and takes it before the queue could fill."""
    config = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path, queue_size=40, flush_s=600.0), lambda name: config)
    plog.start()
    try:
        time.sleep(0.1)  # the writer is in its first wait (600 s)
        for _ in range(3):  # three records a call: 9, just under a quarter
            hooks_call(plog, config, CallContext("http+json"))
        time.sleep(0.2)
        assert len(plog._queue) == 9  # not woken yet
        for _ in range(2):  # 15 in all: a quarter (10) was reached
            hooks_call(plog, config, CallContext("http+json"))
        wait_until(lambda: not plog._queue, timeout_s=30, what="the writer, woken, to take the queue")
    finally:
        plog.close()
    assert plog.records_total.labels("m", "written")._value.get() == 15


def test_a_failed_warm_up_does_not_stop_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """pyarrow's set-up failing at start (a broken optional import, say) is logged, and the writer
    still writes: what is wrong is said at each batch, as without the warm-up."""
    def broken() -> None:
        raise RuntimeError("a broken pandas")

    monkeypatch.setattr(table, "warm_up", broken)
    config = model((TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),))
    with caplog.at_level("WARNING", logger="pyserve.payload_log"):
        plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path), lambda name: config)
    assert "set-up for writing failed" in caplog.text
    plog.start()
    try:
        hooks_call(plog, config, CallContext("http+json"))
        plog.flush()
    finally:
        plog.close()
    assert plog.records_total.labels("m", "written")._value.get() == 3
