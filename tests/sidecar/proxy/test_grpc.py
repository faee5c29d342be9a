"""The gRPC hop: tritonclient.grpc through the sidecar to a real ``serve``; metadata, trailers and deadlines."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from sidecar.config.file import Config, PrimaryConfig, ShadowConfig

from ..conftest import ModelServer
from ..support import LoopThread, RunningSidecar, free_port, wait_until

CONFIG_METHOD = "/inference.GRPCInferenceService/ModelConfig"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
METADATA_METHOD = "/inference.GRPCInferenceService/ModelMetadata"


@pytest.fixture(scope="module")
def sidecar(serve_v1: ModelServer) -> Iterator[RunningSidecar]:
    assert serve_v1.grpc is not None, "serve has no gRPC port"
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                    shadows=(ShadowConfig("http-only", http=serve_v1.http_url),))
    running = RunningSidecar(config)
    yield running
    running.stop()


def test_tritonclient_grpc_gets_exactly_what_the_primary_answers(sidecar: RunningSidecar, serve_v1: ModelServer,
                                                                 points: np.ndarray) -> None:
    direct, proxied = grpcclient.InferenceServerClient(serve_v1.grpc), grpcclient.InferenceServerClient(sidecar.grpc)
    try:
        assert proxied.is_server_live() and proxied.is_server_ready() and proxied.is_model_ready("classifier")
        assert proxied.get_model_metadata("classifier") == direct.get_model_metadata("classifier")
        assert proxied.get_model_config("classifier") == direct.get_model_config("classifier")
        inputs = [grpcclient.InferInput("INPUT__0", [8, 64], "FP32")]
        inputs[0].set_data_from_numpy(points[:8])
        got = proxied.infer("classifier", inputs, request_id="g").get_response()
        assert got == direct.infer("classifier", inputs, request_id="g").get_response()
        errors = []
        for client in (direct, proxied):
            with pytest.raises(InferenceServerException) as error:
                client.get_model_metadata("nope")
            errors.append((error.value.status(), error.value.message()))
        assert errors[0] == errors[1] and errors[0][0] == "StatusCode.NOT_FOUND"
    finally:
        direct.close()
        proxied.close()
    # the shadow has no gRPC upstream: gRPC copies are skipped, and counted
    assert sidecar.metric("sidecar_shadow_skipped_total", shadow="http-only", reason="no_upstream") == 1


def test_streaming_inference_passes_through(sidecar: RunningSidecar, serve_v1: ModelServer,
                                            points: np.ndarray) -> None:
    assert serve_v1.grpc is not None  # the model server listens for gRPC here
    answers: dict[str, list[np.ndarray]] = {}
    for url in (serve_v1.grpc, sidecar.grpc):
        results: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(url)
        client.start_stream(callback=lambda result, error, results=results: results.put((result, error)))
        for index in range(5):
            inputs = [grpcclient.InferInput("INPUT__0", [2, 64], "FP32")]
            inputs[0].set_data_from_numpy(points[index * 2:index * 2 + 2])
            client.async_stream_infer("classifier", inputs, request_id=str(index))
        got = {}
        for _ in range(5):
            result, error = results.get(timeout=30)
            assert error is None
            got[result.get_response().id] = result.as_numpy("OUTPUT__0")
        client.stop_stream()
        client.close()
        answers[url] = [got[str(i)] for i in range(5)]
    for direct, proxied in zip(answers[serve_v1.grpc], answers[sidecar.grpc], strict=True):
        # A stream's requests are batched together as they arrive, and a different batch
        # changes the float32 sums by an ulp: equal up to that.
        np.testing.assert_allclose(proxied, direct, rtol=1e-5, atol=1e-7)


def test_server_streaming_methods_of_other_services_pass_through(sidecar: RunningSidecar) -> None:
    with grpc.insecure_channel(sidecar.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)  # type: ignore[attr-defined]  # the stubs omit HealthStub's methods
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_health_checks_answer_from_the_sidecar_readiness(sidecar: RunningSidecar) -> None:
    with grpc.insecure_channel(sidecar.grpc) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # the stubs omit HealthStub's methods
        assert check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        sidecar.sidecar.health.draining = True
        try:
            status = check(health_pb2.HealthCheckRequest(), timeout=10).status
        finally:
            sidecar.sidecar.health.draining = False
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING


class Upstream(grpc.GenericRpcHandler):
    """A stand-in gRPC server: echoes metadata, sets trailers, fails on request, reports its deadline."""

    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == CONFIG_METHOD:
            return grpc.unary_unary_rpc_method_handler(self.echo)
        if details.method in (METADATA_METHOD, INFER_METHOD):
            return grpc.unary_unary_rpc_method_handler(self.slow)
        return None

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = context.invocation_metadata()
        assert metadata is not None  # grpc.aio gives a call's metadata to its handler
        received = {k: v for k, v in metadata if isinstance(v, str)}
        await context.send_initial_metadata((("x-seen-auth", received.get("authorization", "")),))
        context.set_trailing_metadata((("x-trailer", "t"), ("x-echo", received.get("x-custom", ""))))
        if request == b"fail":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy: try later")
        return b"echo:" + request

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.deadlines.append(context.time_remaining())
        await asyncio.sleep(5)
        return b""


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[Upstream, RunningSidecar, str]]:
    loop = LoopThread("grpc-upstream")
    handler = Upstream()

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = loop.call(serve())
    running = RunningSidecar(Config(primary=PrimaryConfig(http="http://127.0.0.1:1", grpc=f"127.0.0.1:{port}")))
    yield handler, running, f"127.0.0.1:{port}"
    running.stop()
    loop.call(server.stop(0))
    loop.close()


def test_metadata_trailers_and_status_pass_through(stand_in: tuple[Upstream, RunningSidecar, str]) -> None:
    _, running, _ = stand_in
    with grpc.insecure_channel(running.grpc) as channel:
        method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CONFIG_METHOD)
        response, call = method.with_call(b"hi", metadata=(("authorization", "Bearer t"), ("x-custom", "c")),
                                          timeout=10)
        assert response == b"echo:hi"
        assert ("x-seen-auth", "Bearer t") in call.initial_metadata()
        assert {("x-trailer", "t"), ("x-echo", "c")} <= set(call.trailing_metadata())
        with pytest.raises(grpc.RpcError) as error:
            method(b"fail", timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.value.details() == "busy: try later"
        # the stubs type RpcError's trailing entries as a class of their own; grpc gives (key, value) tuples
        assert ("x-trailer", "t") in error.value.trailing_metadata()  # type: ignore[comparison-overlap]  # see above


def test_the_client_deadline_carries_over(stand_in: tuple[Upstream, RunningSidecar, str]) -> None:
    upstream, running, _ = stand_in
    with grpc.insecure_channel(running.grpc) as channel:
        with pytest.raises(grpc.RpcError) as error:
            method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METADATA_METHOD)
            method(b"", timeout=0.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # gRPC rounds a timeout up when it encodes it (grpc-timeout), once per hop: a few ms above the client's
    # 0.5 s, never the sidecar's own 60 s limit.
    assert upstream.deadlines and upstream.deadlines[-1] is not None and upstream.deadlines[-1] <= 0.5 + 0.005


def test_grpc_shadows_that_are_down_or_hang_never_touch_the_primary_answer(
        stand_in: tuple[Upstream, RunningSidecar, str], serve_v1: ModelServer, points: np.ndarray) -> None:
    hanging = stand_in[2]  # its ModelInfer sleeps
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                    shadows=(ShadowConfig("down", grpc=f"127.0.0.1:{free_port()}"),
                             ShadowConfig("hang", grpc=hanging, timeout_secs=2.0)))
    running = RunningSidecar(config, shadow_drain_secs=5.0)
    direct, proxied = grpcclient.InferenceServerClient(serve_v1.grpc), grpcclient.InferenceServerClient(running.grpc)
    try:
        for index in range(3):
            inputs = [grpcclient.InferInput("INPUT__0", [4, 64], "FP32")]
            inputs[0].set_data_from_numpy(points[index * 4:index * 4 + 4])
            got = proxied.infer("classifier", inputs, request_id=str(index))
            assert running.metric("sidecar_shadow_in_flight", shadow="hang") >= 1  # answered while the copy hangs
            np.testing.assert_array_equal(got.as_numpy("OUTPUT__0"),
                                          direct.infer("classifier", inputs).as_numpy("OUTPUT__0"))
        wait_until(lambda: running.metric("sidecar_shadow_timeouts_total", shadow="hang") == 3, 30, "timeouts")
        assert running.metric("sidecar_shadow_errors_total", shadow="down", reason="connection") == 3
    finally:
        direct.close()
        proxied.close()
        running.stop()
