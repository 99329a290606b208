"""A short, bounded fuzzing run of every request decoder and of the HTTP request path (atheris; the
targets and their seeds are in tests/fuzz/). Longer runs: ``python tests/fuzz/run.py TARGET
-max_total_time=3600`` (README, Development)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
TARGETS = ["json", "json_diff", "reply_diff", "binary", "msgpack", "http"]
SECONDS_EACH = 5  # six targets: about 45 s in all with start-up, under the minute CI allows


def test_the_committed_seeds_are_what_make_corpus_writes() -> None:
    sys.path.insert(0, str(FUZZ))
    try:
        import make_corpus
    finally:
        sys.path.remove(str(FUZZ))
    for target, items in make_corpus.seeds().items():
        committed = sorted(p.read_bytes() for p in (FUZZ / "corpus" / target).iterdir())
        assert committed == sorted(items), f"tests/fuzz/corpus/{target}: run python tests/fuzz/make_corpus.py"


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), target, f"-max_total_time={SECONDS_EACH}", "-timeout=20",
         "-rss_limit_mb=3072", f"-artifact_prefix={tmp_path}/", "-corpus", str(tmp_path / "corpus")],
        capture_output=True, text=True, timeout=SECONDS_EACH + 90)
    crashes = [p.name for p in tmp_path.iterdir() if p.name != "corpus"]
    assert proc.returncode == 0 and not crashes, f"{crashes}\n{proc.stderr[-4000:]}"
    assert "Done" in proc.stderr, proc.stderr[-2000:]
