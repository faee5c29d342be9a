"""The real Triton as an oracle: tritonserver 2.51 from the ``nvidia-pytriton`` wheel, on the CPU.

The wheel (about 55 MB, under a minute to install) is installed on first use into its own
virtualenv, ``.peers/pytriton`` (its pins are not this project's). It ships ``tritonserver``
with the Python backend only, and a backend stub per Python version.

The stub embeds libpython and finds its prefix by looking ``python3`` up on ``PATH``: with the
virtualenv's ``bin`` first, the stub imports the virtualenv's numpy, so nothing needs root
(``PYTHONPATH`` alone is not enough: Triton's stub does not read it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"  # outside the packages and tests that lint and the layout rules read
REPOSITORY = ROOT / "tests" / "fixtures" / "triton"
PYTRITON = "nvidia-pytriton==0.7.0"  # ships tritonserver 2.51.0
STUB_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unsupported() -> str | None:
    """Why this machine cannot run the wheel's tritonserver, or None."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"tritonserver from {PYTRITON} runs on Linux x86_64 only, not {sys.platform} {platform.machine()}"
    libc, version = platform.libc_ver()
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if libc != "glibc" or numbers < (2, 35):
        return f"{PYTRITON} needs glibc 2.35 or newer (manylinux_2_35), this machine has {libc} {version}"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python not in STUB_VERSIONS:
        return f"{PYTRITON} has Python backend stubs for {', '.join(STUB_VERSIONS)}, not Python {python}"
    return None


@dataclass(frozen=True)
class Distribution:
    """tritonserver, its backends and caches, and the environment its Python stub needs."""

    executable: Path
    backends: Path
    caches: Path
    environ: dict[str, str]


def install() -> Distribution:
    """The wheel in ``.peers/pytriton``, and a server tree with this Python's stub, made once.

    Under a lock: two test runs at once (two people, two CI jobs on one runner) install it once.
    """
    PEERS.mkdir(exist_ok=True)
    with (PEERS / "pytriton.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _install()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install() -> Distribution:
    venv = PEERS / "pytriton"
    marker = venv / f".installed-{PYTRITON}"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", PYTRITON], check=True,
                       timeout=900)
        marker.touch()
    packages = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    tree = venv / f"server-{python}"
    if not (tree / "backends" / "python" / "triton_python_backend_stub").exists():
        # pytriton itself runs the server this way: its tree, with the stub of the interpreter
        # in use copied in beside libtriton_python.so (where the backend looks for it)
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(packages / "pytriton" / "tritonserver", tree,
                        ignore=shutil.ignore_patterns("python_backend_stubs"))
        stub = tree / "backends" / "python" / "triton_python_backend_stub"
        shutil.copy(packages / "pytriton" / "tritonserver" / "python_backend_stubs" / python
                    / "triton_python_backend_stub", stub.with_suffix(".part"))
        os.replace(stub.with_suffix(".part"), stub)  # whole or absent: its presence marks the tree done
    libraries = [str(packages / "nvidia_pytriton.libs")]
    if libdir := sysconfig.get_config_var("LIBDIR"):
        libraries.append(str(libdir))  # this interpreter's libpython, for the stub (pyenv, /usr/local builds)
    environ = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    environ = {**environ, "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
               "LD_LIBRARY_PATH": ":".join([*libraries, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":")}
    return Distribution(tree / "bin" / "tritonserver", tree / "backends", tree / "caches", environ)


class Triton:
    """One tritonserver in its own process group (the Python stubs are its children).

    Its ports are free when chosen; another process may take one before tritonserver binds it,
    so `start` tries again on new ports.
    """

    def __init__(self, distribution: Distribution, repository: Path, log: Path, *flags: str) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        # the stubs' shared-memory regions are named by this prefix: unique per server, removed at stop
        self.shm_prefix = f"compat{os.getpid()}x{self.http_port}_"
        self.log = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [str(distribution.executable), "--model-repository", str(repository),
             "--backend-directory", str(distribution.backends), "--cache-directory", str(distribution.caches),
             "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
             "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
             "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
             "--exit-on-error=false", "--exit-timeout-secs=5", *flags],
            # not in this checkout: the stub puts its working directory on sys.path, where this
            # project's own triton_python_backend_utils would shadow Triton's
            cwd=log.parent, stdout=self._log, stderr=subprocess.STDOUT, env=distribution.environ,
            start_new_session=True)
        try:
            self._wait_live(time.monotonic() + 180)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """host:port of the HTTP endpoint, as tritonclient.http takes it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _wait_live(self, deadline: float) -> None:
        # Triton opens its ports only once every model of the repository has been tried
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/live", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver did not start: {self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is left
        self.process.wait(10)
        self._log.close()
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):  # left behind by a stub that was killed
            region.unlink(missing_ok=True)


def start_server(distribution: Distribution, repository: Path, log: Path, *flags: str, attempts: int = 3) -> Triton:
    """A tritonserver that is live, on ports that were free; a start that fails is retried on others."""
    for attempt in range(1, attempts):
        with contextlib.suppress(RuntimeError):  # its log stays beside the next one's
            return Triton(distribution, repository, log.with_name(f"{log.stem}-{attempt}{log.suffix}"), *flags)
    return Triton(distribution, repository, log, *flags)


def missing_libraries(distribution: Distribution) -> str | None:
    """Why the Python stub cannot start here (a library its loader does not find), or None.

    The stub links this Python's libpython, so the interpreter must be a shared build (pyenv's and
    the python images' are; a static one has no libpython to give it).
    """
    stub = distribution.backends / "python" / "triton_python_backend_stub"
    found = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=distribution.environ,
                           timeout=60, check=False)
    missing = [line.split()[0] for line in found.stdout.splitlines() if "not found" in line]
    if missing:
        return f"Triton's Python backend stub needs {', '.join(missing)}, which this machine lacks"
    return None
