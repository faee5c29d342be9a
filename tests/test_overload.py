"""Overload seen from clients: a full queue is answered from the path alone, before the body.

A gated model holds its batch until the test opens the gate, so the queue's state is
exact: one request running, ``max_queue_size`` waiting, and what comes next is past the
queue. (Throughput under a flood is measured in benchmarks/overload.py, not here.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from serving.batching import Batcher

from .conftest import RunningServer, write_model

GATED = '''
import os
import time
import serving


class Gated(serving.Model):
    """Computes once the gate file exists (or after 10 s, so that nothing hangs)."""

    def predict(self, inputs):
        deadline = time.monotonic() + 10
        while not os.path.exists(self.parameters["gate"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        return {"Y": inputs["X"]}
'''

GOOD = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})


def gated(repo: Path, name: str, gate: Path, queue: int) -> None:
    write_model(repo, name, f"""
        backend: "python"
        max_batch_size: 1
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        dynamic_batching {{ default_queue_policy {{ max_queue_size: {queue} }} }}
        parameters {{ key: "gate" value {{ string_value: "{gate}" }} }}
        parameters {{ key: "warmup" value {{ string_value: "false" }} }}
        """, {1: {"model.py": GATED}})


class Gate:
    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> None:
        self.path.touch()

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningServer, Gate]]:
    repo = tmp_path_factory.mktemp("overload")
    gate = Gate(tmp_path_factory.mktemp("gate") / "open")
    gated(repo, "gated", gate.path, queue=2)
    at_once = RunningServer(repo, admission_wait_secs=0.0)
    waiting = RunningServer(repo, admission_wait_secs=0.4)
    yield at_once, waiting, gate
    gate.open()
    at_once.stop()
    waiting.stop()


async def post(session: aiohttp.ClientSession, url: str, data: bytes = GOOD) -> tuple[int, dict, str | None]:
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
        return response.status, orjson.loads(await response.read()), response.headers.get("Retry-After")


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        await asyncio.sleep(0.01)


async def fill(server: RunningServer, session: aiohttp.ClientSession, url: str,
               queue: int) -> list[asyncio.Task[tuple[int, dict, str | None]]]:
    """One request running behind the closed gate, then ``queue`` more waiting in the queue."""
    assert server.server.repository is not None
    scheduler = server.server.repository.get("gated").batcher
    assert isinstance(scheduler, Batcher)  # a model's own queue, not an ensemble's scheduler
    batcher: Batcher = scheduler
    running = [asyncio.ensure_future(post(session, url))]
    await until(lambda: batcher.busy and batcher.pending == 0)  # computing, behind the gate
    queued = [asyncio.ensure_future(post(session, url)) for _ in range(queue)]
    await until(lambda: batcher.pending == queue)
    return running + queued


async def raw_status(port: int, head: bytes, body_part: bytes) -> tuple[bytes, float]:
    """Send a request head and part of its body only; the status line and how long it took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head + body_part)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    elapsed = time.monotonic() - started
    writer.close()
    return status, elapsed


def test_requests_past_a_full_queue_get_503_before_their_body_is_read(
        servers: tuple[RunningServer, RunningServer, Gate]) -> None:
    server, _, gate = servers
    gate.close()
    url = f"http://{server.url}/v2/models/gated/infer"

    async def scenario() -> tuple[list, list, tuple[bytes, float], list]:
        async with aiohttp.ClientSession() as session:
            admitted = await fill(server, session, url, queue=2)
            # malformed bodies would be 400 if they were decoded; past the queue they are not
            past = await asyncio.gather(*(post(session, url, b"{not json") for _ in range(20)),
                                        post(session, url, GOOD))
            # a body that is still on its way (it never comes) is not waited for either
            head = (b"POST /v2/models/gated/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000000\r\n\r\n")
            partial = await raw_status(server.server.http_port, head, b'{"inputs": [')
            gate.open()
            done = await asyncio.gather(*admitted)
            after = [await post(session, url) for _ in range(3)]
            return past, list(done), partial, after

    past, done, (status_line, elapsed), after = asyncio.run(scenario())
    assert [status for status, _, _ in past] == [503] * 21
    for _, body, retry_after in past:
        assert set(body) == {"error"} and "overloaded" in body["error"] and "max_queue_size" in body["error"]
        assert retry_after == "1"
    assert status_line.startswith(b"HTTP/1.1 503") and elapsed < 2
    assert [status for status, _, _ in done] == [200] * 3  # every admitted request answered
    assert [(status, body["outputs"][0]["data"]) for status, body, _ in after] == [(200, [1.0])] * 3
    stats = server.call(_stats(server))
    assert stats["inference_stats"]["fail"]["count"] >= 22  # rejections are counted, as Triton counts them


