"""Triton's Python backend API through real servers and tritonclient: models written against pb_utils."""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, write_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "python_backend"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("repo")
    for name in ("preprocess", "partial_error", "raises", "broken_init", "double", "completed"):
        shutil.copytree(FIXTURES / name, repository / name)
    running = RunningServer(repository, strict_readiness=False)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url, concurrency=4)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    yield client
    client.close()


def _input(module: object, name: str, array: np.ndarray, datatype: str) -> object:
    tensor = module.InferInput(name, list(array.shape), datatype)  # type: ignore[attr-defined]  # http or grpc
    tensor.set_data_from_numpy(array)
    return tensor


def test_preprocessor_over_http_and_grpc(http: httpclient.InferenceServerClient,
                                         grpc: grpcclient.InferenceServerClient) -> None:
    raw = np.array([[0, 51, 255], [255, 0, 102]], dtype=np.uint8)
    for module, client in ((httpclient, http), (grpcclient, grpc)):
        result = client.infer("preprocess", [_input(module, "RAW", raw, "UINT8")])
        np.testing.assert_allclose(result.as_numpy("FEATURES"), raw / 255.0, rtol=1e-6)
        # initialize got Triton's args: the model's name and the instance kind
        assert result.as_numpy("LABEL").tolist() == [[b"preprocess:CPU"], [b"preprocess:CPU"]]


def test_the_prediction_distribution_counts_python_models(server: RunningServer,
                                                         http: httpclient.InferenceServerClient) -> None:
    raw = np.array([[255, 255, 0, 0]], dtype=np.uint8)
    http.infer("preprocess", [_input(httpclient, "RAW", raw, "UINT8")])
    deadline = time.monotonic() + 10
    count = 0.0
    while count < 4:  # counted beside the request path: wait for the worker, with a deadline
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        count = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith('serving_prediction_value_bucket{le="+Inf",model="preprocess"'))
        assert time.monotonic() < deadline, "the preprocessor's outputs never reached the prediction distribution"
        if count < 4:
            time.sleep(0.05)


def test_an_error_response_fails_only_its_request(http: httpclient.InferenceServerClient) -> None:
    # three requests in flight at once (the client's own pool): the batcher makes them one batch
    pending = [http.async_infer("partial_error", [_input(httpclient, "INPUT0", np.array([[v]], np.int32), "INT32")])
               for v in (3, -1, 5)]
    outcomes: list[tuple[np.ndarray, np.ndarray] | str] = []
    for request in pending:
        try:
            result = request.get_result()
        except InferenceServerException as exc:
            outcomes.append(f"{exc.status()} {exc.message()}")
        else:
            outcomes.append((result.as_numpy("OUTPUT0"), result.as_numpy("BATCH")))
    good, bad, other = outcomes
    assert bad == "400 INPUT0 must not be negative"  # INVALID_ARG: a client's fault
    assert isinstance(good, tuple) and isinstance(other, tuple)
    assert good[0].tolist() == [[6]] and other[0].tolist() == [[10]]
    assert good[1].tolist() == other[1].tolist() == [[3]]  # the three came in one batch, as a list of 3


def test_an_exception_from_execute_fails_the_batch_with_its_message(http: httpclient.InferenceServerClient,
                                                                    grpc: grpcclient.InferenceServerClient) -> None:
    x = np.ones(2, np.float32)
    with pytest.raises(InferenceServerException) as over_http:
        http.infer("raises", [_input(httpclient, "INPUT0", x, "FP32")])
    assert over_http.value.status() == "500"
    assert "the model cannot compute this" in over_http.value.message()
    assert "raises" in over_http.value.message()
    with pytest.raises(InferenceServerException) as over_grpc:
        grpc.infer("raises", [_input(grpcclient, "INPUT0", x, "FP32")])
    assert over_grpc.value.status() == "StatusCode.INTERNAL"
    assert "the model cannot compute this" in over_grpc.value.message()


def test_a_model_that_raises_in_initialize_is_unavailable_with_its_reason(
        http: httpclient.InferenceServerClient) -> None:
    rows = {row["name"]: row for row in http.get_model_repository_index()}
    assert rows["broken_init"]["state"] == "UNAVAILABLE"
    assert "weights.bin is missing" in rows["broken_init"]["reason"]
    assert "initialize" in rows["broken_init"]["reason"]
    assert rows["preprocess"]["state"] == "READY" and rows["double"]["state"] == "READY"
    assert not http.is_model_ready("broken_init")


