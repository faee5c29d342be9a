"""Top-1, one rule everywhere: the largest score's index, -1 for a row holding NaN."""

from __future__ import annotations

import numpy as np

from inference_protocol.predictions import NO_CLASS, top1


def test_top1_is_the_argmax_of_the_last_axis() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]], np.float32)
    assert top1(scores).tolist() == [1, 0]
    assert top1(scores.reshape(1, 2, 3)).tolist() == [[1, 0]]


def test_a_row_holding_nan_has_no_class() -> None:
    scores = np.array([[np.nan, 0.1], [0.2, np.nan], [0.3, 0.9], [np.inf, 1.0]])
    assert top1(scores).tolist() == [NO_CLASS, NO_CLASS, 1, 0]  # inf is a score, NaN is none


def test_integer_and_bool_scores_have_no_nan() -> None:
    assert top1(np.array([[1, 5, 2]], np.int64)).tolist() == [1]
    assert top1(np.array([[False, True]])).tolist() == [1]


def test_the_sidecar_the_drift_job_and_the_runtime_use_it() -> None:
    from serving import predictions
    from sidecar.drift import columns
    from sidecar.records import compare
    assert predictions.top1 is columns.top1 is compare.top1 is top1
