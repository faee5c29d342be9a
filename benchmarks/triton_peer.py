"""Triton as a peer: tritonserver 2.51 from the ``nvidia-pytriton`` wheel, on the CPU, in its own virtualenv.

The wheel ships the real ``tritonserver`` binary (``pytriton/tritonserver/bin``), its shared
libraries (``nvidia_pytriton.libs``), the Python backend (``backends/python/libtriton_python.so``)
and one backend stub per Python version (``python_backend_stubs/3.X/``). Like MLServer and KServe
(peers.py) it is installed on first use into a git-ignored virtualenv, ``benchmarks/.peers/triton``.
At each start a backend directory is laid out in the run's temporary directory: the backend library
with this Python's stub beside it, where the backend looks for it. Nothing of it is committed.

The stub embeds libpython and finds its prefix by looking ``python3`` up on ``PATH``; with the
virtualenv's ``bin`` first it imports the virtualenv's numpy (the wheel pins numpy < 2), so nothing
needs root. ``PIP_FIND_LINKS=/path/to/wheels`` lets pip take the wheel from a local directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness import ServerProcess, Unavailable, free_port, run_install

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
VENV = PEERS_DIR / "triton"
PYTRITON = "nvidia-pytriton==0.7.0"  # ships tritonserver 2.51.0
LABEL = "Triton"


@dataclass(frozen=True)
class Distribution:
    """Where the wheel's parts are in the virtualenv, and the environment tritonserver runs in."""

    packages: Path  # the virtualenv's site-packages
    python: str  # "3.11": the stub to use

    @property
    def server(self) -> Path:
        return self.packages / "pytriton" / "tritonserver"

    @property
    def executable(self) -> Path:
        return self.server / "bin" / "tritonserver"

    def stub(self) -> Path:
        return self.server / "python_backend_stubs" / self.python / "triton_python_backend_stub"

    def environ(self) -> dict[str, str]:
        libraries = [str(self.packages / "nvidia_pytriton.libs")]
        if libdir := sysconfig.get_config_var("LIBDIR"):
            libraries.append(str(libdir))  # this interpreter's libpython, which the stub links
        # PYTHONPATH/PYTHONHOME of the caller would point the stub at this project's packages
        environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        environ["PATH"] = f"{VENV / 'bin'}:{environ.get('PATH', '')}"
        environ["LD_LIBRARY_PATH"] = ":".join([*libraries, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        return environ


def unsupported() -> str | None:
    """Why this machine cannot run the wheel's tritonserver, or None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"{PYTRITON} runs on Linux x86_64 only, not {sys.platform} {platform.machine()}"
    libc, version = platform.libc_ver()
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if libc != "glibc" or numbers < (2, 35):
        return f"{PYTRITON} needs glibc 2.35 or newer (manylinux_2_35), this machine has {libc} {version}"
    return None


def ensure_installed() -> Distribution:
    """The wheel in ``benchmarks/.peers/triton``, installed when missing or stale."""
    if reason := unsupported():
        raise Unavailable(reason)
    marker = VENV / ".installed"
    if not (marker.is_file() and marker.read_text() == PYTRITON):
        PEERS_DIR.mkdir(exist_ok=True)
        log = PEERS_DIR / "triton-install.log"
        print(f"setting up {LABEL} in benchmarks/.peers/triton (log: {log.name})", file=sys.stderr, flush=True)
        shutil.rmtree(VENV, ignore_errors=True)
        steps = [[sys.executable, "-m", "venv", str(VENV)],
                 [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", PYTRITON]]
        run_install(LABEL, steps, log)
        marker.write_text(PYTRITON)
    try:
        packages = subprocess.run([str(VENV / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        raise Unavailable(f"{LABEL}: its virtualenv is broken ({exc}); delete benchmarks/.peers/triton "
                          "to rebuild it") from None
    distribution = Distribution(Path(packages), f"{sys.version_info.major}.{sys.version_info.minor}")
    if not distribution.executable.is_file():
        raise Unavailable(f"{LABEL}: {PYTRITON} has no tritonserver at {distribution.executable}")
    if not distribution.stub().is_file():
        stubs = sorted(p.name for p in (distribution.server / "python_backend_stubs").iterdir())
        raise Unavailable(f"{LABEL}: {PYTRITON} has Python backend stubs for {', '.join(stubs)}, "
                          f"not Python {distribution.python}; run the benchmark with one of those")
    return distribution


def lay_out_backends(distribution: Distribution, directory: Path) -> Path:
    """``directory/backends/python``: the wheel's Python backend with this Python's stub beside it."""
    python = directory / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (distribution.server / "backends" / "python").iterdir():
        if source.is_file():  # libtriton_python.so and Triton's triton_python_backend_utils.py
            shutil.copy2(source, python / source.name)
    shutil.copy2(distribution.stub(), python / "triton_python_backend_stub")
    return directory / "backends"


@dataclass
class TritonServer:
    """A running tritonserver and its endpoints."""

    process: ServerProcess
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    metrics: str  # http://127.0.0.1:PORT/metrics
    version: str
    shm_prefix: str

    def stop(self) -> int | None:
        status = self.process.stop()
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):  # left by a stub that was killed
            with contextlib.suppress(OSError):
                region.unlink()
        return status


def start_triton(distribution: Distribution, repository: Path, workdir: Path, model: str,
                 timeout: float = 240, attempts: int = 3) -> TritonServer:
    """tritonserver on free localhost ports, ready with ``model`` loaded; stopped on any failure.

    A port free when chosen may be taken before tritonserver binds it, and it then exits: such a
    start is tried again on new ports, ``attempts`` times in all.
    """
    home = workdir / "triton"
    home.mkdir(parents=True, exist_ok=True)
    backends = lay_out_backends(distribution, home)
    for attempt in range(1, attempts + 1):
        try:
            return _start(distribution, repository, backends, home / f"tritonserver-{attempt}.log", model, timeout)
        except Unavailable as exc:
            if attempt == attempts or "exited" not in str(exc):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def _start(distribution: Distribution, repository: Path, backends: Path, log: Path, model: str,
           timeout: float) -> TritonServer:
    http, grpc, metrics = free_port(), free_port(), free_port()
    # the stubs' shared-memory regions are named by this prefix: unique per server, removed at stop
    prefix = f"shadowbench{os.getpid()}x{http}_"
    argv = [str(distribution.executable), "--model-repository", str(repository),
            "--backend-directory", str(backends), "--cache-directory", str(distribution.server / "caches"),
            "--http-address", "127.0.0.1", "--http-port", str(http),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
            f"--backend-config=python,shm-region-prefix-name={prefix}", "--exit-timeout-secs=10"]
    # cwd outside this checkout: the stub puts its working directory on sys.path, where the project's
    # own triton_python_backend_utils would shadow Triton's
    process = ServerProcess(LABEL, argv, log, env=distribution.environ(), cwd=log.parent)
    server = TritonServer(process, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}",
                          f"http://127.0.0.1:{metrics}/metrics", "?", prefix)
    try:
        process.wait_ready(f"{server.http}/v2/models/{model}/ready", timeout=timeout)
        with urllib.request.urlopen(f"{server.http}/v2", timeout=5) as answer:
            server.version = str(json.loads(answer.read(65536)).get("version", "?"))
    except BaseException:
        server.stop()
        raise
    return server
