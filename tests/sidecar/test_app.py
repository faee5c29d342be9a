"""``python -m sidecar`` as a process: start-up errors, SIGHUP, the SIGTERM drain, a canary from flags."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from aiohttp import web

from sidecar.routing import split

from .conftest import ModelServer
from .support import ROOT, LoopThread, SidecarProcess, Stub, free_port, read_records, wait_until


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_help_names_the_environment_variables() -> None:
    done = subprocess.run([sys.executable, "-m", "sidecar", "--help"], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    assert "SIDECAR_" in done.stdout and "--shadow NAME=URL[@FRACTION]" in done.stdout


def test_an_invalid_configuration_file_stops_the_start_with_its_message(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("shadows: [{name: a}]")
    process = SidecarProcess("--config", str(path), "--listen", "127.0.0.1:0", wait=False)
    assert process.finish(30) == 2
    assert any("give an 'http' URL" in entry["message"] for entry in process.lines)


def test_a_port_in_use_is_an_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = SidecarProcess("--listen", f"127.0.0.1:{port}", "--grpc-listen", "off", "--metrics-port", "0",
                                 wait=False)
        assert process.finish(30) == 1
    assert any(entry["message"].startswith("cannot start") for entry in process.lines)


def test_sighup_rereads_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("shadows: []")
    process = SidecarProcess("--config", str(path), "--config-poll-secs", "3600", "--listen", "127.0.0.1:0",
                             "--grpc-listen", "off", "--metrics-port", "0", "--drain-timeout-secs", "0")
    try:
        path.write_text("shadows: [{name: late, http: 'http://127.0.0.1:1', fraction: 0.5}]")
        process.process.send_signal(signal.SIGHUP)
        process.wait_log("configuration reloaded")
        process.process.send_signal(signal.SIGTERM)
        assert process.finish(30) == 0
    finally:
        process.kill()
    assert any("late=http://127.0.0.1:1@0.5" in e["message"] for e in process.lines), process.lines


class Pod:
    """A primary that drains like ``serve`` (ready until told, one slow request) and a shadow that hangs."""

    def __init__(self) -> None:
        self.loop = LoopThread("pod")
        self.ready = True
        self.entered = threading.Event()
        self.release = asyncio.Event()
        self.primary = Stub(self._primary, self.loop)
        self.shadow = Stub(self._shadow, self.loop)

    def _primary(self, app: web.Application) -> None:
        async def ready(request: web.Request) -> web.Response:
            return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

        async def infer(request: web.Request) -> web.Response:
            await request.read()
            self.entered.set()
            await self.release.wait()
            return web.json_response({"model_name": "m", "model_version": "1", "id": "slow", "outputs": [
                {"name": "OUT", "datatype": "FP32", "shape": [1], "data": [0.5]}]})

        app.router.add_get("/v2/health/ready", ready)
        app.router.add_get("/v2/models/m", ready)
        app.router.add_post("/v2/models/m/infer", infer)

    def _shadow(self, app: web.Application) -> None:
        async def hang(request: web.Request) -> web.Response:
            await asyncio.sleep(3600)
            return web.Response()
        app.router.add_post("/v2/models/m/infer", hang)

    def close(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.release.set)
        self.primary.stop()
        self.shadow.stop()
        self.loop.close()


def test_sigterm_drains_with_the_primary_then_cancels_shadows_flushes_and_exits_0(tmp_path: Path) -> None:
    pod = Pod()
    records = tmp_path / "records"
    env = {**os.environ, "SIDECAR_PRIMARY": pod.primary.url, "SIDECAR_SHADOW": f"hang={pod.shadow.url}"}
    process = SidecarProcess("--listen", "127.0.0.1:0", "--grpc-listen", "off", "--metrics-port", "0",
                             "--record-dir", str(records), "--drain-timeout-secs", "30", "--shadow-drain-secs", "1",
                             env=env)
    answers: list[tuple[int, bytes]] = []
    try:
        assert status(f"{process.metrics}/readyz") == 200

        def slow_request() -> None:
            request = urllib.request.Request(f"http://{process.http}/v2/models/m/infer", data=b'{"id": "slow", '
                                             b'"inputs": []}', method="POST")
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append((response.status, response.read()))

        client = threading.Thread(target=slow_request)
        client.start()
        assert pod.entered.wait(30)
        process.process.send_signal(signal.SIGTERM)
        wait_until(lambda: status(f"{process.metrics}/readyz") == 503, 10, "readiness to turn false")
        assert status(f"http://{process.http}/v2/models/m") == 200  # still proxying while the primary drains
        pod.ready = False  # the primary drains: not ready, its in-flight request still running
        pod.loop.loop.call_soon_threadsafe(pod.release.set)
        client.join(30)
        assert answers and answers[0][0] == 200 and b'"id":"slow"' in answers[0][1].replace(b" ", b"")
        assert process.finish(30) == 0
    finally:
        process.kill()
        pod.close()
    messages = [entry["message"] for entry in process.lines]
    assert any(m.startswith("draining") for m in messages) and messages[-1] == "stopped"
    (record,) = read_records(records).values()
    assert record["request_id"] == "slow" and record["primary"]["status"] == 200
    assert record["shadows"][0]["error"] == "cancelled"  # the hanging copy, cancelled after --shadow-drain-secs


def test_sigterm_with_nothing_in_flight_and_the_primary_gone_exits_at_once() -> None:
    process = SidecarProcess("--listen", "127.0.0.1:0", "--grpc-listen", "off", "--metrics-port", "0",
                             "--primary", f"http://127.0.0.1:{free_port()}")
    try:
        process.process.send_signal(signal.SIGTERM)
        assert process.finish(10) == 0
    finally:
        process.kill()


def test_a_canary_from_flags_and_a_small_file_reports_through_the_admin_api(serve_v1: ModelServer,
                                                                           serve_v2: ModelServer,
                                                                           points: np.ndarray, tmp_path: Path) -> None:
    """v1 primary, v2 shadow and v2 10% canary, sticky by x-user-id; the verdict from GET /sidecar/status."""
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"""
shadows: [{{name: v2, grpc: "{serve_v2.grpc}"}}]
canary:
  analysis: {{interval: 0.5s, step_weight: 10, max_weight: 30, min_requests: 1000, max_disagreement: 0.05}}
