"""``--workers`` with files on disk: each worker unpacks ``.pyserve`` artifacts into its own folder,
deleted when it exits (also after ``kill -9``), and writes its own payload-log files, none lost."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
from artifact_helpers import golden_onnx_model, require_artifact_extra
from conftest import Repo, Server, http_status, process_gone, wait_until

from pyserve.server.app import ServerSettings
from pyserve.workers import supervisor

INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}


def _fresh(method: str, url: str, **kw: Any) -> requests.Response:
    """A request on a new connection (the kernel picks the worker per connection)."""
    with requests.Session() as s:
        return s.request(method, url, timeout=60, headers={"Connection": "close"}, **kw)


def _worker_pids(server: Server) -> dict[int, int]:
    return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", server.log())}


def _onnxruntime_leftovers() -> set[str]:
    """The names of what onnxruntime itself leaves in TMPDIR on import (1.32 writes a `.ses` file
    there unless CI is set): not pyserve's to remove."""
    scratch = Path(tempfile.mkdtemp(prefix="pyserve-ort-"))
    try:
        subprocess.run([sys.executable, "-c", "import onnxruntime"], env={**os.environ, "TMPDIR": str(scratch)},
                       check=True, timeout=120)
        return {p.name for p in scratch.iterdir()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.slow
def test_workers_unpack_an_artifact_each_in_their_own_folder_removed_even_after_kill(
        serve: Any, repo: Repo, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    require_artifact_extra()
    from pyserve.artifact.pack import PackageOptions, package

    artifact = tmp_path / "affine.pyserve"
    package(golden_onnx_model(repo, "affine"), artifact, PackageOptions())
    # The server's TMPDIR (whatever it leaves behind shows here), short: pytest's tmp_path is too
    # long a parent for the channel's Unix sockets.
    scratch = Path(tempfile.mkdtemp(prefix="pyserve-test-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    server = serve(["--model", f"affine={artifact}", "--workers", "2"], env={"TMPDIR": str(scratch)},
                   wait_ready=False)
    url = server.url
    wait_until(lambda: http_status(url + "/v2/health/ready") == 200, 120, "both workers ready")
    unpacked = sorted(scratch.glob("*/unpacked-*/pyserve-artifact-*"))
    assert [p.parent.name for p in unpacked] == ["unpacked-0", "unpacked-1"], unpacked
    pids = _worker_pids(server)
    os.kill(pids[1], signal.SIGKILL)
    wait_until(lambda: process_gone(pids[1]), 30, "worker 1 gone")
    wait_until(lambda: _worker_pids(server).get(1, pids[1]) != pids[1], 60, "worker 1 restarted")
    wait_until(lambda: http_status(url + "/v2/health/ready") == 200, 120, "readiness 200 again")
    # The killed worker's folder went with it: one unpacked artifact per live worker.
    assert len(list(scratch.glob("*/unpacked-*/pyserve-artifact-*"))) == 2
    assert {_fresh("POST", f"{url}/v2/models/affine/infer", json=INFER).status_code for _ in range(20)} == {200}
    server.stop()
    assert [p for p in scratch.iterdir() if p.name not in _onnxruntime_leftovers()] == []


@pytest.mark.slow
def test_workers_write_their_own_payload_log_files_and_lose_no_record(serve: Any, repo: Repo,
                                                                     tmp_path: Path) -> None:
    repo.onnx("m", config="max_batch_size = 8\n[payload_log]\nsample_rate = 1.0\n")
    log_dir = tmp_path / "log"
    server = serve([repo.root, "--workers", "2", "--payload-log-dir", log_dir], wait_ready=False)
    url = server.url
    wait_until(lambda: http_status(url + "/v2/health/ready") == 200, 120, "both workers ready")
    for _ in range(40):
        assert _fresh("POST", f"{url}/v2/models/m/infer", json=INFER).status_code == 200
    server.stop()  # each worker publishes its last file as it stops
    files = sorted((log_dir / "m").glob("*.parquet"))
    writers = {int(re.search(r"Z-(\d+)-\d+\.parquet$", f.name).group(1)) for f in files}  # type: ignore[union-attr]
    assert writers == set(_worker_pids(server).values()), files  # both workers wrote, names apart
    assert len({f.name for f in files}) == len(files)
    assert sum(pq.read_metadata(f).num_rows for f in files) == 40
    assert not list((log_dir / "m").glob(".*.tmp"))


def test_a_temporary_folder_too_long_for_the_channel_sockets_is_refused_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(OSError, match="set TMPDIR to a shorter folder") as refused:
        supervisor.run(ServerSettings(port=0), 2, "info")
    assert refused.value.errno == errno.ENAMETOOLONG
    assert list(deep.iterdir()) == []  # its runtime folder removed
