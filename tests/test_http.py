"""KServe v2 over HTTP, driven by tritonclient.http (sync and aio) against the examples."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient

from .conftest import EXAMPLES, RunningServer

CLASSIFIER = EXAMPLES / "classifier"


def classifier_alone(version: int, x: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(CLASSIFIER / str(version) / "model.pt"))
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def points(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def client(examples_server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(examples_server.url)


def infer_classifier(client: httpclient.InferenceServerClient, x: np.ndarray, binary: bool,
                     version: str = "") -> httpclient.InferResult:
    inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT__0", binary_data=binary)
    return client.infer("classifier", [inp], model_version=version, outputs=[out], request_id="req-1")


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "shadowserve" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_config_and_readiness(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("classifier")
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "pytorch_libtorch"
    assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 10]}]
    config = client.get_model_config("classifier")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [64]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 200
    assert client.is_model_ready("classifier") and client.is_model_ready("classifier", "1")
    assert not client.is_model_ready("classifier", "9") and not client.is_model_ready("nope")
    assert client.get_model_metadata("classifier", "1")["name"] == "classifier"


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("rows", [1, 5])
def test_infer_equals_the_model_called_alone(client: httpclient.InferenceServerClient, binary: bool,
                                             rows: int) -> None:
    x = points(rows, seed=rows)
    result = infer_classifier(client, x, binary)
    got = result.as_numpy("OUTPUT__0")
    assert got.shape == (rows, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, classifier_alone(2, x), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_version"] == "2"


def test_versions_are_addressable_and_answer_differently(client: httpclient.InferenceServerClient) -> None:
    x = points(200, seed=3)
    v1 = infer_classifier(client, x[:64], True, "1").as_numpy("OUTPUT__0")
    v2 = infer_classifier(client, x[:64], True, "2").as_numpy("OUTPUT__0")
    np.testing.assert_allclose(v1, classifier_alone(1, x[:64]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(v1, v2)


def test_bytes_model_with_output_selection(client: httpclient.InferenceServerClient) -> None:
    texts = np.array([[b"what a great day"], [b"this is awful"], [b"a table"]], dtype=object)
    for binary in (False, True):
        inp = httpclient.InferInput("TEXT", [3, 1], "BYTES")
        inp.set_data_from_numpy(texts, binary_data=binary)
        only_label = [httpclient.InferRequestedOutput("LABEL", binary_data=binary)]
        result = client.infer("sentiment", [inp], outputs=only_label)
        labels = [v.encode() if isinstance(v, str) else v for v in result.as_numpy("LABEL").reshape(-1)]
        assert labels == [b"positive", b"negative", b"neutral"]
        assert result.as_numpy("SCORES") is None
        assert [o["name"] for o in result.get_response()["outputs"]] == ["LABEL"]


def test_stats_count_requests_and_batches(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("classifier", "1")["model_stats"][0]
    infer_classifier(client, points(3), True, "1")
    after = client.get_inference_statistics("classifier", "1")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["execution_count"] == before["execution_count"] + 1
    assert any(b["batch_size"] == 3 for b in after["batch_stats"])
    everything = client.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in everything} >= {("classifier", "1"), ("classifier", "2"),
                                                               ("sentiment", "1")}


def concurrent_requests(server: RunningServer, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Each of ``xs`` to classifier version 1, all at once (so they batch)."""
    async def scenario() -> list[np.ndarray]:
        async with aiohttpclient.InferenceServerClient(server.url) as aclient:
            async def one(x: np.ndarray) -> np.ndarray:
                inp = aiohttpclient.InferInput("INPUT__0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                result = await aclient.infer("classifier", [inp], model_version="1")
                return result.as_numpy("OUTPUT__0")
            return await asyncio.gather(*(one(x) for x in xs))
    return asyncio.run(scenario())


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(examples_server: RunningServer) -> None:
    xs = [points(1 + i % 3, seed=100 + i) for i in range(64)]
    sync = httpclient.InferenceServerClient(examples_server.url)
    before = sync.get_inference_statistics("classifier", "1")["model_stats"][0]
    results = concurrent_requests(examples_server, xs)
    after = sync.get_inference_statistics("classifier", "1")["model_stats"][0]
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, classifier_alone(1, x), rtol=1e-5, atol=1e-6)
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    batches = after["execution_count"] - before["execution_count"]
    assert requests == 64 and batches < requests


def test_prometheus_metrics_use_tritons_names_and_show_batching(examples_server: RunningServer) -> None:
    # traffic of its own, so that the test holds when it runs alone
    concurrent_requests(examples_server, [points(2, seed=200 + i) for i in range(64)])
    text_input = httpclient.InferInput("TEXT", [2, 1], "BYTES")
    text_input.set_data_from_numpy(np.array([[b"what a great day"], [b"this is awful"]], dtype=object))
    httpclient.InferenceServerClient(examples_server.url).infer("sentiment", [text_input])
    text = urllib.request.urlopen(examples_server.metrics_url, timeout=10).read().decode()

    def value(name: str, **labels: str) -> float:
        label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        match = re.search(rf"^{name}{{{re.escape(label_text)}}} (\S+)$", text, re.M)
        assert match, f"{name}{{{label_text}}} not in /metrics"
        return float(match.group(1))

    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                 "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                 "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count"):
        assert f"# TYPE {name} " in text
        value(name, model="classifier", version="1")
    assert value("nv_inference_request_failure", model="classifier", version="1", reason="BACKEND") == 0
    assert value("nv_inference_exec_count", model="classifier", version="1") < \
        value("nv_inference_request_success", model="classifier", version="1")
    assert value("serving_batch_size_count", model="classifier", version="1") > 0
    assert value("serving_request_duration_seconds_count", model="classifier", version="1") > 0
    assert value("serving_queue_duration_seconds_bucket", model="classifier", version="1", le="+Inf") > 0
    # the prediction distribution: every output value, the top-1 class and its confidence
    rows = value("nv_inference_count", model="classifier", version="1")
    assert value("serving_prediction_value_count", model="classifier", version="1", output="OUTPUT__0") == rows * 10
    assert value("serving_prediction_value_bucket", model="classifier", version="1", output="OUTPUT__0",
                 le="1.0") == rows * 10  # softmax scores are all <= 1
    classes = re.findall(r'^serving_predicted_class_total\{class="(class-\d)",model="classifier",output="OUTPUT__0",'
                         r'version="1"\} (\S+)$', text, re.M)
    assert classes and sum(float(v) for _, v in classes) == rows
    assert value("serving_prediction_confidence_count", model="classifier", version="1", output="OUTPUT__0") == rows
    sentiment = re.findall(r'^serving_predicted_class_total\{class="(\w+)",model="sentiment"', text, re.M)
    assert set(sentiment) == {"negative", "positive"}  # both classes were predicted, and no others exist
