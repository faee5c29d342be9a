"""Ensembles under model control: load order, step models that leave, admission and draining."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, write_model

FIXTURES = Path(__file__).parent / "fixtures" / "ensembles"


def one_step(name: str, step_model: str, key_in: str = "X", key_out: str = "Y", out_dims: int = 4) -> str:
    return f"""
        name: "{name}"
        platform: "ensemble"
        max_batch_size: 8
        input [ {{ name: "X", data_type: TYPE_FP32, dims: [ 4 ] }} ]
        output [ {{ name: "OUT", data_type: TYPE_FP32, dims: [ {out_dims} ] }} ]
        ensemble_scheduling {{ step [ {{ model_name: "{step_model}" model_version: -1
            input_map {{ key: "{key_in}" value: "X" }} output_map {{ key: "{key_out}" value: "OUT" }} }} ] }}
    """


STEP = """
    name: "{name}"
    backend: "python"
    max_batch_size: 8
    input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
    parameters { key: "warmup" value: { string_value: "false" } }
    dynamic_batching { default_queue_policy { max_queue_size: 1 } }
"""
GATE_PY = """
    import threading

    import serving

    ENTERED = threading.Event()  # the tests wait on these (the module is serving_handlers.gate.v1)
    RELEASE = threading.Event()


    class Gate(serving.Model):
        def predict(self, inputs):
            ENTERED.set()
            if not RELEASE.wait(30):
                raise RuntimeError("the test never opened the gate")
            return {"Y": inputs["X"]}
"""
BROKEN_PY = """
    import serving


    class Broken(serving.Model):
        def load(self):
            raise RuntimeError("weights are missing")
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    for name in ("preprocessor", "classifier", "pipeline"):
        shutil.copytree(FIXTURES / name, root / name)
    write_model(root, "gate", STEP.replace("{name}", "gate"), {1: {"model.py": GATE_PY}})
    write_model(root, "gated", one_step("gated", "gate"), {1: {}})
    limited = one_step("limited", "gate").replace("scheduling {", "scheduling { max_inflight_requests: 1")
    write_model(root, "limited", limited, {1: {}})
    write_model(root, "broken", STEP.replace("{name}", "broken"), {1: {"model.py": BROKEN_PY}})
    write_model(root, "broken_pipeline", one_step("broken_pipeline", "broken"), {1: {}})
    write_model(root, "outer", one_step("outer", "pipeline", "RAW", "PROBS", out_dims=3), {1: {}})
    write_model(root, "ens_a", one_step("ens_a", "ens_b", "X", "OUT"), {1: {}})
    write_model(root, "ens_b", one_step("ens_b", "ens_a", "X", "OUT"), {1: {}})
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(repository, model_control_mode="explicit", load_model=("pipeline",))
    yield running
    running.stop()


def rows(server: RunningServer) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in httpclient.InferenceServerClient(server.url).get_model_repository_index()}


def x_input() -> httpclient.InferInput:
    tensor = httpclient.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), 130, np.float32))
    return tensor


def raw_input() -> httpclient.InferInput:
    tensor = httpclient.InferInput("RAW", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), 130, np.float32))
    return tensor


def test_loading_an_ensemble_loads_its_step_models_first(server: RunningServer) -> None:
    index = rows(server)  # only --load-model pipeline was named
    assert {index[name].get("state") for name in ("pipeline", "preprocessor", "classifier")} == {"READY"}
    assert "version" not in index["gated"] and "version" not in index["gate"]  # not loaded: names only
    result = httpclient.InferenceServerClient(server.url).infer("pipeline", [raw_input()])
    assert result.as_numpy("PROBS").shape == (1, 3)


def test_a_step_model_unloaded_while_the_ensemble_serves(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    client.unload_model("classifier")
    try:
        assert rows(server)["pipeline"]["state"] == "READY"
        with pytest.raises(InferenceServerException) as caught:
            client.infer("pipeline", [raw_input()])
        assert caught.value.status() == "503"
        assert caught.value.message().startswith(
            "in ensemble 'pipeline', step 2 (model 'classifier'): model 'classifier' version 1 is not ready")
        with pytest.raises(InferenceServerException) as over_grpc:
            grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}").infer("pipeline", [
                _grpc_raw()])
        assert over_grpc.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    finally:
        client.load_model("classifier")
    assert client.infer("pipeline", [raw_input()]).as_numpy("CLASS").shape == (1, 1)


def _grpc_raw() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("RAW", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), 130, np.float32))
    return tensor


