"""A gRPC primary that is down or hangs: the client gets UNAVAILABLE or DEADLINE_EXCEEDED with a message, never a hang.

The sidecar is real; the primaries are a port nothing listens on, a grpc.aio server whose
handler never returns, and a raw socket that accepts and never speaks HTTP/2.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest

from sidecar.config.file import Config, PrimaryConfig

from ..support import LoopThread, RunningSidecar, free_port, wait_until

INFER = "/inference.GRPCInferenceService/ModelInfer"
PRIMARY_TIMEOUT = 1.0


class Hanging(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def never(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.Event().wait()
            return b""
        return grpc.unary_unary_rpc_method_handler(never)


@pytest.fixture(scope="module")
def primaries() -> Iterator[dict[str, str]]:
    loop = LoopThread("grpc-primaries")

    async def start() -> tuple[grpc.aio.Server, int, asyncio.Server]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((Hanging(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                pass
            writer.close()
        blackhole = await asyncio.start_server(silent, "127.0.0.1", 0)
        return server, port, blackhole

    server, port, blackhole = loop.call(start())
    yield {"down": f"127.0.0.1:{free_port()}", "hangs": f"127.0.0.1:{port}",
           "blackhole": f"127.0.0.1:{blackhole.sockets[0].getsockname()[1]}"}
    loop.call(server.stop(0))
    blackhole.close()
    loop.close()


def call(sidecar: RunningSidecar, timeout: float | None) -> tuple[grpc.RpcError, float]:
    with grpc.insecure_channel(sidecar.grpc) as channel:
        infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(INFER)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            infer(b"", timeout=timeout)
        return error.value, time.monotonic() - start


def sidecar_for(target: str) -> RunningSidecar:
    return RunningSidecar(Config(primary=PrimaryConfig(http=f"http://127.0.0.1:{free_port()}", grpc=target,
                                                       timeout_secs=PRIMARY_TIMEOUT)))


def test_a_primary_that_is_down_is_unavailable_at_once_with_its_address(primaries: dict[str, str]) -> None:
    running = sidecar_for(primaries["down"])
    try:
        error, took = call(running, timeout=30)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        details = error.details()
        assert details is not None and f"the primary at {primaries['down']} cannot be reached" in details
        assert took < PRIMARY_TIMEOUT + 2
        again, took = call(running, timeout=None)  # no client deadline: still no hang
        assert again.code() == grpc.StatusCode.UNAVAILABLE and took < PRIMARY_TIMEOUT + 2
        wait_until(lambda: running.metric("sidecar_requests_total", upstream="primary", protocol="grpc",
                                          code="UNAVAILABLE") == 2, 5, "both calls counted as UNAVAILABLE")
    finally:
        running.stop()


@pytest.mark.parametrize("kind", ["hangs", "blackhole"])
def test_a_primary_that_does_not_answer_times_out_at_the_primary_timeout(primaries: dict[str, str],
                                                                        kind: str) -> None:
    running = sidecar_for(primaries[kind])
    try:
        error, took = call(running, timeout=None)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"did not answer within {PRIMARY_TIMEOUT:g}s" in (error.details() or "")
        assert PRIMARY_TIMEOUT * 0.9 <= took < PRIMARY_TIMEOUT + 2
        error, took = call(running, timeout=0.3)  # a shorter client deadline wins, with the client's own message
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and took < 0.3 + 1
    finally:
        running.stop()