def test_a_serving_model_handler_serves_beside_them(grpc: grpcclient.InferenceServerClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = grpc.infer("double", [_input(grpcclient, "INPUT0", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)


def test_auto_complete_config_fills_the_config(http: httpclient.InferenceServerClient) -> None:
    config = http.get_model_config("completed")
    assert config["max_batch_size"] == 4
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("INPUT0", "TYPE_FP32", [3])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("OUTPUT0", "TYPE_FP32", [3])]
    assert "dynamic_batching" in config
    x = np.array([[1, 2, 3]], np.float32)
    result = http.infer("completed", [_input(httpclient, "INPUT0", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), -x)


def test_finalize_runs_at_unload(tmp_path: Path) -> None:
    marker = tmp_path / "finalized"
    write_model(tmp_path / "repo", "final", f"""
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        parameters {{ key: "marker" value: {{ string_value: "{marker}" }} }}
        """, {1: {"model.py": """
        import json
        import pathlib

        import triton_python_backend_utils as pb_utils


        class TritonPythonModel:
            def initialize(self, args):
                self.marker = pathlib.Path(json.loads(args["model_config"])["parameters"]["marker"]["string_value"])

            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "INPUT0")])
                        for r in requests]

            def finalize(self):
                self.marker.write_text("finalized")
        """}})
    running = RunningServer(tmp_path / "repo", model_control_mode="explicit", load_model=("final",))
    try:
        client = httpclient.InferenceServerClient(running.url)
        with pytest.raises(InferenceServerException, match="that its config does not declare"):
            client.infer("final", [_input(httpclient, "INPUT0", np.array([7], np.int32), "INT32")])
        assert not marker.exists()
        client.unload_model("final")
        assert marker.read_text() == "finalized"  # the unload answers once the version is unloaded
        client.close()
    finally:
        running.stop()


def test_execute_sees_the_request_id_and_parameters(tmp_path: Path) -> None:
    write_model(tmp_path, "seen", """
        backend: "python"
        max_batch_size: 0
        input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "JSON" data_type: TYPE_STRING dims: [ 1 ] } ]
        """, {1: {"model.py": """
        import json

        import numpy as np
        import triton_python_backend_utils as pb_utils


        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("JSON", np.array([json.dumps({
                    "id": r.request_id(), "parameters": json.loads(r.parameters()),
                    "outputs": r.requested_output_names()}).encode()], dtype=np.object_))]) for r in requests]
        """}})
    running = RunningServer(tmp_path)
    try:
        value = np.array([1], np.int32)
        http = httpclient.InferenceServerClient(running.url)
        # the server's own parameters (priority, binary_data_output) are not the model's, as in Triton
        seen = http.infer("seen", [_input(httpclient, "IN", value, "INT32")], request_id="req-7",
                          parameters={"custom": "x", "n": 3}, priority=1,
                          outputs=[httpclient.InferRequestedOutput("JSON", binary_data=True)])
        http.close()
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{running.server.grpc_port}")
        over_grpc = grpc.infer("seen", [_input(grpcclient, "IN", value, "INT32")], request_id="g-1",
                               parameters={"flag": True})
        grpc.close()
    finally:
        running.stop()
    assert json.loads(seen.as_numpy("JSON")[0]) == {"id": "req-7", "parameters": {"custom": "x", "n": 3},
                                                     "outputs": ["JSON"]}
    assert json.loads(over_grpc.as_numpy("JSON")[0]) == {"id": "g-1", "parameters": {"flag": True},
                                                         "outputs": ["JSON"]}


def test_model_files_import_their_own_siblings(tmp_path: Path) -> None:
    for name, factor in (("twice", 2), ("thrice", 3)):
        write_model(tmp_path, name, """
            backend: "python"
            max_batch_size: 0
            input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
            output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
            """, {1: {"helpers.py": f"FACTOR = {factor}\n", "model.py": """
            import triton_python_backend_utils as pb_utils
            from helpers import FACTOR


            class TritonPythonModel:
                def execute(self, requests):
                    return [pb_utils.InferenceResponse([pb_utils.Tensor(
                        "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * FACTOR)]) for r in requests]
            """}})
    running = RunningServer(tmp_path)
    try:
        client = httpclient.InferenceServerClient(running.url)
        value = np.array([7], np.int32)
        answers = {name: client.infer(name, [_input(httpclient, "IN", value, "INT32")]).as_numpy("OUT").tolist()
                   for name in ("twice", "thrice")}
        client.close()
    finally:
        running.stop()
    assert answers == {"twice": [14], "thrice": [21]}  # each its own helpers.py, though both are named so
    assert "helpers" not in sys.modules
