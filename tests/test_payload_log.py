"""The payload log: records over every protocol, redaction, failures, the bounded queue, rotation and
retention, a killed server, the CloudEvents sink, `pyserve logs`, GET /v2/logs and its config."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from conftest import Repo, gate_config, infer, wait_until

from pyserve.config import ConfigError, PayloadLogConfig, load_model_config
from pyserve.payload_log import PayloadLog, PayloadLogSettings
from pyserve.payload_log.files import ParquetFiles, completed_files
from pyserve.protocol import InferRequest
from pyserve.service import InferenceService, ModelHost

ROTATE_S = "0.2"  # files published five times a second: records readable soon after their call

LOGGED = "[payload_log]\nsample_rate = 1.0\n"


def words(arr: list[str]) -> np.ndarray:
    out = np.empty(len(arr), dtype=object)
    out[:] = [w.encode() for w in arr]
    return out


@pytest.fixture(scope="module")
def logged_server(tmp_path_factory: pytest.TempPathFactory, serve_module: Any) -> Any:
    root = tmp_path_factory.mktemp("payload")
    repo = Repo(root / "models")
    repo.onnx("affine", config="max_batch_size = 8\n" + LOGGED)
    repo.identity("words", [("text", "BYTES", [2]), ("n", "INT32", [2]), ("cube", "FP64", [2, 3, 2])],
                  extra=LOGGED)
    repo.identity("secret", [("secret", "BYTES", [1]), ("user", "BYTES", [1]), ("x", "FP32", [2])], extra=(
        LOGGED + 'redact = ["in_secret", "out_secret"]\nhash = ["in_user"]\noutputs = ["out_x"]\n'))
    repo.onnx("rare", config="max_batch_size = 8\n[payload_log]\nsample_rate = 0.0\n")
    repo.onnx("quiet", config="max_batch_size = 8\n")
    log_dir = root / "log"
    server = serve_module([repo.root, "--payload-log-dir", log_dir, "--payload-log-rotate-s", ROTATE_S,
                           "--max-body-bytes", "65536"])
    server.log_dir = log_dir
    return server


def logged(server: Any, request_id: str, model: str, timeout_s: float = 20.0) -> dict:
    """The record of ``request_id`` once its file is published (GET /v2/logs)."""
    found: list[dict] = []

    def look() -> bool:
        records = requests.get(server.url + "/v2/logs", params={"model": model, "limit": 1000}, timeout=10).json()
        found[:] = [r for r in records["records"] if r["request_id"] == request_id]
        return bool(found)

    wait_until(look, timeout_s, f"record {request_id} of {model}")
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("protocol", ["json", "binary", "msgpack"])
def test_records_are_complete_and_decoded(logged_server: Any, protocol: str) -> None:
    x = np.array([[0.5, -1.0, 2.25, 3.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    rid = f"affine-{protocol}-{uuid.uuid4()}"
    before = datetime.datetime.now(datetime.UTC)
    resp = infer(logged_server.url, "affine", protocol, {"x": x}, id=rid)
    assert resp.status_code == 200
    record = logged(logged_server, rid, "affine")
    assert record["model"] == "affine" and record["version"] == "1"
    assert record["protocol"] == f"http+{protocol}"
    assert (record["outcome"], record["status"], record["error"], record["sampled"]) == ("success", "ok", None, True)
    when = datetime.datetime.fromisoformat(record["time"])
    assert before - datetime.timedelta(seconds=1) <= when <= datetime.datetime.now(datetime.UTC)
    assert record["duration_us"] > 0 and record["queue_us"] >= 0 and record["compute_us"] > 0
    assert record["duration_us"] >= record["queue_us"] + record["compute_us"]
    assert record["inputs"] == {"x": x.tolist()}  # numbers as numbers, nested by the shape
    y = x * np.array([1.0, 1.25, 1.5, 1.75], np.float32) + 1.0
    assert np.allclose(record["outputs"]["y"], y) and record["outputs"]["argmax"] == y.argmax(1).tolist()

    rid = f"words-{protocol}-{uuid.uuid4()}"
    text = ["héllo", "wörld"]
    cube = np.arange(12, dtype=np.float64).reshape(2, 3, 2) / 4
    resp = infer(logged_server.url, "words", protocol, {"in_text": words(text), "in_n": np.array([7, -3], np.int32),
                                                        "in_cube": cube}, id=rid)
    assert resp.status_code == 200
    record = logged(logged_server, rid, "words")
    # BYTES as strings; a rank-3 tensor nested as deep as its shape
    assert record["inputs"] == {"in_text": text, "in_n": [7, -3], "in_cube": cube.tolist()}
    assert record["outputs"] == {"out_text": text, "out_n": [7, -3], "out_cube": cube.tolist()}


def test_the_files_hold_typed_columns(logged_server: Any) -> None:
    rid = f"typed-{uuid.uuid4()}"
    infer(logged_server.url, "words", "json", {"in_text": words(["a", "b"]), "in_n": np.array([1, 2], np.int32),
                                               "in_cube": np.zeros((2, 3, 2))}, id=rid)
    logged(logged_server, rid, "words")
    table = pa.concat_tables([pq.read_table(p) for p in completed_files(logged_server.log_dir, "words")])
    inputs = table.schema.field("inputs").type
    assert inputs.field("in_n").type == pa.list_(pa.int32())
    assert inputs.field("in_text").type == pa.list_(pa.string())
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")


def test_redacted_tensors_never_reach_the_files(logged_server: Any) -> None:
    secret, user = f"s3cr3t-{uuid.uuid4()}", f"user-{uuid.uuid4()}"
    rid = f"secret-{uuid.uuid4()}"
    resp = infer(logged_server.url, "secret", "binary", {"in_secret": words([secret]), "in_user": words([user]),
                                                         "in_x": np.array([1.5, 2.5], np.float32)}, id=rid)
    assert resp.status_code == 200
    record = logged(logged_server, rid, "secret")
    assert record["inputs"] == {"in_user": [hashlib.sha256(user.encode()).hexdigest()], "in_x": [1.5, 2.5]}
    assert record["outputs"] == {"out_x": [1.5, 2.5]}  # only the outputs listed in `outputs`
    for path in completed_files(logged_server.log_dir, "secret"):
        table = pq.read_table(path)
        assert "in_secret" not in table.schema.field("inputs").type.names
        if "outputs" in table.column_names:
            assert table.schema.field("outputs").type.names == ["out_x"]
        text = json.dumps(table.to_pylist(), default=str)
        assert secret not in text and user not in text


def test_failed_requests_are_logged_whatever_the_sample_rate(logged_server: Any) -> None:
    good, bad = f"rare-ok-{uuid.uuid4()}", f"rare-bad-{uuid.uuid4()}"
    assert infer(logged_server.url, "rare", "json", {"x": np.ones((1, 4), np.float32)}, id=good).status_code == 200
    resp = infer(logged_server.url, "rare", "msgpack", {"x": np.ones((1, 5), np.float32)}, id=bad)
    assert resp.status_code == 400
    record = logged(logged_server, bad, "rare")
    assert (record["outcome"], record["status"], record["sampled"]) == ("failure", "invalid_argument", False)
    assert record["error"] == resp.json()["error"]
    assert record["inputs"] == {"x": [[1.0] * 5]}  # the inputs that failed, as sent
    rows = requests.get(logged_server.url + "/v2/logs", params={"model": "rare"}, timeout=10).json()["records"]
    assert good not in {r["request_id"] for r in rows}  # sample rate 0: successes are not logged


def test_a_body_the_transport_refuses_is_logged_with_its_error(logged_server: Any) -> None:
    big = np.ones((20000, 4), np.float32)  # about 100 KB as JSON: over --max-body-bytes
    resp = infer(logged_server.url, "rare", "json", {"x": big}, id="too-large")
    assert resp.status_code == 413

    def refused() -> list[dict]:
        rows = requests.get(logged_server.url + "/v2/logs", params={"model": "rare", "limit": 1000},
                            timeout=10).json()["records"]
        return [r for r in rows if r["status"] == "payload_too_large"]

    wait_until(lambda: bool(refused()), 20, "the refused request's record")
    record = refused()[0]
    assert (record["outcome"], record["protocol"], record["request_id"]) == ("failure", "", None)
    assert "413" in record["error"] and record["inputs"] == {} and record["version"] == ""


def test_a_model_without_payload_log_is_not_logged(logged_server: Any) -> None:
    rid = f"quiet-{uuid.uuid4()}"
    assert infer(logged_server.url, "quiet", "json", {"x": np.ones((1, 4), np.float32)}, id=rid).status_code == 200
    bad = infer(logged_server.url, "quiet", "json", {"x": np.ones((1, 5), np.float32)}, id=rid + "-bad")
    assert bad.status_code == 400
    marker = f"affine-after-quiet-{uuid.uuid4()}"  # logged after the quiet ones: their files are out too
    infer(logged_server.url, "affine", "json", {"x": np.ones((1, 4), np.float32)}, id=marker)
    logged(logged_server, marker, "affine")
    assert not (logged_server.log_dir / "quiet").exists()
    metrics = requests.get(logged_server.url + "/metrics", timeout=10).text
    assert 'pyserve_payload_log_records_total{model="affine",result="written"}' in metrics
    assert 'model="quiet"' not in "".join(l for l in metrics.splitlines() if l.startswith("pyserve_payload"))


def test_logs_endpoint_filters_and_refuses_bad_parameters(logged_server: Any) -> None:
    url = logged_server.url + "/v2/logs"
    rid = f"filter-{uuid.uuid4()}"
    infer(logged_server.url, "affine", "json", {"x": np.ones((1, 4), np.float32)}, id=rid)
    logged(logged_server, rid, "affine")
    rows = requests.get(url, params={"model": "affine", "since": "5m", "outcome": "success", "limit": 2},
                        timeout=10).json()["records"]
    assert len(rows) == 2 and all(r["outcome"] == "success" for r in rows)
    assert rows[0]["time"] >= rows[1]["time"]  # newest first
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
    assert requests.get(url, params={"since": future}, timeout=10).json() == {"records": []}
    for params, needle in [({"outcome": "fine"}, "outcome"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                           ({"since": "yesterday"}, "since"), ({"model": ".."}, "model name"),
                           ({"modle": "affine"}, "unknown query parameter"),
                           ({"since": "99999999d"}, "since: '99999999d' reaches back before the year 1"),
                           ({"until": "99999999d"}, "until: '99999999d' reaches back before the year 1"),
                           ({"since": "0001-01-01T00:00:00+01:00"}, "since: '0001-01-01T00:00:00+01:00' is outside"),
                           ({"model": "a\\b"}, "model name 'a\\b': a model name has no path separator")]:
        resp = requests.get(url, params=params, timeout=10)
        assert resp.status_code == 400 and needle in resp.json()["error"], (params, resp.text)
    many = requests.get(url, params={f"p{i:04d}": "1" for i in range(3000)}, timeout=10)
    assert many.status_code == 400, many.text
    assert many.json()["error"] == ("unknown query parameter(s) 'p0000', 'p0001', 'p0002', 'p0003', 'p0004' "
                                    "and 2995 more; expected model, version, since, until, outcome, limit")


def test_an_unreadable_file_is_skipped_with_a_warning(logged_server: Any) -> None:
    """A corrupt or foreign .parquet file in the log folder is named in a warning of the server's
    log (once) and of ``pyserve logs``; the other files' records are still answered."""
    rid = f"beside-junk-{uuid.uuid4()}"
    infer(logged_server.url, "affine", "json", {"x": np.ones((1, 4), np.float32)}, id=rid)
    logged(logged_server, rid, "affine")
    junk = logged_server.log_dir / "junk" / "20200101T000000.000000Z-1-000001.parquet"
    junk.parent.mkdir()
    junk.write_text("junk\n")
    foreign = logged_server.log_dir / "junk" / "20200101T000000.000000Z-1-000002.parquet"
    pq.write_table(pa.table({"time": ["not a time"]}), foreign)
    try:
        for _ in range(2):
            resp = requests.get(logged_server.url + "/v2/logs", params={"limit": 1000}, timeout=10)
            assert resp.status_code == 200, resp.text
            assert rid in [r["request_id"] for r in resp.json()["records"]]
        wait_until(lambda: str(foreign) in logged_server.log(), 10, "the warning naming the foreign file")
        assert logged_server.log().count(f"skipping {junk}: not a readable Parquet file") == 1  # not every query
        out = pyserve_logs(logged_server.log_dir, "--format", "json", "--limit", "1000")
        assert out.returncode == 0, out.stderr
        assert rid in [json.loads(line)["request_id"] for line in out.stdout.splitlines()]
        assert f"pyserve logs: warning: skipping {junk}: not a readable Parquet file" in out.stderr
        assert f"skipping {foreign}: not a payload log file" in out.stderr
        counted = pyserve_logs(logged_server.log_dir, "--sql", f"SELECT count(*) AS n FROM logs WHERE request_id = '{rid}'",
                               "--format", "csv")
        assert counted.returncode == 0 and counted.stdout.split() == ["n", "1"], counted.stderr
    finally:
        junk.unlink()
        foreign.unlink()
        junk.parent.rmdir()


