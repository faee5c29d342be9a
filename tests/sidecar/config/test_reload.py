"""Reloading the configuration file: new shadows apply on open connections; invalid files are refused."""

from __future__ import annotations

import http.client
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from sidecar.config.overrides import load

from ..support import LoopThread, RunningSidecar, Stub, settings, wait_until


class Upstreams:
    """A primary and two shadows that answer a tiny v2 response and count what they receive."""

    def __init__(self) -> None:
        self.loop = LoopThread("upstreams")
        self.seen: Counter[str] = Counter()
        self.stubs = {name: Stub(self._routes(name), self.loop) for name in ("primary", "a", "b")}

    def _routes(self, name: str) -> Callable[[web.Application], None]:
        async def infer(request: web.Request) -> web.Response:
            await request.read()
            self.seen[name] += 1
            return web.json_response({"model_name": "m", "model_version": "1", "outputs": []})
        def routes(app: web.Application) -> None:
            app.router.add_post("/v2/models/m/infer", infer)
        return routes

    def url(self, name: str) -> str:
        return self.stubs[name].url

    def close(self) -> None:
        for stub in self.stubs.values():
            stub.stop()
        self.loop.close()


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    servers = Upstreams()
    yield servers
    servers.close()


def write(path: Path, data: object) -> None:
    """Replace the file atomically, as Kubernetes swaps a ConfigMap's files."""
    temporary = path.with_suffix(".new")
    dump = json.dumps if path.suffix == ".json" else yaml.safe_dump
    temporary.write_text(data if isinstance(data, str) else dump(data))
    os.replace(temporary, path)


def config_data(upstreams: Upstreams, *shadows: str, **recording: object) -> dict:
    return {"primary": {"http": upstreams.url("primary"), "grpc": None},
            "shadows": [{"name": name, "http": upstreams.url(name)} for name in shadows],
            "recording": recording}


def post(connection: http.client.HTTPConnection) -> int:
    connection.request("POST", "/v2/models/m/infer", body=b'{"inputs": []}')
    response = connection.getresponse()
    response.read()
    return response.status


def test_a_changed_file_applies_to_the_next_requests_on_the_same_connection(upstreams: Upstreams, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sidecar.yaml"
    write(path, config_data(upstreams, "a"))
    options = {"config_file": path, "grpc_listen": None}
    running = RunningSidecar(load(settings(**options)), **options)
    host, port = running.http.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        assert post(connection) == 200
        socket = connection.sock
        wait_until(lambda: upstreams.seen["a"] == 1, 10, "shadow a")
        caplog.set_level(logging.INFO, logger="sidecar")
        write(path, config_data(upstreams, "b", dir=str(tmp_path / "records")))
        wait_until(lambda: running.metric("sidecar_config_reloads_total", result="applied") == 1, 10, "the reload")
        assert post(connection) == 200 and connection.sock is socket  # the same keep-alive connection
        wait_until(lambda: upstreams.seen["b"] == 1, 10, "shadow b")
        assert upstreams.seen["a"] == 1 and upstreams.seen["primary"] == 2
        assert "recording.dir changed" in caplog.text  # needs a restart: said, not silently ignored

        write(path, "shadows: [{name: b, http: 'http://x', fraction: 2}]")
        wait_until(lambda: running.metric("sidecar_config_reloads_total", result="rejected") == 1, 10, "a refusal")
        assert "shadows[0].fraction: 2 is not a fraction" in caplog.text
        assert post(connection) == 200 and connection.sock is socket
        wait_until(lambda: upstreams.seen["b"] == 2, 10, "shadow b, still in force")
        assert running.metric("sidecar_config_reloads_total", result="applied") == 1
    finally:
        connection.close()
        running.stop()


def test_unchanged_shadows_and_upstreams_carry_over_a_reload(upstreams: Upstreams,
                                                                             tmp_path: Path) -> None:
    path = tmp_path / "sidecar.json"
    path.write_text('{"shadows": []}')
    options = {"config_file": path, "grpc_listen": None}
    running = RunningSidecar(load(settings(**options)), **options)
    try:
        sidecar = running.sidecar
        write(path, config_data(upstreams, "a", "b"))
        wait_until(lambda: running.metric("sidecar_config_reloads_total", result="applied") == 1, 10, "a reload")
        kept = sidecar.upstreams.shadows[0]
        write(path, config_data(upstreams, "a"))
        wait_until(lambda: running.metric("sidecar_config_reloads_total", result="applied") == 2, 10, "a reload")
        assert sidecar.upstreams.shadows == (kept,)  # same object: its connections and counters stay
        assert not sidecar.upstreams.primary.closed  # the same client, still open
    finally:
        running.stop()
