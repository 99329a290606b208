"""The ``pyserve`` command line refuses what it cannot serve: a non-zero status and one line on stderr
naming the flag or the address (argparse's usage and one error line for values out of range), never a
traceback."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import http_status, onnx_affine_bytes

from pyserve import cli


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyserve", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line(stderr: str) -> str:
    """The only line of ``stderr``; fails the test on a traceback or on more lines."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def usage_error(stderr: str, flag: str) -> str:
    """argparse's refusal: the usage, then one error line naming ``flag``; that line."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert lines[0].startswith("usage: pyserve serve "), stderr
    assert all(line.startswith(" ") for line in lines[1:-1]), stderr  # the usage's own lines
    assert lines[-1].startswith(f"pyserve serve: error: argument {flag}: "), stderr
    return lines[-1]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "affine.onnx"
    path.write_bytes(onnx_affine_bytes(2.0, 1.0))
    return path


@pytest.mark.parametrize(
    "args, needle",
    [
        (["serve", "{tmp}/no-such-repo"], "no such model repository folder"),
        (["serve", "--model", "a={tmp}/missing.onnx"], "--model a="),
        (["serve", "--model", "a"], "expected NAME=PATH.onnx"),
        (["serve", "{tmp}", "--max-batch-size", "8"], "--max-batch-size: only for --model models"),
        (["serve", "--model", "a={tmp}/f.onnx", "--preferred-batch-sizes", "x"], "comma-separated integers"),
        (["serve", "--model", "a={tmp}/f.onnx", "--max-batch-size", "8", "--preferred-batch-sizes", "4,16"],
         "--preferred-batch-sizes: each size must be at most --max-batch-size (8), got 16"),
        (["bench", "-m", "m", "--concurrency", "zero"], "--concurrency"),
    ],
    ids=["missing-repo", "missing-file", "model-syntax", "flag-without-model", "preferred",
         "preferred-too-large", "bench-sweep"],
)
def test_bad_command_lines_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "f.onnx").write_bytes(b"")
    result = run(*(a.format(tmp=tmp_path) for a in args), timeout=60)  # refused before any model loads
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in result.stderr.splitlines()[-1]


# --- values out of range: argparse refuses them, naming the flag ---------------------------------

OUT_OF_RANGE = [
    ("--port", "-1"), ("--port", "65536"), ("--port", "http"),
    ("--max-batch-size", "-1"), ("--max-queue-delay-us", "-1"), ("--max-queue-size", "-1"),
    ("--intra-op-threads", "-1"), ("--instance-count", "0"), ("--max-body-bytes", "0"),
    ("--max-body-bytes", "1.5"),
    ("--shutdown-timeout-s", "-1"), ("--shutdown-timeout-s", "nan"), ("--shutdown-timeout-s", "inf"),
    ("--preferred-batch-sizes", "0"), ("--preferred-batch-sizes", "8,-4"), ("--preferred-batch-sizes", "4,4"),
    ("--preferred-batch-sizes", "4,,8"),
]


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process ``main`` must not start a server: a value that slips through fails the test."""
    from pyserve.server import app

    def refuse(settings: app.ServerSettings) -> None:
        raise AssertionError(f"the server would have started with {settings}")

    monkeypatch.setattr(app, "run", refuse)