def test_unreadable_files_are_checked_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyserve.payload_log import query

    folder = tmp_path / "m"
    folder.mkdir()
    good, bad = folder / "a.parquet", folder / "b.parquet"
    pq.write_table(pa.table({"time": pa.array([datetime.datetime.now(datetime.UTC)], pa.timestamp("us", "UTC"))}),
                   good)
    bad.write_bytes(b"PAR1 not really")
    checks: list[Path] = []
    real = query._why_unreadable
    monkeypatch.setattr(query, "_why_unreadable", lambda p: checks.append(p) or real(p))
    warnings: list[str] = []
    assert query.readable_files([good, bad], warnings.append) == [good]
    assert query.readable_files([good, bad], warnings.append) == [good]
    assert sorted(checks) == [good, bad] and len(warnings) == 1 and str(bad) in warnings[0]
    pq.write_table(pa.table({"time": pa.array([datetime.datetime.now(datetime.UTC)], pa.timestamp("us", "UTC"))}),
                   bad)  # repaired: checked again, now read
    assert query.readable_files([good, bad], warnings.append) == [good, bad] and len(checks) == 3


@pytest.mark.parametrize("text", ["99999999d", "9" * 400 + "s", "0001-01-01T00:00:00+01:00",
                                  "9999-12-31T23:59:59-01:00"])
