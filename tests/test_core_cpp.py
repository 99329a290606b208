"""Builds the C++ core tests (tests/cpp/test_core.cc) with plain CMake, without Python, and runs them:
the core's own tests, independent of the binding. Once as a Release build, and (marked slow) under
AddressSanitizer + UndefinedBehaviorSanitizer and under ThreadSanitizer (tests/cpp/run_sanitizers.sh).

CMake comes with the test dependencies (the ``cmake`` package of PyPI). Where it or a C++ compiler is
missing these tests are skipped, except in CI (the ``CI`` environment variable set, as .ci/run's caller
does), where a skip would hide that the C++ core went untested: there they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "cpp-tests"  # kept between runs: rebuilding only what changed is fast
SANITIZERS_SCRIPT = ROOT / "tests" / "cpp" / "run_sanitizers.sh"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _missing(what: str) -> None:
    """Skips for want of ``what`` (a tool); fails in CI, where every test must run."""
    if _in_ci():
        pytest.fail(f"{what} (CI must run the C++ core tests)")
    pytest.skip(what)


def _tool_path() -> str:
    """PATH with the environment's scripts folder first: the ``cmake`` of the test dependencies is
    there even when the virtual environment is not activated."""
    folders = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return os.pathsep.join(dict.fromkeys(f for f in folders if f))


def _cxx_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


@pytest.fixture(scope="module")
def build_env() -> dict[str, str]:
    """The environment to run CMake in; skips (fails in CI) without cmake or a C++ compiler."""
    path = _tool_path()
    if shutil.which("cmake", path=path) is None:
        _missing("cmake is not installed (it is a test dependency: pip install -e '.[test]')")
    if _cxx_compiler() is None:
        _missing("no C++ compiler found")
    return {**os.environ, "PATH": path}


def _run(cmd: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
                          check=False)


@pytest.fixture(scope="module")
def core_tests_binary(build_env: dict[str, str]) -> Path:
    """Configures and builds pyserve_core_tests (Release, CPU only)."""
    configure = _run(
        [
            "cmake", "-S", str(ROOT), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release",
            "-DPYSERVE_BUILD_PYTHON=OFF", "-DPYSERVE_BUILD_TESTS=ON", "-DPYSERVE_WITH_CUDA=OFF",
        ],
        build_env,
        timeout_s=60,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    jobs = str(os.cpu_count() or 2)
    build = _run(["cmake", "--build", str(BUILD_DIR), "--target", "pyserve_core_tests", "-j", jobs], build_env,
                 timeout_s=100)
    assert build.returncode == 0, build.stdout + build.stderr
    binary = BUILD_DIR / "pyserve_core_tests"
    assert binary.is_file()
    return binary


@pytest.mark.slow
def test_cpp_core_tests_pass(core_tests_binary: Path) -> None:
    result = subprocess.run([str(core_tests_binary)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    lines = result.stdout.strip().splitlines()
    failures = "\n".join(line for line in lines if not line.startswith("PASS"))
    assert lines, result.stderr
    assert lines[-1].endswith(" 0 failed"), failures
    assert result.returncode == 0, failures
    passed = int(lines[-1].split()[0])
    assert passed == sum(line.startswith("PASS") for line in lines) and passed > 20


# A sanitizer build compiles the core and its tests again (about 50 s of one core each, measured on
# the project's 2-core machine); the tests then run in about a second.
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("sanitizer", ["asan", "tsan"])
def test_cpp_core_tests_pass_under_sanitizer(build_env: dict[str, str], sanitizer: str) -> None:
    result = _run(["bash", str(SANITIZERS_SCRIPT), sanitizer], build_env, timeout_s=540)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = re.search(rf"^== {sanitizer}: (\d+) passed, 0 failed in \d+ s$", result.stdout, re.MULTILINE)
    assert summary and int(summary.group(1)) > 20, output[-3000:]
    assert "sanitizers: all passed" in result.stdout
