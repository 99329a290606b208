"""The transport's descriptor limit and the connection cap sized from it (pyserve.server.limits)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyserve.server.limits import RESERVED_FDS_MAX, default_max_connections


@pytest.mark.parametrize("fd_limit,cap", [(256, 192), (1024, 768), (20000, 20000 - RESERVED_FDS_MAX),
                                          (1 << 20, (1 << 20) - RESERVED_FDS_MAX), (2, 2), (None, 10_000)])
def test_the_cap_leaves_descriptors_for_the_rest_of_the_process(fd_limit: int | None, cap: int) -> None:
    assert default_max_connections(fd_limit) == cap


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptor limits")
def test_the_soft_limit_is_raised_to_the_hard_limit() -> None:
    # In a child whose soft limit is lowered first, so that the test's own process is left alone.
    code = ("import resource\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
            "from pyserve.server.limits import raise_fd_limit\n"
            "got = raise_fd_limit()\n"
            "now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
            "print(got == now, now > 64 or hard == 64)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"], out
