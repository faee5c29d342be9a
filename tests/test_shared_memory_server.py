"""System shared memory end to end: real /dev/shm regions made by tritonclient.utils.shared_memory,
registered and used through tritonclient.http, .http.aio, .grpc and .grpc.aio, against a server
started with --allow-client-shm true; and the server without it."""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient import utils
from tritonclient.utils import InferenceServerException

from . import shm_gate
from .conftest import RunningServer, write_model
from .shm_regions import TRITON, Regions
from .test_compat import FLAVORS, Driver

GATED = """
import serving
from tests import shm_gate


class Gated(serving.Model):
    def predict(self, inputs):
        shm_gate.ENTERED.set()
        shm_gate.RELEASE.wait(30)
        return {"OUT": inputs["IN"]}
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shm-models")
    for name in ("simple", "simple_string", "repeat_int32", "preprocess", "ensemble_add"):
        shutil.copytree(TRITON / name, root / name)
    write_model(root, "gated", """
        backend: "python"
        max_batch_size: 0
        input [ { name: "IN", data_type: TYPE_INT32, dims: [ 4 ] } ]
        output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 4 ] } ]
        parameters { key: "warmup" value { string_value: "false" } }
    """, {1: {"model.py": GATED}})
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(repository, allow_client_shm=True)
    yield running
    running.stop()


@pytest.fixture(params=list(FLAVORS))
def driver(request: pytest.FixtureRequest, server: RunningServer) -> Iterator[Driver]:
    d = Driver(request.param, server)
    yield d
    d("unregister_system_shared_memory")
    d.close()


@pytest.fixture
def regions() -> Iterator[Regions]:
    made = Regions()
    yield made
    made.destroy()


def test_the_simple_example_through_regions(driver: Driver, regions: Regions) -> None:
    module = driver.module
    a, b = np.arange(16, dtype=np.int32), np.ones(16, dtype=np.int32)
    out_handle, out_key = regions.make("output_data", 128)
    in_handle, in_key = regions.make("input_data", 128)
    shm.set_shared_memory_region(in_handle, [a])
    shm.set_shared_memory_region(in_handle, [b], offset=64)
    driver("register_system_shared_memory", "output_data", out_key, 128)
    driver("register_system_shared_memory", "input_data", in_key, 128)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("input_data", 64)
    inputs[1].set_shared_memory("input_data", 64, offset=64)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output_data", 64)
    outputs[1].set_shared_memory("output_data", 64, offset=64)
    result = driver("infer", "simple", inputs, outputs=outputs)
    out0 = result.get_output("OUTPUT0")
    shape = list(out0["shape"] if isinstance(out0, dict) else out0.shape)
    assert shape == [1, 16]
    if isinstance(out0, dict):  # HTTP: the values are in the region, not in the response
        assert set(out0) == {"name", "datatype", "shape"}
    else:
        assert not any(result.get_response().raw_output_contents)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, shape), [a + b])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, shape, offset=64), [a - b])
    status = driver.json("get_system_shared_memory_status")
    if driver.is_grpc:
        assert {name: (r["key"], int(r["byte_size"])) for name, r in status["regions"].items()} == \
            {"input_data": (in_key, 128), "output_data": (out_key, 128)}
    else:
        assert status == [{"name": "input_data", "key": in_key, "offset": 0, "byte_size": 128},
                          {"name": "output_data", "key": out_key, "offset": 0, "byte_size": 128}]


def test_the_string_example_through_regions(driver: Driver, regions: Regions) -> None:
    module = driver.module
    numbers = np.arange(16)
    words = [np.array([str(v).encode() for v in values], dtype=object) for values in (numbers, np.ones(16, int))]
    serialized = [utils.serialize_byte_tensor(w) for w in words]
    sizes = [utils.serialized_byte_size(s) for s in serialized]
    inputs = []
    for index, (data, size) in enumerate(zip(serialized, sizes, strict=True)):
        handle, key = regions.make(f"input{index}", size)
        shm.set_shared_memory_region(handle, [data])
        driver("register_system_shared_memory", f"input{index}", key, size)
        inputs.append(module.InferInput(f"INPUT{index}", [1, 16], "BYTES"))
        inputs[-1].set_shared_memory(f"input{index}", size)
    out_handle, out_key = regions.make("output0", 256)
    driver("register_system_shared_memory", "output0", out_key, 256)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("output0", 256)  # OUTPUT1 comes back in the response
    result = driver("infer", "simple_string", inputs, outputs=outputs)
    got = shm.get_contents_as_numpy(out_handle, np.object_, [1, 16])
    assert [int(v) for v in got.reshape(-1)] == list(numbers + 1)
    assert [int(v) for v in result.as_numpy("OUTPUT1").reshape(-1)] == list(numbers - 1)


def test_one_input_in_a_region_and_one_in_the_message(driver: Driver, regions: Regions) -> None:
    # gRPC's raw_input_contents then holds the values of the inputs not in regions, in order
    module = driver.module
    handle, key = regions.make("in1", 64)
    shm.set_shared_memory_region(handle, [np.full(16, 5, np.int32)])
    driver("register_system_shared_memory", "in1", key, 64)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_shared_memory("in1", 64)
    result = driver("infer", "simple", inputs)
    assert result.as_numpy("OUTPUT0").tolist() == [list(range(5, 21))]


@pytest.mark.parametrize("flavor", ["http", "grpc"])
def test_errors_say_what_was_wrong(server: RunningServer, regions: Regions, flavor: str) -> None:
    driver = Driver(flavor, server)
    module = driver.module
    code = (lambda grpc, http: grpc) if driver.is_grpc else (lambda grpc, http: http)
    try:
        _handle, key = regions.make("probe", 64)
        driver("register_system_shared_memory", "probe", key, 64)
        cases: list[tuple[Any, str, str]] = [
            (lambda: driver("register_system_shared_memory", "probe", key, 64), code("ALREADY_EXISTS", "400"),
             "shared memory region 'probe' already in manager"),
            (lambda: driver("register_system_shared_memory", "other", key, 65), code("INVALID_ARGUMENT", "400"),
             "failed to register shared memory region 'other': invalid args"),
            (lambda: driver("register_system_shared_memory", "other", "/../etc/passwd", 8),
             code("INVALID_ARGUMENT", "400"), "Unable to open shared memory region: '/../etc/passwd'"),
            (lambda: driver("get_system_shared_memory_status", "ghost"), code("NOT_FOUND", "404"),
             "Unable to find system shared memory region: 'ghost'"),
        ]
        for size, offset, output, status, says in [
            (32, 0, None, code("INVALID_ARGUMENT", "400"), "input byte size mismatch for input 'INPUT0' for model "
                                                           "'simple'. Expected 64, got 32"),
            (64, 8, None, code("INVALID_ARGUMENT", "400"), "Invalid offset + byte size for shared memory region: "
                                                           "'probe'"),
            (64, 0, 16, code("INVALID_ARGUMENT", "400"), "shared memory size specified with the request for output "
                                                         "'OUTPUT0' (16 bytes) should be at least 64 bytes"),
        ]:
            def infer(size: int = size, offset: int = offset, output: int | None = output) -> Any:
                inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
                inputs[0].set_shared_memory("probe", size, offset=offset)
                inputs[1].set_data_from_numpy(np.ones((1, 16), np.int32))
                outputs = [module.InferRequestedOutput("OUTPUT0")]
                if output is not None:
                    outputs[0].set_shared_memory("probe", output)
                return driver("infer", "simple", inputs, outputs=outputs)
            cases.append((infer, status, says))
        for call, status, says in cases:
            with pytest.raises(InferenceServerException) as error:
                call()
            assert says in error.value.message()
            assert str(error.value.status()).endswith(status), (says, error.value.status())
        driver("unregister_system_shared_memory", "ghost")  # nothing to do, as Triton
    finally:
        driver("unregister_system_shared_memory")
        driver.close()


def test_a_region_in_use_is_not_unregistered(server: RunningServer, regions: Regions) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    handle, key = regions.make("gated", 32)
    shm.set_shared_memory_region(handle, [np.arange(4, dtype=np.int32)])
    client.register_system_shared_memory("gated", key, 32)
    inputs = [grpcclient.InferInput("IN", [4], "INT32")]
    inputs[0].set_shared_memory("gated", 16)
    outputs = [grpcclient.InferRequestedOutput("OUT")]
    outputs[0].set_shared_memory("gated", 16, offset=16)
    shm_gate.ENTERED.clear()
    shm_gate.RELEASE.clear()
    results: list[Any] = []
    done = threading.Event()

    def answered(result: Any, error: Any) -> None:
        results.append((result, error))
        done.set()
    client.async_infer("gated", inputs, answered, outputs=outputs)
    try:
        assert shm_gate.ENTERED.wait(30)
        with pytest.raises(InferenceServerException, match="'gated', it is currently in use"):
            client.unregister_system_shared_memory("gated")
    finally:
        shm_gate.RELEASE.set()
    assert done.wait(30) and results[0][1] is None
    assert shm.get_contents_as_numpy(handle, np.int32, [4], offset=16).tolist() == [0, 1, 2, 3]
    client.unregister_system_shared_memory("gated")
    assert not client.get_system_shared_memory_status().regions
    client.close()


def test_an_ensemble_through_regions(driver: Driver, regions: Regions) -> None:
    module = driver.module
    handle, key = regions.make("ensemble", 192)
    shm.set_shared_memory_region(handle, [np.arange(16, dtype=np.int32)])
    driver("register_system_shared_memory", "ensemble", key, 192)
    inputs = [module.InferInput("RAW", [1, 16], "INT32")]
    inputs[0].set_shared_memory("ensemble", 64)
    outputs = [module.InferRequestedOutput("SUM"), module.InferRequestedOutput("DIFF")]
    outputs[0].set_shared_memory("ensemble", 64, offset=64)
    outputs[1].set_shared_memory("ensemble", 64, offset=128)
    driver("infer", "ensemble_add", inputs, outputs=outputs)
    raw = np.arange(16)
    assert shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=64).tolist() == [list(3 * raw)]
    assert shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=128).tolist() == [list(raw)]


def test_a_decoupled_model_reads_its_inputs_from_a_region(server: RunningServer, regions: Regions) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    handle, key = regions.make("repeat", 16)
    shm.set_shared_memory_region(handle, [np.array([7, 8, 9], dtype=np.int32)])
    client.register_system_shared_memory("repeat", key, 16)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        for output_in_region in (False, True):
            inputs = [grpcclient.InferInput("IN", [3], "INT32"), grpcclient.InferInput("DELAY", [3], "UINT32"),
                      grpcclient.InferInput("WAIT", [1], "UINT32")]
            inputs[0].set_shared_memory("repeat", 12)
            inputs[1].set_data_from_numpy(np.zeros(3, np.uint32))
            inputs[2].set_data_from_numpy(np.zeros(1, np.uint32))
            outputs = [grpcclient.InferRequestedOutput("OUT")]
            if output_in_region:
                outputs[0].set_shared_memory("repeat", 4, offset=12)
            client.async_stream_infer("repeat_int32", inputs, outputs=outputs)
            if output_in_region:
                error = answers.get(timeout=30)
                assert isinstance(error, InferenceServerException)
                assert "its responses cannot be written into shared memory" in error.message()
            else:
                assert [answers.get(timeout=30).as_numpy("OUT").tolist() for _ in range(3)] == [[7], [8], [9]]
    finally:
        client.stop_stream()
        client.unregister_system_shared_memory()
        client.close()


def test_off_by_default(repository: Path, regions: Regions) -> None:
    server = RunningServer(repository)
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert "system_shared_memory" not in client.get_server_metadata()["extensions"]
        assert client.get_system_shared_memory_status() == []
        client.unregister_system_shared_memory()  # what Triton's examples do first: no error
        client.unregister_cuda_shared_memory()
        _handle, key = regions.make("refused", 64)
        with pytest.raises(InferenceServerException, match="start it with --allow-client-shm true"):
            client.register_system_shared_memory("refused", key, 64)
        inputs = [httpclient.InferInput("IN", [4], "INT32")]
        inputs[0].set_shared_memory("refused", 16)
        with pytest.raises(InferenceServerException, match="--allow-client-shm true"):
            client.infer("gated", inputs)
        client.close()
    finally:
        server.stop()


def test_metadata_lists_the_extension(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    assert client.get_cuda_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not supported by this server"):
        client.register_cuda_shared_memory("cuda", b"aGFuZGxl", 0, 64)
    client.close()
