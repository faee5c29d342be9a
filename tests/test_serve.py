"""The `serve` process: start-up line, JSON logs, SIGTERM drain, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from .conftest import EXAMPLES, Serve, write_model

SLOW = '''
import time
import serving


class Slow(serving.Model):
    def predict(self, inputs):
        time.sleep(float(self.parameters["seconds"]))
        return {"Y": inputs["X"] + 1}
'''


def slow_repository(root: Path, seconds: float) -> Path:
    write_model(root, "slow", f"""
        backend: "python"
        max_batch_size: 4
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "seconds" value {{ string_value: "{seconds}" }} }}
        parameters {{ key: "warmup" value {{ string_value: "false" }} }}
        """, {1: {"model.py": SLOW}})
    return root


def x_request(value: float) -> bytes:
    return orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [value]}]})


def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(tmp_path: Path) -> None:
    serve = Serve(slow_repository(tmp_path, 0.3))
    try:
        async def scenario() -> tuple[list[tuple[int, dict]], int, int, int]:
            async with aiohttp.ClientSession() as session:
                async def infer(value: float) -> tuple[int, dict]:
                    async with session.post(f"{serve.http}/v2/models/slow/infer", data=x_request(value)) as r:
                        return r.status, orjson.loads(await r.read())
                in_flight = [asyncio.ensure_future(infer(i)) for i in range(8)]  # two batches of 4 at 0.3 s
                await asyncio.sleep(0.15)
                serve.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                async with session.get(f"{serve.http}/v2/health/ready") as r:
                    ready_status = r.status
                async with session.get(f"{serve.http}/v2/health/live") as r:
                    live_status = r.status
                late_status, _ = await infer(100)
                return await asyncio.gather(*in_flight), ready_status, live_status, late_status

        results, ready_status, live_status, late_status = asyncio.run(scenario())
        assert [status for status, _ in results] == [200] * 8
        assert [body["outputs"][0]["data"] for _, body in results] == [[i + 1.0] for i in range(8)]
        assert ready_status == 503 and live_status == 200  # draining: not ready, still live
        assert late_status == 503
        assert serve.finish() == 0
        assert any(entry["message"] == "stopped" for entry in serve.lines)
    finally:
        serve.kill()


def test_exit_timeout_bounds_the_drain(tmp_path: Path) -> None:
    serve = Serve(slow_repository(tmp_path, 5.0), "--exit-timeout-secs", "0.5")
    try:
        async def send() -> None:
            async with aiohttp.ClientSession() as session:
                request = asyncio.ensure_future(session.post(f"{serve.http}/v2/models/slow/infer", data=x_request(1)))
                await asyncio.sleep(0.3)
                serve.process.send_signal(signal.SIGTERM)
                started = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, serve.process.wait, 20)
                assert time.monotonic() - started < 4.5  # did not wait for the 5 s request
                request.cancel()
        asyncio.run(send())
        assert serve.finish() == 0
        assert any("still in flight" in entry["message"] for entry in serve.lines)
    finally:
        serve.kill()


def test_a_missing_repository_exits_one_with_the_reason(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "serving", "--model-repository", str(tmp_path / "nope"),
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "is not a directory" in out.stderr


def test_console_script_serves_the_examples() -> None:
    script = Path(sys.executable).parent / "serve"
    if not script.exists():
        pytest.fail("the `serve` console script is not installed next to the interpreter")
    env = {**os.environ, "SERVING_LOG_FORMAT": "json"}
    process = subprocess.Popen([str(script), "--model-repository", str(EXAMPLES), "--http-port", "0",
                                "--grpc-port", "0", "--metrics-port", "0", "--host", "127.0.0.1"],
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None  # stderr=PIPE
        first = json.loads(process.stderr.readline())
        assert first["message"].startswith("listening http=127.0.0.1:") and first["http_port"] > 0
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
