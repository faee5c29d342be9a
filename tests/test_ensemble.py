"""Ensembles served as Triton serves them, driven by tritonclient over HTTP and gRPC.

The repository is tests/fixtures/ensembles: a preprocessor and a classifier (serving.Model
handlers) chained by `pipeline`, a diamond whose branches must run at the same time, a
pipeline whose second step fails on some inputs, and two ensembles that must not load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer

REPOSITORY = Path(__file__).parent / "fixtures" / "ensembles"
WEIGHTS = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, 0.5, 1.0], [0.25, 0.25, 0.25]], np.float32)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(REPOSITORY)
    yield running
    running.stop()


def grpc_url(server: RunningServer) -> str:
    return f"127.0.0.1:{server.server.grpc_port}"


def expected(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline computed with numpy: preprocess, linear layer, softmax, argmax."""
    logits = ((raw - 128.0) / 64.0) @ WEIGHTS
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs, probs.argmax(-1)[:, None]


def http_input(name: str, x: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def grpc_input(name: str, x: np.ndarray, module: Any = grpcclient) -> Any:
    tensor = module.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def stats(server: RunningServer, model: str) -> dict[str, Any]:
    entry: dict[str, Any] = httpclient.InferenceServerClient(server.url).get_inference_statistics(model)
    return entry["model_stats"][0]


RAW = np.random.default_rng(3).uniform(0, 255, size=(3, 4)).astype(np.float32)


def test_pipeline_over_http_grpc_and_aio(server: RunningServer) -> None:
    probs, label = expected(RAW)
    over_http = httpclient.InferenceServerClient(server.url).infer("pipeline", [http_input("RAW", RAW)])
    np.testing.assert_allclose(over_http.as_numpy("PROBS"), probs, rtol=1e-5)
    np.testing.assert_array_equal(over_http.as_numpy("CLASS"), label)
    over_grpc = grpcclient.InferenceServerClient(grpc_url(server)).infer(
        "pipeline", [grpc_input("RAW", RAW)], request_id="ens-1")
    assert over_grpc.get_response().id == "ens-1" and over_grpc.get_response().model_name == "pipeline"
    np.testing.assert_allclose(over_grpc.as_numpy("PROBS"), probs, rtol=1e-5)

    async def aio() -> Any:
        async with grpcaio.InferenceServerClient(grpc_url(server)) as client:
            only_class = [grpcaio.InferRequestedOutput("CLASS")]
            return await client.infer("pipeline", [grpc_input("RAW", RAW, grpcaio)], outputs=only_class)

    result = asyncio.run(aio())
    np.testing.assert_array_equal(result.as_numpy("CLASS"), label)
    assert result.as_numpy("PROBS") is None  # only what was asked for


def test_metadata_and_config_say_ensemble(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    metadata = client.get_model_metadata("pipeline")
    assert metadata["platform"] == "ensemble" and metadata["inputs"][0]["shape"] == [-1, 4]
    config = client.get_model_config("pipeline")
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["preprocessor", "classifier"]
    assert steps[1]["output_map"] == {"PROBS": "PROBS", "CLASS": "CLASS"}


def test_the_diamonds_branches_run_at_the_same_time(server: RunningServer) -> None:
    rendezvous = sys.modules["ensemble_fixture_rendezvous"]  # the branches' shared module
    rendezvous.met.clear()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    # each branch waits (up to 10 s) for the other to be running: run one after the other, both fail
    result = httpclient.InferenceServerClient(server.url).infer("diamond", [http_input("X", x)])
    np.testing.assert_array_equal(result.as_numpy("OUT"), (2 * x + 1) + 20 * x)
    np.testing.assert_array_equal(result.as_numpy("SCALED"), 2 * x)
    assert sorted(rendezvous.met) == ["left", "right"]


def test_a_failing_step_fails_only_its_request(server: RunningServer) -> None:
    good, bad = np.full((1, 4), 200, np.float32), np.full((1, 4), 10, np.float32)  # 10 scales below 0
    before = stats(server, "fragile_pipeline")["inference_stats"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        def send(raw: np.ndarray) -> Any:
            return httpclient.InferenceServerClient(server.url).infer("fragile_pipeline", [http_input("RAW", raw)])
        futures = [pool.submit(send, raw) for raw in (bad, good, bad, good)]
        outcomes: list[Any] = [f.exception() or f.result() for f in futures]
    for raw, outcome in zip((bad, good, bad, good), outcomes, strict=True):
        if raw is good:
            assert not isinstance(outcome, Exception)
            np.testing.assert_allclose(outcome.as_numpy("OUTPUT"), np.sqrt((good - 128) / 64), rtol=1e-6)
        else:
            assert isinstance(outcome, InferenceServerException)
            assert outcome.status() == "500"
            assert outcome.message().startswith("in ensemble 'fragile_pipeline', step 2 (model 'fragile'): ")
            assert "negative input: sqrt needs values >= 0" in outcome.message()
    after = stats(server, "fragile_pipeline")["inference_stats"]
    assert after["fail"]["count"] == before["fail"]["count"] + 2
    assert after["success"]["count"] == before["success"]["count"] + 2
    with pytest.raises(InferenceServerException) as caught:
        grpcclient.InferenceServerClient(grpc_url(server)).infer("fragile_pipeline", [grpc_input("RAW", bad)])
    assert caught.value.status() == str(grpc.StatusCode.INTERNAL)
    assert "in ensemble 'fragile_pipeline', step 2 (model 'fragile')" in caught.value.message()


def test_a_request_the_ensemble_refuses_reaches_no_step(server: RunningServer) -> None:
    before = stats(server, "preprocessor")["inference_stats"]["success"]["count"]
    client = httpclient.InferenceServerClient(server.url)
    wrong = httpclient.InferInput("RAW", [1, 4], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 4), np.int32))
    with pytest.raises(InferenceServerException, match="input 'RAW' must be FP32, got INT32") as caught:
        client.infer("pipeline", [wrong])
    assert caught.value.status() == "400"
    with pytest.raises(InferenceServerException, match=r"batch size 9; model 'pipeline' accepts 1..8"):
        client.infer("pipeline", [http_input("RAW", np.zeros((9, 4), np.float32))])
    assert stats(server, "preprocessor")["inference_stats"]["success"]["count"] == before


def test_a_cycle_and_an_unknown_step_are_reported_while_the_others_serve(server: RunningServer) -> None:
    rows = {row["name"]: row for row in httpclient.InferenceServerClient(server.url).get_model_repository_index()}
    assert rows["cycle"]["state"] == "UNAVAILABLE"
    assert "has a cycle: step 2 (model 'scale') -> step 1 (model 'join') -> step 2" in rows["cycle"]["reason"]
    assert rows["unknown_step"]["state"] == "UNAVAILABLE"
    assert "model 'no_such_model' is not in the repository" in rows["unknown_step"]["reason"]
    assert {rows[name]["state"] for name in ("pipeline", "diamond", "fragile_pipeline", "scale", "join")} == {"READY"}
    grpc_rows = grpcclient.InferenceServerClient(grpc_url(server)).get_model_repository_index(as_json=True)
    assert any(r["name"] == "cycle" and "has a cycle" in r.get("reason", "") for r in grpc_rows["models"])
    with pytest.raises(InferenceServerException) as caught:
        httpclient.InferenceServerClient(server.url).infer("cycle", [http_input("X", np.zeros((1, 4), np.float32))])
    assert caught.value.status() == "503" and "has a cycle" in caught.value.message()


def test_statistics_count_the_ensemble_and_each_step(server: RunningServer) -> None:
    names = ("pipeline", "preprocessor", "classifier")
    before = {name: stats(server, name) for name in names}
    client = httpclient.InferenceServerClient(server.url)
    for rows in (1, 3, 1):
        client.infer("pipeline", [http_input("RAW", RAW[:rows])])
    after = {name: stats(server, name) for name in names}

    def delta(name: str, *path: str) -> int:
        a: Any = after[name]
        b: Any = before[name]
        for key in path:
            a, b = a[key], b[key]
        return int(a) - int(b)

    for name in names:  # 3 requests of 5 rows in all, on the ensemble and on each step
        assert delta(name, "inference_stats", "success", "count") == 3
        assert delta(name, "inference_count") == 5
    # as Triton counts an ensemble: one execution per request, its compute time the whole pipeline's
    assert delta("pipeline", "execution_count") == 3
    assert delta("pipeline", "inference_stats", "compute_infer", "count") == 3
    assert delta("pipeline", "inference_stats", "compute_infer", "ns") > 0
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in after["pipeline"]["batch_stats"]}
    assert sizes[3] >= 1 and sizes[1] >= 2
    assert after["pipeline"]["last_inference"] >= max(before["pipeline"]["last_inference"], 1)


def test_metrics_carry_the_ensemble_series(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    client.infer("pipeline", [http_input("RAW", RAW[:1])])
    with pytest.raises(InferenceServerException):
        client.infer("fragile_pipeline", [http_input("RAW", np.zeros((1, 4), np.float32))])
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()

    def value(pattern: str) -> float:
        match = re.search(pattern + r" ([0-9.e+]+)", text)
        assert match, pattern
        return float(match.group(1))

    assert value(r'nv_inference_request_success\{model="pipeline",version="1"\}') >= 1
    assert value(r'nv_inference_exec_count\{model="pipeline",version="1"\}') >= 1
    # the ensemble's failure counts as OTHER (as Triton labels it); the step's own as BACKEND
    assert value(r'nv_inference_request_failure\{model="fragile_pipeline",reason="OTHER",version="1"\}') >= 1
    assert value(r'nv_inference_request_failure\{model="fragile",reason="BACKEND",version="1"\}') >= 1
