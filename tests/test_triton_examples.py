"""Triton's Python client examples (triton-inference-server/client, src/python/examples/simple_*),
as tests: the same calls, the same checks, against serve with Triton's example models.

One test per example, named after it; the ones that need CUDA shared memory or sequence
batching are left out. The server answers to the name "triton" (--server-name, which the
metadata examples check) and accepts system shared memory (--allow-client-shm true).
"""

from __future__ import annotations

import asyncio
import queue
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from tritonclient import utils
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer
from .shm_regions import TRITON, Regions

MODELS = ("simple", "simple_string", "simple_identity", "repeat_int32")
A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), -1, dtype=np.int32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    for name in MODELS:
        shutil.copytree(TRITON / name, root / name)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(repository, server_name="triton", allow_client_shm=True,
                            model_control_mode="explicit", load_model=("*",))
    yield running
    running.stop()


@pytest.fixture
def regions() -> Iterator[Regions]:
    made = Regions()
    yield made
    made.destroy()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url, concurrency=2)
    yield client
    client.close()


@pytest.fixture
def grpc(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    yield client
    client.close()


def simple_request(module: Any, binary: tuple[bool, bool] = (True, True), outputs: bool = True
                   ) -> tuple[list[Any], list[Any] | None]:
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    if module in (httpclient, httpaio):
        inputs[0].set_data_from_numpy(A, binary_data=binary[0])
        inputs[1].set_data_from_numpy(B, binary_data=binary[1])
        wanted = [module.InferRequestedOutput("OUTPUT0", binary_data=binary[1]),
                  module.InferRequestedOutput("OUTPUT1", binary_data=binary[0])]
    else:
        inputs[0].set_data_from_numpy(A)
        inputs[1].set_data_from_numpy(B)
        wanted = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    return inputs, wanted if outputs else None


def check_simple(result: Any) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def strings(values: np.ndarray) -> np.ndarray:
    return np.array([str(v).encode() for v in values.reshape(-1)], dtype=object).reshape(values.shape)


# -- gRPC ----------------------------------------------------------------------------------

def test_simple_grpc_infer_client(grpc: grpcclient.InferenceServerClient) -> None:
    for algorithm in (None, "gzip", "deflate"):
        inputs, outputs = simple_request(grpcclient)
        check_simple(grpc.infer("simple", inputs, outputs=outputs, headers={"test": "1"}, client_timeout=10,
                                compression_algorithm=algorithm))
        assert len(grpc.get_inference_statistics(model_name="simple").model_stats) == 1
        check_simple(grpc.infer("simple", simple_request(grpcclient)[0], compression_algorithm=algorithm))


def test_simple_grpc_aio_infer_client(server: RunningServer) -> None:
    async def run() -> None:
        client = grpcaio.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
        inputs, outputs = simple_request(grpcaio)
        check_simple(await client.infer("simple", inputs, outputs=outputs, headers={"test": "1"}))
        assert len((await client.get_inference_statistics(model_name="simple")).model_stats) == 1
        for result in await asyncio.gather(client.infer("simple", inputs), client.infer("simple", inputs)):
            check_simple(result)
        await client.close()
    asyncio.run(run())


def test_simple_grpc_async_infer_client(grpc: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    inputs, outputs = simple_request(grpcclient)
    grpc.async_infer("simple", inputs, lambda result, error: answers.put(error or result), outputs=outputs,
                     client_timeout=10)
    check_simple(answers.get(timeout=10))


def test_simple_grpc_custom_args_client(server: RunningServer) -> None:
    channel_args = [("grpc.max_send_message_length", 1024 * 1024), ("grpc.max_receive_message_length", 1024 * 1024),
                    ("grpc.keepalive_time_ms", 2**31 - 1), ("grpc.keepalive_timeout_ms", 20000),
                    ("grpc.keepalive_permit_without_calls", False), ("grpc.http2.max_pings_without_data", 2),
                    ("grpc.dns_enable_srv_queries", 1)]
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}", channel_args=channel_args) as client:
        inputs, outputs = simple_request(grpcclient)
        check_simple(client.infer("simple", inputs, outputs=outputs, headers={"test": "1"}))


def test_simple_grpc_keepalive_client(server: RunningServer) -> None:
    options = grpcclient.KeepAliveOptions(keepalive_time_ms=2**31 - 1, keepalive_timeout_ms=20000,
                                          keepalive_permit_without_calls=False, http2_max_pings_without_data=2)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}", keepalive_options=options) as client:
        inputs, outputs = simple_request(grpcclient)
        check_simple(client.infer("simple", inputs, outputs=outputs, headers={"test": "1"}))


