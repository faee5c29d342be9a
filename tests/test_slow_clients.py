"""Slow and greedy clients against a real serve with short limits: none of them holds it.

Slowloris connections (a header that never ends) are closed after the header timeout, a
body that drips gets 408 and is not waited for, connections past the cap are closed as
they arrive, and the clients that behave keep getting answers throughout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from .conftest import RunningServer, write_model

IDENTITY = '''
import serving


class Identity(serving.Model):
    def predict(self, inputs):
        return {"Y": inputs["X"]}
'''

GOOD = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]})
HEAD = b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("slow")
    write_model(repo, "identity", """
        backend: "python"
        max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        parameters { key: "warmup" value { string_value: "false" } }
        """, {1: {"model.py": IDENTITY}})
    return repo


@pytest.fixture(scope="module")
def short(repo: Path) -> Iterator[RunningServer]:
    server = RunningServer(repo, http_header_timeout_secs=0.5, http_body_timeout_secs=0.5, max_connections=32)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def capped(repo: Path) -> Iterator[RunningServer]:
    # one process: the cap is exact (front-end workers share it out, tests/test_frontend_workers.py)
    server = RunningServer(repo, http_header_timeout_secs=20.0, max_connections=4, frontend_workers=0)
    yield server
    server.stop()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (reading and dropping what it sends)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            data = await asyncio.wait_for(reader.read(4096), left)
        except asyncio.TimeoutError:
            return False
        except ConnectionError:
            return True
        if not data:
            return True
    return False


async def good_requests(url: str, seconds: float) -> list[int]:
    """A well-behaved client sending requests back to back for ``seconds``."""
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(statuses) < 500:
            async with session.post(url, data=GOOD, headers={"Content-Type": "application/json"}) as response:
                statuses.append(response.status)
                await response.read()
            await asyncio.sleep(0.02)
    return statuses


def test_slowloris_connections_are_closed_after_the_header_timeout(short: RunningServer) -> None:
    port = short.server.http_port

    async def slowloris() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(HEAD)  # the request line and two headers, and then never the blank line
        for index in range(60):  # one more header byte every 0.05 s: the header never ends
            try:
                writer.write(b"X-Drip-%d: y\r\n" % index)
                await writer.drain()
                if not await asyncio.wait_for(reader.read(1), 0.05):
                    break
            except asyncio.TimeoutError:
                continue
            except ConnectionError:
                break
        elapsed = time.monotonic() - started
        writer.close()
        return elapsed

    async def scenario() -> tuple[list[float], list[int]]:
        good = asyncio.ensure_future(good_requests(f"http://{short.url}/v2/models/identity/infer", 1.5))
        closed = await asyncio.gather(*(slowloris() for _ in range(20)))
        return list(closed), await good

    closed, statuses = asyncio.run(scenario())
    assert all(0.4 < elapsed < 2.0 for elapsed in closed), closed  # 60 x 0.05 s would be 3 s
    assert statuses and set(statuses) == {200}


def test_a_body_that_drips_gets_408_and_is_not_waited_for(short: RunningServer) -> None:
    port = short.server.http_port

    async def scenario() -> tuple[bytes, float, bytes, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD + b"Content-Length: 1000\r\n\r\n{")
        await writer.drain()
        started = time.monotonic()
        status = b""
        for _ in range(60):  # a byte every 0.05 s: the body would take 50 s
            writer.write(b" ")
            await writer.drain()
            try:
                status = await asyncio.wait_for(reader.readline(), 0.05)
                break
            except asyncio.TimeoutError:
                continue
        elapsed = time.monotonic() - started
        rest = await asyncio.wait_for(reader.read(4096), 2)
        closed = await closed_within(reader, 3)  # after a short drain of what is still coming
        writer.close()
        return status, elapsed, rest, closed

    status, elapsed, rest, closed = asyncio.run(scenario())
    assert status.startswith(b"HTTP/1.1 408"), status
    assert 0.4 < elapsed < 2.0
    body = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert "did not arrive within 0.5 s" in body["error"] and "--http-body-timeout-secs" in body["error"]
    assert closed


def test_the_metrics_port_and_the_grpc_port_close_clients_that_send_nothing(short: RunningServer) -> None:
    async def idle(port: int, first: bytes) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(first)
        await writer.drain()
        assert await closed_within(reader, 5)
        writer.close()
        return time.monotonic() - started

    async def scenario() -> list[float]:
        return list(await asyncio.gather(idle(short.server.metrics_port, b"GET /metrics HTTP/1.1\r\n"),
                                         idle(short.server.grpc_port, b"")))

    metrics, grpc_port = asyncio.run(scenario())
    assert 0.4 < metrics < 2.5
    assert 0.4 < grpc_port < 3.5  # the HTTP/2 handshake timeout is the header timeout


def test_connections_past_the_cap_are_closed_while_connected_clients_are_served(capped: RunningServer) -> None:
    port = capped.server.http_port
    url = f"http://{capped.url}/v2/models/identity/infer"

    async def scenario() -> tuple[list[int], list[bool], int, str]:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def infer() -> int:
                async with session.post(url, data=GOOD, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    return response.status

            statuses = [await infer()]  # this client's connection is one of the four
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await asyncio.sleep(0.1)
            extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            refused = [await closed_within(reader, 2) for reader, _ in extra]
            statuses += [await infer() for _ in range(5)]
            for _, writer in extra + held[:1]:
                writer.close()
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a place again
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            again = (await asyncio.wait_for(reader.readline(), 5)).decode()
            writer.close()
            open_now = capped.server.connection_limits["http"].open
            for _, held_writer in held[1:]:
                held_writer.close()
            return statuses, refused, open_now, again

    statuses, refused, open_now, again = asyncio.run(scenario())
    assert statuses == [200] * 6
    assert refused == [True] * 3
    assert again.startswith("HTTP/1.1 200")
    assert open_now <= 4
    assert capped.server.connection_limits["http"].refused >= 3


def test_grpc_connections_past_the_cap_are_refused(capped: RunningServer) -> None:
    target = f"127.0.0.1:{capped.server.grpc_port}"

    def live(timeout: float) -> bool:
        # a connection of its own each time: grpcio would otherwise share one between channels
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                return stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout).live
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                return False

    async def hold() -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """Four connections the server keeps (some may be refused while the probe's own still closes)."""
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        deadline = time.monotonic() + 10  # on a loaded machine the server may see the probe's close late
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", capped.server.grpc_port)
            try:
                if not await asyncio.wait_for(reader.read(1), 0.2):
                    writer.close()  # closed by the server: over the cap
                    await asyncio.sleep(0.05)
                    continue
            except asyncio.TimeoutError:
                pass
            except ConnectionError:
                writer.close()
                await asyncio.sleep(0.05)
                continue
            held.append((reader, writer))
            if len(held) == 4:
                break
        assert len(held) == 4
        return held

    assert live(5)
    loop = asyncio.new_event_loop()
    try:
        held = loop.run_until_complete(hold())
        loop.run_until_complete(asyncio.sleep(0.2))
        refused = not live(1)
        for _, writer in held:
            writer.close()
        loop.run_until_complete(asyncio.sleep(0.3))
    finally:
        loop.close()
    assert refused
    assert live(5)
