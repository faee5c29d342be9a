"""The images' HEALTHCHECK commands, run as Docker would run them, against a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from .kube import container, find, render
from .test_dockerfile import stages


class Health:
    """An HTTP server on a free port whose every path answers ``status``."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> web.AppRunner:
        async def answer(request: web.Request) -> web.Response:
            self.paths.append(request.path)
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        return runner

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture()
def health() -> Iterator[Health]:
    server = Health()
    yield server
    server.close()


def _check(stage: str, env: dict[str, str]) -> int:
    """Run the stage's HEALTHCHECK CMD (exec form) with this Python as ``python``."""
    line = next(rest for keyword, rest in stages()[stage] if keyword == "HEALTHCHECK")
    command = json.loads(line[line.index("CMD ") + 4:])
    assert command[0] == "python"
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30,
                          check=False).returncode


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("stage", "variable"), [("model", "SERVING_HTTP_PORT"), ("sidecar", "SIDECAR_METRICS_PORT")])
def test_healthcheck_follows_the_server(health: Health, stage: str, variable: str) -> None:
    env = {variable: str(health.port)}
    assert _check(stage, env) == 0
    health.status = 503
    assert _check(stage, env) != 0, "not ready is unhealthy"
    assert _check(stage, {variable: str(_free_port())}) != 0, "nothing listening is unhealthy"
    # The path is the one the Kubernetes probes use.
    resources = render("overlays/shadow")
    spec = find(resources, "Deployment", "shadowserve-model")["spec"]["template"]["spec"]
    probe = container(spec, "model" if stage == "model" else "shadowserve-sidecar")["livenessProbe" if stage ==
                                                                                   "sidecar" else "readinessProbe"]
    assert set(health.paths) == {probe["httpGet"]["path"]}


def test_healthcheck_default_ports() -> None:
    """Without the variable, the images' default ports: serve's 8000, the sidecar's metrics port 9090."""
    for stage, port in (("model", "8000"), ("sidecar", "9090")):
        line = next(rest for keyword, rest in stages()[stage] if keyword == "HEALTHCHECK")
        assert f"'{port}')" in line, stage