def test_simple_grpc_custom_repeat(grpc: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    inputs = [grpcclient.InferInput("IN", [10], "INT32"), grpcclient.InferInput("DELAY", [10], "UINT32"),
              grpcclient.InferInput("WAIT", [1], "UINT32")]
    inputs[0].set_data_from_numpy(np.arange(100, 110, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.full(10, 10, dtype=np.uint32))  # the example's 1000 ms each, shortened
    inputs[2].set_data_from_numpy(np.array([10], dtype=np.uint32))
    grpc.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        grpc.async_stream_infer("repeat_int32", inputs, outputs=[grpcclient.InferRequestedOutput("OUT")])
        received = [answers.get(timeout=30) for _ in range(10)]
    finally:
        grpc.stop_stream()
    assert not [item for item in received if isinstance(item, InferenceServerException)], received
    assert [item.as_numpy("OUT").tolist() for item in received] == [[value] for value in range(100, 110)]


def test_simple_grpc_health_metadata(grpc: grpcclient.InferenceServerClient) -> None:
    assert grpc.is_server_live(headers={"test": "1", "dummy": "2"}) and grpc.is_server_ready()
    assert grpc.is_model_ready("simple")
    assert grpc.get_server_metadata().name == "triton"
    assert grpc.get_model_metadata("simple", headers={"test": "1", "dummy": "2"}).name == "simple"
    with pytest.raises(InferenceServerException) as error:
        grpc.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in error.value.message()
    assert grpc.get_model_config("simple").config.name == "simple"


def test_simple_grpc_string_infer_client(grpc: grpcclient.InferenceServerClient) -> None:
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "BYTES"), grpcclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(strings(A))
    inputs[1].set_data_from_numpy(strings(np.ones((1, 16), np.int32)))
    result = grpc.infer("simple_string", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0"),
                                                          grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [int(v) for v in result.as_numpy("OUTPUT0")[0]] == list(range(1, 17))
    assert [int(v) for v in result.as_numpy("OUTPUT1")[0]] == list(range(-1, 15))
    for data in (np.array([b"he\x00llo"] * 16, dtype=object).reshape(1, 16),
                 np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)):
        identity = [grpcclient.InferInput("INPUT0", list(data.shape), "BYTES")]
        identity[0].set_data_from_numpy(data)
        got = grpc.infer("simple_identity", identity, outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
        assert np.array_equal(data, got.as_numpy("OUTPUT0") if data.dtype == object else
                              np.char.encode(got.as_numpy("OUTPUT0").astype(str)))


def shm_example(client: Any, module: Any, regions: Regions) -> None:
    """simple_{http,grpc}_shm_client: both inputs in one region, both outputs in another."""
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    ones = np.ones(16, dtype=np.int32)
    out_handle, out_key = regions.make("output_data", 128)
    client.register_system_shared_memory("output_data", out_key, 128)
    in_handle, in_key = regions.make("input_data", 128)
    shm.set_shared_memory_region(in_handle, [A[0]])
    shm.set_shared_memory_region(in_handle, [ones], offset=64)
    client.register_system_shared_memory("input_data", in_key, 128)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("input_data", 64)
    inputs[1].set_shared_memory("input_data", 64, offset=64)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output_data", 64)
    outputs[1].set_shared_memory("output_data", 64, offset=64)
    result = client.infer("simple", inputs, outputs=outputs)
    out = result.get_output("OUTPUT0")
    datatype, shape = (out["datatype"], out["shape"]) if isinstance(out, dict) else (out.datatype, out.shape)
    dtype = utils.triton_to_np_dtype(datatype)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, dtype, shape), A + ones)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, dtype, shape, offset=64), A - ones)
    assert client.get_system_shared_memory_status()
    client.unregister_system_shared_memory()


