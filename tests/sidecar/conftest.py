"""Model servers for the sidecar's tests: real ``serve`` processes, one per classifier version.

``serve_v1`` is the primary and ``serve_v2`` a shadow: the two classifier versions
disagree on about one input in seven, so agreement is measurable. Both serve the
``sentiment`` model too (BYTES tensors).
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXAMPLES, Serve


class ModelServer:
    """A running ``serve`` subprocess and its HTTP and gRPC addresses."""

    def __init__(self, repository: Path) -> None:
        self.serve = Serve(repository, "--grpc-port", "0")
        start = next(entry for entry in self.serve.lines if entry["message"].startswith("listening "))
        self.http = f"127.0.0.1:{start['http_port']}"
        self.http_url = f"http://{self.http}"
        self.grpc = f"127.0.0.1:{start['grpc_port']}" if start.get("grpc_port") else None

    def stop(self) -> None:
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
