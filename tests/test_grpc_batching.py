"""gRPC requests reach the batcher together, as HTTP requests do: the port's several accept loops."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc.aio as grpcclient
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving.grpc import ACCEPT_LOOPS, CONNECTION_CAP, GrpcTransport, _split_cap

from .conftest import RunningServer, write_model

SHORT = '''
import time
import serving


class Short(serving.Model):
    """A short compute: requests queue behind a batch, but a batch is quick beside a request's transport."""

    def predict(self, inputs):
        time.sleep(0.0005)
        return {"Y": inputs["X"] * 2}
'''

CONCURRENCY = 32  # calls in flight, over as many HTTP connections and as many gRPC ones
CONNECTIONS = 32
SECONDS = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("grpc-batching")
    write_model(repo, "short", """
        backend: "python"
        max_batch_size: 64
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 500 }
        parameters { key: "warmup" value { string_value: "false" } }
        """, {1: {"model.py": SHORT}})
    server = RunningServer(repo)
    yield server
    server.stop()


def batches(server: RunningServer) -> tuple[float, float]:
    """(rows, batches) the model has computed so far, from /metrics."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = {kind: float(value) for kind, value in
             re.findall(r'^serving_batch_size_(sum|count)\{[^}]*model="short"[^}]*\}\s+(\S+)$', text, re.M)}
    return found["sum"], found["count"]


async def closed_loop(call: Callable[[int], Awaitable[None]]) -> int:
    """CONCURRENCY workers, each calling again as soon as its answer came, for SECONDS; the calls made."""
    done = 0
    deadline = time.monotonic() + SECONDS

    async def worker(index: int) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await call(index)
            done += 1

    await asyncio.gather(*(worker(index) for index in range(CONCURRENCY)))
    return done


async def over_http(server: RunningServer) -> int:
    url = f"http://{server.url}/v2/models/short/infer"
    body = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def call(index: int) -> None:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                answer = orjson.loads(await response.read())
                assert response.status == 200, answer
                assert answer["outputs"][0]["data"] == [2, 4, 6, 8]
        return await closed_loop(call)


async def over_grpc(server: RunningServer) -> int:
    # a connection of each client's own: grpcio would otherwise share one between channels
    clients = [grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}",
                                                channel_args=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(CONNECTIONS)]
    tensor = grpcclient.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))
    try:
        async def call(index: int) -> None:
            result = await clients[index % CONNECTIONS].infer("short", [tensor])
            assert result.as_numpy("Y").tolist() == [[2, 4, 6, 8]]
        return await closed_loop(call)
    finally:
        for client in clients:
            await client.close()


def mean_batch(server: RunningServer, drive: Callable[[RunningServer], Coroutine[Any, Any, int]]) -> float:
    before = batches(server)
    calls = asyncio.run(drive(server))
    rows, count = (after - start for after, start in zip(batches(server), before, strict=True))
    assert rows == calls  # every call was answered, one row each
    return rows / count


def test_grpc_requests_reach_the_batcher_in_batches_comparable_to_http(server: RunningServer) -> None:
    # one accept loop gave 2-4 rows a batch here where HTTP gave 10-15: calls entered one or two per
    # turn of the event loop, each batch left with the one or two that had come in meanwhile
    http = mean_batch(server, over_http)
    grpc_mean = mean_batch(server, over_grpc)
    assert http >= 4, f"HTTP batched {http:.1f} rows a batch: the test no longer measures batching"
    assert grpc_mean >= 0.5 * http, f"gRPC batched {grpc_mean:.1f} rows a batch, HTTP {http:.1f}"


def test_the_grpc_port_is_served_by_several_servers(server: RunningServer) -> None:
    transport = server.server.grpc
    assert transport is not None
    if not server.server.worker_pids():  # with front-end workers this is the owner's private transport, one server
        assert len(transport.servers) == ACCEPT_LOOPS
    target = f"127.0.0.1:{server.server.grpc_port}"
    for _ in range(2 * ACCEPT_LOOPS):  # every connection is answered, whichever server the kernel gave it to
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


@given(cap=st.integers(-5, 10_000), servers=st.integers(1, 64))
def test_the_connection_cap_is_split_among_the_servers(cap: int, servers: int) -> None:
    shares = _split_cap((("grpc.other", 7), (CONNECTION_CAP, cap)), servers)
    assert 1 <= len(shares) <= servers
    assert all(isinstance(share, int) and share >= 1 for share in shares)
    assert sum(share for share in shares if share is not None) == max(1, cap)
    assert max(s for s in shares if s is not None) - min(s for s in shares if s is not None) <= 1
    assert _split_cap((("grpc.other", 7),), servers) == [None] * servers


def test_a_grpc_port_another_program_listens_on_is_refused() -> None:
    # the servers bind with SO_REUSEPORT: without a check they would share the port with
    # another program that holds it so, and the connections would be split between the two
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]

    async def scenario() -> None:
        transport = GrpcTransport(Ready(), 1 << 20, accept_loops=2)  # type: ignore[arg-type]  # ready() is all it asks
        try:
            with pytest.raises(OSError, match="another program listens on it"):
                await transport.start("127.0.0.1", port)
        finally:
            await transport.stop(0)
        holder.close()
        free = GrpcTransport(Ready(), 1 << 20, accept_loops=2)  # type: ignore[arg-type]
        assert await free.start("127.0.0.1", port) == port  # the same port, once nothing holds it
        await free.stop(0)

    try:
        asyncio.run(scenario())
    finally:
        holder.close()


class Ready:
    """All that the transport asks of a dataplane before a call comes: its readiness."""

    def ready(self) -> bool:
        return True
