"""Metrics on their own: histogram buckets, the prediction distribution, bounded counting."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from inference_protocol.datatypes import bf16_bits_from_float
from serving.config import ModelSpec, parse_config
from serving.metrics import Metrics, exposition
from serving.predictions import MAX_CLASS_LABELS, MAX_PENDING_BATCHES, PredictionStats


def spec(outputs: str, parameters: str = "") -> ModelSpec:
    return parse_config(f"""
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {outputs} ]
        {parameters}
        """, Path("m"))


def sample(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}{{{re.escape(label_text)}}} (\S+)$", text, re.M)
    assert match, f"{name}{{{label_text}}} missing"
    return float(match.group(1))


def test_value_histogram_uses_le_edges_and_skips_non_finite_values() -> None:
    stats = PredictionStats(spec('{ name: "Y" data_type: TYPE_FP32 dims: [ 2 ] }',
                                 'parameters { key: "prediction_buckets" value { string_value: "0,1" } }'))
    stats.observe({"Y": np.array([[-1.0, 0.0], [0.5, 1.0], [2.0, np.nan]], np.float32)})
    _edges, counts, total = stats.values["Y"]
    assert counts.tolist() == [2, 2, 1]  # <=0: -1, 0; (0, 1]: 0.5, 1; above: 2; NaN left out
    assert total[0] == 2.5


def test_class_scores_count_the_top_class_and_its_confidence() -> None:
    stats = PredictionStats(spec('{ name: "P" data_type: TYPE_FP32 dims: [ 3 ] }',
                                 'parameters { key: "class_scores" value { string_value: "P" } }'))
    stats.observe({"P": np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]], np.float32)})
    _labels, counts = stats.classes["P"]
    assert counts[:3].tolist() == [1, 1, 1] and counts[-1] == 0
    assert stats.class_label("P", 1) == "1" and stats.class_label("P", MAX_CLASS_LABELS) == "other"
    conf_counts, conf_total = stats.confidence["P"]
    assert conf_counts.sum() == 3 and abs(conf_total[0] - 2.1) < 1e-6
    wide = np.zeros((1, MAX_CLASS_LABELS + 50), np.float32)
    wide[0, -1] = 1.0  # class 149: past the label budget
    stats.observe({"P": wide})
    assert stats.classes["P"][1][-1] == 1


def test_bf16_outputs_are_counted_by_value() -> None:
    stats = PredictionStats(spec('{ name: "B" data_type: TYPE_BF16 dims: [ 2 ] }',
                                 'parameters { key: "prediction_buckets" value { string_value: "0,1" } }'))
    stats.observe({"B": bf16_bits_from_float(np.array([[0.5, 3.0]], np.float32))})
    assert stats.values["B"][1].tolist() == [0, 1, 1]


def test_counting_beside_the_request_path_is_bounded_and_counts_what_it_drops() -> None:
    gate = threading.Event()
    worker = ThreadPoolExecutor(1)
    worker.submit(gate.wait)  # the counting thread is busy
    stats = PredictionStats(spec('{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }'), worker)
    for _ in range(MAX_PENDING_BATCHES + 5):
        stats.submit({"Y": np.ones((1, 1), np.float32)})
    assert stats.dropped == 5
    gate.set()
    worker.submit(lambda: None).result(10)
    assert stats.values["Y"][1].sum() == MAX_PENDING_BATCHES
    worker.shutdown()


def test_exposition_has_tritons_counter_names_and_real_histograms() -> None:
    metrics = Metrics()
    stats = metrics.add_model(spec('{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }'), 3)
    stats.record_request(2_000_000)
    stats.record_request(5_000_000, "BACKEND")
    stats.record_batch([1_000, 3_000], rows=5, input_ns=10, infer_ns=20, output_ns=30)
    text = exposition(metrics.registry).decode()
    assert "# TYPE nv_inference_request_success counter" in text
    assert sample(text, "nv_inference_request_success", model="m", version="3") == 1
    assert sample(text, "nv_inference_request_failure", model="m", version="3", reason="BACKEND") == 1
    assert sample(text, "nv_inference_count", model="m", version="3") == 5
    assert sample(text, "nv_inference_queue_duration_us", model="m", version="3") == 4
    assert "# TYPE serving_request_duration_seconds histogram" in text
    assert sample(text, "serving_request_duration_seconds_bucket", model="m", version="3", le="0.001") == 0
    assert sample(text, "serving_request_duration_seconds_bucket", model="m", version="3", le="0.0025") == 1
    assert sample(text, "serving_batch_size_bucket", model="m", version="3", le="8.0") == 1
    assert sample(text, "serving_queue_duration_seconds_count", model="m", version="3") == 2
    metrics.remove_model(stats)
    assert 'model="m"' not in exposition(metrics.registry).decode()
    metrics.close()
