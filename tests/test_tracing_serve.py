"""serve's spans, end to end: a real server, real tritonclient clients with a traceparent, the OTLP
exporters of serving.tracing sending to tests/otlp.py's receiver over OTLP/HTTP and gRPC."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving import tracing
from tests.conftest import RunningServer, write_model
from tests.otlp import Receiver, Span

ROOT = Path(__file__).resolve().parent
ECHO = """
    backend: "python"
    max_batch_size: 8
    input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
    output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]
    parameters { key: "warmup" value { string_value: "false" } }
"""
ECHO_PY = """
    import serving

    class Echo(serving.Model):
        def predict(self, inputs):
            if float(inputs["X"].max()) < 0:
                raise RuntimeError("negative input")
            return {"Y": inputs["X"]}
"""
ASYNC_CALLER_PY = """
    import serving

    class Caller(serving.Model):
        async def predict(self, inputs):
            return {"Y": (await self.models.infer("echo", None, {"X": inputs["X"].numpy()}))["Y"]}
"""
BLOCKING_CALLER_PY = """
    import serving

    class Caller(serving.Model):
        def predict(self, inputs):
            return {"Y": self.models.infer_blocking("echo", None, {"X": inputs["X"].numpy()}, timeout_s=30)["Y"]}
"""


def caller() -> tuple[str, str, str]:
    """A client's traceparent (sampled), its trace id and its span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def x(value: float = 1.0, rows: int = 1) -> np.ndarray:
    return np.full((rows, 1), value, dtype=np.float32)


def http_infer(server: RunningServer, model: str, headers: dict[str, str], value: float = 1.0,
               request_id: str = "") -> Any:
    tensor = httpclient.InferInput("X", [1, 1], "FP32")
    tensor.set_data_from_numpy(x(value))
    with httpclient.InferenceServerClient(server.url) as client:
        return client.infer(model, [tensor], headers=headers, request_id=request_id)


def grpc_infer(server: RunningServer, model: str, headers: dict[str, str], value: float = 1.0,
               request_id: str = "") -> Any:
    tensor = grpcclient.InferInput("X", [1, 1], "FP32")
    tensor.set_data_from_numpy(x(value))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as client:
        return client.infer(model, [tensor], headers=headers, request_id=request_id)