async def _stats(server: RunningServer) -> dict:
    assert server.server.dataplane is not None
    return server.server.dataplane.model_stats("gated")["model_stats"][0]


def test_places_held_by_bodies_still_arriving_count_against_the_queue(
        servers: tuple[RunningServer, RunningServer, Gate]) -> None:
    server, _, gate = servers
    gate.open()
    port = server.server.http_port
    url = f"http://{server.url}/v2/models/gated/infer"
    head = (f"POST /v2/models/gated/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(GOOD)}\r\n\r\n").encode()

    assert server.server.repository is not None
    scheduler = server.server.repository.get("gated").batcher
    assert isinstance(scheduler, Batcher)  # a model's own queue, not an ensemble's scheduler
    batcher: Batcher = scheduler

    async def scenario() -> tuple[list[int], list[bytes]]:
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in slow:  # two bodies half sent: the queue is empty, but both places are taken
            writer.write(head + GOOD[:10])
            await writer.drain()
        await until(lambda: batcher.reserved == 2)
        async with aiohttp.ClientSession() as session:
            rejected = [status for status, _, _ in await asyncio.gather(*(post(session, url) for _ in range(5)))]
            lines = []
            for reader, writer in slow:  # the rest of each body: both get their answer
                writer.write(GOOD[10:])
                await writer.drain()
                lines.append(await asyncio.wait_for(reader.readline(), 5))
                writer.close()
            rejected.append((await post(session, url))[0])  # and the places are free again
        return rejected, lines

    statuses, lines = asyncio.run(scenario())
    assert statuses == [503] * 5 + [200]
    assert all(line.startswith(b"HTTP/1.1 200") for line in lines)


def test_a_request_past_the_queue_waits_for_a_place_then_gets_503_or_its_answer(
        servers: tuple[RunningServer, RunningServer, Gate]) -> None:
    _, server, gate = servers
    gate.close()
    url = f"http://{server.url}/v2/models/gated/infer"

    async def scenario() -> tuple[tuple, float, list]:
        async with aiohttp.ClientSession() as session:
            admitted = await fill(server, session, url, queue=2)
            started = time.monotonic()
            expired = await post(session, url, b"{not json")  # nothing frees a place within 0.4 s
            waited = time.monotonic() - started
            # these wait, hold nothing but their connection, and get places in turn
            waiting = [asyncio.ensure_future(post(session, url)) for _ in range(4)]
            await asyncio.sleep(0.1)
            gate.open()
            return expired, waited, await asyncio.gather(*admitted, *waiting)

    (status, body, retry_after), waited, served = asyncio.run(scenario())
    assert status == 503 and "max_queue_size" in body["error"] and retry_after == "1"
    assert 0.35 < waited < 2
    assert [s for s, _, _ in served] == [200] * 7


def test_grpc_requests_past_a_full_queue_wait_then_get_unavailable_before_their_tensors_are_decoded(
        servers: tuple[RunningServer, RunningServer, Gate]) -> None:
    _, server, gate = servers
    gate.close()
    url = f"http://{server.url}/v2/models/gated/infer"
    # typed contents that do not match the shape: INVALID_ARGUMENT if they were decoded
    bad = pb.ModelInferRequest(model_name="gated", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="X", datatype="FP32", shape=[1, 1], contents=pb.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0]))])
    good = pb.ModelInferRequest(model_name="gated", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="X", datatype="FP32", shape=[1, 1], contents=pb.InferTensorContents(fp32_contents=[2.0]))])

    async def scenario() -> tuple[grpc.StatusCode, str, float, list, list]:
        async with aiohttp.ClientSession() as session, \
                grpc.aio.insecure_channel(f"127.0.0.1:{server.server.grpc_port}") as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=pb.ModelInferRequest.SerializeToString,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            admitted = await fill(server, session, url, queue=2)
            started = time.monotonic()
            try:
                await infer(bad, timeout=5)
                raise AssertionError("a request past the full queue was served")
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or ""
            waited = time.monotonic() - started
            waiting = [asyncio.ensure_future(infer(good, timeout=5)) for _ in range(2)]
            await asyncio.sleep(0.1)
            gate.open()
            answers = await asyncio.gather(*waiting)
            return code, details, waited, await asyncio.gather(*admitted), answers

    code, details, waited, done, answers = asyncio.run(scenario())
    assert code == grpc.StatusCode.UNAVAILABLE and "max_queue_size" in details
    assert 0.35 < waited < 2  # it waited for a place (0.4 s), then was refused undecoded
    assert [status for status, _, _ in done] == [200] * 3
    assert [np.frombuffer(a.raw_output_contents[0], np.float32).tolist() for a in answers] == [[2.0]] * 2
