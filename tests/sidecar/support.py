"""Test plumbing: event loops in threads, in-process and subprocess sidecars, stub upstreams."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.app import Sidecar, start
from sidecar.config.file import Config
from sidecar.config.settings import Address, Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition with a deadline (for effects in another process or thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LoopThread:
    """An asyncio event loop running in a daemon thread; `call` runs a coroutine on it."""

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def settings(**overrides: Any) -> Settings:
    """Settings for a test sidecar: every port free, short drains."""
    values: dict[str, Any] = {"listen": Address("127.0.0.1", 0), "grpc_listen": Address("127.0.0.1", 0),
                              "metrics_port": 0, "admin_listen": Address("127.0.0.1", 0), "drain_timeout_secs": 0.0,
                              "shadow_drain_secs": 2.0, "config_poll_secs": 0.05}
    values.update(overrides)
    return Settings(**values)


class RunningSidecar:
    """A sidecar started through `sidecar.app.start`, on its own loop thread."""

    def __init__(self, config: Config, **overrides: Any) -> None:
        self.loop = LoopThread("test-sidecar")
        self.registry = CollectorRegistry()
        self.sidecar: Sidecar = self.loop.call(start(settings(**overrides), config, self.registry))
        self.http = f"127.0.0.1:{self.sidecar.http_port}"
        self.grpc = f"127.0.0.1:{self.sidecar.grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{self.sidecar.metrics_port}"
        self.admin_url = f"http://127.0.0.1:{self.sidecar.admin_port}"

    def metric(self, name: str, **labels: str) -> float:
        """The current value of a sample (0 when it does not exist yet)."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def stop(self) -> None:
        try:
            self.loop.call(self.sidecar.stop())
        finally:
            self.loop.close()


class Stub:
    """An aiohttp server on a loop thread, with handlers given as coroutines."""

    def __init__(self, routes: Callable[[web.Application], None], loop: LoopThread | None = None) -> None:
        self.own_loop = loop is None
        self.loop = loop or LoopThread("test-stub")
        self.app = web.Application(client_max_size=1 << 30)
        routes(self.app)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        self.port = self.loop.call(self._start())
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    def run(self, coroutine_function: Callable[[], Awaitable[T]]) -> T:
        async def wrapper() -> T:
            return await coroutine_function()
        return self.loop.call(wrapper())

    def stop(self) -> None:
        self.loop.call(self.runner.cleanup())
        if self.own_loop:
            self.loop.close()


class SidecarProcess:
    """``python -m sidecar`` in a subprocess with JSON logs; the start line gives the ports."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        admin = [] if any(flag.startswith("--admin-listen") for flag in flags) else ["--admin-listen", "127.0.0.1:0"]
        argv = [sys.executable, "-m", "sidecar", "--log-format", "json", *admin, *flags]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.lines: list[dict[str, Any]] = []
        self.http = self.grpc = self.metrics = self.admin = ""
        if wait:
            self._read_until("listening ")
            start = self.lines[-1]
            self.http = f"127.0.0.1:{start['http_port']}"
            self.grpc = f"127.0.0.1:{start['grpc_port']}"
            self.metrics = f"http://127.0.0.1:{start['metrics_port']}"
            self.admin = f"http://127.0.0.1:{start['admin_port']}" if start.get("admin_port") else ""

    def _read_until(self, prefix: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        assert self.process.stderr is not None
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise AssertionError(f"sidecar exited ({self.process.wait()}): {self.lines}")
            self.lines.append(json.loads(line))
            if self.lines[-1]["message"].startswith(prefix):
                return self.lines[-1]
        raise AssertionError(f"no log line starting {prefix!r} within {timeout}s: {self.lines}")

    def wait_log(self, prefix: str, timeout: float = 30) -> dict[str, Any]:
        for entry in self.lines:
            if entry["message"].startswith(prefix):
                return entry
        return self._read_until(prefix, timeout)

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit; every remaining log line is collected (readline's buffer included)."""
        assert self.process.stderr is not None
        stderr = self.process.stderr

        def drain() -> None:
            for line in stderr:
                if line.startswith("{"):
                    self.lines.append(json.loads(line))

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        code = self.process.wait(timeout)
        reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def read_records(directory: Path) -> dict[str, dict[str, Any]]:
    """Every record of a segment directory, by request id (read as users do, with pyarrow.dataset)."""
    import pyarrow.dataset as ds

    rows = ds.dataset(directory, format="parquet").to_table().to_pylist()
    by_id = {row["request_id"]: row for row in rows}
    assert len(by_id) == len(rows), "request ids repeat"
    return by_id


def output_array(response: dict[str, Any], name: str) -> Any:
    """A recorded output's values in its shape (float64)."""
    import numpy as np

    tensor = next(t for t in response["outputs"] if t["name"] == name)
    return np.asarray(tensor["values"], dtype=np.float64).reshape(tensor["shape"])
