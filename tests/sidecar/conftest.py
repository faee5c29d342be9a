"""Model servers for the sidecar's tests: real ``serve`` processes, one per classifier version.

``serve_v1`` is the primary and ``serve_v2`` a shadow (or a canary that answers
differently): the two classifier versions disagree on about a third of normal inputs, so
agreement is measurable. Both serve the ``sentiment`` model too (BYTES tensors).
``serve_candidate`` serves version 3, a Python handler with version 1's weights whose
behaviour a test switches at run time (`Candidate.mode`): ``ok`` (the same answers as
version 1), ``fail`` (every batch raises: HTTP 500, gRPC INTERNAL) or ``slow:SECONDS``.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXAMPLES, Serve


class ModelServer:
    """A running ``serve`` subprocess and its HTTP and gRPC addresses."""

    def __init__(self, repository: Path, drain: bool = False) -> None:
        self.serve = Serve(repository, "--grpc-port", "0")
        start = next(entry for entry in self.serve.lines if entry["message"].startswith("listening "))
        self.http = f"127.0.0.1:{start['http_port']}"
        self.http_url = f"http://{self.http}"
        self.grpc = f"127.0.0.1:{start['grpc_port']}" if start.get("grpc_port") else None
        self.drained = drain
        if drain:  # a server that logs an error per request must not block on a full pipe
            stderr = self.serve.process.stderr
            assert stderr is not None
            threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()

    def stop(self) -> None:
        if self.drained:
            self.serve.kill()
            return
        if self.serve.process.poll() is None:
            self.serve.process.send_signal(signal.SIGTERM)
            try:
                self.serve.finish(30)
            except Exception:  # noqa: BLE001 - a stuck server is killed below
                pass
        self.serve.kill()


def _repository(root: Path, version: int) -> Path:
    repo = root / f"classifier-v{version}"
    model = repo / "classifier"
    (model / str(version)).mkdir(parents=True)
    shutil.copy(EXAMPLES / "classifier" / "config.pbtxt", model)
    shutil.copy(EXAMPLES / "classifier" / "labels.txt", model)
    shutil.copy(EXAMPLES / "classifier" / str(version) / "model.pt", model / str(version))
    shutil.copytree(EXAMPLES / "sentiment", repo / "sentiment")
    return repo


@pytest.fixture(scope="session")
def serve_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    server = ModelServer(_repository(tmp_path_factory.mktemp("models"), 1))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve_v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    server = ModelServer(_repository(tmp_path_factory.mktemp("models"), 2))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def points() -> np.ndarray:
    """Inputs for the classifier: 64 rows of 64 floats."""
    return np.random.default_rng(7).normal(size=(64, 64)).astype(np.float32)


HANDLER = """
import time
from pathlib import Path

import torch

import serving


class Candidate(serving.Model):
    def load(self) -> None:
        self.net = torch.jit.load(str(self.path / "weights.pt"), map_location=self.device)
        self.mode_file = Path(self.parameters["mode_file"])

    def predict(self, inputs: dict) -> dict:
        mode = self.mode_file.read_text().strip()
        if mode == "fail":
            raise RuntimeError("the candidate is broken (test mode 'fail')")
        if mode.startswith("slow:"):
            time.sleep(float(mode.split(":")[1]))
        return {"OUTPUT__0": self.net(inputs["INPUT__0"])}
"""


class Candidate(ModelServer):
    """Classifier version 3: version 1's weights behind a handler whose mode a test sets."""

    def __init__(self, root: Path) -> None:
        self.mode_file = root / "mode"
        self.mode("ok")
        repo = root / "candidate"
        model = repo / "classifier"
        (model / "3").mkdir(parents=True)
        config = (EXAMPLES / "classifier" / "config.pbtxt").read_text().replace(
            'platform: "pytorch_libtorch"', 'backend: "python"')
        config += f'parameters {{ key: "mode_file", value: {{ string_value: "{self.mode_file}" }} }}\n'
        (model / "config.pbtxt").write_text(config)
        shutil.copy(EXAMPLES / "classifier" / "labels.txt", model)
        shutil.copy(EXAMPLES / "classifier" / "1" / "model.pt", model / "3" / "weights.pt")
        (model / "3" / "model.py").write_text(HANDLER)
        super().__init__(repo, drain=True)

    def mode(self, mode: str) -> None:
        """``ok``, ``fail`` or ``slow:SECONDS``, from the next batch on."""
        self.mode_file.write_text(mode)


@pytest.fixture(scope="session")
def serve_candidate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Candidate]:
    server = Candidate(tmp_path_factory.mktemp("candidate"))
    yield server
    server.stop()
