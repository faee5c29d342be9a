"""Decoupled models (response senders) over gRPC ModelStreamInfer, with tritonclient's stream clients."""

from __future__ import annotations

import asyncio
import queue
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, write_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "python_backend"
DEADLINE_S = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("repo")
    shutil.copytree(FIXTURES / "repeat_int32", repository / "repeat_int32")
    shutil.copytree(FIXTURES / "double", repository / "double")
    write_model(repository, "unsent", """
        backend: "python"
        max_batch_size: 0
        model_transaction_policy { decoupled: true }
        input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
        """, {1: {"model.py": """
        class TritonPythonModel:
            def execute(self, requests):
                return None  # never sends anything: the dropped senders end the streams
        """}})
    running = RunningServer(repository)
    yield running
    running.stop()


def _inputs(module: Any, values: list[int], delays: list[int], wait: int = 0) -> list[Any]:
    arrays = {"IN": np.array(values, np.int32), "DELAY": np.array(delays, np.uint32),
              "WAIT": np.array([wait], np.uint32)}
    tensors = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), "INT32" if name == "IN" else "UINT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _collect(answers: queue.Queue[Any], count: int) -> list[Any]:
    return [answers.get(timeout=DEADLINE_S) for _ in range(count)]


def test_repeat_int32_streams_one_response_per_element(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("repeat_int32", _inputs(grpcclient, [4, 5, 6], [30, 10, 10], wait=20),
                                  request_id="r1", enable_empty_final_response=True)
        got = _collect(answers, 4)
    finally:
        client.stop_stream()
        client.close()
    assert all(error is None for _, error in got)
    results = [result for result, _ in got]
    assert [r.as_numpy("OUT").tolist() for r in results[:3]] == [[4], [5], [6]]
    assert [r.as_numpy("IDX").tolist() for r in results[:3]] == [[0], [1], [2]]
    messages = [r.get_response() for r in results]
    assert {m.id for m in messages} == {"r1"}
    assert [m.parameters["triton_final_response"].bool_param for m in messages] == [False, False, False, True]
    assert not messages[3].outputs and messages[3].model_version == ""  # the empty final one, as Triton sends it
    assert answers.empty()


def test_two_streamed_requests_interleave_and_count_once_each(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    before = client.get_inference_statistics("repeat_int32", as_json=True)["model_stats"][0]
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        # the slow one first: the quick one's answers overtake it, as the model sends them
        client.async_stream_infer("repeat_int32", _inputs(grpcclient, [1, 2], [400, 10]), request_id="slow")
        client.async_stream_infer("repeat_int32", _inputs(grpcclient, [7], [0]), request_id="quick")
        got = _collect(answers, 3)
    finally:
        client.stop_stream()
        client.close()
    ids = [result.get_response().id for result, _ in got]
    assert ids == ["quick", "slow", "slow"]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    after = client.get_inference_statistics("repeat_int32", as_json=True)["model_stats"][0]
    client.close()
    assert int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"].get(
        "count", 0)) == 2


def test_aio_stream_and_an_ordinary_model_on_the_same_stream(server: RunningServer) -> None:
    async def run() -> list[tuple[str, Any]]:
        client = aioclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": "repeat_int32", "inputs": _inputs(aioclient, [9, 8], [0, 0]), "request_id": "rep"}
            x = aioclient.InferInput("INPUT0", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            yield {"model_name": "double", "inputs": [x], "request_id": "dbl"}

        seen: list[tuple[str, Any]] = []
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None
                response = result.get_response()
                seen.append((response.id, result))
                if len(seen) == 3:
                    break
        finally:
            await client.close()
        return seen

    seen = asyncio.run(asyncio.wait_for(run(), DEADLINE_S))
    by_id: dict[str, list[Any]] = {}
    for request_id, result in seen:
        by_id.setdefault(request_id, []).append(result)
    assert [r.as_numpy("OUT").tolist() for r in by_id["rep"]] == [[9], [8]]
    (double,) = by_id["dbl"]
    np.testing.assert_array_equal(double.as_numpy("OUTPUT0"), np.full((1, 4), 2, np.float32))
    assert "triton_final_response" not in double.get_response().parameters  # not asked for


def test_an_ordinary_model_on_a_stream_marks_its_one_response_final(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    x = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    try:
        client.async_stream_infer("double", [x], request_id="dbl", enable_empty_final_response=True)
        ((result, error),) = _collect(answers, 1)
    finally:
        client.stop_stream()
        client.close()
    assert error is None
    assert result.get_response().parameters["triton_final_response"].bool_param is True


def test_an_error_response_in_a_stream_and_a_released_sender(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("repeat_int32", _inputs(grpcclient, [1, 2], [0]), request_id="bad")
        ((_, shape_error),) = _collect(answers, 1)
        x = grpcclient.InferInput("IN", [1], "INT32")
        x.set_data_from_numpy(np.array([1], np.int32))
        client.async_stream_infer("unsent", [x], request_id="dropped")
        ((_, dropped),) = _collect(answers, 1)
    finally:
        client.stop_stream()
        client.close()
    assert "IN and DELAY must have the same shape" in shape_error.message()
    assert "without sending the final flag" in dropped.message()


def test_http_and_unary_grpc_refuse_a_decoupled_model(server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException) as refused:
        http.infer("repeat_int32", _inputs(httpclient, [1], [0]))
    http.close()
    assert refused.value.status() == "501"
    assert refused.value.message().startswith(
        "HTTP end point doesn't support models with decoupled transaction policy")
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    with pytest.raises(InferenceServerException) as unary:
        grpc.infer("repeat_int32", _inputs(grpcclient, [1], [0]))
    grpc.close()
    assert unary.value.status() == "StatusCode.UNIMPLEMENTED"
    assert unary.value.message().startswith("ModelInfer RPC doesn't support models with decoupled transaction policy")


def test_a_cancelled_stream_stops_the_model_and_counts_as_cancelled(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    before = client.get_inference_statistics("repeat_int32", as_json=True)["model_stats"][0]["inference_stats"]
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("repeat_int32", _inputs(grpcclient, list(range(100)), [0] + [50] * 99),
                              request_id="long")
    ((first, error),) = _collect(answers, 1)
    assert error is None and first.as_numpy("OUT").tolist() == [0]
    client.stop_stream(cancel_requests=True)  # the client goes away mid-stream
    deadline = time.monotonic() + DEADLINE_S
    while True:
        stats = client.get_inference_statistics("repeat_int32", as_json=True)["model_stats"][0]["inference_stats"]
        if int(stats["fail"].get("count", 0)) > int(before["fail"].get("count", 0)):
            break
        assert time.monotonic() < deadline, "the cancelled request was never counted"
        time.sleep(0.02)
    client.close()
    # the model's sending thread saw is_cancelled() and stopped, long before its 99 x 50 ms
    assert server.server.repository is not None
    handler = server.server.repository.get("repeat_int32").instances[0].handler
    while any(thread.is_alive() for thread in handler.model.threads):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the model kept sending to a client that went away"
        time.sleep(0.02)
    assert time.monotonic() < deadline
    http = httpclient.InferenceServerClient(server.url)
    assert http.is_model_ready("repeat_int32")
    http.close()
