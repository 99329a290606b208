"""The payload log when things go wrong underneath it: a disk that fills up while a file is being
written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

# Run in a process of its own: RLIMIT_FSIZE (each file written may grow to LIMIT bytes, then a write
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