def test_a_time_out_of_range_is_invalid(text: str) -> None:
    from pyserve.errors import PyserveError
    from pyserve.payload_log.query import parse_time

    with pytest.raises(PyserveError, match="since: .*(before the year 1|outside the years 1 to 9999)"):
        parse_time(text, "since")


def test_logs_endpoint_when_the_log_is_off(serve: Any, repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n")
    server = serve([repo.root])
    resp = requests.get(server.url + "/v2/logs", timeout=10)
    assert resp.status_code == 404 and "--payload-log-dir" in resp.json()["error"]


def pyserve_logs(*args: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyserve", "logs", *map(str, args)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_query_cli_returns_what_was_sent(logged_server: Any, tmp_path: Path) -> None:
    sent = {}
    for i in range(3):
        rid = f"cli-{i}-{uuid.uuid4()}"
        sent[rid] = np.full((1, 4), i + 0.5, np.float32)
        infer(logged_server.url, "affine", "json", {"x": sent[rid]}, id=rid)
    logged(logged_server, rid, "affine")
    out = pyserve_logs(logged_server.log_dir, "--model", "affine", "--since", "10m", "--format", "json",
                       "--limit", "1000")
    assert out.returncode == 0, out.stderr
    rows = {r["request_id"]: r for r in map(json.loads, out.stdout.splitlines())}
    for rid, x in sent.items():
        assert rows[rid]["inputs"] == {"x": x.tolist()} and rows[rid]["outcome"] == "success"

    table = pyserve_logs(logged_server.log_dir, "--model", "affine", "--limit", "3")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["time", "model", "version"]
    assert rid in table.stdout and table.stdout.rstrip().endswith("(3 records)")

    ids = ", ".join(f"'{r}'" for r in sent)
    counted = pyserve_logs(logged_server.log_dir, "--sql",
                           f"SELECT count(*) AS n FROM logs WHERE request_id IN ({ids})", "--format", "csv")
    assert counted.returncode == 0 and counted.stdout.split() == ["n", "3"], counted

    parquet = tmp_path / "out.parquet"
    done = pyserve_logs(logged_server.log_dir, "--model", "affine", "--format", "parquet", "-o", parquet)
    assert done.returncode == 0 and pq.read_table(parquet).num_rows >= 3
    csv_path = tmp_path / "out.csv"
    done = pyserve_logs(logged_server.log_dir, "--outcome", "success", "--format", "csv", "-o", csv_path)
    assert done.returncode == 0 and csv_path.read_text().startswith("time,model,version,request_id")

    for args, needle in [(["--since", "soon"], "--since"), (["--format", "parquet"], "--output"),
                         (["--sql", "SELEC 1"], "--sql"), (["--sql", "SELECT 1", "--model", "affine"], "--model"),
                         (["--limit", "0"], "pyserve logs: --limit: expected an integer from 1 to 10000, got 0"),
                         (["--since", "99999999d"], "--since: '99999999d' reaches back before the year 1"),
                         (["--until", "99999999d"], "--until: '99999999d' reaches back before the year 1"),
                         (["--format", "csv", "-o", tmp_path / "nowhere" / "x.csv"], "--output"),
                         (["--format", "parquet", "-o", tmp_path / "nowhere" / "x.parquet"], "--output")]:
        bad = pyserve_logs(logged_server.log_dir, *args)
        assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)
        assert "Traceback" not in bad.stderr and bad.stderr.startswith("pyserve logs: "), bad.stderr
    assert "no such payload log folder" in pyserve_logs(tmp_path / "nothing").stderr


# -- in-process: the queue, the writer, the sink --------------------------------------------------

def in_process(models: Path, settings: PayloadLogSettings, body: Any, start: bool = True) -> Any:
    async def main() -> Any:
        async with ModelHost(models) as host:
            plog = PayloadLog(settings, lambda name: host.registry.models[name].config)
            service = InferenceService(host, hooks=[plog])
            if start:
                plog.start()
            try:
                return await body(service, plog)
            finally:
                await asyncio.to_thread(plog.close)

    return asyncio.run(main())


def counter(plog: PayloadLog, metric: str, *labels: str) -> float:
    return getattr(plog, metric).labels(*labels)._value.get()


def test_a_full_queue_drops_and_counts_without_failing_requests(repo: Repo, tmp_path: Path) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n" + LOGGED)
    settings = PayloadLogSettings(log_dir=tmp_path / "log", queue_size=3)

    async def body(service: InferenceService, plog: PayloadLog) -> None:
        # The writer is not running: the queue fills, and a blocking put would hang this test.
        for i in range(10):
            response = await service.infer("affine", None, InferRequest({"x": np.full((1, 4), i, np.float32)}))
            assert response.outputs["y"].shape == (1, 4)
        assert counter(plog, "records_total", "affine", "dropped") == 7
        assert len(plog._queue) == 3
        plog.start()  # the kept three are written when it stops

    in_process(repo.root, settings, body, start=False)
    rows = pa.concat_tables(pq.read_table(p) for p in completed_files(tmp_path / "log")).to_pylist()
    assert [r["inputs"]["x"] for r in rows] == [[[0.0] * 4], [[1.0] * 4], [[2.0] * 4]]


def test_a_tensor_over_max_tensor_bytes_is_logged_by_datatype_and_shape(repo: Repo, tmp_path: Path) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n" + LOGGED + "max_tensor_bytes = 20\n")

    async def body(service: InferenceService, plog: PayloadLog) -> None:
        await service.infer("affine", None, InferRequest({"x": np.ones((1, 4), np.float32)}, id="small"))
        await service.infer("affine", None, InferRequest({"x": np.ones((2, 4), np.float32)}, id="large"))

    in_process(repo.root, PayloadLogSettings(log_dir=tmp_path / "log"), body)
    rows = {r["request_id"]: r for p in completed_files(tmp_path / "log") for r in pq.read_table(p).to_pylist()}
    assert rows["small"]["inputs"]["x"] == [[1.0] * 4] and rows["small"]["other_tensors"] is None
    assert rows["large"]["inputs"]["x"] is None and rows["large"]["outputs"]["y"] is None
    assert rows["large"]["outputs"]["argmax"] == [3, 3]  # 16 bytes: within the limit
    other = json.loads(rows["large"]["other_tensors"])
    assert other == {"inputs": {"x": {"datatype": "FP32", "shape": [2, 4], "data": None}},
                     "outputs": {"y": {"datatype": "FP32", "shape": [2, 4], "data": None}}}


def test_shadow_pairs_that_disagree_are_logged_whatever_the_sample_rate(repo: Repo, tmp_path: Path) -> None:
    """A mirrored call whose candidate answers differently, or fails, is logged as two records with
    the request's id (the stable answer, and the candidate's with protocol ``shadow``), even at
    sample rate 0; a candidate that agrees leaves nothing in the log."""
    from pyserve.release.shadow import ShadowMirror
    from pyserve.service import ModelControl

    config = "max_batch_size = 8\n[version_policy]\nall = true\n[payload_log]\nsample_rate = 0.0\n"
    repo.onnx("every", {1: 1.0, 3: 3.0}, config=config)  # version 3 answers differently
    repo.onnx("twins", {1: 1.0, 2: 1.0}, config=config)
    (repo.model_dir("twins") / "2" / "model.onnx").write_bytes((repo.model_dir("twins") / "1" / "model.onnx")
                                                                .read_bytes())  # the same model again
    doubles = ("import numpy as np\nclass Model:\n    def infer(self, inputs):\n"
               "        return {'y': inputs['x'] * 2, 'seq': np.zeros((len(inputs['x']), 1), np.int64)}\n")
    repo.python("flaky", doubles, gate_config(1, "[version_policy]\nall = true\n[payload_log]\nsample_rate = 0.0\n"),
                versions=(1, 2))
    (repo.model_dir("flaky") / "2" / "model.py").write_text(
        "class Model:\n    def infer(self, inputs):\n        raise RuntimeError('the candidate is broken')\n")
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    answers: dict[str, list] = {}

    async def main() -> None:
        async with ModelHost(repo.root) as host:
            plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path / "log"),
                              lambda name: host.registry.models[name].config)
            mirror = ShadowMirror(host, disagreements=plog.shadow_pair)
            service = InferenceService(host, hooks=[mirror, plog])
            control = ModelControl(host)
            for model, candidate in (("every", "3"), ("twins", "2"), ("flaky", "2")):
                await control.set_traffic(model, {"weights": {"1": 100}, "shadow": {"target": candidate}}, "tester")
            plog.start()
            try:
                for i in range(3):
                    for model in ("every", "twins"):
                        resp = await service.infer(model, None, InferRequest({"x": x}, id=f"{model}-{i}"))
                        assert resp.model_version == "1"
                        answers["1"] = resp.outputs["y"].tolist()
                flaky = await service.infer("flaky", None, InferRequest({"x": np.ones((1, 1), np.float32)}, id="f"))
                assert flaky.outputs["y"].tolist() == [[2.0]]  # the client never sees the candidate fail
                # The candidate serving a call itself: not mirrored, not logged (sample rate 0).
                answers["3"] = (await service.infer("every", "3", InferRequest({"x": x}))).outputs["y"].tolist()
                for _ in range(3000):
                    if not any(mirror.in_flight.values()):
                        break
                    await asyncio.sleep(0.01)
            finally:
                await asyncio.to_thread(plog.close)

    asyncio.run(main())
    rows = [r for p in completed_files(tmp_path / "log") for r in pq.read_table(p).to_pylist()]
    pairs = sorted((r["request_id"], r["version"], r["protocol"], r["sampled"], r["status"]) for r in rows)
    assert pairs == [(f"every-{i}", v, proto, False, "ok") for i in range(3)
                     for v, proto in (("1", "inprocess"), ("3", "shadow"))] + [
        ("f", "1", "inprocess", False, "ok"), ("f", "2", "shadow", False, "internal")]
    failed = next(r for r in rows if r["protocol"] == "shadow" and r["model"] == "flaky")
    assert "the candidate is broken" in failed["error"] and failed["outputs"] == {"y": None, "seq": None}
    by_version = {(r["request_id"], r["version"]): r for r in rows}
    assert answers["1"] != answers["3"]
    assert by_version[("every-0", "1")]["outputs"]["y"] == answers["1"]
    assert by_version[("every-0", "3")]["outputs"]["y"] == answers["3"]
    assert by_version[("every-0", "3")]["inputs"]["x"] == x.tolist()