def shm_string_example(client: Any, module: Any, regions: Regions) -> None:
    """simple_{http,grpc}_shm_string_client: each BYTES input and output in a region of its own."""
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    ones = np.ones(16, dtype=np.int32)
    serialized = [utils.serialize_byte_tensor(strings(values)) for values in (A[0], ones)]
    expected = [utils.serialize_byte_tensor(strings(values)) for values in (A[0] + ones, A[0] - ones)]
    handles = []
    for index, data in enumerate(expected):
        handle, key = regions.make(f"output{index}_data", utils.serialized_byte_size(data))
        client.register_system_shared_memory(f"output{index}_data", key, utils.serialized_byte_size(data))
        handles.append(handle)
    inputs, outputs = [], []
    for index, data in enumerate(serialized):
        size = utils.serialized_byte_size(data)
        handle, key = regions.make(f"input{index}_data", size)
        shm.set_shared_memory_region(handle, [data])
        client.register_system_shared_memory(f"input{index}_data", key, size)
        inputs.append(module.InferInput(f"INPUT{index}", [1, 16], "BYTES"))
        inputs[-1].set_shared_memory(f"input{index}_data", size)
        outputs.append(module.InferRequestedOutput(f"OUTPUT{index}"))
        outputs[-1].set_shared_memory(f"output{index}_data", utils.serialized_byte_size(expected[index]))
    result = client.infer("simple_string", inputs, outputs=outputs)
    for index, (handle, values) in enumerate(zip(handles, (A[0] + ones, A[0] - ones), strict=True)):
        out = result.get_output(f"OUTPUT{index}")
        shape = out["shape"] if isinstance(out, dict) else out.shape
        got = shm.get_contents_as_numpy(handle, np.object_, shape)
        assert list(got[0]) == list(strings(values))
    client.unregister_system_shared_memory()


def test_simple_grpc_shm_client(grpc: grpcclient.InferenceServerClient, regions: Regions) -> None:
    shm_example(grpc, grpcclient, regions)


def test_simple_grpc_shm_string_client(grpc: grpcclient.InferenceServerClient, regions: Regions) -> None:
    shm_string_example(grpc, grpcclient, regions)


# -- HTTP ----------------------------------------------------------------------------------

def test_simple_http_infer_client(http: httpclient.InferenceServerClient) -> None:
    for algorithm in (None, "gzip", "deflate"):
        inputs, outputs = simple_request(httpclient, binary=(False, True))
        check_simple(http.infer("simple", inputs, outputs=outputs, query_params={"test_1": 1, "test_2": 2},
                                request_compression_algorithm=algorithm, response_compression_algorithm=algorithm))
        assert len(http.get_inference_statistics(model_name="simple")["model_stats"]) == 1
        check_simple(http.infer("simple", simple_request(httpclient, binary=(False, True))[0]))
    with pytest.raises(InferenceServerException) as error:
        http.infer("wrong_model_name", simple_request(httpclient)[0]).get_response()
    assert error.value.message().startswith("Request for unknown model")


def test_simple_http_aio_infer_client(server: RunningServer) -> None:
    async def run() -> None:
        client = httpaio.InferenceServerClient(server.url)
        inputs, outputs = simple_request(httpaio, binary=(False, True))
        check_simple(await client.infer("simple", inputs, outputs=outputs, query_params={"test_1": 1, "test_2": 2}))
        assert len((await client.get_inference_statistics(model_name="simple"))["model_stats"]) == 1
        with pytest.raises(InferenceServerException) as error:
            await client.infer("wrong_model_name", inputs, outputs=outputs)
        assert error.value.message().startswith("Request for unknown model")
        for result in await asyncio.gather(client.infer("simple", inputs, outputs=outputs),
                                           client.infer("simple", simple_request(httpaio, (False, True), False)[0])):
            check_simple(result)
        await client.close()
    asyncio.run(run())


