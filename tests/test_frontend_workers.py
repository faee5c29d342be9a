"""Front-end workers (`--frontend-workers 2`) seen from clients: one server, whichever worker answers.

Which worker holds each connection is read from the kernel (`frontend_procs`), so every check
runs through both. One in-process server (its workers are this process's children) serves most
tests; the drain runs in a real `serve`, with SIGTERM to its owner process.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer
from .frontend_procs import (
    PLUS_ONE,
    Http,
    alive,
    children,
    grpc_channel,
    grpc_client,
    grpc_spread,
    http_spread,
    listeners,
    maps_torch,
    model,
    scrape,
    server_side,
    wait_for,
    x_body,
)

VERSIONED = '''
import time
import serving


class Versioned(serving.Model):
    def load(self):
        time.sleep(float(self.parameters["load_seconds"]))

    def predict(self, inputs):
        return {"Y": inputs["X"] * 0 + float(self.version)}
'''

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    model(root, "inc", PLUS_ONE, 8)
    model(root, "meet", PLUS_ONE, 4, delay_us=3_000_000)  # a batch waits up to 3 s for its 4 requests
    model(root, "versioned", VERSIONED, 8, load_seconds="0.3")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    running = RunningServer(repo, frontend_workers=2, model_control_mode="explicit", load_model=("*",))
    pids: list[int] = []
    try:
        yield running
        pids = running.server.worker_pids()
    finally:
        running.stop()
    wait_for(lambda: not any(alive(pid) for pid in pids), "stop() had ended every worker", timeout=15)


@pytest.fixture(scope="module")
def single(repo: Path) -> Iterator[RunningServer]:
    """The same repository in one process: what every answer is compared with."""
    running = RunningServer(repo, frontend_workers=0, model_control_mode="explicit", load_model=("*",))
    yield running
    running.stop()


def workers(server: RunningServer) -> list[int]:
    pids = server.server.worker_pids()
    assert len(set(pids)) == 2, pids
    return pids


def test_both_workers_serve_both_public_ports_and_never_load_torch(server: RunningServer) -> None:
    pids, owner = workers(server), os.getpid()
    assert set(pids) <= set(children(owner)) and all(alive(pid) for pid in pids)
    for port in (server.server.http_port, server.server.grpc_port):
        assert listeners(port, [*pids, owner]) == set(pids), f"port {port}: the workers listen, the owner does not"
    assert listeners(server.server.metrics_port, [*pids, owner]) == {owner}
    for [connection] in http_spread(server.server.http_port, pids, 1).values():
        assert connection.infer("inc", 1.0) == (200, {"model_name": "inc", "model_version": "1", "outputs": [
            {"name": "Y", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}]})
    for [client] in grpc_spread(server.server.grpc_port, pids, 1, grpc_client).values():
        tensor = grpcclient.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
        assert client.infer("inc", [tensor]).as_numpy("Y").tolist() == [[2.0]]
        client.close()
    assert maps_torch(owner)  # the owner computes (and so the check does see torch where it is)
    assert not any(maps_torch(pid) for pid in pids)


READ_ONLY = ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/inc", "/v2/models/inc/ready",
             "/v2/models/inc/config", "/v2/models/inc/versions/1", "/v2/models/inc/versions/7/ready",
             "/v2/models/nope", "/v2/models/nope/ready"]


def test_readiness_and_metadata_are_the_one_server_answers_on_every_worker(server: RunningServer,
                                                                           single: RunningServer) -> None:
    pids = workers(server)
    reference = Http(single.server.http_port)
    expected = {path: reference.request("GET", path) for path in READ_ONLY}
    expected["index"] = reference.request("POST", "/v2/repository/index", b"{}")
    assert expected["/v2/health/ready"][0] == 200 and expected["/v2/models/nope"][0] == 404
    for [connection] in http_spread(server.server.http_port, pids, 1).values():
        answers = {path: connection.request("GET", path) for path in READ_ONLY}
        answers["index"] = connection.request("POST", "/v2/repository/index", b"{}")
        assert answers == expected
    for [channel] in grpc_spread(server.server.grpc_port, pids, 1, grpc_channel).values():
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # the stubs omit HealthStub's methods
        health = check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="inc"), timeout=10).ready
        channel.close()


def _tensor(datatype: str = "FP32", shape: tuple[int, ...] = (1, 1), name: str = "X") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": [1] * int(np.prod(shape))}


BAD_HTTP: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v2/models/inc/infer", b"{not json", {}),
    ("/v2/models/inc/infer", b"", {}),
    ("/v2/models/inc/infer", orjson.dumps({"inputs": [_tensor("INT32")]}), {}),
    ("/v2/models/inc/infer", orjson.dumps({"inputs": [_tensor(shape=(1, 2))]}), {}),
    ("/v2/models/inc/infer", orjson.dumps({"inputs": [{**_tensor(), "data": [1, 2]}]}), {}),
    ("/v2/models/inc/infer", orjson.dumps({"inputs": [_tensor(name="Z")]}), {}),
    ("/v2/models/inc/infer", orjson.dumps({"inputs": [_tensor(shape=(9, 1))]}), {}),  # past max_batch_size
    ("/v2/models/inc/infer", orjson.dumps({"inputs": []}), {}),
    ("/v2/models/inc/infer", orjson.dumps({"inputs": [_tensor()], "outputs": [{"name": "nope"}]}), {}),
    ("/v2/models/inc/infer", x_body(1.0), {"Inference-Header-Content-Length": "5000"}),
    ("/v2/models/nope/infer", x_body(1.0), {}),
    ("/v2/models/inc/versions/9/infer", x_body(1.0), {}),
    ("/v2/models/inc/versions/x/infer", x_body(1.0), {}),
]


def _grpc_request(model: str = "inc", datatype: str = "FP32", shape: tuple[int, ...] = (1, 1), name: str = "X",
                  raw: bytes = b"\0\0\0\0", version: str = "") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    return pb.ModelInferRequest(model_name=model, model_version=version, inputs=[tensor], raw_input_contents=[raw])


BAD_GRPC = [_grpc_request("nope"), _grpc_request(datatype="INT64"), _grpc_request(raw=b"\0\0\0"),
            _grpc_request(name="Z"), _grpc_request(shape=(9, 1), raw=bytes(36)), _grpc_request(version="9"),
            _grpc_request(shape=(1, 2))]


def _grpc_answer(channel: grpc.Channel, request: pb.ModelInferRequest) -> tuple[str, str]:
    try:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    except grpc.RpcError as error:
        return str(error.code()), str(error.details())
    return "OK", ""


def test_bad_requests_get_the_one_server_errors_on_every_worker(server: RunningServer, single: RunningServer) -> None:
    pids = workers(server)
    expected = [Http(single.server.http_port).request("POST", *bad) for bad in BAD_HTTP]
    assert {status for status, _ in expected} == {400, 404} and all(b"error" in body for _, body in expected)
    for index, bad in enumerate(BAD_HTTP):
        for [connection] in http_spread(server.server.http_port, pids, 1).values():  # fresh: an error may close one
            assert connection.request("POST", *bad) == expected[index], bad
            connection.close()
    reference = grpc_channel(single.server.grpc_port)
    expected_grpc = [_grpc_answer(reference, request) for request in BAD_GRPC]
    assert "StatusCode.INVALID_ARGUMENT" in {code for code, _ in expected_grpc}
    assert "OK" not in {code for code, _ in expected_grpc}
    for [channel] in grpc_spread(server.server.grpc_port, pids, 1, grpc_channel).values():
        assert [_grpc_answer(channel, request) for request in BAD_GRPC] == expected_grpc
        channel.close()


_values = st.one_of(st.floats(width=32, allow_nan=False), st.integers(-3, 3), st.booleans(), st.text(max_size=2))
_tensors = st.fixed_dictionaries({"name": st.sampled_from(["X", "Z"]),
                                  "datatype": st.sampled_from(["FP32", "INT32", "BOOL", "BYTES", "FP16"]),
                                  "shape": st.lists(st.integers(-1, 9), max_size=3),
                                  "data": st.lists(_values, max_size=9)})
_bodies = st.one_of(st.binary(max_size=64), st.lists(_tensors, max_size=2).map(lambda t: orjson.dumps({"inputs": t})))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_any_body_gets_the_same_answer_through_a_worker(server: RunningServer, single: RunningServer,
                                                        body: bytes) -> None:
    answers = []
    for port in (single.server.http_port, server.server.http_port):
        connection = Http(port)
        answers.append(connection.request("POST", "/v2/models/inc/infer", body, {"Content-Type": "application/json"}))
        connection.close()
    assert answers[0] == answers[1]


def _stats(connection: Http, name: str) -> dict:
    status, body = connection.request("GET", f"/v2/models/{name}/stats")
    assert status == 200, body
    [found] = orjson.loads(body)["model_stats"]
    return found


def test_requests_through_both_workers_and_protocols_meet_in_one_batch(server: RunningServer) -> None:
    pids = workers(server)
    connections = [held for [held] in http_spread(server.server.http_port, pids, 1).values()]
    clients = [held for [held] in grpc_spread(server.server.grpc_port, pids, 1, grpc_client).values()]
    before = _stats(connections[0], "meet")
    gate = threading.Barrier(4)

    def over_http(connection: Http, value: float) -> float:
        gate.wait()
        status, body = connection.infer("meet", value)
        assert status == 200, body
        return float(body["outputs"][0]["data"][0])

    def over_grpc(client: grpcclient.InferenceServerClient, value: float) -> float:
        tensor = grpcclient.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.full((1, 1), value, np.float32))
        gate.wait()
        return float(client.infer("meet", [tensor]).as_numpy("Y")[0, 0])

    with ThreadPoolExecutor(4) as pool:
        sent = [pool.submit(over_http, connections[0], 1.0), pool.submit(over_http, connections[1], 2.0),
                pool.submit(over_grpc, clients[0], 3.0), pool.submit(over_grpc, clients[1], 4.0)]
        assert [future.result(timeout=30) for future in sent] == [2.0, 3.0, 4.0, 5.0]
    after = _stats(connections[1], "meet")
    assert after["execution_count"] - before["execution_count"] == 1  # one batch of the 4 requests
    assert after["inference_count"] - before["inference_count"] == 4
    assert {s["batch_size"]: s["compute_infer"]["count"] for s in after["batch_stats"]}.get(4, 0) == \
        {s["batch_size"]: s["compute_infer"]["count"] for s in before["batch_stats"]}.get(4, 0) + 1
    for client in clients:
        client.close()


def test_statistics_and_metrics_count_the_requests_of_every_worker(server: RunningServer) -> None:
    pids = workers(server)
    connections = [c for held in http_spread(server.server.http_port, pids, 2).values() for c in held]
    clients = [c for held in grpc_spread(server.server.grpc_port, pids, 1, grpc_client).values() for c in held]
    before, success = _stats(connections[0], "inc"), scrape(server.metrics_url, "nv_inference_request_success",
                                                              model="inc")
    tensor = grpcclient.InferInput("X", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1), np.float32))
    for _ in range(3):
        assert all(connection.infer("inc", 0.0)[0] == 200 for connection in connections)
        assert all(client.infer("inc", [tensor]).as_numpy("Y").tolist() == [[1.0]] for client in clients)
    sent = 3 * (len(connections) + len(clients))  # 18
    for connection in connections:  # the owner's statistics, whichever worker is asked
        after = _stats(connection, "inc")
        assert after["inference_count"] - before["inference_count"] == sent
        assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == sent
    for client in clients:
        [grpc_stats] = client.get_inference_statistics("inc", as_json=True)["model_stats"]
        assert int(grpc_stats["inference_count"]) - before["inference_count"] == sent
        client.close()
    assert scrape(server.metrics_url, "nv_inference_request_success", model="inc") - success == sent


def test_a_new_version_loads_under_load_without_a_failed_request(server: RunningServer, repo: Path) -> None:
    pids = workers(server)
    connections = [c for held in http_spread(server.server.http_port, pids, 2).values() for c in held]
    clients = [c for held in grpc_spread(server.server.grpc_port, pids, 1, grpc_client).values() for c in held]
    answers: list[tuple[float, float]] = []  # (when sent, the version that answered)
    failures: list[str] = []
    stop = threading.Event()

    def over_http(connection: Http) -> None:
        while not stop.is_set() and not failures:
            sent = time.monotonic()
            status, body = connection.infer("versioned", 0.0)
            if status != 200:
                failures.append(f"HTTP {status}: {body}")
            else:
                answers.append((sent, float(body["outputs"][0]["data"][0])))

    def over_grpc(client: grpcclient.InferenceServerClient) -> None:
        tensor = grpcclient.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1), np.float32))
        while not stop.is_set() and not failures:
            sent = time.monotonic()
            try:
                answers.append((sent, float(client.infer("versioned", [tensor]).as_numpy("Y")[0, 0])))
            except InferenceServerException as error:
                failures.append(f"gRPC {error.status()}: {error.message()}")

    with ThreadPoolExecutor(len(connections) + len(clients)) as pool:
        running = [*(pool.submit(over_http, c) for c in connections), *(pool.submit(over_grpc, c) for c in clients)]
        wait_for(lambda: len(answers) >= 20 or failures, "requests were answered before the load")
        shutil.copytree(repo / "versioned" / "1", repo / "versioned" / "2")
        load_started = time.monotonic()
        httpclient.InferenceServerClient(server.url, network_timeout=60).load_model("versioned")  # through a worker
        load_done = time.monotonic()
        wait_for(lambda: sum(sent > load_done for sent, _ in answers) >= 20 or failures, "answers after the load")
        stop.set()
        for future in running:
            future.result(timeout=30)
    assert not failures
    assert {version for sent, version in answers if sent < load_started} == {1.0}
    assert {version for sent, version in answers if sent > load_done} == {2.0}
    index = {row.get("version"): row["state"] for row in
             httpclient.InferenceServerClient(server.url).get_model_repository_index() if row["name"] == "versioned"}
    assert index == {"1": "UNAVAILABLE", "2": "READY"}
    for client in clients:
        client.close()


def test_each_worker_refuses_connections_past_its_share_of_the_cap(repo: Path) -> None:
    # --max-connections 4 over 2 workers: each takes 2 (README, "Front-end workers"); which worker a
    # connection lands on is the kernel's choice, so the cap holds per worker, not exactly across them
    capped = RunningServer(repo, frontend_workers=2, max_connections=4, model_control_mode="explicit",
                           load_model=("inc",))
    opened: list[socket.socket] = []
    try:
        port, pids = capped.server.http_port, workers(capped)
        served: dict[int, int] = dict.fromkeys(pids, 0)
        for _ in range(10):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            opened.append(connection)
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answered = connection.recv(64).startswith(b"HTTP/1.1 200")
            except (ConnectionResetError, TimeoutError):
                answered = False
            if answered:
                served[server_side(port, connection.getsockname()[1], pids)] += 1
        assert all(count <= 2 for count in served.values()), served
        assert sum(served.values()) >= 2, served  # the first connection of either worker is always served
        refused = 10 - sum(served.values())  # the workers report their counts to the owner every 0.25 s
        wait_for(lambda: capped.server.connection_limits["http"].refused >= refused,
                 f"the owner counts the workers' {refused} refusals", timeout=10)
    finally:
        for connection in opened:
            connection.close()
        capped.stop()