def test_rotation_by_size_and_time_and_retention(tmp_path: Path) -> None:
    table = pa.table({"model": ["m"] * 2000, "x": np.random.default_rng(0).random(2000)})
    files = ParquetFiles(tmp_path, rotate_bytes=20_000, rotate_s=60, retain_bytes=10**9, retain_s=1e9)
    for _ in range(12):
        files.append("m", table)
    files.close_all()
    done = completed_files(tmp_path, "m")
    assert len(done) >= 4  # rotated by size
    assert sum(pq.read_metadata(p).num_rows for p in done) == 24_000
    assert all(p.stat().st_size < 20_000 + 40_000 for p in done)  # at most one row group past the limit

    files.append("m", table.slice(0, 100))  # well under the size limit
    opened = files._open["m"].opened
    files.rotate_due(opened + 59)
    assert len(completed_files(tmp_path, "m")) == len(done)
    files.rotate_due(opened + 60)  # rotated by time
    assert len(completed_files(tmp_path, "m")) == len(done) + 1

    files.retain_bytes = 3 * max(p.stat().st_size for p in completed_files(tmp_path))
    newest = completed_files(tmp_path)[-1]
    assert files.enforce_retention() > 0
    left = completed_files(tmp_path)
    assert sum(p.stat().st_size for p in left) <= files.retain_bytes and newest in left
    old = left[0]
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    files.retain_s = 3600
    files.enforce_retention()
    assert old not in completed_files(tmp_path) and newest in completed_files(tmp_path)


