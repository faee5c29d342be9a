"""KServe v2 over gRPC: status codes and messages, streaming, health, limits, typed contents."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import EXAMPLES, RunningServer


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(EXAMPLES, max_request_bytes=64 * 1024)
    yield running
    running.stop()


def grpc_url(server: RunningServer) -> str:
    return f"127.0.0.1:{server.server.grpc_port}"


def classifier_input(x: np.ndarray, name: str = "INPUT__0", datatype: str = "FP32") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def test_infer_matches_http_bit_for_bit(server: RunningServer) -> None:
    x = np.random.default_rng(5).normal(size=(3, 64)).astype(np.float32)
    over_grpc = grpcclient.InferenceServerClient(grpc_url(server)).infer(
        "classifier", [classifier_input(x)], request_id="g1")
    http_input = httpclient.InferInput("INPUT__0", [3, 64], "FP32")
    http_input.set_data_from_numpy(x)
    over_http = httpclient.InferenceServerClient(server.url).infer("classifier", [http_input])
    assert over_grpc.get_response().id == "g1" and over_grpc.get_response().model_version == "2"
    assert over_grpc.as_numpy("OUTPUT__0").tobytes() == over_http.as_numpy("OUTPUT__0").tobytes()


@pytest.mark.parametrize("model, inputs, code, message", [
    ("classifier", lambda: [classifier_input(np.ones((1, 63), np.float32))], grpc.StatusCode.INVALID_ARGUMENT,
     r"input 'INPUT__0' has shape \[1, 63\] but model 'classifier' expects \[-1, 64\]"),
    ("classifier", lambda: [classifier_input(np.ones((1, 64), np.float64), datatype="FP64")],
     grpc.StatusCode.INVALID_ARGUMENT, "must be FP32, got FP64"),
    ("nope", lambda: [classifier_input(np.ones((1, 64), np.float32))], grpc.StatusCode.NOT_FOUND,
     "unknown model 'nope'"),
])
def test_errors_carry_the_status_and_the_http_message(server: RunningServer, model, inputs, code, message) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(grpc_url(server))
    with pytest.raises(InferenceServerException, match=message) as error:
        client.infer(model, inputs())
    assert error.value.status() == str(code)


def test_requests_over_the_size_limit_are_refused(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(grpc_url(server))
    big = np.ones((64, 64 * 8), np.float32)  # 128 KiB > the 64 KiB limit of this server
    with pytest.raises(InferenceServerException) as error:
        client.infer("classifier", [classifier_input(big)])
    assert error.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert client.is_server_live()


def test_stream_answers_each_request_in_order_with_its_id(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(grpc_url(server))
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = []
        for i in range(20):
            rows = 1 + i % 3
            x = np.full((rows, 64), i / 10, np.float32)
            bad = i == 7
            inputs = [classifier_input(np.ones((1, 63), np.float32))] if bad else [classifier_input(x)]
            client.async_stream_infer("classifier", inputs, request_id=f"r{i}", model_version="1")
            sent.append((f"r{i}", rows, bad))
        for request_id, rows, bad in sent:
            result, error = results.get(timeout=30)
            if bad:
                assert result is None and "expects [-1, 64]" in str(error)
            else:
                assert error is None
                assert result.get_response().id == request_id
                assert result.as_numpy("OUTPUT__0").shape == (rows, 10)
    finally:
        client.stop_stream()


def test_aio_client_and_stream(server: RunningServer) -> None:
    async def scenario() -> list[str]:
        async with grpcaio.InferenceServerClient(grpc_url(server)) as client:
            assert await client.is_server_ready()
            x = np.zeros((2, 64), np.float32)

            async def requests():  # type: ignore[no-untyped-def]
                for i in range(5):
                    inp = grpcaio.InferInput("INPUT__0", [2, 64], "FP32")
                    inp.set_data_from_numpy(x)
                    yield {"model_name": "classifier", "inputs": [inp], "request_id": f"s{i}"}

            ids = []
            async for result, error in client.stream_infer(requests()):
                assert error is None
                ids.append(result.get_response().id)
            return ids

    assert asyncio.run(scenario()) == [f"s{i}" for i in range(5)]


def test_typed_contents_are_accepted(server: RunningServer) -> None:
    channel = grpc.insecure_channel(grpc_url(server))
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="classifier", model_version="1")
    tensor = request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([0.25] * 64)
    response = stub.ModelInfer(request)
    probabilities = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert probabilities.shape == (10,) and abs(probabilities.sum() - 1) < 1e-5
    tensor.contents.fp32_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 64 values" in error.value.details()


def test_health_service_follows_readiness(server: RunningServer) -> None:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(grpc_url(server)))
    for service in ("", "inference.GRPCInferenceService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_turns_not_serving_when_draining() -> None:
    running = RunningServer(EXAMPLES)
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(grpc_url(running)))
    try:
        running.server.dataplane.start_drain()  # type: ignore[union-attr]
        running.call(running.server.grpc.update_health())  # type: ignore[union-attr]
        assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not grpcclient.InferenceServerClient(grpc_url(running)).is_server_ready()
    finally:
        running.stop()


def test_shared_memory_trace_and_log_rpcs_are_unimplemented(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(grpc_url(server))
    for call in (client.get_system_shared_memory_status, client.get_cuda_shared_memory_status,
                 client.get_trace_settings, client.get_log_settings):
        with pytest.raises(InferenceServerException, match="not supported by this server") as error:
            call()
        assert error.value.status() == str(grpc.StatusCode.UNIMPLEMENTED)
