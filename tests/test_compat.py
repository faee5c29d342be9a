"""The compatibility suite: Triton's client examples, through tritonclient only.

Every endpoint, with each of tritonclient.http, tritonclient.http.aio, tritonclient.grpc
and tritonclient.grpc.aio, against Triton's "simple" and "simple_string" example models
(tests/fixtures/models).
"""

from __future__ import annotations

import asyncio
import inspect
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer

FIXTURES = Path(__file__).parent / "fixtures" / "models"
FLAVORS = {"http": httpclient, "http.aio": httpaio, "grpc": grpcclient, "grpc.aio": grpcaio}


class Driver:
    """One tritonclient flavour behind a synchronous call interface."""

    def __init__(self, flavor: str, server: RunningServer) -> None:
        self.flavor = flavor
        self.module = FLAVORS[flavor]
        self.is_grpc = flavor.startswith("grpc")
        url = f"127.0.0.1:{server.server.grpc_port}" if self.is_grpc else server.url
        self.loop = asyncio.new_event_loop() if flavor.endswith("aio") else None

        async def make() -> Any:
            return self.module.InferenceServerClient(url)
        self.client = self.loop.run_until_complete(make()) if self.loop else self.module.InferenceServerClient(url)

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        return self.loop.run_until_complete(result) if inspect.isawaitable(result) and self.loop else result

    def json(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls whose answer is JSON over HTTP and a protobuf over gRPC, as JSON."""
        if self.is_grpc:
            kwargs["as_json"] = True
        return self(method, *args, **kwargs)

    def close(self) -> None:
        self("close")
        if self.loop:
            self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(FIXTURES, model_control_mode="explicit", load_model=("*",))
    yield running
    running.stop()


@pytest.fixture(params=list(FLAVORS))
def driver(request: pytest.FixtureRequest, server: RunningServer) -> Iterator[Driver]:
    d = Driver(request.param, server)
    yield d
    d.close()


def simple_inputs(module: Any, datatype: str = "INT32") -> tuple[list[Any], np.ndarray, np.ndarray]:
    """The inputs of Triton's simple example: 0..15 and sixteen ones."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [module.InferInput("INPUT0", [1, 16], datatype), module.InferInput("INPUT1", [1, 16], datatype)]
    if datatype == "BYTES":
        inputs[0].set_data_from_numpy(np.array([str(v).encode() for v in a[0]], dtype=object).reshape(1, 16))
        inputs[1].set_data_from_numpy(np.array([str(v).encode() for v in b[0]], dtype=object).reshape(1, 16))
    else:
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
    return inputs, a, b


def test_health_and_metadata(driver: Driver) -> None:
    assert driver("is_server_live") and driver("is_server_ready")
    assert driver("is_model_ready", "simple") and driver("is_model_ready", "simple", "1")
    assert not driver("is_model_ready", "missing")
    server = driver.json("get_server_metadata")
    assert server["name"] == "shadowserve" and "model_repository" in server["extensions"]
    meta = driver.json("get_model_metadata", "simple")
    assert meta["name"] == "simple" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == \
        [("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]


def test_config_has_what_perf_analyzer_reads(driver: Driver) -> None:
    config = driver.json("get_model_config", "simple")
    config = config.get("config", config)  # gRPC wraps it in ModelConfigResponse
    assert int(config["max_batch_size"]) == 8
    assert config["input"][0]["name"] == "INPUT0" and config["input"][0]["data_type"] == "TYPE_INT32"
    assert [int(d) for d in config["input"][0]["dims"]] == [16]
    assert [o["name"] for o in config["output"]] == ["OUTPUT0", "OUTPUT1"]


def test_simple_infer(driver: Driver) -> None:
    inputs, a, b = simple_inputs(driver.module)
    outputs = [driver.module.InferRequestedOutput("OUTPUT0"), driver.module.InferRequestedOutput("OUTPUT1")]
    result = driver("infer", "simple", inputs, outputs=outputs, request_id="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_simple_string_infer(driver: Driver) -> None:
    inputs, a, b = simple_inputs(driver.module, "BYTES")
    result = driver("infer", "simple_string", inputs)
    for name, expected in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
        got = [int(v) for v in result.as_numpy(name).reshape(-1)]
        assert got == expected.reshape(-1).tolist()


def test_statistics(driver: Driver) -> None:
    inputs, _, _ = simple_inputs(driver.module)
    driver("infer", "simple", inputs)
    stats = driver.json("get_inference_statistics", "simple")["model_stats"][0]
    assert stats["name"] == "simple" and stats["version"] == "1"
    assert int(stats["inference_stats"]["success"]["count"]) >= 1
    assert int(stats["execution_count"]) >= 1


def test_errors_reach_the_client_with_the_message(driver: Driver) -> None:
    inputs, _, _ = simple_inputs(driver.module)
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nothing' is not found"):
        driver("infer", "nothing", inputs)
    with pytest.raises(InferenceServerException, match="needs input 'INPUT1'"):
        driver("infer", "simple", inputs[:1])


def test_repository_index_load_and_unload(driver: Driver) -> None:
    index = driver.json("get_model_repository_index")
    rows = index.get("models", index) if isinstance(index, dict) else index
    assert {(r["name"], r["state"]) for r in rows} >= {("simple", "READY"), ("simple_string", "READY")}
    driver("unload_model", "simple_string")
    assert not driver("is_model_ready", "simple_string")
    driver("load_model", "simple_string")
    assert driver("is_model_ready", "simple_string")


def test_streaming_over_grpc(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(4):
            inputs, _, _ = simple_inputs(grpcclient)
            client.async_stream_infer("simple", inputs, request_id=str(i))
        received = [answers.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    assert [(r.get_response().id, e) for r, e in received] == [(str(i), None) for i in range(4)]
    assert received[0][0].as_numpy("OUTPUT0")[0, 3] == 4