""")
    process = SidecarProcess("--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--metrics-port", "0",
                             "--admin-listen", "127.0.0.1:0", "--primary", serve_v1.http_url, "--primary-grpc",
                             str(serve_v1.grpc), "--shadow", f"v2={serve_v2.http_url}", "--canary",
                             f"{serve_v2.http_url}@10", "--canary-grpc", str(serve_v2.grpc), "--sticky-header",
                             "x-user-id", "--record-dir", str(tmp_path / "records"), "--config", str(config),
                             "--drain-timeout-secs", "0")
    try:
        assert process.wait_log("admin API on ")["admin_port"] == int(process.admin.rsplit(":", 1)[1])
        users = [f"user-{i}" for i in range(30)]
        for user in users:
            http = httpclient.InferenceServerClient(process.http)
            inputs = [httpclient.InferInput("INPUT__0", [1, 64], "FP32")]
            inputs[0].set_data_from_numpy(points[:1])
            answer = http.infer("classifier", inputs, headers={"x-user-id": user}).get_response()
            assert answer["model_version"] == ("2" if split(user, 10.0) == "canary" else "1")
            http.close()
        wait_until(lambda: json.loads(urllib.request.urlopen(f"{process.admin}/sidecar/status", timeout=5).read())
                   ["canary"]["analysis"]["intervals"] >= 1, 10, "an analysis interval")
        status = json.loads(urllib.request.urlopen(f"{process.admin}/sidecar/status", timeout=5).read())
        process.process.send_signal(signal.SIGTERM)
        assert process.finish(30) == 0
    finally:
        process.kill()
    canary = status["canary"]
    assert (canary["http"], canary["grpc"], canary["sticky_header"]) == (serve_v2.http_url, serve_v2.grpc,
                                                                        "x-user-id")
    assert (canary["weight"], canary["phase"], canary["ready_to_promote"]) == (10, "progressing", False)
    assert canary["analysis"]["max_disagreement"] == 0.05 and canary["analysis"]["current"]["weight"] == 10
    first, last = canary["decisions"][0], canary["decisions"][-1]
    assert (first["source"], first["action"], first["weight_to"]) == ("config", "set", 10)
    assert (last["source"], last["action"], last["verdict"]) == ("analysis", "wait", "inconclusive")
    assert last["reason"].startswith("inconclusive: the canary served")
    assert status["shadows"] == [{"name": "v2", "http": serve_v2.http_url, "grpc": serve_v2.grpc, "fraction": 1.0,
                                  "model": None}]
    records = read_records(tmp_path / "records")
    assert len(records) == 30 and {r["shadows"][-1]["upstream"] for r in records.values()} <= {"v2", "primary"}
