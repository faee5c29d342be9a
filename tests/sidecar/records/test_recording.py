"""End to end: tritonclient (HTTP JSON, HTTP binary, gRPC) through the sidecar to two ``serve``s, records checked.

The primary serves classifier version 1, the shadow version 2. Every record read back
from Parquet is compared with what the client got (the primary's outputs), with what
version 2 answers when asked directly (the shadow's outputs), and with the inputs sent.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from sidecar.config.file import Config, PrimaryConfig, RecordingConfig, ShadowConfig
from sidecar.routing import sampled

from ..conftest import ModelServer
from ..support import RunningSidecar, output_array, read_records, wait_until


def http_infer(url: str, rows: np.ndarray, request_id: str, binary: bool) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        inputs = [httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")]
        inputs[0].set_data_from_numpy(rows, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("OUTPUT__0", binary_data=binary)]
        return client.infer("classifier", inputs, outputs=outputs, request_id=request_id).as_numpy("OUTPUT__0")
    finally:
        client.close()


def grpc_infer(url: str, rows: np.ndarray, request_id: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = [grpcclient.InferInput("INPUT__0", list(rows.shape), "FP32")]
        inputs[0].set_data_from_numpy(rows)
        return client.infer("classifier", inputs, request_id=request_id).as_numpy("OUTPUT__0")
    finally:
        client.close()


def sidecar_for(v1: ModelServer, v2: ModelServer, directory: Path, fraction: float = 1.0) -> RunningSidecar:
    config = Config(primary=PrimaryConfig(http=v1.http_url, grpc=v1.grpc),
                    shadows=(ShadowConfig("v2", http=v2.http_url, grpc=v2.grpc, fraction=fraction),),
                    recording=RecordingConfig(dir=directory, inputs="all"))
    return RunningSidecar(config)


def test_every_record_matches_what_the_clients_got(serve_v1: ModelServer, serve_v2: ModelServer,
                                                   points: np.ndarray, tmp_path: Path) -> None:
    sidecar = sidecar_for(serve_v1, serve_v2, tmp_path)
    sent: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    started = time.time()
    try:
        for index in range(12):
            rows = points[index * 5:index * 5 + 1 + index % 5]
            kind = ("http-json", "http-binary", "grpc")[index % 3]
            request_id = f"{kind}-{index}"
            if kind == "grpc":
                got = grpc_infer(sidecar.grpc, rows, request_id)
            else:
                got = http_infer(sidecar.http, rows, request_id, binary=kind == "http-binary")
            sent[request_id] = (kind, rows, got)
        wait_until(lambda: sidecar.metric("sidecar_shadow_successes_total", shadow="v2") == len(sent), 30,
                   "every shadow answer")
    finally:
        sidecar.stop()
    finished = time.time()
    records = read_records(tmp_path)
    assert sorted(records) == sorted(sent)
    agree = rows_total = 0
    for request_id, (kind, rows, got) in sent.items():
        record = records[request_id]
        assert record["protocol"] == ("grpc" if kind == "grpc" else "http") and record["model"] == "classifier"
        assert started <= record["timestamp"].timestamp() <= finished
        (tensor,) = record["inputs"]
        assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("INPUT__0", "FP32", list(rows.shape))
        np.testing.assert_array_equal(np.asarray(tensor["values"]).reshape(rows.shape), rows)
        primary = record["primary"]
        assert (primary["upstream"], primary["status"], primary["error"], primary["model_version"]) == (
            "primary", 200, None, "1")
        np.testing.assert_array_equal(output_array(primary, "OUTPUT__0"), got)
        (shadow,) = record["shadows"]
        assert (shadow["upstream"], shadow["status"], shadow["error"], shadow["model_version"]) == ("v2", 200, None,
                                                                                                    "2")
        assert shadow["latency_ms"] > 0 and primary["latency_ms"] > 0
        v2 = http_infer(serve_v2.http, rows, "direct", binary=True)
        np.testing.assert_array_equal(output_array(shadow, "OUTPUT__0"), v2)
        agree += int(np.count_nonzero(got.argmax(axis=1) == v2.argmax(axis=1)))
        rows_total += rows.shape[0]
    labels = {"shadow": "v2", "model": "classifier", "output": "OUTPUT__0"}
    assert sidecar.metric("sidecar_shadow_compared_rows_total", **labels) == rows_total
    assert sidecar.metric("sidecar_shadow_top1_agree_rows_total", **labels) == agree
    assert sidecar.metric("sidecar_records_written_total") == len(sent)


def test_bytes_tensors_are_recorded_as_strings(serve_v1: ModelServer, serve_v2: ModelServer,
                                               tmp_path: Path) -> None:
    sidecar = sidecar_for(serve_v1, serve_v2, tmp_path)
    text = np.array([[b"what a great day"], [b"this is awful"]], dtype=object)
    try:
        client = httpclient.InferenceServerClient(sidecar.http)
        inputs = [httpclient.InferInput("TEXT", [2, 1], "BYTES")]
        inputs[0].set_data_from_numpy(text)
        result = client.infer("sentiment", inputs, request_id="words")
        client.close()
        wait_until(lambda: sidecar.metric("sidecar_shadow_successes_total", shadow="v2") == 1, 30, "the shadow")
    finally:
        sidecar.stop()
    record = read_records(tmp_path)["words"]
    assert record["inputs"][0]["strings"] == [b"what a great day", b"this is awful"]
    assert record["inputs"][0]["values"] is None
    for output in record["primary"]["outputs"]:
        expected = result.as_numpy(output["name"])
        if output["datatype"] == "BYTES":
            assert output["strings"] == list(expected.reshape(-1))
        else:
            np.testing.assert_array_equal(np.asarray(output["values"]).reshape(output["shape"]), expected)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sampling_picks_the_same_requests_on_every_run(protocol: str, serve_v1: ModelServer, serve_v2: ModelServer,
                                                       points: np.ndarray, tmp_path: Path) -> None:
    ids = [f"{protocol}-sample-{i}" for i in range(24)]
    expected = sorted(i for i in ids if sampled(i, 0.5))
    sidecar = sidecar_for(serve_v1, serve_v2, tmp_path, fraction=0.5)
    try:
        for request_id in ids:
            if protocol == "grpc":
                grpc_infer(sidecar.grpc, points[:1], request_id)
            else:
                http_infer(sidecar.http, points[:1], request_id, binary=True)
        wait_until(lambda: sidecar.metric("sidecar_shadow_successes_total", shadow="v2") == len(expected), 30,
                   "the sampled copies")
        assert sidecar.metric("sidecar_shadow_requests_total", shadow="v2", protocol=protocol) == len(expected)
    finally:
        sidecar.stop()
    assert 4 < len(expected) < 20
    assert sorted(read_records(tmp_path)) == expected
