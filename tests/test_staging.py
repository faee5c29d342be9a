"""Staging seen from a client: the next batch waits in the instance, and only live requests compute."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from .conftest import RunningServer, write_model

RECORDING = '''
import time
import serving


class Recording(serving.Model):
    """Sleeps, then appends each batch's values to a log file."""

    def predict(self, inputs):
        values = inputs["X"].reshape(-1).tolist()
        time.sleep(0.6)
        with open(self.parameters["log"], "a") as log:
            log.write(f"{values}\\n")
        return {"Y": inputs["X"] * 2}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    repo = tmp_path_factory.mktemp("staging")
    log = tmp_path_factory.mktemp("logs") / "pairs.log"
    write_model(repo, "pairs", f"""
        backend: "python"
        max_batch_size: 2
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "log" value {{ string_value: "{log}" }} }}
        parameters {{ key: "warmup" value {{ string_value: "false" }} }}
        dynamic_batching {{ max_queue_delay_microseconds: 5000000 }}
        """, {1: {"model.py": RECORDING}})
    running = RunningServer(repo)
    yield running, log
    running.stop()


async def infer(session: aiohttp.ClientSession, url: str, value: float) -> tuple[int, dict]:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [value]}]}
    async with session.post(url, data=orjson.dumps(body)) as response:
        return response.status, orjson.loads(await response.read())


async def metric(session: aiohttp.ClientSession, url: str, pattern: str) -> float:
    async with session.get(url) as response:
        found = re.search(pattern + r" ([0-9.e+-]+)$", await response.text(), re.MULTILINE)
    assert found, f"no {pattern} in /metrics"
    return float(found.group(1))


def test_a_client_that_hangs_up_while_its_request_is_staged_is_dropped_before_compute(
        server: tuple[RunningServer, Path]) -> None:
    running, log = server
    url = f"http://{running.url}/v2/models/pairs/infer"
    labels = r'\{model="pairs",version="1"\}'

    async def scenario() -> tuple[list[tuple[int, dict]], float, float]:
        async with aiohttp.ClientSession() as session:
            first = [asyncio.ensure_future(infer(session, url, v)) for v in (1, 2)]  # a pair: computes 0.6 s
            await asyncio.sleep(0.1)
            kept = asyncio.ensure_future(infer(session, url, 4))
            async with aiohttp.ClientSession() as impatient:  # 3 and 4 make the next pair: staged at once
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(infer(impatient, url, 3), 0.1)  # hangs up while staged
            pending = await metric(session, running.metrics_url, "nv_inference_pending_request_count" + labels)
            results = await asyncio.gather(*first, kept)
            busy = await metric(session, running.metrics_url,
                                r'serving_instance_busy_seconds_total\{device="cpu",instance="0",model="pairs",'
                                r'version="1"\}')
            return results, pending, busy

    results, pending, busy = asyncio.run(scenario())
    assert [status for status, _ in results] == [200, 200, 200]
    assert [answer["outputs"][0]["data"] for _, answer in results] == [[2.0], [4.0], [8.0]]
    assert log.read_text().splitlines() == ["[1.0, 2.0]", "[4.0]"]  # 3 never reached compute
    assert pending == 2  # the staged pair, still waiting for the instance
    assert 1.2 <= busy < 10  # two batches of 0.6 s, counted by the instance
