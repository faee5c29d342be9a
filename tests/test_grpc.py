"""KServe v2 over gRPC: status codes and messages, streaming, health, limits, typed contents."""

from __future__ import annotations

import asyncio
import queue
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import EXAMPLES, RunningServer, Serve

FAULTS = Path(__file__).parent / "fixtures" / "faults"


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
     "Request for unknown model: 'nope' is not found"),
])
def test_errors_carry_the_status_and_the_http_message(server: RunningServer, model: str,
                                                      inputs: Callable[[], list[grpcclient.InferInput]],
                                                      code: grpc.StatusCode, message: str) -> None:
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

            async def requests() -> AsyncIterator[dict[str, Any]]:
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
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 64 values" in (error.value.details() or "")


def test_health_service_follows_readiness(server: RunningServer) -> None:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(grpc_url(server)))
    check = stub.Check  # type: ignore[attr-defined]  # the stubs omit HealthStub's methods
    for service in ("", "inference.GRPCInferenceService"):
        response = check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def faults() -> Iterator[RunningServer]:
    running = RunningServer(FAULTS)
    yield running
    running.stop()


def x_input(value: float, rows: int = 1) -> list[grpcaio.InferInput]:
    inp = grpcaio.InferInput("X", [rows, 1], "FP32")
    inp.set_data_from_numpy(np.full((rows, 1), value, np.float32))
    return [inp]


def test_a_model_that_is_not_ready_is_unavailable(faults: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(grpc_url(faults))
    with pytest.raises(InferenceServerException,
                       match=r"'broken' has no available versions: .*weights are corrupt") as error:
        client.infer("broken", x_input(1))
    assert error.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    assert not client.is_model_ready("broken") and client.is_model_ready("slow")


def test_a_failing_handler_is_internal_for_its_request_only(faults: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(grpc_url(faults))
    for _ in range(3):
        with pytest.raises(InferenceServerException,
                           match=r"model 'crash' version 1 failed: .*the handler broke") as error:
            client.infer("crash", x_input(1))
        assert error.value.status() == str(grpc.StatusCode.INTERNAL)
        assert "Traceback" not in str(error.value)
    assert client.infer("slow", x_input(2)).as_numpy("Y").tolist() == [[3.0]]


def test_a_cancelled_call_is_dropped_and_the_server_serves_on(faults: RunningServer) -> None:
    """The client gives up on a call queued behind a slow batch: it is never computed."""
    async def scenario() -> None:
        async with grpcaio.InferenceServerClient(grpc_url(faults)) as client:
            before = (await client.get_inference_statistics("slow", as_json=True))["model_stats"][0]
            first = asyncio.ensure_future(client.infer("slow", x_input(1)))  # holds the model for 0.5 s
            await asyncio.sleep(0.2)
            queued = asyncio.ensure_future(client.infer("slow", x_input(5, rows=3)))
            await asyncio.sleep(0.1)
            queued.cancel()  # tritonclient's aio call is cancelled, so is the RPC
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert (await first).as_numpy("Y").tolist() == [[2.0]]
            after_cancel = (await client.get_inference_statistics("slow", as_json=True))["model_stats"][0]
            assert (await client.infer("slow", x_input(7))).as_numpy("Y").tolist() == [[8.0]]
            after = (await client.get_inference_statistics("slow", as_json=True))["model_stats"][0]
        rows = int(after_cancel.get("inference_count", 0)) - int(before.get("inference_count", 0))
        assert rows == 1  # the first call's row; the cancelled call's three rows never reached the model
        failed = int(after_cancel["inference_stats"]["fail"].get("count", 0)) - \
            int(before["inference_stats"]["fail"].get("count", 0))
        assert failed == 1  # counted, as Triton counts a cancelled request
        assert int(after.get("inference_count", 0)) - int(after_cancel.get("inference_count", 0)) == 1
    asyncio.run(scenario())


def test_sigterm_lets_in_flight_grpc_requests_finish_then_exits_zero() -> None:
    serve = Serve(FAULTS)
    port = next(entry["grpc_port"] for entry in serve.lines if entry["message"].startswith("listening "))
    target = f"127.0.0.1:{port}"
    try:
        async def scenario() -> tuple[list[list[list[float]]], str, int]:
            async with grpcaio.InferenceServerClient(target) as client:
                in_flight = [asyncio.ensure_future(client.infer("slow", x_input(i), client_timeout=30))
                             for i in range(8)]  # two or three batches at 0.5 s each
                await asyncio.sleep(0.25)
                serve.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                with pytest.raises(InferenceServerException, match="shutting down") as late:
                    await client.infer("slow", x_input(100), client_timeout=30)
                health = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(target))
                check = health.Check  # type: ignore[attr-defined]  # the stubs omit HealthStub's methods
                status = (await check(health_pb2.HealthCheckRequest(), timeout=10)).status
                results = await asyncio.gather(*in_flight)
                return [r.as_numpy("Y").tolist() for r in results], str(late.value.status()), status

        answers, late_status, health_status = asyncio.run(scenario())
        assert answers == [[[i + 1.0]] for i in range(8)]
        assert late_status == str(grpc.StatusCode.UNAVAILABLE)
        assert health_status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert serve.finish() == 0
        assert any(entry["message"].startswith("draining 8 in-flight") for entry in serve.lines)
    finally:
        serve.kill()


def test_cuda_shared_memory_trace_and_log_rpcs_are_unimplemented(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(grpc_url(server))
    for call in (lambda: client.register_cuda_shared_memory("r", b"aGFuZGxl", 0, 64), client.get_trace_settings,
                 client.get_log_settings):
        with pytest.raises(InferenceServerException, match="not supported by this server") as error:
            call()
        assert error.value.status() == str(grpc.StatusCode.UNIMPLEMENTED)
    # none registered, so none to list or unregister (Triton's examples clear both kinds first)
    assert not client.get_cuda_shared_memory_status().regions
    client.unregister_cuda_shared_memory()


def test_the_access_interceptor_runs_only_when_something_is_restricted() -> None:
    # grpcio runs an interceptor's coroutines on every call; with nothing restricted there is none
    from serving.access import AccessPolicy, parse_restrictions
    from serving.grpc_access import RestrictedProtocols, interceptors

    assert interceptors(AccessPolicy()) == []
    restricted = interceptors(AccessPolicy.of(parse_restrictions("model-repository:admin=s")))
    assert [type(interceptor) for interceptor in restricted] == [RestrictedProtocols]