@pytest.mark.slow
def test_a_killed_server_leaves_readable_files(serve: Any, repo: Repo, tmp_path: Path) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n" + LOGGED)
    log_dir = tmp_path / "log"
    server = serve([repo.root, "--payload-log-dir", log_dir, "--payload-log-rotate-s", "0.3"])
    sent = 0
    deadline = time.monotonic() + 30
    while not completed_files(log_dir, "affine") or sent < 200:
        assert infer(server.url, "affine", "binary", {"x": np.ones((2, 4), np.float32)}).status_code == 200
        sent += 1
        assert time.monotonic() < deadline
    server.signal(signal.SIGKILL)
    server.wait()
    done = completed_files(log_dir, "affine")
    rows = sum(pq.read_table(p).num_rows for p in done)  # every visible file reads
    assert 0 < rows <= sent
    leftovers = [p.name for p in (log_dir / "affine").iterdir() if p not in done]
    assert all(n.startswith(".") and n.endswith(".parquet.tmp") for n in leftovers), leftovers
    # The next server removes what the killed one left unfinished, and keeps the rest.
    again = serve([repo.root, "--payload-log-dir", log_dir])
    assert not [p for p in (log_dir / "affine").iterdir() if p.name.endswith(".tmp")]
    assert completed_files(log_dir, "affine") == done
    again.stop()


