"""Primary/shadow agreement: top-1 by row and mean absolute difference, per output."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sidecar.records.compare import Agreement, compare
from sidecar.records.decode import tensor_value
from sidecar.records.metrics import RecordMetrics as Metrics
from sidecar.records.tables import Record, ResponseRecord


def scores(rows: list[list[float]]) -> list:
    return [tensor_value("OUT", "FP32", np.array(rows, dtype=np.float32))]


def test_top1_of_class_scores_by_row() -> None:
    (result,) = compare(scores([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]]), scores([[0.6, 0.4], [0.7, 0.3], [0.1, 0.9]]))
    assert (result.rows, result.agree) == (3, 1)
    assert result.mean_abs_diff == pytest.approx(np.mean([0.3, 0.3, 0.5, 0.5, 0.4, 0.5]), abs=1e-6)


def test_integer_bytes_and_single_value_outputs() -> None:
    labels = [tensor_value("L", "INT64", np.array([[1], [2], [3]]))]
    (result,) = compare(labels, [tensor_value("L", "INT64", np.array([[1], [5], [3]]))])
    assert (result.rows, result.agree) == (3, 2)
    words = [tensor_value("W", "BYTES", np.array([b"x", b"y"], dtype=object))]
    (result,) = compare(words, [tensor_value("W", "BYTES", np.array([b"x", b"z"], dtype=object))])
    assert (result.rows, result.agree, result.mean_abs_diff) == (2, 1, None)
    (result,) = compare(scores([[0.5], [0.25]]), scores([[0.5], [0.5]]))
    assert result.agree is None and result.mean_abs_diff == pytest.approx(0.125)


def test_outputs_that_cannot_be_compared() -> None:
    assert compare(scores([[1.0, 0.0]]), scores([[1.0, 0.0, 0.0]]))[0].problem == "shape"
    assert compare(scores([[1.0, 0.0]]), [])[0].problem == "missing"


def test_agreement_metrics_per_shadow_and_output() -> None:
    metrics = Metrics(CollectorRegistry())
    primary = ResponseRecord("primary", "1", 200, 1.0, None, scores([[0.9, 0.1], [0.2, 0.8]]))
    shadows = [ResponseRecord("v2", "2", 200, 1.0, None, scores([[0.8, 0.2], [0.9, 0.1]])),
               ResponseRecord("down", None, None, 1.0, "connection", None)]
    Agreement(metrics).observe(Record("r", 0.0, "m", "http", None, primary, shadows))
    labels = {"shadow": "v2", "model": "m", "output": "OUT"}
    sample = metrics.registry.get_sample_value
    assert sample("sidecar_shadow_compared_rows_total", labels) == 2
    assert sample("sidecar_shadow_top1_agree_rows_total", labels) == 1
    assert sample("sidecar_shadow_mean_abs_diff_count", labels) == 1
    assert sample("sidecar_shadow_compared_rows_total", {**labels, "shadow": "down"}) is None


def test_a_canary_served_record_compares_the_canary_with_the_primary_copy_only() -> None:
    metrics = Metrics(CollectorRegistry())
    pairs: list[tuple[str, int, int | None, float | None]] = []
    agreement = Agreement(metrics, lambda *pair: pairs.append(pair))
    canary = ResponseRecord("canary", "2", 200, 1.0, None, scores([[0.9, 0.1], [0.2, 0.8]]))
    shadows = [ResponseRecord("primary", "1", 200, 1.0, None, scores([[0.8, 0.2], [0.9, 0.1]])),
               ResponseRecord("v2", "2", 200, 1.0, None, scores([[0.9, 0.1], [0.2, 0.8]]))]
    agreement.observe(Record("c", 0.0, "m", "http", None, canary, shadows))
    sample = metrics.registry.get_sample_value
    assert sample("sidecar_canary_compared_rows_total", {"model": "m", "output": "OUT"}) == 2
    assert sample("sidecar_canary_top1_agree_rows_total", {"model": "m", "output": "OUT"}) == 1
    assert sample("sidecar_canary_mean_abs_diff_count", {"model": "m", "output": "OUT"}) == 1
    # the shadow is compared with the canary's answer here, which says nothing about the shadow
    assert sample("sidecar_shadow_compared_rows_total", {"shadow": "v2", "model": "m", "output": "OUT"}) is None
    assert [(source, rows, agree) for source, rows, agree, _ in pairs] == [("copies", 2, 1)]
    primary = ResponseRecord("primary", "1", 200, 1.0, None, scores([[0.9, 0.1], [0.2, 0.8]]))
    agreement.observe(Record("p", 0.0, "m", "http", None, primary, shadows[1:]))
    assert pairs[-1][:3] == ("v2", 2, 2)  # mirrored pairs, for an analysis that compares by a shadow
