"""The payload log when things go wrong underneath it: a disk that fills up while a file is being
written, and queues too small for the writer's wake-up (``queue_size // 4`` is 0 below 4)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until

from pyserve.config import ModelConfig, PayloadLogConfig, TensorSpec
from pyserve.payload_log import PayloadLog, PayloadLogSettings
from pyserve.protocol import InferRequest, InferResponse
from pyserve.service import CallContext

# Run in a process of its own: RLIMIT_FSIZE (each file written may grow to 100,000 bytes, then a write
# fails with EFBIG, as a full disk fails with ENOSPC) is the whole process's.
_FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pyserve.payload_log.files import ROW_GROUP_ROWS, ParquetFiles, completed_files

    log_dir = Path(sys.argv[1])
    counts = {"written": 0, "lost": 0}
    files = ParquetFiles(log_dir, rotate_bytes=1 << 30, rotate_s=3600, retain_bytes=1 << 40, retain_s=1e9,
                         on_closed=lambda m, n: counts.__setitem__("written", counts["written"] + n),
                         on_lost=lambda m, n: counts.__setitem__("lost", counts["lost"] + n))
    group = pa.table({"x": np.random.default_rng(0).random(ROW_GROUP_ROWS)})  # ~66 KB: incompressible
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, the process lives
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # the disk fills up: one group fits
    for _ in range(2):
        files.append("m", group)  # the second group does not fit: the file is given up
    files.append("m", group)  # a new file
    files.append("m", group.slice(0, 8_000))
    files.close("m")  # the group written at the close does not fit: given up
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
    files.append("m", group.slice(0, 100))
    files.close_all()
    readable = sum(pq.read_table(p).num_rows for p in completed_files(log_dir))
    left = sorted(p.name for p in (log_dir / "m").iterdir() if p.name.endswith(".tmp"))
    print(json.dumps({**counts, "readable": readable, "tmp": left, "appended": 3 * ROW_GROUP_ROWS + 8_100}))
""")


def test_a_disk_that_fills_up_publishes_no_broken_file_and_counts_every_record(tmp_path: Path) -> None:
    """A row group that cannot be written leaves pyarrow's writer closed and the file without a
    footer: published, it was a .parquet file no reader opens (a query over the folder then fails),
    its rows counted written; later writes raised ArrowInvalid out of the writer, their rows counted
    nowhere and the temporary file left behind. Now the file is given up: every row counted written
    (in a readable file) or lost, nothing left behind, and writing resumes once there is room."""
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "log")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["tmp"] == []
    assert got["written"] == got["readable"] == 100  # the rows written once there was room
    assert got["written"] + got["lost"] == got["appended"]


LOGGED = PayloadLogConfig(enabled=True, sample_rate=1.0)
CONFIG = ModelConfig("m", "onnxruntime", (TensorSpec("x", "FP32", (4,)),), (TensorSpec("y", "FP32", (4,)),),
                     max_batch_size=8, payload_log=LOGGED)


def _logged_call(plog: PayloadLog, i: int) -> None:
    runner = types.SimpleNamespace(config=CONFIG, version="1")
    x = {"x": np.full((1, 4), i, np.float32)}
    plog.after_response(CallContext("http+json", f"r{i}"), runner, InferRequest(x),
                        InferResponse("m", "1", {"y": x["x"]}))


@pytest.mark.parametrize("queue_size", [1, 2, 3, 4])
def test_a_small_queue_wakes_the_writer_too(tmp_path: Path, queue_size: int) -> None:
    """The hook wakes the writer when the queue reaches ``queue_size // 4`` records, which is 0 for
    a queue of 1 to 3: with a queue of 1 the wake-up was put at a depth of 1, which the queue never
    reaches before it is full, so the writer slept out flush_s with a full queue and dropped all
    but one record in each flush_s (20 of 3,000 records kept, against 2,216 with a queue of 2)."""
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path, queue_size=queue_size, flush_s=600.0),
                      lambda name: CONFIG)
    plog.start()
    try:
        time.sleep(0.1)  # the writer is in its first wait (600 s)
        for i in range(queue_size):
            _logged_call(plog, i)  # a full queue
        wait_until(lambda: not plog._queue, timeout_s=30, what="the writer, woken, to take the queue")
    finally:
        plog.close()
    assert plog.records_total.labels("m", "written")._value.get() == queue_size
    assert plog.records_total.labels("m", "dropped")._value.get() == 0


def test_a_stop_that_outlasts_its_timeout_says_what_is_lost(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A writer still busy when close's timeout runs out (a backlog of a huge queue, a stuck
    consumer) is left behind by the exiting process with its records: that was silent."""
    release = threading.Event()
    plog = PayloadLog(PayloadLogSettings(log_dir=tmp_path, flush_s=600.0), lambda name: CONFIG)
    plog.add_consumer(lambda captures: release.wait(30))
    plog.start()
    try:
        _logged_call(plog, 0)
        plog._wake.set()  # the writer takes it and blocks in the consumer
        wait_until(lambda: not plog._queue, timeout_s=30, what="the writer to take the first record")
        for i in range(1, 6):
            _logged_call(plog, i)
        with caplog.at_level("ERROR", logger="pyserve.payload_log"):
            plog.close(timeout_s=0.1)
        assert "did not finish within 0.1 s of the stop: 5 queued records" in caplog.text
    finally:
        release.set()
        plog._thread.join(30)
