"""The recorder: decode off the request path, keep inputs by policy, bounded queue, time rotation."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.dataset as ds
import pytest
from prometheus_client import CollectorRegistry

from inference_protocol.codecs import encode_infer_response
from inference_protocol.tensors import InferResponse, Tensor
from sidecar.config.file import RecordingConfig
from sidecar.mirror.exchange import Answer, Exchange
from sidecar.records.metrics import RecordMetrics as Metrics
from sidecar.records.recorder import Recorder, to_record
from sidecar.records.segments import finished_segments
from sidecar.records.spool import read_batches
from sidecar.routing import sampled

from ..support import wait_until

X = np.arange(8, dtype=np.float32).reshape(2, 4)
SCORES = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)


def request_body(request_id: str | None) -> bytes:
    body: dict[str, object] = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 4],
                                           "data": X.reshape(-1).tolist()}]}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def answer(upstream: str, scores: np.ndarray, version: str, binary: bool = False) -> Answer:
    body, length = encode_infer_response(InferResponse("m", version, [Tensor("OUT", "FP32", scores)]), [binary])
    return Answer(upstream, 200, 1.5, None, body, length)


def exchange(request_id: str | None = "req-1", key: str = "key-1", sink: list | None = None) -> Exchange:
    done: list[Exchange] = sink if sink is not None else []
    ex = Exchange(key, "header-id", 1_700_000_000.5, "m", "http", request_body(request_id), None, done.append)
    ex.expect(2)
    ex.set_primary(answer("primary", SCORES, "1"))
    ex.add_shadow(answer("v2", SCORES[::-1].copy(), "2", binary=True))
    ex.add_shadow(Answer("down", None, 0.2, "connection"))
    assert done == [ex]
    return ex


def test_an_exchange_becomes_a_record() -> None:
    record = to_record(exchange(), RecordingConfig(inputs="all"))
    assert (record.request_id, record.model, record.protocol, record.timestamp) == ("req-1", "m", "http",
                                                                                   1_700_000_000.5)
    assert record.inputs is not None
    np.testing.assert_array_equal(record.inputs[0].array(), X)
    assert record.primary.model_version == "1" and record.primary.outputs is not None
    np.testing.assert_array_equal(record.primary.outputs[0].array(), SCORES)
    v2, down = record.shadows
    assert v2.model_version == "2" and v2.outputs is not None
    np.testing.assert_array_equal(v2.outputs[0].array(), SCORES[::-1])
    assert (down.status, down.error, down.outputs) == (None, "connection", None)


def test_the_request_id_falls_back_to_the_forwarded_header() -> None:
    assert to_record(exchange(request_id=None), RecordingConfig()).request_id == "header-id"


def test_error_answers_and_garbage_are_recorded_as_errors() -> None:
    metrics = Metrics(CollectorRegistry())
    ex = Exchange("k", "k", 0.0, "m", "http", request_body("r"), None, lambda _: None)
    ex.expect(2)
    ex.set_primary(Answer("primary", 404, 1.0, None, b'{"error": "unknown model"}'))
    ex.add_shadow(Answer("garbage", 200, 1.0, None, b"\x00\x01 not json"))
    ex.add_shadow(Answer("broken", 500, 1.0, None, b"<html>"))
    record = to_record(ex, RecordingConfig(), metrics)
    assert (record.primary.status, record.primary.error) == (404, "unknown model")
    assert (record.shadows[0].error or "").startswith("invalid response: not JSON")
    assert record.shadows[1].error == "HTTP 500"
    assert metrics.registry.get_sample_value("sidecar_shadow_errors_total",
                                             {"shadow": "garbage", "reason": "invalid_response"}) == 1


def test_inputs_are_kept_by_policy_and_under_the_cap() -> None:
    metrics = Metrics(CollectorRegistry())
    assert to_record(exchange(), RecordingConfig(inputs="none")).inputs is None
    assert to_record(exchange(), RecordingConfig(inputs="all", max_input_bytes=63), metrics).inputs is None
    assert metrics.registry.get_sample_value("sidecar_record_inputs_skipped_total") == 1
    assert to_record(exchange(), RecordingConfig(inputs="all", max_input_bytes=64)).inputs is not None
    keys = [f"key-{i}" for i in range(200)]
    kept = [k for k in keys if to_record(exchange(key=k), RecordingConfig(inputs="sampled", inputs_fraction=0.3))
            .inputs is not None]
    assert kept == [k for k in keys if sampled(k, 0.3, "inputs")] and 30 < len(kept) < 90


def recorder(tmp_path: Path, **kwargs: Any) -> tuple[Recorder, Metrics]:  # RecordingConfig's fields
    metrics = Metrics(CollectorRegistry())
    config = dataclasses.replace(RecordingConfig(dir=tmp_path), **kwargs)
    return Recorder(config, metrics), metrics


def test_records_are_written_when_the_recorder_stops(tmp_path: Path) -> None:
    rec, metrics = recorder(tmp_path)
    rec.start()
    for index in range(5):
        assert rec.submit(exchange(request_id=f"r{index}"))
    assert rec.stop(30)
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert sorted(table.column("request_id").to_pylist()) == [f"r{i}" for i in range(5)]
    assert metrics.registry.get_sample_value("sidecar_records_written_total") == 5
    assert metrics.registry.get_sample_value("sidecar_shadow_top1_agree_rows_total",
                                             {"shadow": "v2", "model": "m", "output": "OUT"}) == 0
    assert not rec.submit(exchange())
    assert metrics.registry.get_sample_value("sidecar_records_lost_total", {"reason": "shutdown"}) == 1


def test_segments_rotate_by_age_without_new_records(tmp_path: Path) -> None:
    rec, _ = recorder(tmp_path, segment_secs=0.2)
    rec.start()
    try:
        rec.submit(exchange())
        wait_until(lambda: list(tmp_path.glob("records-*.parquet")), 10, "a segment finished by age")
    finally:
        rec.stop(30)


def test_the_thread_flushes_records_to_disk_without_new_ones(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    rec = Recorder(RecordingConfig(dir=tmp_path), metrics, flush_secs=0.2)
    rec.start()
    try:
        assert rec.submit(exchange(request_id="early"))
        started = time.monotonic()
        wait_until(lambda: [r for p in tmp_path.glob(".records-*.arrows") for b in read_batches(p)
                            for r in b.column("request_id").to_pylist()] == ["early"], 10, "the record on disk")
        assert time.monotonic() - started < 2.0  # the flush interval, not the segment's 60 s
        assert finished_segments(tmp_path) == []
    finally:
        assert rec.stop(30)
    assert metrics.registry.get_sample_value("sidecar_records_written_total") == 1


@pytest.mark.parametrize("limit", [{"queue_records": 2}, {"queue_bytes": 2 * exchange().size + 100}])
def test_a_full_queue_drops_and_counts(tmp_path: Path, limit: dict) -> None:
    rec, metrics = recorder(tmp_path, **limit)
    assert [rec.submit(exchange()) for _ in range(3)] == [True, True, False]
    assert metrics.registry.get_sample_value("sidecar_records_lost_total", {"reason": "queue_full"}) == 1
    assert metrics.registry.get_sample_value("sidecar_recorder_queue_depth") == 2
    rec.start()
    assert rec.stop(30)
    assert ds.dataset(tmp_path, format="parquet").to_table().num_rows == 2