@pytest.mark.parametrize("flag, text", OUT_OF_RANGE, ids=[f"{f}={t}" for f, t in OUT_OF_RANGE])
def test_values_out_of_range_are_usage_errors(capsys: pytest.CaptureFixture[str], no_server: None,
                                              onnx_file: Path, flag: str, text: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--model", f"a={onnx_file}", f"{flag}={text}"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert text in usage_error(captured.err, flag)  # the value refused is said back


def test_value_out_of_range_in_a_real_process(onnx_file: Path) -> None:
    try:
        result = run("serve", "--model", f"a={onnx_file}", "--port", "70000", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("--port 70000 was taken: the server started")
    assert result.returncode == 2
    line = usage_error(result.stderr, "--port")
    assert "0..65535" in line and "'70000'" in line


@pytest.mark.parametrize(
    "flag, text, parsed",
    [("--port", "0", 0), ("--port", "65535", 65535), ("--max-batch-size", "0", 0),
     ("--instance-count", "1", 1), ("--max-body-bytes", "1", 1), ("--shutdown-timeout-s", "0", 0.0),
     ("--shutdown-timeout-s", "2.5", 2.5),
     ("--preferred-batch-sizes", "8, 16", (8, 16)), ("--preferred-batch-sizes", "", ())],
)
def test_values_in_range_are_taken(flag: str, text: str, parsed: object) -> None:
    args = cli.make_parser().parse_args(["serve", f"{flag}={text}"])
    assert getattr(args, flag.removeprefix("--").replace("-", "_")) == parsed


# --- start-up failures: one line, a non-zero status ----------------------------------------------

@pytest.mark.parametrize("log_level", ["warning", "info"])
def test_port_in_use(onnx_file: Path, log_level: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--model", f"a={onnx_file}", "--port", str(port), "--log-level", log_level)
    assert result.returncode == 2
    # The address is bound before any model loads: nothing but the one line, at any log level.
    line = one_line(result.stderr)
    assert line == (f"pyserve serve: cannot listen on 127.0.0.1:{port}: address already in use; "
                    "pick another --port (0 = any free port) or stop the process using it")


def test_port_in_use_fails_before_the_models_load(tmp_path: Path) -> None:
    """A model that takes long to load must not delay the answer: the port is bound first."""
    model = tmp_path / "models" / "slow"
    (model / "1").mkdir(parents=True)
    (model / "config.toml").write_text('backend = "python"\n[[inputs]]\nname = "x"\ndatatype = "FP32"\n'
                                       'shape = [1]\n[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [1]\n')
    marker = tmp_path / "loaded"
    (model / "1" / "model.py").write_text(
        f"import pathlib\nclass Model:\n    def __init__(self):\n        pathlib.Path({str(marker)!r}).touch()\n"
        "    def infer(self, inputs):\n        return {'y': inputs['x']}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", str(tmp_path / "models"), "--port", str(port), "--log-level", "warning")
    assert result.returncode == 2 and "address already in use" in result.stderr
    assert not marker.exists(), "the model was loaded before the port was found taken"


def test_address_not_available(onnx_file: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this machine.
    result = run("serve", "--model", f"a={onnx_file}", "--host", "192.0.2.1", "--port", "8000",
                 "--log-level", "warning")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("pyserve serve: cannot listen on 192.0.2.1:8000: address not available")
    assert "--host" in line and "127.0.0.1" in line


def test_host_that_does_not_resolve(onnx_file: Path) -> None:
    result = run("serve", "--model", f"a={onnx_file}", "--host", "no-such-host.invalid",
                 "--log-level", "warning")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("pyserve serve: --host 'no-such-host.invalid': cannot resolve the address")


def test_low_port_without_permission(onnx_file: Path) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 1))
        except PermissionError:
            pass
        else:
            pytest.skip("this user may bind ports below 1024 (root or CAP_NET_BIND_SERVICE)")
    result = run("serve", "--model", f"a={onnx_file}", "--port", "1", "--log-level", "warning")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("pyserve serve: cannot listen on 127.0.0.1:1: permission denied; ports below 1024")


@pytest.mark.parametrize(
    "error, status, expected",
    [
        (OSError(errno.EACCES,
                 "error while attempting to bind on address ('0.0.0.0', 80): permission denied"), 2,
         ("pyserve serve: cannot listen on 0.0.0.0:80: permission denied; ports below 1024 need root or "
          "CAP_NET_BIND_SERVICE: pick a --port of 1024 or above")),
        (OSError(errno.EADDRINUSE,
                 "error while attempting to bind on address ('::1', 80): address already in use"), 2,
         "pyserve serve: cannot listen on [::1]:80: address already in use; pick another --port"),
        # Not an error of the listener: said as it is, status 1.
        (PermissionError(errno.EACCES, "Permission denied", "/models/a.onnx"), 1,
         ("pyserve serve: start-up failed: [Errno 13] Permission denied: '/models/a.onnx' "
          "(--log-level debug shows the traceback)")),
    ],
    ids=["eacces", "eaddrinuse-ipv6", "other-oserror"],
)
def test_listen_errors_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                  onnx_file: Path, error: OSError, status: int, expected: str) -> None:
    """The OSError that ``run`` raises (as uvloop.run / asyncio.run do) becomes one line."""
    from pyserve.server import app

    def fail(settings: app.ServerSettings) -> None:
        raise error

    monkeypatch.setattr(app, "run", fail)
    host = "::1" if "::1" in str(error) else "0.0.0.0"
    assert cli.main(["serve", "--model", f"a={onnx_file}", "--host", host, "--port", "80"]) == status
    assert one_line(capsys.readouterr().err).startswith(expected)


def test_port_0_is_any_free_port(onnx_file: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyserve", "serve", "--model", f"a={onnx_file}", "--port", "0"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            found = re.search(r"Running on http://127\.0\.0\.1:(\d+) ", line)
            if found:
                break
        else:
            pytest.fail("the server exited without listening")
        port = int(found.group(1))
        assert port != 0 and http_status(f"http://127.0.0.1:{port}/v2/health/ready") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


# --- the demo without its extra --------------------------------------------------------------------

DEMO_WITHOUT_EXTRA = textwrap.dedent("""
    import sys
    sys.modules["sklearn"] = None  # as if scikit-learn and skl2onnx were not installed
    sys.modules["skl2onnx"] = None
    from pyserve.cli import main
    sys.exit(main(["serve", "--log-level", "warning"]))
""")


def test_demo_without_its_extra(tmp_path: Path) -> None:
    env = {**os.environ, "PYSERVE_HOME": str(tmp_path)}  # no demo built yet
    result = subprocess.run([sys.executable, "-c", DEMO_WITHOUT_EXTRA], check=False, capture_output=True,
                            text=True, timeout=90, env=env)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("pyserve serve: with no REPO and no --model, pyserve serves the built-in demo, "
                           "which needs scikit-learn and skl2onnx (cannot import sklearn")
    assert "pip install 'pyserve[demo]'" in line and "pip install -e '.[demo]'" in line


def test_demo_cache_not_writable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # PYSERVE_HOME is a file: its demo folder cannot be made
    result = run("serve", "--log-level", "warning", env={"PYSERVE_HOME": str(tmp_path / "file")})
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"pyserve serve: cannot build the demo model repository in {tmp_path}/file/demo: ")
    assert "PYSERVE_HOME" in line


def test_ctrl_c_before_the_server_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    """Ctrl-C while the demo trains (before the server handles SIGINT itself): one line, status 130."""
    import pyserve.demo

    def interrupted(cache_dir: Path | None = None) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(pyserve.demo, "demo_repository", interrupted)
    try:
        status = cli.main(["serve"])
    except KeyboardInterrupt:  # not pytest's own: it would end the session
        pytest.fail("KeyboardInterrupt came out of main()")
    assert status == 130
    assert one_line(capsys.readouterr().err) == "pyserve serve: interrupted"


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("pyserve ")
    out = run("serve", "--help").stdout
    for flag in ("--host", "--port", "--model", "--max-batch-size", "--max-queue-delay-us", "--max-body-bytes",
                 "--shutdown-timeout-s", "--log-level", "--disable-model-control", "--no-strict-readiness"):
        assert flag in out
    for text in ("0..65535", "0 = any free port", ">= 1 (default 1)", "each 1..--max-batch-size",
                 "also require a token for /metrics, /v2/drift and the dashboard",
                 "inference, metadata, /metrics, /v2/drift and the dashboard, not model control",
                 "0.1 to 3600 (default 5)", "at most 604800 (7 days)"):
        assert text in " ".join(out.split())  # the ranges, whatever the line breaks


@pytest.mark.parametrize(("text", "message"), [
    ("stable=nan", "stable: expected a percentage from 0 to 100, got 'nan'"),
    ("stable=inf", "stable: expected a percentage from 0 to 100, got 'inf'"),
    ("1=50,1=50", "1: given twice"),
    ("stable", "expected TARGET=PERCENT"),
])
def test_traffic_weights_flag_refuses_what_json_cannot_carry(text: str, message: str) -> None:
    import argparse

    from pyserve.control_cli import weights

    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        weights(text)
    assert weights("stable=90, canary=10,") == {"stable": 90.0, "canary": 10.0}


def test_serving_needs_neither_pyarrow_nor_duckdb(onnx_file: Path) -> None:
    """The README's first command installs the `demo` extra only: the command line, and a server
    without a payload log, must work with pyarrow and duckdb missing; `pyserve logs` and
    `--payload-log-dir` then say what to install."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["pyarrow"] = None  # as if not installed: importing it raises ImportError
        sys.modules["duckdb"] = None
        from pyserve import cli
        cli.make_parser()
        for argv in (["logs", "nowhere"], ["serve", "--model", "m={onnx_file}", "--payload-log-dir", "x"]):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
            print("exit", code)
        from pyserve.server.app import serve  # the server itself imports no payload-log file module
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["exit", "2", "exit", "2", "ok"], (out.stdout, out.stderr)
    assert "pip install 'pyserve[log]'" in out.stderr
