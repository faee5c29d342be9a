"""Shared fixtures: real servers started through `serving.app.start`, on free ports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from serving.app import Server, start
from serving.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
T = TypeVar("T")
# `SHADOWSERVE_TEST_FRONTEND_WORKERS=2 pytest tests/` runs the suite with front-end workers on
WORKERS_VARIABLE = "SHADOWSERVE_TEST_FRONTEND_WORKERS"


def frontend_workers() -> int:
    """The front-end workers of the servers the tests start: $SHADOWSERVE_TEST_FRONTEND_WORKERS, default 0."""
    text = os.environ.get(WORKERS_VARIABLE, "").strip() or "0"
    if not text.isdigit():
        raise pytest.UsageError(f"{WORKERS_VARIABLE}={text!r} is not a count of workers: give 0, 1, 2, ...")
    return int(text)


def pytest_configure(config: pytest.Config) -> None:
    # `serve` subprocesses read SERVING_FRONTEND_WORKERS themselves (an explicit flag still wins);
    # always set, so that the default (auto, from the cores) does not make a large machine's run differ
    os.environ.setdefault("SERVING_FRONTEND_WORKERS", str(frontend_workers()))


class RunningServer:
    """A server on its own event loop in a background thread, for synchronous clients.

    It has `frontend_workers` front-end worker processes unless the test gives ``frontend_workers``.
    """

    def __init__(self, repository: Path, **overrides: object) -> None:
        overrides.setdefault("frontend_workers", frontend_workers())
        settings = Settings(model_repository=repository, host="127.0.0.1", http_port=0, grpc_port=0,
                            metrics_port=0, cpu_threads=1, **overrides)  # type: ignore[arg-type]  # fields of each type
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.thread.start()
        self.server: Server = self.call(start(settings))

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def stop(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="session")
def examples_server() -> Iterator[RunningServer]:
    server = RunningServer(EXAMPLES)
    yield server
    server.stop()


def write_model(repository: Path, name: str, config: str, versions: dict[int, dict[str, str | bytes]]) -> Path:
    """Write ``<repository>/<name>/config.pbtxt`` and each version's files."""
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(config))
    for version, files in versions.items():
        version_dir = model_dir / str(version)
        version_dir.mkdir(exist_ok=True)
        for filename, content in files.items():
            path = version_dir / filename
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(textwrap.dedent(content))
    return model_dir


class Serve:
    """`python -m serving` in a subprocess, with its JSON log lines collected."""

    def __init__(self, repository: Path, *flags: str, wait_ready: bool = True) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1",
             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log-format", "json",
             "--cpu-threads", "1", *flags],
            stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None  # stderr=PIPE
        self.stderr = self.process.stderr
        self.lines: list[dict] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.stderr.readline()
            if not line:
                break
            self.lines.append(json.loads(line))
            if self.lines[-1]["message"].startswith("ready=") or (not wait_ready and len(self.lines) == 1):
                break
        start = next(entry for entry in self.lines if entry["message"].startswith("listening "))
        self.http = f"http://127.0.0.1:{start['http_port']}"
        assert re.search(r"http=127\.0\.0\.1:\d+ grpc=\S+ metrics=127\.0\.0\.1:\d+", start["message"])

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit and collect the remaining log lines.

        Reads through the same text stream as ``readline`` did (communicate() would read the
        pipe underneath and lose what that stream had already buffered).
        """
        self.process.wait(timeout=timeout)
        rest = self.stderr.read()
        self.lines += [json.loads(line) for line in rest.splitlines() if line.strip()]
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
