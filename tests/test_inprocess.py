"""In-process inference: handlers calling other models, validated and counted as clients' requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from serving.errors import InvalidInput, NotFound, Unavailable
from tests.conftest import RunningServer, write_model

SIMPLE = """
    name: "simple"
    backend: "python"
    max_batch_size: 8
    input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 4 ] },
            { name: "INPUT1", data_type: TYPE_INT32, dims: [ 4 ] } ]
    output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 4 ] },
             { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 4 ] } ]
"""
SIMPLE_PY = """
    import serving

    class Simple(serving.Model):
        def predict(self, inputs):
            a, b = inputs["INPUT0"], inputs["INPUT1"]
            return {"OUTPUT0": a + b, "OUTPUT1": a - b}
"""
CALLER = """
    name: "{name}"
    backend: "python"
    max_batch_size: 8
    input [ {{ name: "X", data_type: TYPE_INT32, dims: [ 4 ] }} ]
    output [ {{ name: "Y", data_type: TYPE_INT32, dims: [ 4 ] }} ]
"""
ASYNC_CALLER_PY = """
    import serving

    class Caller(serving.Model):
        async def predict(self, inputs):
            x = inputs["X"]
            out = await self.models.infer("simple", None, {"INPUT0": x, "INPUT1": x}, ["OUTPUT0"])
            return {"Y": out["OUTPUT0"]}
"""
BLOCKING_CALLER_PY = """
    import serving

    class Caller(serving.Model):
        def predict(self, inputs):
            x = inputs["X"].numpy()
            out = self.models.infer_blocking("simple", "1", {"INPUT0": x, "INPUT1": x * 3}, timeout_s=30)
            return {"Y": out["OUTPUT1"]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository: Path = tmp_path_factory.mktemp("repository")
    write_model(repository, "simple", SIMPLE, {1: {"model.py": SIMPLE_PY}})
    write_model(repository, "async_caller", CALLER.format(name="async_caller"), {1: {"model.py": ASYNC_CALLER_PY}})
    write_model(repository, "blocking_caller", CALLER.format(name="blocking_caller"),
                {1: {"model.py": BLOCKING_CALLER_PY}})
    running = RunningServer(repository)
    yield running
    running.stop()


def _infer(server: RunningServer, model: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("X", list(x.shape), "INT32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor]).as_numpy("Y")
    assert result is not None
    return result


def _success(server: RunningServer, model: str) -> int:
    stats = httpclient.InferenceServerClient(server.url).get_inference_statistics(model)
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def test_a_handler_awaits_another_model_through_its_batcher(server: RunningServer) -> None:
    before = _success(server, "simple")
    x = np.arange(8, dtype=np.int32).reshape(2, 4)
    np.testing.assert_array_equal(_infer(server, "async_caller", x), x + x)
    assert _success(server, "simple") == before + 1  # counted on the called model like any request


def test_a_plain_predict_calls_another_model_from_its_thread(server: RunningServer) -> None:
    x = np.arange(4, dtype=np.int32).reshape(1, 4)
    np.testing.assert_array_equal(_infer(server, "blocking_caller", x), x - 3 * x)


def test_in_process_requests_are_checked_as_the_dataplanes(server: RunningServer) -> None:
    models = server.server.repository.inprocess  # type: ignore[union-attr]  # started
    good = np.zeros((1, 4), dtype=np.int32)
    with pytest.raises(InvalidInput, match="input 'INPUT0' must be INT32, got FP32"):
        server.call(models.infer("simple", None, {"INPUT0": good.astype(np.float32), "INPUT1": good}))
    with pytest.raises(InvalidInput, match="needs input 'INPUT1'"):
        server.call(models.infer("simple", None, {"INPUT0": good}))
    with pytest.raises(InvalidInput, match="has no output 'NOPE'"):
        server.call(models.infer("simple", None, {"INPUT0": good, "INPUT1": good}, ["NOPE"]))
    with pytest.raises(InvalidInput, match="must be a numpy array"):
        server.call(models.infer("simple", None, {"INPUT0": [1, 2, 3, 4], "INPUT1": good}))  # type: ignore[dict-item]  # a list on purpose
    with pytest.raises(NotFound):
        server.call(models.infer("missing", None, {"INPUT0": good}))
    with pytest.raises(InvalidInput, match="on the server's event loop"):
        server.call(_blocking_on_loop(models))
    out = models.infer_blocking("simple", None, {"INPUT0": good + 1, "INPUT1": good}, ["OUTPUT1"], timeout_s=30)
    assert list(out) == ["OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT1"], good + 1)


async def _blocking_on_loop(models: object) -> None:
    models.infer_blocking("simple", None, {})  # type: ignore[attr-defined]  # the InProcess under test


def test_blocking_calls_refuse_before_the_models_run() -> None:
    from serving.inprocess import InProcess

    def lookup(name: str, version: str | None) -> object:
        raise AssertionError("not reached")

    with pytest.raises(Unavailable, match="not available"):
        InProcess(lookup).infer_blocking("simple", None, {})  # type: ignore[arg-type]  # a stand-in lookup


def test_arrays_of_every_kind_get_their_v2_datatype() -> None:
    import torch

    from serving.inprocess import datatype_of

    datatype, array = datatype_of("T", np.array([["ab", "ç"]]), "BYTES")
    assert datatype == "BYTES" and array.dtype == object and array.tolist() == [[b"ab", "ç".encode()]]
    datatype, array = datatype_of("T", np.array([b"x", b"yz"]), None)
    assert datatype == "BYTES" and array.tolist() == [b"x", b"yz"]
    assert datatype_of("T", np.zeros(2, np.uint16), "BF16")[0] == "BF16"
    assert datatype_of("T", np.zeros(2, np.uint16), "UINT16")[0] == "UINT16"
    datatype, array = datatype_of("T", torch.tensor([1.5], dtype=torch.bfloat16), "BF16")
    assert datatype == "BF16" and array.dtype == np.uint16 and array.tolist() == [0x3FC0]
    assert datatype_of("T", torch.arange(3, dtype=torch.int64), "INT64")[0] == "INT64"
    with pytest.raises(InvalidInput, match="numpy dtype complex64, which no v2 datatype holds"):
        datatype_of("T", np.zeros(2, np.complex64), None)
