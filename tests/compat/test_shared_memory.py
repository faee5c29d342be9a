"""System shared memory, side by side with tritonserver: register, status, unregister, and inference.

Regions are made with tritonclient.utils.shared_memory, as Triton's client examples make them.
Each server writes its outputs into its own region, so the two cannot overwrite each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from .answers import grpc_call, same_text
from .servers import Pair

pytestmark = pytest.mark.timeout(900)  # the first test may install the wheel and start tritonserver

KEY = f"/compat_{os.getpid()}_input"
A = np.arange(16, dtype=np.int32)
B = np.full(16, 3, dtype=np.int32)



@pytest.fixture(scope="module")
def regions() -> Iterator[dict[str, Any]]:
    """The input region (A then B) and one output region per server."""
    made = {"input": shm.create_shared_memory_region("input", KEY, 128),
            "triton": shm.create_shared_memory_region("out_triton", f"/compat_{os.getpid()}_out_triton", 128),
            "serve": shm.create_shared_memory_region("out_serve", f"/compat_{os.getpid()}_out_serve", 128)}
    shm.set_shared_memory_region(made["input"], [A, B])
    yield made
    for handle in made.values():
        shm.destroy_shared_memory_region(handle)


@pytest.fixture
def registered(pair: Pair, regions: dict[str, Any]) -> Iterator[None]:
    """input_data and output_data registered in both servers (each its own output object)."""
    for url, side in ((pair.triton.url, "triton"), (pair.serve.url, "serve")):
        client = httpclient.InferenceServerClient(url)
        client.register_system_shared_memory("input_data", KEY, 128)
        client.register_system_shared_memory("output_data", f"/compat_{os.getpid()}_out_{side}", 128)
    yield
    for url in (pair.triton.url, pair.serve.url):
        httpclient.InferenceServerClient(url).unregister_system_shared_memory()


def test_status_with_nothing_registered(pair: Pair) -> None:
    triton, serve = pair.http("GET", "/v2/systemsharedmemory/status")
    assert (triton.status, triton.body) == (serve.status, serve.body) == (200, [])


def test_register_status_unregister(pair: Pair, regions: dict[str, Any]) -> None:
    body = {"key": KEY, "offset": 0, "byte_size": 128}
    for answer in pair.http("POST", "/v2/systemsharedmemory/region/input_data/register", body):
        assert (answer.status, answer.body) in ((200, None), (200, {})), answer
    triton, serve = pair.http("GET", "/v2/systemsharedmemory/status")
    assert triton.body == serve.body == [{"name": "input_data", "key": KEY, "offset": 0, "byte_size": 128}]
    triton, serve = pair.http("GET", "/v2/systemsharedmemory/region/input_data/status")
    assert serve.body == triton.body
    triton, serve = pair.http("POST", "/v2/systemsharedmemory/region/input_data/register", body)
    assert (triton.status, triton.error) == (400, "shared memory region 'input_data' already in manager")
    assert serve.status == 400 and same_text(serve.error, triton.error), serve
    for answer in pair.http("POST", "/v2/systemsharedmemory/region/input_data/unregister", {}):
        assert answer.status == 200
    triton, serve = pair.http("GET", "/v2/systemsharedmemory/status")
    assert triton.body == serve.body == []


REFUSED = [
    ("no such object", {"key": "/compat_no_such_key", "offset": 0, "byte_size": 64}, 500,
     "Unable to open shared memory region: '/compat_no_such_key'"),
    ("larger than the object", {"key": KEY, "offset": 0, "byte_size": 1 << 20}, 400,
     "failed to register shared memory region 'bad': invalid args"),
    ("offset past the object", {"key": KEY, "offset": 4096, "byte_size": 64}, 400,
     "failed to register shared memory region 'bad': invalid args"),
]


@pytest.mark.parametrize("case, body, status, text", REFUSED, ids=[case for case, *_ in REFUSED])
def test_registrations_refused(pair: Pair, regions: dict[str, Any], case: str, body: Any, status: int, text: str
                               ) -> None:
    """Refused by both, nothing registered; serve's status and words are its own (a client's mistake: 400)."""
    triton, serve = pair.http("POST", "/v2/systemsharedmemory/region/bad/register", body)
    assert (triton.status, triton.error) == (status, text)
    assert serve.status in (400, 404) and serve.error, serve
    assert all(answer.body == [] for answer in pair.http("GET", "/v2/systemsharedmemory/status"))


def test_register_without_byte_size(pair: Pair, regions: dict[str, Any]) -> None:
    triton, serve = pair.http("POST", "/v2/systemsharedmemory/region/bad/register", {"key": KEY})
    assert (triton.status, triton.error) == (400, "Shared memory register request has no 'byte_size' field")
    assert serve.status == 400, serve


def test_status_and_unregister_of_an_unknown_region(pair: Pair) -> None:
    triton, serve = pair.http("GET", "/v2/systemsharedmemory/region/ghost/status")
    assert triton.status == serve.status == 404
    assert same_text(serve.error, triton.error), (triton.error, serve.error)
    for answer in pair.http("POST", "/v2/systemsharedmemory/region/ghost/unregister", {}):
        assert answer.status == 200, answer


def shm_body(**changes: Any) -> dict[str, Any]:
    def region(name: str, offset: int) -> dict[str, Any]:
        return {"shared_memory_region": name, "shared_memory_byte_size": 64, "shared_memory_offset": offset}
    body: dict[str, Any] = {"inputs": [{"name": f"INPUT{i}", "shape": [1, 16], "datatype": "INT32",
                                        "parameters": region("input_data", 64 * i)} for i in (0, 1)],
                            "outputs": [{"name": "OUTPUT0", "parameters": region("output_data", 0)},
                                        {"name": "OUTPUT1", "parameters": region("output_data", 64)}]}
    for path, value in changes.items():  # e.g. inputs_0_shared_memory_byte_size=32
        kind, index, key = path.split("_", 2)
        body[kind][int(index)]["parameters"][key] = value
    return body


def test_inference_through_regions(pair: Pair, regions: dict[str, Any], registered: None) -> None:
    triton, serve = pair.http("POST", "/v2/models/simple/infer", shm_body())
    assert triton.status == serve.status == 200
    assert serve.body["outputs"] == triton.body["outputs"] == [
        {"name": f"OUTPUT{i}", "datatype": "INT32", "shape": [1, 16]} for i in (0, 1)]
    for side in ("triton", "serve"):
        written = shm.get_contents_as_numpy(regions[side], np.int32, [32])
        assert written.tolist() == [*(A + B).tolist(), *(A - B).tolist()], side


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_client_inference_through_regions(pair: Pair, regions: dict[str, Any], registered: None, module: Any) -> None:
    def ask(url: str) -> list[Any]:
        inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory("input_data", 64)
        inputs[1].set_shared_memory("input_data", 64, offset=64)
        wanted = module.InferRequestedOutput("OUTPUT1")
        wanted.set_shared_memory("output_data", 64, offset=64)
        result = module.InferenceServerClient(url).infer("simple", inputs, outputs=[wanted])
        if module is httpclient:
            return sorted(result.get_output("OUTPUT1").items())  # no data, no binary_data_size: in the region
        output = result.get_output("OUTPUT1")
        return [output.name, output.datatype, list(output.shape), dict(output.parameters),
                [len(raw) for raw in result.get_response().raw_output_contents]]
    triton, serve = pair.both(ask, grpc=module is grpcclient)
    assert serve == triton
    for side in ("triton", "serve"):
        assert shm.get_contents_as_numpy(regions[side], np.int32, [32])[16:].tolist() == (A - B).tolist()


WRONG = [
    ("input smaller than its shape", {"inputs_0_shared_memory_byte_size": 32}, 400),
    ("input past the region", {"inputs_1_shared_memory_offset": 100}, 400),
    ("unknown region", {"inputs_0_shared_memory_region": "ghost"}, 404),
    ("output region too small", {"outputs_0_shared_memory_byte_size": 16}, 500),
]


@pytest.mark.parametrize("case, changes, status", WRONG, ids=[case for case, *_ in WRONG])
def test_inference_with_wrong_regions(pair: Pair, regions: dict[str, Any], registered: None, case: str,
                                      changes: dict[str, Any], status: int) -> None:
    triton, serve = pair.http("POST", "/v2/models/simple/infer", shm_body(**changes))
    assert triton.status == status
    assert serve.status in (400, 404, 500) and serve.error, serve
    if status == 404:
        assert serve.status == 404 and same_text(serve.error, triton.error), (triton.error, serve.error)


def test_grpc_register_status_unregister(pair: Pair, regions: dict[str, Any]) -> None:
    def session(url: str) -> list[Any]:
        client = grpcclient.InferenceServerClient(url)
        seen = [grpc_call(lambda: client.register_system_shared_memory("input_data", KEY, 128)).code,
                grpc_call(lambda: client.register_system_shared_memory("input_data", KEY, 128)).code,
                client.get_system_shared_memory_status(as_json=True),
                grpc_call(lambda: client.get_system_shared_memory_status("ghost")).code,
                grpc_call(lambda: client.unregister_system_shared_memory("ghost")).code,
                grpc_call(lambda: client.unregister_system_shared_memory()).code,
                client.get_system_shared_memory_status(as_json=True)]
        return seen
    triton, serve = pair.both(session, grpc=True)
    assert triton == ["OK", "ALREADY_EXISTS", {"regions": {"input_data": {"name": "input_data", "key": KEY,
                                                                          "byte_size": "128"}}},
                      "NOT_FOUND", "OK", "OK", {}]
    assert serve == triton


def test_cuda_shared_memory_lists_nothing(pair: Pair) -> None:
    triton, serve = pair.http("GET", "/v2/cudasharedmemory/status")
    assert (triton.status, triton.body) == (serve.status, serve.body) == (200, [])
