from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidecar.drift import DriftError, Window, compare_arrays, compare_records, to_document
from sidecar.drift.synthetic import write_records

from .conftest import no_nan, softmax


def test_flipped_class_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 4000
    truth = rng.integers(0, 10, n)
    logits = rng.normal(size=(n, 10))
    logits[np.arange(n), truth] += 3
    primary = softmax(logits)
    shadow = primary.copy()
    says3 = primary.argmax(axis=1) == 3
    shadow[says3, 5] = primary[says3, 3] + 0.01
    errors = np.zeros(n, bool)
    errors[::100] = True  # 1% of shadow calls timed out
    write_records(tmp_path / "r", {"probs": primary}, shadows={"v2": {"probs": shadow}},
                  shadow_errors={"v2": errors}, segment_rows=1500)
    pq.write_table(pa.table({"request_id": [f"req-{i}" for i in range(n)], "label": truth}), tmp_path / "l.parquet")
    report = compare_records(Window(tmp_path / "r"), "v2", labels=tmp_path / "l.parquet")
    output = report.outputs[0]
    assert report.counts["shadow_failed"] == 40 and output.pairs == n - 40
    agreement = output.statistics["agreement"].value
    assert agreement == pytest.approx(1 - says3[~errors].mean())
    assert output.disagreement and report.disagreement
    assert output.labels and output.labels["labelled"] == n - 40
    assert output.labels["shadow_only"] == int((says3 & (truth == 5) & ~errors).sum())  # primary said 3, truth 5
    assert output.labels["primary_only"] == int((says3 & (truth == 3) & ~errors).sum())
    mcnemar = output.statistics["mcnemar"].p_value
    assert mcnemar is not None and mcnemar < 1e-10  # computed for classes
    assert any("less accurate" in r for r in output.reasons)
    assert output.timeline["metric"] == "agreement"
    assert sum(output.timeline["pairs"]) == n - 40
    no_nan(to_document(report))
    assert report.distribution.columns[0].name == "probs[0]"


def test_identical_shadow_passes(tmp_path: Path) -> None:
    probs = softmax(np.random.default_rng(1).normal(size=(2000, 10)))
    write_records(tmp_path / "r", {"probs": probs}, shadows={"same": {"probs": probs}})
    report = compare_records(Window(tmp_path / "r"), "same")
    assert not report.disagreement and not report.drift
    out = report.outputs[0]
    assert out.statistics["agreement"].value == 1.0 and out.statistics["mad"].value == 0.0
    assert out.statistics["spearman"].value == pytest.approx(1.0)


def test_scalar_scores_use_mad_and_spearman() -> None:
    rng = np.random.default_rng(2)
    score = rng.normal(size=3000)
    close = compare_arrays({"score": score}, {"score": score + rng.normal(0, 0.01, 3000)})
    assert not close.disagreement and "agreement" not in close.outputs[0].statistics
    far = compare_arrays({"score": score}, {"score": rng.normal(size=3000)})
    reasons = " ".join(far.outputs[0].reasons)
    assert far.disagreement and "mean absolute difference" in reasons and "Spearman" in reasons


def test_class_outputs_and_batches() -> None:
    labels = np.arange(600) % 4
    report = compare_arrays({"cls": labels}, {"cls": np.where(labels == 2, 3, labels)})
    assert report.outputs[0].statistics["agreement"].value == pytest.approx(0.75)
    with pytest.raises(DriftError, match="same length"):
        compare_arrays({"cls": labels}, {"cls": labels[:10]})


def test_no_pairs_is_a_clear_error(tmp_path: Path) -> None:
    probs = softmax(np.random.default_rng(3).normal(size=(50, 4)))
    write_records(tmp_path / "r", {"probs": probs}, shadows={"v2": {"other": probs}})
    with pytest.raises(DriftError, match="pairs with the primary"):
        compare_records(Window(tmp_path / "r"), "v2")
    with pytest.raises(DriftError, match="shadows seen: v2"):
        compare_records(Window(tmp_path / "r"), "v3")