@pytest.fixture(autouse=True)
def tracing_off_afterwards() -> Iterator[None]:
    """Whatever a test leaves on is switched off: the next test's server must not trace by accident."""
    yield
    tracing.shutdown(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("traced")
    write_model(repo, "echo", ECHO + "dynamic_batching { }", {1: {"model.py": ECHO_PY}})
    write_model(repo, "batched", ECHO + "dynamic_batching { preferred_batch_size: [ 4 ] "
                "max_queue_delay_microseconds: 10000000 }", {1: {"model.py": ECHO_PY}})
    write_model(repo, "async_caller", ECHO, {1: {"model.py": ASYNC_CALLER_PY}})
    write_model(repo, "blocking_caller", ECHO, {1: {"model.py": BLOCKING_CALLER_PY}})
    for name in ("pipeline", "preprocessor", "classifier"):
        shutil.copytree(ROOT / "fixtures" / "ensembles" / name, repo / name)
    shutil.copytree(ROOT / "fixtures" / "triton" / "repeat_int32", repo / "repeat_int32",
                    ignore=shutil.ignore_patterns("__pycache__"))
    running = RunningServer(repo)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def traced(receiver: Receiver) -> Iterator[tracing.Tracing]:
    """Tracing on, exporting over OTLP/HTTP to the receiver (the server reads it per request)."""
    on = tracing.configure("serve", receiver.env("http/protobuf"))
    assert on is not None
    receiver.clear()
    yield on
    tracing.shutdown()


def of_trace(receiver: Receiver, trace_id: str, count: int) -> dict[str, list[Span]]:
    """The spans of one trace by name, once ``count`` have arrived."""
    by_name: dict[str, list[Span]] = {}
    for span in receiver.wait_for(lambda s: s.trace_id == trace_id, count=count):
        by_name.setdefault(span.name, []).append(span)
    return by_name


@pytest.mark.parametrize("exporter", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("client", ["http", "grpc"])
def test_a_request_is_one_trace_under_the_callers_span(server: RunningServer, receiver: Receiver, client: str,
                                                        exporter: str) -> None:
    tracing.configure("serve", receiver.env(exporter))  # type: ignore[arg-type]  # the literal, parametrized
    try:
        traceparent, trace_id, parent_id = caller()
        infer = http_infer if client == "http" else grpc_infer
        infer(server, "echo", {"traceparent": traceparent}, request_id="req-7")
        spans = of_trace(receiver, trace_id, 3)
    finally:
        tracing.shutdown()
    name = "POST /v2/models/{model_name}/infer" if client == "http" else "inference.GRPCInferenceService/ModelInfer"
    [request], [queued], [compute] = spans[name], spans["queue"], spans["compute"]
    assert (request.kind, request.parent_span_id, request.service) == ("SERVER", parent_id, "serve")
    assert request.attributes["triton.model_name"] == "echo" and request.attributes["triton.model_version"] == 1
    assert request.attributes["triton.request_id"] == "req-7" and request.attributes["serving.rows"] == 1
    if client == "http":
        assert request.attributes["http.response.status_code"] == 200
        assert request.attributes["http.route"] == "/v2/models/{model_name}/infer"
    else:
        assert request.attributes["rpc.grpc.status_code"] == 0 and request.attributes["rpc.method"] == "ModelInfer"
    assert request.status == "UNSET" and queued.parent_span_id == request.span_id
    assert request.start_unix_nano <= queued.start_unix_nano <= queued.end_unix_nano <= compute.start_unix_nano
    assert compute.parent_span_id == request.span_id and compute.end_unix_nano <= request.end_unix_nano
    assert [(link.trace_id, link.span_id) for link in compute.links] == [(trace_id, request.span_id)]
    assert compute.attributes["serving.batch_size"] == 1 and compute.attributes["serving.batch_requests"] == 1


def test_a_batch_has_one_compute_span_linked_to_every_request(server: RunningServer, receiver: Receiver,
                                                              traced: tracing.Tracing) -> None:
    callers = [caller() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:  # preferred_batch_size 4 and a long delay: the four make one batch
        list(pool.map(lambda c: http_infer(server, "batched", {"traceparent": c[0]}), callers))
    requests = {span.trace_id: span for span in receiver.wait_for(name="POST /v2/models/{model_name}/infer", count=4)}
    [compute] = receiver.wait_for(lambda s: s.attributes.get("triton.model_name") == "batched", name="compute")
    assert compute.attributes["serving.batch_size"] == 4 and compute.attributes["serving.batch_requests"] == 4
    assert sorted((link.trace_id, link.span_id) for link in compute.links) == \
        sorted((trace_id, requests[trace_id].span_id) for _, trace_id, _ in callers)
    assert (compute.trace_id, compute.parent_span_id) in {(t, s.span_id) for t, s in requests.items()}
    for _, trace_id, parent_id in callers:  # each request in its own caller's trace, with its own wait
        assert requests[trace_id].parent_span_id == parent_id
        [queued] = receiver.wait_for(lambda s, t=trace_id: s.trace_id == t, name="queue")  # type: ignore[misc]
        assert queued.parent_span_id == requests[trace_id].span_id


def test_each_request_of_a_stream_joins_the_streams_trace(server: RunningServer, receiver: Receiver,
                                                          traced: tracing.Tracing) -> None:
    traceparent, trace_id, parent_id = caller()
    answers: list[Any] = []
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as client:
        client.start_stream(callback=lambda result, error: answers.append(error or result),
                            headers={"traceparent": traceparent})
        for value in (1.0, 2.0):
            tensor = grpcclient.InferInput("X", [1, 1], "FP32")
            tensor.set_data_from_numpy(x(value))
            client.async_stream_infer("echo", [tensor], request_id=f"s{value:g}")
        client.stop_stream()
    assert len(answers) == 2 and all(not isinstance(a, Exception) for a in answers)
    spans = of_trace(receiver, trace_id, 6)
    streamed = spans["inference.GRPCInferenceService/ModelStreamInfer"]
    assert sorted(s.attributes["triton.request_id"] for s in streamed) == ["s1", "s2"]
    assert all(s.parent_span_id == parent_id and s.kind == "SERVER" for s in streamed)
    assert all(s.attributes["triton.model_name"] == "echo" for s in streamed)


def test_a_decoupled_requests_batch_links_to_it(server: RunningServer, receiver: Receiver,
                                                traced: tracing.Tracing) -> None:
    traceparent, trace_id, parent_id = caller()
    answers: list[Any] = []
    inputs = [grpcclient.InferInput("IN", [2], "INT32"), grpcclient.InferInput("DELAY", [2], "UINT32"),
              grpcclient.InferInput("WAIT", [1], "UINT32")]
    for tensor, values in zip(inputs, ([4, 5], [0, 0], [0]), strict=True):
        tensor.set_data_from_numpy(np.array(values, dtype=np.int32 if tensor.name() == "IN" else np.uint32))
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as client:
        client.start_stream(callback=lambda result, error: answers.append(error or result),
                            headers={"traceparent": traceparent})
        client.async_stream_infer("repeat_int32", inputs, request_id="d1")
        deadline = time.monotonic() + 30
        while len(answers) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        client.stop_stream()
    assert [int(a.as_numpy("OUT")[0]) for a in answers] == [4, 5]
    spans = of_trace(receiver, trace_id, 3)
    (request,) = spans["inference.GRPCInferenceService/ModelStreamInfer"]
    assert request.parent_span_id == parent_id and request.attributes["triton.model_name"] == "repeat_int32"
    (compute,) = spans["compute"]
    assert (trace_id, request.span_id) in {(link.trace_id, link.span_id) for link in compute.links}



def test_an_ensembles_steps_stay_in_the_callers_trace(server: RunningServer, receiver: Receiver,
                                                      traced: tracing.Tracing) -> None:
    traceparent, trace_id, _ = caller()
    tensor = httpclient.InferInput("RAW", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    with httpclient.InferenceServerClient(server.url) as client:
        client.infer("pipeline", [tensor], headers={"traceparent": traceparent})
    spans = of_trace(receiver, trace_id, 7)  # the request, two steps, each step's queue and compute
    [request] = spans["POST /v2/models/{model_name}/infer"]
    steps = spans["infer preprocessor"] + spans["infer classifier"]
    assert all(step.kind == "INTERNAL" and step.parent_span_id == request.span_id for step in steps)
    computes = {c.attributes["triton.model_name"]: c for c in spans["compute"]}
    for step in steps:
        model = step.attributes["triton.model_name"]
        assert computes[model].parent_span_id == step.span_id
        assert [link.span_id for link in computes[model].links] == [step.span_id]


@pytest.mark.parametrize("model", ["async_caller", "blocking_caller"])
def test_a_models_own_calls_stay_in_the_callers_trace(server: RunningServer, receiver: Receiver,
                                                      traced: tracing.Tracing, model: str) -> None:
    traceparent, trace_id, _ = caller()
    grpc_infer(server, model, {"traceparent": traceparent})
    spans = of_trace(receiver, trace_id, 6)  # request, its queue and compute, the call, its queue and compute
    [request], [call] = spans["inference.GRPCInferenceService/ModelInfer"], spans["infer echo"]
    computes = {c.attributes["triton.model_name"]: c for c in spans["compute"]}
    assert computes[model].parent_span_id == request.span_id
    assert call.parent_span_id == computes[model].span_id and call.kind == "INTERNAL"
    assert computes["echo"].parent_span_id == call.span_id


def test_errors_say_whose_fault(server: RunningServer, receiver: Receiver, traced: tracing.Tracing) -> None:
    traceparent, trace_id, _ = caller()
    tensor = httpclient.InferInput("X", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.ones((1, 1), dtype=np.int32))
    with httpclient.InferenceServerClient(server.url) as client, pytest.raises(Exception, match="must be FP32"):
        client.infer("echo", [tensor], headers={"traceparent": traceparent})
    [wrong] = of_trace(receiver, trace_id, 1)["POST /v2/models/{model_name}/infer"]
    assert wrong.attributes["http.response.status_code"] == 400 and wrong.attributes["error.type"] == "InvalidInput"
    assert wrong.status == "UNSET"  # the client's mistake, not the server's error
    traceparent, trace_id, _ = caller()
    with pytest.raises(Exception, match="negative input"):
        grpc_infer(server, "echo", {"traceparent": traceparent}, value=-1.0)
    spans = of_trace(receiver, trace_id, 3)
    [failed], [compute] = spans["inference.GRPCInferenceService/ModelInfer"], spans["compute"]
    assert failed.status == "ERROR" and "negative input" in failed.status_message
    assert failed.attributes["rpc.grpc.status_code"] == 13 and failed.attributes["error.type"] == "ModelError"
    assert compute.status == "ERROR" and compute.attributes["serving.failed_requests"] == 1


def test_a_versioned_path_and_an_unknown_model(server: RunningServer, receiver: Receiver,
                                               traced: tracing.Tracing) -> None:
    traceparent, trace_id, _ = caller()
    tensor = httpclient.InferInput("X", [1, 1], "FP32")
    tensor.set_data_from_numpy(x())
    with httpclient.InferenceServerClient(server.url) as client:
        client.infer("echo", [tensor], model_version="1", headers={"traceparent": traceparent})
        with pytest.raises(Exception, match="unknown"):
            client.infer("unknown", [tensor], headers={"traceparent": traceparent})
    spans = of_trace(receiver, trace_id, 4)
    [versioned] = spans["POST /v2/models/{model_name}/versions/{model_version}/infer"]
    assert versioned.attributes["http.route"] == "/v2/models/{model_name}/versions/{model_version}/infer"
    assert versioned.attributes["triton.model_version"] == 1
    [unknown] = spans["POST /v2/models/{model_name}/infer"]
    assert unknown.attributes["triton.model_name"] == "unknown" and unknown.attributes["error.type"] == "NotFound"
    assert unknown.attributes["http.response.status_code"] == 404 and unknown.status == "UNSET"
