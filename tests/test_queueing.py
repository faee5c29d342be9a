"""Queueing seen from a client: hang-ups dropped before compute, timeouts, a full queue, instances."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
import orjson
import pytest

from .conftest import RunningServer, write_model

RECORDING = '''
import threading
import time
import serving


class Recording(serving.Model):
    """Sleeps, then appends each batch's values (and its thread) to a log file."""

    def predict(self, inputs):
        values = inputs["X"].reshape(-1).tolist()
        time.sleep(float(self.parameters["seconds"]))
        with open(self.parameters["log"], "a") as log:
            log.write(f"{threading.current_thread().name} {values}\\n")
        return {"Y": inputs["X"]}
'''


def model(repo: Path, name: str, log: Path, seconds: float, extra: str = "") -> None:
    write_model(repo, name, f"""
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "seconds" value {{ string_value: "{seconds}" }} }}
        parameters {{ key: "log" value {{ string_value: "{log}" }} }}
        parameters {{ key: "warmup" value {{ string_value: "false" }} }}
        {extra}
        """, {1: {"model.py": RECORDING}})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path_factory.mktemp("queueing")
    logs = tmp_path_factory.mktemp("logs")
    model(repo, "cancel", logs / "cancel.log", 0.4, "dynamic_batching { }")
    model(repo, "timeouts", logs / "timeouts.log", 0.4, """dynamic_batching {
          default_queue_policy { default_timeout_microseconds: 100000 allow_timeout_override: true } }""")
    model(repo, "bounded", logs / "bounded.log", 0.4, "dynamic_batching { default_queue_policy { max_queue_size: 1 } }")
    model(repo, "pair", logs / "pair.log", 0.3, "instance_group [ { count: 2 kind: KIND_CPU } ]")
    server = RunningServer(repo, admission_wait_secs=0.0)  # a full queue answers 503 at once, as Triton's
    yield server, logs
    server.stop()


def body(value: float, **parameters: object) -> bytes:
    request: dict = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [value]}]}
    if parameters:
        request["parameters"] = parameters
    return orjson.dumps(request)


async def infer(session: aiohttp.ClientSession, url: str, value: float, **parameters: object) -> tuple[int, dict]:
    async with session.post(url, data=body(value, **parameters)) as response:
        answer = orjson.loads(await response.read())
        if response.status == 503 and "max_queue_size" in answer.get("error", ""):
            assert response.headers["Retry-After"] == "1"
        return response.status, answer


def logged(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_client_that_hangs_up_is_dropped_before_compute(server: tuple[RunningServer, Path]) -> None:
    running, logs = server
    url = f"http://{running.url}/v2/models/cancel/infer"

    async def scenario() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            first = asyncio.ensure_future(infer(session, url, 1))
            await asyncio.sleep(0.1)  # 1 computes for 0.4 s; 2 queues behind it
            async with aiohttp.ClientSession() as impatient:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(infer(impatient, url, 2), 0.1)  # closes its connection
            third = await infer(session, url, 3)
            await first
            return third

    status, _ = asyncio.run(scenario())
    assert status == 200
    assert [line.split(" ", 1)[1] for line in logged(logs / "cancel.log")] == ["[1.0]", "[3.0]"]
    metrics = asyncio.run(_text(running.metrics_url))
    assert re.search(r'nv_inference_request_failure\{model="cancel",reason="CANCELED",version="1"\} 1\.0', metrics)


def test_queue_timeouts_and_the_timeout_parameter(server: tuple[RunningServer, Path]) -> None:
    running, logs = server
    url = f"http://{running.url}/v2/models/timeouts/infer"

    async def scenario() -> Sequence[tuple[int, dict]]:
        async with aiohttp.ClientSession() as session:
            first = asyncio.ensure_future(infer(session, url, 1))
            await asyncio.sleep(0.05)
            # waits behind a 0.4 s batch: the default 0.1 s timeout expires; a 2 s override does not
            return await asyncio.gather(first, infer(session, url, 2), infer(session, url, 3, timeout=2_000_000))

    (s1, _), (s2, b2), (s3, _) = asyncio.run(scenario())
    assert (s1, s2, s3) == (200, 503, 200)
    assert "timed out after waiting 100000 us" in b2["error"]
    assert "[2.0]" not in " ".join(logged(logs / "timeouts.log"))


def test_a_full_queue_answers_503_at_once(server: tuple[RunningServer, Path]) -> None:
    running, _ = server
    url = f"http://{running.url}/v2/models/bounded/infer"

    async def scenario() -> list[tuple[int, dict]]:
        async with aiohttp.ClientSession() as session:
            first = asyncio.ensure_future(infer(session, url, 1))
            await asyncio.sleep(0.05)
            queued = asyncio.ensure_future(infer(session, url, 2))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            rejected = await infer(session, url, 3)
            assert time.monotonic() - started < 0.3
            return [await first, await queued, rejected]

    statuses = [(s, b.get("error", "")) for s, b in asyncio.run(scenario())]
    assert [s for s, _ in statuses] == [200, 200, 503]
    assert "overloaded" in statuses[2][1] and "max_queue_size" in statuses[2][1]


def test_instances_compute_batches_side_by_side(server: tuple[RunningServer, Path]) -> None:
    running, logs = server
    url = f"http://{running.url}/v2/models/pair/infer"

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            results = await asyncio.gather(*(infer(session, url, i) for i in range(4)))
            assert [s for s, _ in results] == [200] * 4
            return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    threads = {line.split(" ", 1)[0] for line in logged(logs / "pair.log")}
    assert len(threads) == 2  # no dynamic batching: 4 batches of one, on two instance threads
    assert elapsed < 4 * 0.3 - 0.05  # serially it would take 1.2 s at least


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            return await response.text()