def test_simple_http_async_infer_client(http: httpclient.InferenceServerClient) -> None:
    inputs, outputs = simple_request(httpclient)
    for request in [http.async_infer("simple", inputs, outputs=outputs) for _ in range(2)]:
        check_simple(request.get_result(timeout=10))


def test_simple_http_health_metadata(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live(headers={"test": "1", "dummy": "2"}) and http.is_server_ready()
    assert http.is_model_ready("simple")
    assert http.get_server_metadata()["name"] == "triton"
    assert http.get_model_metadata("simple", query_params={"test_1": 1, "test_2": 2})["name"] == "simple"
    with pytest.raises(InferenceServerException) as error:
        http.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in error.value.message()
    assert http.get_model_config("simple")["name"] == "simple"


def test_simple_http_string_infer_client(http: httpclient.InferenceServerClient) -> None:
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(strings(A), binary_data=True)
    inputs[1].set_data_from_numpy(strings(np.ones((1, 16), np.int32)), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = http.infer("simple_string", inputs, outputs=outputs)
    assert [int(v) for v in result.as_numpy("OUTPUT0")[0]] == list(range(1, 17))
    assert [int(v) for v in result.as_numpy("OUTPUT1")[0]] == list(range(-1, 15))
    for data in (np.array([b"he\x00llo"] * 16, dtype=object).reshape(1, 16),
                 np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16)):
        for binary in (True, False):
            identity = [httpclient.InferInput("INPUT0", list(data.shape), "BYTES")]
            identity[0].set_data_from_numpy(data, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
            got = http.infer("simple_identity", identity, outputs=wanted).as_numpy("OUTPUT0")
            if data.dtype == object:
                got = got if binary else np.array([str(x).encode() for x in got.reshape(-1)], dtype=object)
                assert list(data.reshape(-1)) == list(got.reshape(-1))
            else:
                assert np.array_equal(data, np.char.encode(got.astype(str)))


def test_simple_http_shm_client(http: httpclient.InferenceServerClient, regions: Regions) -> None:
    shm_example(http, httpclient, regions)


def test_simple_http_shm_string_client(http: httpclient.InferenceServerClient, regions: Regions) -> None:
    shm_string_example(http, httpclient, regions)


# -- model control (a server of its own: the examples unload "simple") ----------------------

@pytest.fixture
def explicit(repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(repository, server_name="triton", model_control_mode="explicit")
    yield running
    running.stop()


def model_control(client: Any, max_batch_size: Any) -> None:
    assert len(client.get_model_repository_index()) == len(MODELS)  # the example's repository has 7 or 8
    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as error:
        client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    assert "failed to load" in error.value.message()
    client.load_model("simple", config='{"max_batch_size":"16"}')  # replaces config.pbtxt, as Triton's override
    assert max_batch_size() == 16
    with pytest.raises(InferenceServerException) as error:
        client.load_model("wrong_model_name")
    assert "failed to load" in error.value.message()
    client.unload_model("simple")
    assert not client.is_model_ready("simple")


def test_simple_http_model_control(explicit: RunningServer) -> None:
    client = httpclient.InferenceServerClient(explicit.url)
    model_control(client, lambda: client.get_model_config("simple")["max_batch_size"])
    client.close()


def test_simple_grpc_model_control(explicit: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{explicit.server.grpc_port}")
    model_control(_GrpcIndex(client), lambda: client.get_model_config("simple").config.max_batch_size)
    # the newest example: an oversized file: parameter is refused without stopping the server; Triton
    # answers INTERNAL (its own TODO says INVALID_ARGUMENT), serve INVALID_ARGUMENT, a client fault
    with pytest.raises(InferenceServerException) as error:
        client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
    assert "failed to poll from model repository" in error.value.message()
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_live()
    client.close()


class _GrpcIndex:
    """The gRPC client with the HTTP client's index answer (a list), for `model_control`."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_model_repository_index(self) -> list[Any]:
        return list(self.client.get_model_repository_index().models)
