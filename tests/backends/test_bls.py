"""BLS: a pb_utils model calling another model of the same server, with exec() and async_exec()."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "python_backend"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("repo")
    for name in ("bls_sync", "bls_async", "double", "broken_init", "repeat_int32", "bls_decoupled",
                 "bls_decoupled_async"):
        shutil.copytree(FIXTURES / name, repository / name)
    running = RunningServer(repository, strict_readiness=False)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url)
    yield client
    client.close()


def _sync_inputs(x: np.ndarray, target: str) -> list[Any]:
    value = httpclient.InferInput("INPUT0", [4], "FP32")
    value.set_data_from_numpy(x)
    name = httpclient.InferInput("TARGET", [1], "BYTES")
    name.set_data_from_numpy(np.array([target.encode()], dtype=np.object_))
    return [value, name]


def _successes(client: httpclient.InferenceServerClient, model: str) -> int:
    stats = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"])


def test_exec_calls_another_model_through_its_batcher(http: httpclient.InferenceServerClient) -> None:
    before = _successes(http, "double")
    x = np.array([1, 2, 3, 4], np.float32)
    result = http.infer("bls_sync", _sync_inputs(x, "double"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2 + 1)
    assert _successes(http, "double") == before + 1  # the BLS call counts on the model called


def test_exec_to_a_model_that_does_not_serve_is_an_error_response(http: httpclient.InferenceServerClient) -> None:
    for target in ("nope", "broken_init"):
        with pytest.raises(InferenceServerException) as failed:
            http.infer("bls_sync", _sync_inputs(np.zeros(4, np.float32), target))
        assert failed.value.status() == "500"
        assert failed.value.message() == (f"{target} failed: Model {target} - Error when running inference: Failed "
                                          f"for execute the inference request. Model '{target}' is not ready.")


def test_async_exec_awaits_two_calls_together(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    x = np.array([0, 1, 2, 3], np.float32)
    value = grpcclient.InferInput("INPUT0", [4], "FP32")
    value.set_data_from_numpy(x)
    try:
        result = client.infer("bls_async", [value])
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (x + 1) * 2)


@pytest.mark.parametrize("model", ["bls_decoupled", "bls_decoupled_async"])
def test_decoupled_bls_reads_each_streamed_response(http: httpclient.InferenceServerClient, model: str) -> None:
    before = _successes(http, "repeat_int32")
    values = httpclient.InferInput("IN", [4], "INT32")
    values.set_data_from_numpy(np.array([1, 2, 3, 10], np.int32))
    result = http.infer(model, [values])
    assert result.as_numpy("SUM").tolist() == [16]
    assert result.as_numpy("COUNT").tolist() == [4]  # four responses with outputs, the empty final one skipped
    assert _successes(http, "repeat_int32") == before + 1
