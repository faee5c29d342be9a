"""Programs the tests run from Debian's packages (Prometheus and promtool, Chromium): found on PATH,
or installed once with apt-get when the test run may (as root, with apt-get there).

A test that needs one calls `debian_tool`; it skips, saying why, only where installing is truly
impossible (not root, no apt-get), and fails when an install that could run fails.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

LOCK = Path(__file__).resolve().parent.parent / ".pytest_cache" / "apt.lock"


def debian_tool(program: str, package: str, timeout: float = 600) -> str:
    """The path of ``program``, installing Debian's ``package`` first when it is missing."""
    found = shutil.which(program)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{program} is not installed and cannot be (apt-get install {package} needs root and apt)")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one apt-get at a time
        if shutil.which(program) is None:  # another test process may have installed it meanwhile
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
            if done.returncode != 0 and "Unable to locate package" in done.stderr:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout, check=False)
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
            output = done.stdout[-2000:] + done.stderr[-2000:]
            assert done.returncode == 0, f"apt-get install {package} failed:\n{output}"
    found = shutil.which(program)
    assert found, f"apt-get installed {package} but {program} is not on PATH"
    return found