def test_an_ensemble_can_be_a_step_of_another(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    client.load_model("outer")
    before = client.get_inference_statistics("pipeline")["model_stats"][0]["inference_stats"]["success"]["count"]
    x = np.full((2, 4), 150, np.float32)
    tensor = httpclient.InferInput("X", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    outer = client.infer("outer", [tensor]).as_numpy("OUT")
    direct = client.infer("pipeline", [http_raw(x)]).as_numpy("PROBS")
    np.testing.assert_array_equal(outer, direct)
    after = client.get_inference_statistics("pipeline")["model_stats"][0]["inference_stats"]["success"]["count"]
    assert after == before + 2  # the outer ensemble's step, then the direct request


def http_raw(x: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput("RAW", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_a_step_model_that_fails_to_load_fails_the_ensemble_alone(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("broken_pipeline")
    assert caught.value.status() == "400"
    assert "ensemble 'broken_pipeline' step 1 (model 'broken') did not load" in caught.value.message()
    assert "weights are missing" in caught.value.message()
    index = rows(server)
    assert index["broken_pipeline"]["state"] == "UNAVAILABLE" and "did not load" in index["broken_pipeline"]["reason"]
    assert index["pipeline"]["state"] == "READY"


def test_ensembles_that_include_each_other_are_refused_without_waiting(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url, network_timeout=30)
    with pytest.raises(InferenceServerException, match=r"ensembles include each other \(ens_a -> ens_b -> ens_a\)"):
        client.load_model("ens_a")
    assert rows(server)["ens_a"]["state"] == "UNAVAILABLE"


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.005)


def test_admission_and_draining_of_an_ensemble(repository: Path) -> None:
    server = RunningServer(repository, model_control_mode="explicit", load_model=("gated",))
    gate = sys.modules["serving_handlers.gate.v1"]  # gate: one instance, a queue of one
    try:
        _admit_and_drain(server, gate)
    finally:
        gate.RELEASE.set()
        server.stop()  # again after the drain: a stopped server stops at once


def _admit_and_drain(server: RunningServer, gate: Any) -> None:
    client = httpclient.InferenceServerClient(server.url)
    repository = server.server.repository
    assert repository is not None
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        def send() -> Any:
            return httpclient.InferenceServerClient(server.url).infer("gated", [x_input()])
        first = pool.submit(send)
        assert gate.ENTERED.wait(30)  # the first request computes in gate
        second = pool.submit(send)  # it waits in gate's queue, which is then full
        wait_for(lambda: repository.get("gate").batcher.pending == 1)  # type: ignore[union-attr]
        with pytest.raises(InferenceServerException) as refused:
            client.infer("gated", [x_input()])
        assert refused.value.status() == "503"
        assert refused.value.message().startswith("in ensemble 'gated', step 1 (model 'gate'): model 'gate' is "
                                                  "overloaded")
        stopping = asyncio.run_coroutine_threadsafe(server.server.stop(), server.loop)
        dataplane = server.server.dataplane
        assert dataplane is not None
        wait_for(lambda: dataplane.draining)
        with pytest.raises(InferenceServerException) as drained:
            client.infer("gated", [x_input()])
        assert drained.value.status() == "503"
        assert dataplane.in_flight == 2  # both ensemble requests are still running
        gate.RELEASE.set()  # the requests in flight finish during the drain
        for future in (first, second):
            np.testing.assert_array_equal(future.result(30).as_numpy("OUT"), np.full((1, 4), 130, np.float32))
        stopping.result(30)


def test_max_inflight_requests_holds_requests_before_their_step(repository: Path) -> None:
    server = RunningServer(repository, model_control_mode="explicit", load_model=("limited",))
    gate = sys.modules["serving_handlers.gate.v1"]
    try:
        dataplane, repo = server.server.dataplane, server.server.repository
        assert dataplane is not None and repo is not None
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            def send() -> Any:
                return httpclient.InferenceServerClient(server.url).infer("limited", [x_input()])
            first = pool.submit(send)
            assert gate.ENTERED.wait(30)
            others = [pool.submit(send), pool.submit(send)]
            wait_for(lambda: dataplane.in_flight == 3)
            # gate's queue holds one request: without the limit the third would be refused as overloaded
            assert repo.get("gate").batcher.pending == 0  # type: ignore[union-attr]  # loaded
            gate.RELEASE.set()
            for future in (first, *others):
                assert future.result(30).as_numpy("OUT").shape == (1, 4)
    finally:
        gate.RELEASE.set()
        server.stop()
