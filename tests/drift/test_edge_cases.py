"""Each edge case gives a defined answer or a clear error, never a silent NaN."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.drift import DriftSettings, compare_arrays, to_document, window_drift
from sidecar.drift.window import ColumnResult

from .conftest import no_nan


def _column(reference: np.ndarray, current: np.ndarray, **settings: object) -> ColumnResult:
    report = window_drift({"x": reference}, {"x": current}, DriftSettings(**settings))  # type: ignore[arg-type]  # any field
    no_nan(to_document(report))
    return report.columns[0]


def test_empty_window_is_reported_as_missing_values() -> None:
    column = _column(np.arange(10.0), np.zeros(0))
    assert column.drift and column.test is None and "no values in the current window" in column.reason
    report = window_drift({"x": np.arange(10.0)}, {"y": np.arange(10.0)})
    assert [c.reason for c in report.columns] == ["no values in the current window",
                                                  "no values in the reference window"]


@pytest.mark.parametrize("n", [10, 50_000])
def test_constant_columns(n: int) -> None:
    same = _column(np.full(n, 5.0), np.full(n, 5.0))
    assert not same.drift and same.statistics["wasserstein"].value == 0.0
    moved = _column(np.full(n, 5.0), np.full(n, 6.0))
    assert moved.drift and moved.statistics["js"].value == pytest.approx(1.0)
    zeros = _column(np.zeros(n), np.zeros(n))
    assert not zeros.drift and zeros.statistics["wasserstein"].value == 0.0
    assert _column(np.full(n, 5.0), np.full(n, 5.0001)).statistics["wasserstein"].value == pytest.approx(
        0.0001 / (1e-3 * 5.0001), rel=0.05)  # the floor: a thousandth of the data's scale (grid: within 5%)


def test_nan_and_inf() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(size=5000)
    dirty = clean.copy()
    dirty[:500] = np.nan
    dirty[500:520] = np.inf
    column = _column(clean, dirty)
    assert column.drift and "NaN/inf share rose" in column.reason
    assert column.current["nan"] == 500 and column.current["posinf"] == 20
    steady = _column(dirty, rng.permutation(dirty))
    assert not steady.drift
    all_nan = _column(np.full(100, np.nan), np.full(100, np.nan))
    assert not all_nan.drift and all_nan.statistics["ks"].value is None and all_nan.statistics["ks"].note
    nan_now = _column(clean[:100], np.full(100, np.nan))
    assert nan_now.drift


def test_unseen_classes() -> None:
    column = _column(np.zeros(300, int) + np.arange(300) % 3, np.arange(300) % 4)
    assert column.test == "chi2" and column.drift
    assert column.histogram["unseen"] == ["3"]
    js = column.statistics["js"].value
    assert js is not None and 0 < js < 1  # a value: JS is always computed


def test_one_sample_windows() -> None:
    column = _column(np.array([1.0]), np.array([1.5]))
    assert column.test == "ks" and column.statistics["ks"].p_value == 1.0 and not column.drift
    classes = _column(np.array([1]), np.array([2]))
    assert classes.statistics["chi2"].p_value is not None
    report = compare_arrays({"score": np.array([0.3])}, {"score": np.array([0.4])})
    assert report.outputs[0].statistics["spearman"].value is None
    no_nan(to_document(report))


def test_ties() -> None:
    rng = np.random.default_rng(1)
    reference = np.where(rng.random(20_000) < 0.9, 0.0, rng.normal(size=20_000))
    same = _column(reference, np.where(rng.random(20_000) < 0.9, 0.0, rng.normal(size=20_000)))
    js = same.statistics["js"].value
    assert not same.drift and js is not None and js < 0.05
    fewer_zeros = _column(reference, np.where(rng.random(20_000) < 0.6, 0.0, rng.normal(size=20_000)))
    assert fewer_zeros.drift
    integers = _column(rng.integers(0, 3, 400).astype(float), rng.integers(0, 3, 400).astype(float))
    assert integers.statistics["ks"].p_value is not None


def test_very_unequal_windows() -> None:
    rng = np.random.default_rng(2)
    big = rng.normal(size=1_000_000)
    alarms = sum(_column(big, rng.normal(size=50)).drift for _ in range(40))
    assert alarms <= 6  # the small window picks the p-value test: false alarms stay near alpha
    assert _column(big, rng.normal(1.0, 1.0, 50)).drift
    assert not _column(rng.normal(size=50), big).drift


def test_settings_reject_nonsense() -> None:
    from sidecar.drift import DriftError
    with pytest.raises(DriftError):
        DriftSettings(numeric_test="t-test")
    with pytest.raises(DriftError):
        DriftSettings(thresholds={"kl": 0.1})
    with pytest.raises(DriftError):
        DriftSettings(alpha=1.5)
