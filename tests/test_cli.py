"""The ``pyserve`` command line refuses what it cannot serve, with status 2 and a message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyserve", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["serve", "{tmp}/no-such-repo"], "no such model repository folder"),
        (["serve", "--model", "a={tmp}/missing.onnx"], "--model a="),
        (["serve", "--model", "a"], "expected NAME=PATH.onnx"),
        (["serve", "{tmp}", "--max-batch-size", "8"], "--max-batch-size: only for --model models"),
        (["serve", "--model", "a={tmp}/f.onnx", "--preferred-batch-sizes", "x"], "comma-separated integers"),
        (["bench", "-m", "m", "--concurrency", "zero"], "--concurrency"),
    ],
    ids=["missing-repo", "missing-file", "model-syntax", "flag-without-model", "preferred", "bench-sweep"],
)
def test_bad_command_lines_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "f.onnx").write_bytes(b"")
    result = run(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("pyserve ")
    out = run("serve", "--help").stdout
    for flag in ("--host", "--port", "--model", "--max-batch-size", "--max-queue-delay-us", "--max-body-bytes",
                 "--shutdown-timeout-s", "--log-level", "--disable-model-control", "--no-strict-readiness"):
        assert flag in out
