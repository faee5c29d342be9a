"""The issue's Triton repository: a pb_utils preprocessor and an ONNX classifier, chained by an ensemble.

Built by the test as a Triton user writes it (the preprocessor only imports
`triton_python_backend_utils`), served, and driven by tritonclient over HTTP and gRPC (sync,
aio, streams); the answers are checked against ONNX Runtime called directly.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .backends import onnx_models
from .conftest import RunningServer, write_model

ort = pytest.importorskip("onnxruntime")

PREPROCESS = """
    name: "preprocess"
    backend: "python"
    max_batch_size: 8
    input [ { name: "CSV", data_type: TYPE_STRING, dims: [ 1 ] } ]
    output [ { name: "FEATURES", data_type: TYPE_FP32, dims: [ 4 ] } ]
    parameters { key: "scale" value: { string_value: "0.5" } }
    dynamic_batching { }
"""
PREPROCESS_PY = """
    import json

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            self.scale = float(config["parameters"]["scale"]["string_value"])
            output = pb_utils.get_output_config_by_name(config, "FEATURES")
            self.dtype = pb_utils.triton_string_to_numpy(output["data_type"])

        def execute(self, requests):
            responses = []
            for request in requests:
                rows = pb_utils.get_input_tensor_by_name(request, "CSV").as_numpy()
                try:
                    values = [[float(v) for v in row[0].decode().split(",")] for row in rows]
                except ValueError as exc:
                    error = pb_utils.TritonError(f"CSV is not numbers: {exc}", pb_utils.TritonError.INVALID_ARG)
                    responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                    continue
                features = np.asarray(values, dtype=self.dtype) * self.scale
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("FEATURES", features)]))
            return responses
"""
CLASSIFIER = """
    name: "classifier"
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "PROBS", data_type: TYPE_FP32, dims: [ 3 ] },
             { name: "LABEL", data_type: TYPE_INT64, dims: [ 1 ] } ]
    dynamic_batching { max_queue_delay_microseconds: 500 }
"""
ENSEMBLE = """
    name: "text_classifier"
    platform: "ensemble"
    max_batch_size: 8
    input [ { name: "CSV", data_type: TYPE_STRING, dims: [ 1 ] } ]
    output [ { name: "PROBS", data_type: TYPE_FP32, dims: [ 3 ] },
             { name: "LABEL", data_type: TYPE_INT64, dims: [ 1 ] } ]
    ensemble_scheduling {
      step [
        { model_name: "preprocess" model_version: -1
          input_map { key: "CSV" value: "CSV" } output_map { key: "FEATURES" value: "features" } },
        { model_name: "classifier" model_version: -1
          input_map { key: "INPUT" value: "features" }
          output_map { key: "PROBS" value: "PROBS" } output_map { key: "LABEL" value: "LABEL" } }
      ]
    }
"""
ECHOED = """
    name: "echoed"
    platform: "ensemble"
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
    output [ { name: "JSON", data_type: TYPE_STRING, dims: [ 1 ] } ]
    ensemble_scheduling { step [ { model_name: "args_echo" model_version: -1
        input_map { key: "IN" value: "IN" } output_map { key: "JSON" value: "JSON" } } ] }
