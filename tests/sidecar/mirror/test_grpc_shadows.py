"""gRPC shadows that answer too much or never: the copy fails alone, counted, and gives its memory back.

Real grpc.aio servers as shadows, a real ``serve`` as the primary, real gRPC clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from sidecar.config.file import Config, PrimaryConfig, ShadowConfig

from ..conftest import ModelServer
from ..support import LoopThread, RunningSidecar, wait_until

REQUESTS = 12


class Misbehaving(grpc.GenericRpcHandler):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if self.kind == "hangs":
                await asyncio.Event().wait()
            return b"\x0a" + b"\xff" * (8 * 1024 * 1024)  # 8 MiB: over the 4 MiB max_response_size
        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture(scope="module")
def shadows() -> Iterator[dict[str, str]]:
    loop = LoopThread("grpc-shadows")

    async def start(kind: str) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
        server.add_generic_rpc_handlers((Misbehaving(kind),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    started = {kind: loop.call(start(kind)) for kind in ("huge", "hangs")}
    yield {kind: f"127.0.0.1:{port}" for kind, (_, port) in started.items()}
    for server, _ in started.values():
        loop.call(server.stop(0))
    loop.close()


def test_grpc_shadows_that_answer_too_much_or_never_leave_the_primary_untouched(
        shadows: dict[str, str], serve_v1: ModelServer, points: np.ndarray) -> None:
    assert serve_v1.grpc is not None
    running = RunningSidecar(Config(
        primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
        shadows=tuple(ShadowConfig(kind, grpc=target, timeout_secs=0.5) for kind, target in shadows.items())))
    client = grpcclient.InferenceServerClient(running.grpc)
    try:
        for index in range(REQUESTS):
            tensor = grpcclient.InferInput("INPUT__0", [1, 64], "FP32")
            tensor.set_data_from_numpy(points[index:index + 1])
            result = client.infer("classifier", [tensor], client_timeout=10)
            assert result.as_numpy("OUTPUT__0").shape == (1, 10)
        wait_until(lambda: running.metric("sidecar_shadow_errors_total", shadow="huge", reason="too_large") > 0, 10,
                   "the huge answers to be refused")
        wait_until(lambda: running.metric("sidecar_shadow_timeouts_total", shadow="hangs") > 0, 10,
                   "the hanging shadow's copies to time out")
        wait_until(lambda: running.metric("sidecar_shadow_memory_bytes") == 0, 10, "the copies' memory given back")
        assert running.metric("sidecar_requests_total", upstream="primary", protocol="grpc", code="OK") == REQUESTS
        assert running.metric("sidecar_shadow_successes_total", shadow="huge") == 0
    finally:
        client.close()
        running.stop()
