"""Registries to test against: the embedded default (SQLite) and a real ``mlflow server``.

The server is MLflow's own, installed on first use into ``.peers/mlflow`` (its pins,
pyarrow's among them, conflict with this project's, so it gets its own virtualenv) and started
on a free port with a SQLite backend and a local artifact root: the artifacts travel over its
REST API (``mlflow-artifacts:/``), as they do for a team's server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_registry.store import Registry

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = ROOT / "examples" / "models" / "classifier"
PEERS = ROOT / ".peers"  # outside the packages and tests that lint and the layout rules read
MLFLOW = "mlflow==3.17.2"  # the server release matching the mlflow-skinny client the test extra installs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_executable() -> Path:
    """MLflow's server in its own virtualenv, installed once."""
    venv = PEERS / "mlflow"
    executable = venv / "bin" / "mlflow"
    marker = venv / f".installed-{MLFLOW}"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", MLFLOW], check=True,
                       timeout=900)
        marker.touch()
    return executable


@dataclass
class Backend:
    """A registry under test, and where its artifact files lie on this disk (for tampering)."""

    uri: str
    artifacts: Path

    def open(self) -> Registry:
        return Registry.open(self.uri)


class MlflowProcess:
    """``mlflow server`` on a free port in its own process group (its uvicorn and job workers are
    children: stopped together, by group), with a SQLite backend and a local artifact root."""

    def __init__(self, executable: Path, root: Path) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (root / "server.log").open("wb")
        self.process = subprocess.Popen(
            [str(executable), "server", "--host", "127.0.0.1", "--port", self.url.rpartition(":")[2], "--workers",
             "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
             str(root / "artifacts")],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"},
            start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> Backend:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/health", timeout=2).read().strip() == b"OK":
                    return Backend(self.url, self.root / "artifacts")
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is left
        self.log.close()


def launch(root: Path) -> MlflowProcess:
    """Install MLflow's server once, then start it (without waiting for it to answer)."""
    return MlflowProcess(mlflow_executable(), root)


# The server launched as soon as the run is known to need it (see pytest_collection_finish).
EARLY = pytest.StashKey[Future[MlflowProcess]]()


def _needs_server(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    callspec = getattr(item, "callspec", None)
    return "mlflow_server" in names or (
        "backend" in names and callspec is not None and callspec.params.get("backend") == "server")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch the mlflow server (and install it, on a clean checkout) while the tests before
    tests/registry run: its install and start take seconds to a minute, on the other core."""
    if not session.config.option.collectonly and any(_needs_server(item) for item in session.items):
        root = session.config._tmp_path_factory.mktemp("mlflow-server")  # type: ignore[attr-defined]  # pytest's own, as tmp_path_factory
        pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-launch")
        session.config.stash[EARLY] = pool.submit(launch, root)
        pool.shutdown(wait=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop a server launched early whose fixture never ran (a run stopped early, `-x`)."""
    early = session.config.stash.get(EARLY, None)
    if early is not None and early.exception() is None and early.result().process.returncode is None:
        early.result().stop()


@pytest.fixture(scope="session")
def mlflow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    early = request.config.stash.get(EARLY, None)
    server = early.result() if early is not None else launch(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """One embedded registry for the session (creating its database takes seconds): tests use their own names."""
    root = tmp_path_factory.mktemp("embedded") / "registry"
    return Backend(str(root), root / "artifacts")


@pytest.fixture(params=["embedded", "server"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test twice: on the embedded registry and on the real server."""
    chosen: Backend = request.getfixturevalue("embedded" if request.param == "embedded" else "mlflow_server")
    return chosen


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name no other test uses (the server is shared by the session)."""
    return "m-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[-80:].strip("-")


def model_dir(where: Path, name: str, version: int = 1, payload: bytes | None = None) -> Path:
    """A copy of the example classifier's directory, one version, renamed to ``name``."""
    target = where / f"{name}-src-{version}"
    if target.exists() and payload is None:
        return target  # the same files again: a new registration of the same directory
    (target / str(version)).mkdir(parents=True)
    shutil.copy(CLASSIFIER / str(version) / "model.pt", target / str(version) / "model.pt")
    if payload is not None:
        (target / str(version) / "extra.bin").write_bytes(payload)
    shutil.copy(CLASSIFIER / "labels.txt", target / "labels.txt")
    config = (CLASSIFIER / "config.pbtxt").read_text().replace('name: "classifier"', f'name: "{name}"')
    (target / "config.pbtxt").write_text(config)
    return target