"""
ARGS_ECHO = Path(__file__).parent / "fixtures" / "triton" / "args_echo"
ROWS = [b"1,2,3,4", b"-1,0.5,2,8", b"0,0,0,0"]


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return onnx_models.classifier()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, onnx_bytes: bytes) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("triton-repository")
    write_model(root, "preprocess", PREPROCESS, {1: {"model.py": PREPROCESS_PY}})
    write_model(root, "classifier", CLASSIFIER, {1: {"model.onnx": onnx_bytes}})
    write_model(root, "text_classifier", ENSEMBLE, {1: {}})
    write_model(root, "args_echo", (ARGS_ECHO / "config.pbtxt").read_text(),
                {1: {"model.py": (ARGS_ECHO / "1" / "model.py").read_text()}})
    write_model(root, "echoed", ECHOED, {1: {}})
    running = RunningServer(Path(root))
    yield running
    running.stop()


def expected(onnx_bytes: bytes, rows: list[bytes]) -> dict[str, np.ndarray]:
    """ONNX Runtime called directly on what the preprocessor computes."""
    features = np.array([[float(v) for v in row.decode().split(",")] for row in rows], np.float32) * 0.5
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    probs, label = session.run(["PROBS", "LABEL"], {"INPUT": features})
    return {"PROBS": probs, "LABEL": label}


def csv(module: Any, rows: list[bytes]) -> Any:
    tensor = module.InferInput("CSV", [len(rows), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(rows, dtype=object).reshape(-1, 1))
    return tensor


def check(result: Any, want: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(result.as_numpy("PROBS"), want["PROBS"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result.as_numpy("LABEL"), want["LABEL"])


def grpc_url(server: RunningServer) -> str:
    return f"127.0.0.1:{server.server.grpc_port}"


def test_over_http_and_grpc(server: RunningServer, onnx_bytes: bytes) -> None:
    want = expected(onnx_bytes, ROWS)
    check(httpclient.InferenceServerClient(server.url).infer("text_classifier", [csv(httpclient, ROWS)]), want)
    check(grpcclient.InferenceServerClient(grpc_url(server)).infer("text_classifier", [csv(grpcclient, ROWS)]),
          want)


def test_over_grpc_aio_and_its_stream(server: RunningServer, onnx_bytes: bytes) -> None:
    async def scenario() -> tuple[Any, list[Any]]:
        async with grpcaio.InferenceServerClient(grpc_url(server)) as client:
            single = await client.infer("text_classifier", [csv(grpcaio, ROWS[:1])])

            async def requests() -> AsyncIterator[dict[str, Any]]:
                for i, row in enumerate(ROWS):
                    yield {"model_name": "text_classifier", "inputs": [csv(grpcaio, [row])], "request_id": str(i)}

            streamed = []
            async for result, error in client.stream_infer(requests()):
                assert error is None
                streamed.append(result)
            return single, streamed

    single, streamed = asyncio.run(scenario())
    check(single, expected(onnx_bytes, ROWS[:1]))
    assert sorted(r.get_response().id for r in streamed) == ["0", "1", "2"]
    for result in streamed:
        check(result, expected(onnx_bytes, [ROWS[int(result.get_response().id)]]))


def test_over_a_sync_grpc_stream(server: RunningServer, onnx_bytes: bytes) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url(server))
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, row in enumerate(ROWS):
            client.async_stream_infer("text_classifier", [csv(grpcclient, [row])], request_id=f"s{i}")
        got = [answers.get(timeout=30) for _ in ROWS]
    finally:
        client.stop_stream()
    for result, error in got:
        assert error is None
        check(result, expected(onnx_bytes, [ROWS[int(result.get_response().id[1:])]]))


def test_the_preprocessors_error_response_fails_only_its_request(server: RunningServer, onnx_bytes: bytes) -> None:
    client = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("text_classifier", [csv(httpclient, [b"1,2,x,4"])])
    assert caught.value.status() == "400"
    assert caught.value.message().startswith(
        "in ensemble 'text_classifier', step 1 (model 'preprocess'): CSV is not numbers")
    check(client.infer("text_classifier", [csv(httpclient, ROWS)]), expected(onnx_bytes, ROWS))


def test_each_model_counts_the_ensembles_requests(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)

    def successes() -> dict[str, int]:
        return {entry["name"]: entry["inference_stats"]["success"]["count"]
                for entry in client.get_inference_statistics()["model_stats"]}

    before = successes()
    client.infer("text_classifier", [csv(httpclient, ROWS)])
    after = successes()
    assert {name: after[name] - before[name] for name in ("preprocess", "classifier", "text_classifier")} == {
        "preprocess": 1, "classifier": 1, "text_classifier": 1}
    assert after["args_echo"] == before["args_echo"]


def test_a_step_sees_the_clients_request_id_and_parameters(server: RunningServer) -> None:
    tensor = httpclient.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([7], np.int32))
    result = httpclient.InferenceServerClient(server.url).infer("echoed", [tensor], request_id="r-9",
                                                                parameters={"custom": "x", "n": 3})
    seen = json.loads(result.as_numpy("JSON")[0])
    assert (seen["request_id"], seen["requested_output_names"]) == ("r-9", ["JSON"])
    assert seen["parameters"].items() >= {"custom": "x", "n": 3}.items()
