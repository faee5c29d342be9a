"""A real server with two front-end workers: infer on both protocols, forwarded calls, the same errors, stop."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from serving.errors import ServingError
from serving.frontend.ipc import error_header
from serving.frontend.link import WorkerLink
from tests.conftest import RunningServer, write_model

SIMPLE = """
backend: "python"
max_batch_size: 64
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200 }
parameters { key: "warmup" value { string_value: "false" } }
"""
MODEL = """
import serving

class Simple(serving.Model):
    def predict(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"] + inputs["INPUT1"], "OUTPUT1": inputs["INPUT0"] - inputs["INPUT1"]}
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("frontend")
    write_model(root, "simple", SIMPLE, {1: {"model.py": MODEL}})
    return root


@pytest.fixture(scope="module")
def servers(repository: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two workers, and one process for the answers to compare with."""
    workers, alone = RunningServer(repository, frontend_workers=2), RunningServer(repository, frontend_workers=0)
    yield workers, alone
    workers.stop()
    alone.stop()


def _inputs(module: object, a: np.ndarray, b: np.ndarray, binary: bool = True) -> list[object]:
    inputs = [module.InferInput("INPUT0", list(a.shape), "INT32"),  # type: ignore[attr-defined]
              module.InferInput("INPUT1", list(b.shape), "INT32")]  # type: ignore[attr-defined]
    if module is httpclient:
        inputs[0].set_data_from_numpy(a, binary_data=binary)
        inputs[1].set_data_from_numpy(b, binary_data=binary)
    else:
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
    return inputs


def test_infer_over_http_and_grpc(servers: tuple[RunningServer, RunningServer]) -> None:
    server = servers[0]
    assert len(server.server.worker_pids()) == 2
    a, b = np.arange(32, dtype=np.int32).reshape(2, 16), np.ones((2, 16), dtype=np.int32)
    http = httpclient.InferenceServerClient(server.url)
    for binary in (True, False):
        result = http.infer("simple", _inputs(httpclient, a, b, binary))
        assert np.array_equal(result.as_numpy("OUTPUT0"), a + b) and np.array_equal(result.as_numpy("OUTPUT1"), a - b)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    result = grpc.infer("simple", _inputs(grpcclient, a, b), request_id="r1")
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b) and result.get_response().id == "r1"
    big = np.arange(64 * 16, dtype=np.int32).reshape(64, 16)  # 4 KiB a tensor: through the arenas
    result = grpc.infer("simple", _inputs(grpcclient, big, big))
    assert np.array_equal(result.as_numpy("OUTPUT0"), 2 * big)
    stats = http.get_inference_statistics("simple")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == 4  # every worker's request counted by the one owner


def test_calls_other_than_infer_answer_as_one_process(servers: tuple[RunningServer, RunningServer]) -> None:
    workers, alone = servers
    for path in ("/v2", "/v2/health/ready", "/v2/models/simple", "/v2/models/simple/config", "/v2/models/nosuch",
                 "/v2/nowhere", "/v2/models/simple/infer"):
        got, want = (requests.get(f"http://{s.url}{path}", timeout=10) for s in (workers, alone))
        assert (got.status_code, got.content, got.headers.get("Content-Type")) == \
            (want.status_code, want.content, want.headers.get("Content-Type")), path
    got, want = (requests.post(f"http://{s.url}/v2/repository/index", json={}, timeout=10) for s in servers)
    assert (got.status_code, got.json()) == (want.status_code, want.json())
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{workers.server.grpc_port}")
    assert grpc.is_server_ready() and grpc.get_model_metadata("simple").name == "simple"
    assert grpc.get_model_config("simple").config.max_batch_size == 64


@pytest.mark.parametrize("body", [
    b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1]}]}',  # too few values
    b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": ' + str([1] * 16).encode() + b'}]}',
    b'{"inputs": []}',  # decodes nowhere
    b'not json',
])
@pytest.mark.parametrize("model", ["simple", "nosuch"])
def test_http_infer_errors_are_the_one_process_answers(servers: tuple[RunningServer, RunningServer], body: bytes,
                                                       model: str) -> None:
    got, want = (requests.post(f"http://{s.url}/v2/models/{model}/infer", data=body, timeout=10) for s in servers)
    assert (got.status_code, got.content) == (want.status_code, want.content)


def test_grpc_infer_errors_are_the_one_process_answers(servers: tuple[RunningServer, RunningServer]) -> None:
    a = np.ones((1, 8), dtype=np.int32)  # dims [16] declared
    answers = []
    for server in servers:
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
        for model in ("simple", "nosuch"):
            with pytest.raises(InferenceServerException) as failure:
                grpc.infer(model, _inputs(grpcclient, a, a))
            answers.append((failure.value.status(), failure.value.message()))
    assert answers[:2] == answers[2:] and answers[0][0] == "StatusCode.INVALID_ARGUMENT"


def test_a_killed_worker_is_started_again(repository: Path) -> None:
    server = RunningServer(repository, frontend_workers=1)
    try:
        (pid,) = server.server.worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.server.worker_pids() in ([], [pid]):
            time.sleep(0.05)
        (again,) = server.server.worker_pids()
        assert again != pid
        http = httpclient.InferenceServerClient(server.url)
        a = np.ones((1, 16), dtype=np.int32)
        while True:  # the new worker listens within its backoff and start
            try:
                result = http.infer("simple", _inputs(httpclient, a, a))
                break
            except (ConnectionError, InferenceServerException, OSError):
                assert time.monotonic() < deadline, "no worker took the connection again"
                time.sleep(0.05)
        assert np.array_equal(result.as_numpy("OUTPUT0"), 2 * a)
        metrics = requests.get(server.metrics_url, timeout=10).text
        assert "serving_frontend_worker_restarts_total 1.0" in metrics
    finally:
        server.stop()
    assert not server.server.worker_pids()


_field = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**64), st.text(max_size=6), st.just("simple"),
                   st.just("INT32"), st.lists(st.integers(-1, 20), max_size=3))
_descriptor = st.one_of(st.lists(_field, max_size=7),
                        st.tuples(st.sampled_from(["INPUT0", "INPUT1", "X"]), st.sampled_from(["INT32", "FP32"]),
                                  st.lists(st.integers(0, 17), max_size=2), st.integers(0, 2), st.integers(-1, 70),
                                  st.integers(-1, 70)).map(list))
_header = st.fixed_dictionaries({}, optional={"m": _field, "v": _field, "id": _field, "p": st.one_of(
    _field, st.dictionaries(st.text(max_size=4), _field, max_size=2)), "o": st.one_of(_field, st.lists(
        st.lists(_field, max_size=3), max_size=3)), "i": st.one_of(_field, st.lists(_descriptor, max_size=3)),
    "r": _field})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_header, st.binary(max_size=160))
def test_fuzz_infer_frames_get_an_answer_or_a_servingerror(servers: tuple[RunningServer, RunningServer],
                                                             header: dict[str, object], inline: bytes) -> None:
    """Whatever an infer frame holds, the owner's real dataplane answers it: a response or an error frame."""
    alone = servers[1]
    link = WorkerLink(alone.server.dataplane, 0.1, 4096, 0, 1 << 20, lambda _: True, lambda _: None)  # type: ignore[arg-type]

    async def frame() -> dict[str, Any]:  # as WorkerLink._infer turns it into a frame
        try:
            return (await link._answer(1, {"t": "infer", "k": 1, **header}, memoryview(inline)))[0]
        except ServingError as exc:
            return error_header(1, exc)

    answer = alone.call(frame())
    assert answer["t"] in ("r", "e", "f") and answer["k"] == 1
    if answer["t"] == "e":
        assert isinstance(answer["s"], str) and 400 <= answer["h"] <= 599