class Receiver:
    """An aiohttp server on 127.0.0.1 in a thread of its own, taking CloudEvents; the first
    ``fail_first`` posts are answered 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[tuple[dict[str, str], Any]] = []
        self.fail_first = fail_first
        self.posts = 0
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from aiohttp import web

        async def take(request: web.Request) -> web.Response:
            self.posts += 1
            if self.posts <= self.fail_first:
                return web.Response(status=503)
            self.events.append(({k.lower(): v for k, v in request.headers.items()}, await request.json()))
            return web.Response(status=202)

        app = web.Application()
        app.router.add_post("/", take)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_cloudevents_sink_delivers_in_kserve_form(repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n" + LOGGED)
    with Receiver(fail_first=1) as receiver:
        settings = PayloadLogSettings(sink_url=f"http://127.0.0.1:{receiver.port}/", sink_backoff_s=0.01,
                                      sink_source="http://pyserve.test:8000/", sink_namespace="ns")

        async def body(service: InferenceService, plog: PayloadLog) -> PayloadLog:
            x = np.array([[1, 2, 3, 4]], np.float32)
            await service.infer("affine", None, InferRequest({"x": x}, id="ce-1"))
            bad = InferRequest({"x": np.ones((1, 5), np.float32)}, id="ce-2")
            with pytest.raises(Exception, match="expected shape"):
                await service.infer("affine", None, bad)
            return plog

        plog = in_process(repo.root, settings, body)
    assert counter(plog, "sink_events_total", "affine", "delivered") == 4
    assert counter(plog, "sink_retries_total", "affine") == 1  # the 503 was retried
    by_type = {(h["ce-id"], h["ce-type"]): (h, doc) for h, doc in receiver.events}
    headers, request = by_type["ce-1", "org.kubeflow.serving.inference.request"]
    assert headers["ce-specversion"] == "1.0" and headers["ce-source"] == "http://pyserve.test:8000/"
    assert (headers["ce-inferenceservicename"], headers["ce-namespace"], headers["ce-component"],
            headers["ce-endpoint"]) == ("affine", "ns", "predictor", "default")
    assert headers["content-type"] == "application/json" and "ce-time" in headers
    assert request == {"id": "ce-1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                                 "data": [1.0, 2.0, 3.0, 4.0]}]}
    _, response = by_type["ce-1", "org.kubeflow.serving.inference.response"]
    assert response["model_name"] == "affine" and response["id"] == "ce-1"
    assert {o["name"] for o in response["outputs"]} == {"y", "argmax"}
    _, failed = by_type["ce-2", "org.kubeflow.serving.inference.response"]
    assert "expected shape" in failed["error"]


def test_cloudevents_sink_survives_its_receiver_being_down(repo: Repo) -> None:
    repo.onnx("affine", config="max_batch_size = 8\n" + LOGGED)
    with Receiver() as receiver:
        port = receiver.port  # a port that was just closed: connections are refused
    settings = PayloadLogSettings(sink_url=f"http://127.0.0.1:{port}/", sink_retries=2, sink_backoff_s=0.01)

    async def body(service: InferenceService, plog: PayloadLog) -> PayloadLog:
        for i in range(5):
            response = await service.infer("affine", None, InferRequest({"x": np.ones((1, 4), np.float32)}))
            assert response.outputs["y"].shape == (1, 4)
        await asyncio.to_thread(plog.flush)
        await asyncio.to_thread(wait_until, lambda: counter(plog, "sink_events_total", "affine", "failed") == 10,
                                10, "the sink to give up")
        return plog

    plog = in_process(repo.root, settings, body)
    assert counter(plog, "sink_retries_total", "affine") == 20  # 2 retries of each of the 10 events
    assert counter(plog, "sink_events_total", "affine", "delivered") == 0


# -- config ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("table, needle", [
    ("sample_rte = 0.5", "payload_log.sample_rte: unknown key (did you mean 'sample_rate'?)"),
    ("sample_rate = 1.5", "payload_log.sample_rate: expected a number from 0 to 1, got 1.5"),
    ("sample_rate = true", "payload_log.sample_rate: expected a number from 0 to 1, got True"),
    ("enabled = 1", "payload_log.enabled: expected true or false, got 1"),
    ("failures = \"yes\"", "payload_log.failures: expected true or false"),
    ("inputs = \"x\"", "payload_log.inputs: expected a list of tensor names"),
    ("redact = [\"ssn\"]", "payload_log.redact[0]: expected a tensor of the model (argmax, x, y), got 'ssn'"),
    ("outputs = [\"x\"]", "payload_log.outputs[0]: expected an output of the model (argmax, y), got 'x'"),
    ("hash = [\"x\"]\nredact = [\"x\"]", "payload_log.hash: x also in payload_log.redact"),
    ("max_tensor_bytes = -1", "payload_log.max_tensor_bytes: expected an integer >= 0"),
])
def test_bad_payload_log_keys_are_refused(repo: Repo, table: str, needle: str) -> None:
    path = repo.onnx("affine", config=f"max_batch_size = 8\n[payload_log]\n{table}\n")
    with pytest.raises(ConfigError) as e:
        load_model_config(path)
    assert needle in e.value.message and "config.toml" in e.value.message


def test_payload_log_defaults(repo: Repo) -> None:
    assert load_model_config(repo.onnx("off", config="max_batch_size = 8\n")).payload_log == PayloadLogConfig()
    on = load_model_config(repo.onnx("on", config="[payload_log]\n")).payload_log
    assert on == PayloadLogConfig(enabled=True) and on.sample_rate == 0.1 and on.failures


@pytest.mark.parametrize("flags, needle", [
    (["--payload-log-sink", "ftp://x"], "--payload-log-sink: expected an http:// or https:// URL"),
    (["--payload-log-dir", "FILE/log"], "--payload-log-dir: cannot create"),
])
def test_serve_refuses_bad_payload_log_flags(tmp_path: Path, flags: list[str], needle: str) -> None:
    (tmp_path / "FILE").write_text("a file, not a folder")
    flags = [f.replace("FILE", str(tmp_path / "FILE")) for f in flags]
    result = subprocess.run([sys.executable, "-m", "pyserve", "serve", str(tmp_path), *flags],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and needle in result.stderr, result.stderr


def _log_file(path: Path, request_ids: list[str]) -> None:
    """A payload log file of the fixed columns, written as the writer writes (zstd pages)."""
    from pyserve.payload_log.files import writer_options
    from pyserve.payload_log.table import BASE_FIELDS, OTHER_TENSORS

    schema = pa.schema([*BASE_FIELDS, OTHER_TENSORS])
    n = len(request_ids)
    columns = {f.name: pa.nulls(n, f.type) for f in schema}
    columns.update(time=pa.array([datetime.datetime.now(datetime.UTC)] * n, pa.timestamp("us", "UTC")),
                   model=pa.array(["m"] * n), outcome=pa.array(["success"] * n), status=pa.array(["ok"] * n),
                   sampled=pa.array([True] * n), request_id=pa.array(request_ids))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema), path,
                   **writer_options(schema))


def test_a_file_with_damaged_data_is_skipped(tmp_path: Path) -> None:
    """A file whose footer reads well but whose pages are damaged is skipped, named once, by the
    filters and by --sql (which gave a 500 on /v2/logs before); a wrong --sql stays a 400."""
    from pyserve.errors import PyserveError
    from pyserve.payload_log import query

    good = tmp_path / "m" / "20260101T000000.000000Z-1-000001.parquet"
    bad = tmp_path / "m" / "20260101T000000.000000Z-1-000002.parquet"
    _log_file(good, ["good-0", "good-1"])
    _log_file(bad, [f"bad-{i}" for i in range(1000)])
    data = bytearray(bad.read_bytes())
    data[4:len(data) // 3] = bytes(range(256)) * (len(data) // 3 // 256) + bytes(len(data) // 3 % 256 - 4)
    bad.write_bytes(bytes(data))
    assert pq.read_metadata(bad).num_rows == 1000  # the footer still reads
    warnings: list[str] = []
    table = query.select(tmp_path, query.LogQuery(limit=100), warnings.append)
    assert sorted(table.column("request_id").to_pylist()) == ["good-0", "good-1"]
    assert len(warnings) == 1 and warnings[0].startswith(f"skipping {bad}: its data cannot be read"), warnings
    counted = query.sql(tmp_path, "SELECT count(*) AS n FROM logs", warnings.append)
    assert counted.column("n").to_pylist() == [2] and len(warnings) == 1  # known now: skipped without a read
    with pytest.raises(PyserveError, match="--sql: .*no_such_column"):
        query.sql(tmp_path, "SELECT no_such_column FROM logs", warnings.append)


def test_logs_endpoint_skips_a_file_with_damaged_data(logged_server: Any) -> None:
    rid = f"beside-damaged-{uuid.uuid4()}"
    infer(logged_server.url, "affine", "json", {"x": np.ones((1, 4), np.float32)}, id=rid)
    logged(logged_server, rid, "affine")
    bad = logged_server.log_dir / "damaged" / "20200101T000000.000000Z-1-000001.parquet"
    _log_file(bad, [f"bad-{i}" for i in range(1000)])
    data = bytearray(bad.read_bytes())
    data[4:len(data) // 3] = bytes(len(data) // 3 - 4)
    bad.write_bytes(bytes(data))
    try:
        resp = requests.get(logged_server.url + "/v2/logs", params={"limit": 1000}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert rid in [r["request_id"] for r in resp.json()["records"]]
        wait_until(lambda: f"skipping {bad}: its data cannot be read" in logged_server.log(), 10,
                   "the warning naming the damaged file")
    finally:
        bad.unlink()
        bad.parent.rmdir()
