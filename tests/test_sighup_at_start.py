"""SIGHUP (reload the token and TLS files) sent while the server starts, its models still loading,
must not end it: a Python process dies of a SIGHUP it does not handle yet, and a ``--workers``
supervisor used to pass it on to workers that had not installed their handler (the whole server
then stopped, its first start having "failed")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Repo, free_port, http_status, wait_until

# A Python model whose load waits for the test: it says it is loading (one file per process),
# then holds until the test has sent its SIGHUP and written `go`.
SLOW_LOAD = """
import os
import pathlib
import time

import numpy as np

_here = pathlib.Path(os.environ["PYSERVE_TEST_HANDSHAKE"])
(_here / f"loading-{os.getpid()}").touch()
_deadline = time.monotonic() + 120
while not (_here / "go").exists() and time.monotonic() < _deadline:
    time.sleep(0.01)


class Model:
    def infer(self, inputs):
        return {"y": inputs["x"]}
"""
CONFIG = """
backend = "python"
max_batch_size = 4

[[inputs]]
name = "x"
datatype = "FP32"
shape = [1]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [1]
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_while_the_models_load_does_not_end_the_server(repo: Repo, tmp_path: Path,
                                                               workers: int) -> None:
    repo.python("slow", SLOW_LOAD, CONFIG)
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyserve", "serve", str(repo.root), "--workers", str(workers),
             "--port", str(port), "--drain-grace-s", "0"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYSERVE_TEST_HANDSHAKE": str(handshake), "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: len(list(handshake.glob("loading-*"))) == workers or proc.poll() is not None, 120,
                   "every process loading its model")
        proc.send_signal(signal.SIGHUP)
        (handshake / "go").touch()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(url + "/v2/health/ready", 1.0) == 200 or proc.poll() is not None, 120,
                   "the server ready")
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert "killed by SIGHUP" not in log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
