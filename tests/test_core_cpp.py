"""Builds the C++ core tests (tests/cpp/test_core.cc) with plain CMake, without Python or sanitizers,
and runs them: the core's own tests, independent of the binding."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "cpp-tests"  # kept between runs: rebuilding only what changed is fast


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def core_tests_binary() -> Path:
    """Configures and builds pyserve_core_tests (Release, CPU only); skips without cmake or a compiler."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if _cxx_compiler() is None:
        pytest.skip("no C++ compiler found")
    configure = _run(
        [
            "cmake", "-S", str(ROOT), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
            "-DPYSERVE_BUILD_PYTHON=OFF", "-DPYSERVE_BUILD_TESTS=ON", "-DPYSERVE_WITH_CUDA=OFF",
        ],
        timeout_s=60,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    jobs = str(os.cpu_count() or 2)
    build = _run(["cmake", "--build", str(BUILD_DIR), "--target", "pyserve_core_tests", "-j", jobs], timeout_s=100)
    assert build.returncode == 0, build.stdout + build.stderr
    binary = BUILD_DIR / "pyserve_core_tests"
    assert binary.is_file()
    return binary


def test_cpp_core_tests_pass(core_tests_binary: Path) -> None:
    result = _run([str(core_tests_binary)], timeout_s=60)
    lines = result.stdout.strip().splitlines()
    failures = "\n".join(line for line in lines if not line.startswith("PASS"))
    assert lines, result.stderr
    assert lines[-1].endswith(" 0 failed"), failures
    assert result.returncode == 0, failures
    passed = int(lines[-1].split()[0])
    assert passed == sum(line.startswith("PASS") for line in lines) and passed > 20
