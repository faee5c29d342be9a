"""ONNX models served through the real server, driven by tritonclient (HTTP and gRPC, sync and aio).

Every output is checked against ONNX Runtime called directly on the same model file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from onnx import TensorProto

from ..conftest import RunningServer, write_model
from . import onnx_models

CLASSIFIER = onnx_models.classifier()
ADD_SUB = onnx_models.add_sub()
FIXED = onnx_models.fixed()
STRINGS = onnx_models.strings_identity()
UPPER = onnx_models.upper()
GRID = onnx_models.identity(TensorProto.FLOAT, ["batch", 2, 2])
BATCH_DELAY_US = 2_000_000  # long enough for every concurrent request to join; a full batch goes at once


def direct(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ONNX Runtime itself computes on the model, every output by name."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("onnx_repo")
    write_model(repo, "classifier", """
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "PROBS" data_type: TYPE_FP32 dims: [ 3 ] },
                 { name: "LABEL" data_type: TYPE_INT64 dims: [ 1 ] } ]
        dynamic_batching { }
        """, {1: {"model.onnx": CLASSIFIER}})
    write_model(repo, "batched", f"""
        backend: "onnxruntime"
        max_batch_size: 8
        input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
        output [ {{ name: "PROBS" data_type: TYPE_FP32 dims: [ 3 ] }} ]
        dynamic_batching {{ max_queue_delay_microseconds: {BATCH_DELAY_US} }}
        """, {1: {"model.onnx": CLASSIFIER}})
    write_model(repo, "simple", """
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
                { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
                 { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
        instance_group [ { kind: KIND_CPU count: 2 } ]
        """, {1: {"model.onnx": ADD_SUB}})
    # the model sees [batch, 2, 2]; clients send and get [batch, 4]
    write_model(repo, "grid", """
        platform: "onnxruntime_onnx"
        max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        """, {1: {"model.onnx": GRID}})
    write_model(repo, "fixed", """
        platform: "onnxruntime_onnx"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2, 3 ] },
                 { name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] } ]
        """, {1: {"model.onnx": FIXED}})
    # a scalar input declared as Triton lets it be, dims [1] without a reshape
    write_model(repo, "scaled", """
        platform: "onnxruntime_onnx"
        input [ { name: "FACTOR" data_type: TYPE_FP32 dims: [ 1 ] },
                { name: "VALUES" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "SCALED" data_type: TYPE_FP32 dims: [ 3 ] } ]
        """, {1: {"model.onnx": onnx_models.scaled()}})
    write_model(repo, "strings", """
        platform: "onnxruntime_onnx"
        max_batch_size: 4
        input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "SAME" data_type: TYPE_STRING dims: [ 1 ] } ]
        dynamic_batching { }
        """, {1: {"model.onnx": STRINGS}})
    write_model(repo, "upper", """
        platform: "onnxruntime_onnx"
        input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] } ]
        """, {1: {"model.onnx": UPPER}})
    # default_model_filename, in two versions: the file itself, and a directory holding its model.onnx
    write_model(repo, "named", """
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "PROBS" data_type: TYPE_FP32 dims: [ 3 ] } ]
        default_model_filename: "classifier.onnx"
        version_policy { all { } }
        """, {1: {"classifier.onnx": onnx_models.classifier(seed=1)}, 2: {}})
    (repo / "named" / "2" / "classifier.onnx").mkdir()
    (repo / "named" / "2" / "classifier.onnx" / "model.onnx").write_bytes(onnx_models.classifier(seed=2))
    running = RunningServer(repo)
    yield running
    running.stop()


def grpc_url(server: RunningServer) -> str:
    return f"127.0.0.1:{server.server.grpc_port}"


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 4)).astype(np.float32)


def test_the_classifier_answers_as_onnx_runtime_does_over_http(server: RunningServer) -> None:
    x = rows(5)
    expected = direct(CLASSIFIER, {"INPUT": x})
    with httpclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("classifier")
        for binary in (True, False):
            inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("PROBS", "LABEL")]
            result = client.infer("classifier", [inp], outputs=outputs)
            np.testing.assert_allclose(result.as_numpy("PROBS"), expected["PROBS"], rtol=1e-6)
            np.testing.assert_array_equal(result.as_numpy("LABEL"), expected["LABEL"])
        metadata = client.get_model_metadata("classifier")
        assert metadata["platform"] == "onnxruntime_onnx"
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == \
            [("PROBS", "FP32", [-1, 3]), ("LABEL", "INT64", [-1, 1])]


def test_the_classifier_answers_over_grpc_with_one_output_asked(server: RunningServer) -> None:
    x = rows(3, seed=1)
    expected = direct(CLASSIFIER, {"INPUT": x})
    with grpcclient.InferenceServerClient(grpc_url(server)) as client:
        inp = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("classifier", [inp], outputs=[grpcclient.InferRequestedOutput("LABEL")])
        np.testing.assert_array_equal(result.as_numpy("LABEL"), expected["LABEL"])
        assert result.as_numpy("PROBS") is None
        assert client.get_model_config("classifier").config.backend == "onnxruntime"


def test_two_inputs_by_name_over_both_aio_clients(server: RunningServer) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 7, dtype=np.int32)
    expected = direct(ADD_SUB, {"INPUT0": a, "INPUT1": b})

    async def both() -> list[tuple[np.ndarray, np.ndarray]]:
        answers = []
        for module, url in ((httpaio, server.url), (grpcaio, grpc_url(server))):
            client: Any = module.InferenceServerClient(url)
            try:
                inputs = [module.InferInput("INPUT1", [2, 16], "INT32"), module.InferInput("INPUT0", [2, 16], "INT32")]
                inputs[0].set_data_from_numpy(b)
                inputs[1].set_data_from_numpy(a)
                result = await client.infer("simple", inputs)
                answers.append((result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")))
            finally:
                await client.close()
        return answers

    for total, difference in asyncio.run(both()):
        np.testing.assert_array_equal(total, expected["OUTPUT0"])
        np.testing.assert_array_equal(difference, expected["OUTPUT1"])


def test_two_instances_each_with_a_session_of_their_own(server: RunningServer) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)

    async def many() -> list[np.ndarray]:
        client = httpaio.InferenceServerClient(server.url)
        try:
            async def one(k: int) -> np.ndarray:
                inputs = [httpaio.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                inputs[0].set_data_from_numpy(a)
                inputs[1].set_data_from_numpy(np.full((1, 16), k, dtype=np.int32))
                return (await client.infer("simple", inputs)).as_numpy("OUTPUT1")
            return list(await asyncio.gather(*(one(k) for k in range(12))))
        finally:
            await client.close()

    for k, difference in enumerate(asyncio.run(many())):
        np.testing.assert_array_equal(difference, a - k)
    with httpclient.InferenceServerClient(server.url) as client:
        assert client.get_model_config("simple")["instance_group"][0]["count"] == 2


def test_reshape_gives_the_model_its_own_shape(server: RunningServer) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with grpcclient.InferenceServerClient(grpc_url(server)) as client:
        inp = grpcclient.InferInput("X", [3, 4], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("grid", [inp]).as_numpy("Y"), x)


def test_concurrent_requests_are_batched_along_dim_0(server: RunningServer) -> None:
    requests = 8  # max_batch_size: the batch is full, so it goes without waiting out the delay
    inputs = [rows(1, seed=i) for i in range(requests)]

    async def send() -> list[np.ndarray]:
        client = grpcaio.InferenceServerClient(grpc_url(server))
        try:
            async def one(x: np.ndarray) -> np.ndarray:
                inp = grpcaio.InferInput("INPUT", [1, 4], "FP32")
                inp.set_data_from_numpy(x)
                return (await client.infer("batched", [inp])).as_numpy("PROBS")
            return list(await asyncio.gather(*(one(x) for x in inputs)))
        finally:
            await client.close()

    answers = asyncio.run(send())
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(answer, direct(CLASSIFIER, {"INPUT": x})["PROBS"], rtol=1e-6)
    with httpclient.InferenceServerClient(server.url) as client:
        stats = client.get_inference_statistics("batched")["model_stats"][0]
    assert stats["inference_count"] == requests
    assert stats["execution_count"] < requests, stats
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1


def test_a_model_without_a_batch_dimension(server: RunningServer) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with httpclient.InferenceServerClient(server.url) as client:
        inp = httpclient.InferInput("X", [2, 3], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("fixed", [inp])
        np.testing.assert_array_equal(result.as_numpy("Y"), x * 2)
        # the model's scalar comes back as the config's dims [1]
        assert result.as_numpy("SUM").shape == (1,) and result.as_numpy("SUM")[0] == x.sum()
        inputs = [httpclient.InferInput("FACTOR", [1], "FP32"), httpclient.InferInput("VALUES", [3], "FP32")]
        inputs[0].set_data_from_numpy(np.array([2.5], dtype=np.float32))
        inputs[1].set_data_from_numpy(np.array([1, 2, -4], dtype=np.float32))
        np.testing.assert_array_equal(client.infer("scaled", inputs).as_numpy("SCALED"), [2.5, 5, -10])


@pytest.mark.parametrize("flavor", ["http", "grpc"])
def test_bytes_travel_as_onnx_string_tensors(server: RunningServer, flavor: str) -> None:
    module: Any = httpclient if flavor == "http" else grpcclient
    url = server.url if flavor == "http" else grpc_url(server)
    text = np.array([["héllo".encode()], [b""], [b"with\x00nul"]], dtype=object)
    with module.InferenceServerClient(url) as client:
        inp = module.InferInput("TEXT", [3, 1], "BYTES")
        inp.set_data_from_numpy(text)
        np.testing.assert_array_equal(client.infer("strings", [inp]).as_numpy("SAME"), text)
        words = np.array([b"onnx", "r\u00fcntime".encode(), b"Triton"], dtype=object)
        inp = module.InferInput("TEXT", [3], "BYTES")
        inp.set_data_from_numpy(words)
        expected = direct(UPPER, {"TEXT": np.array([w.decode() for w in words], dtype=object)})["UPPER"]
        answer = client.infer("upper", [inp]).as_numpy("UPPER")
        assert [w.decode() for w in answer] == list(expected)
        assert [w.decode() for w in answer][::2] == ["ONNX", "TRITON"]


def test_bytes_that_are_not_utf8_are_the_clients_fault(server: RunningServer) -> None:
    with httpclient.InferenceServerClient(server.url) as client:
        inp = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=object))
        with pytest.raises(Exception, match="not UTF-8") as caught:
            client.infer("strings", [inp])
        assert getattr(caught.value, "status", lambda: None)() == "400"


def test_default_model_filename_a_file_or_a_directory(server: RunningServer) -> None:
    x = rows(2, seed=3)
    with httpclient.InferenceServerClient(server.url) as client:
        for version, seed in (("1", 1), ("2", 2)):
            inp = httpclient.InferInput("INPUT", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer("named", [inp], model_version=version)
            expected = direct(onnx_models.classifier(seed=seed), {"INPUT": x})["PROBS"]
            np.testing.assert_allclose(result.as_numpy("PROBS"), expected, rtol=1e-6)
        assert client.get_model_config("named")["default_model_filename"] == "classifier.onnx"


def test_a_wrong_shape_is_refused_before_onnx_runtime_sees_it(server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(grpc_url(server)) as client:
        inp = grpcclient.InferInput("INPUT", [1, 5], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
        with pytest.raises(Exception, match="INPUT") as caught:
            client.infer("classifier", [inp])
        assert "INVALID_ARGUMENT" in str(getattr(caught.value, "status", lambda: "")())
