"""Our values are scipy's, computed by scipy, wherever the definitions coincide."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial import distance

from sidecar.drift import stats
from sidecar.drift.sketch import Sketch


def _sketch(values: np.ndarray) -> Sketch:
    s = Sketch()
    s.add(values)
    return s


def test_raw_statistics_are_scipys() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=700), rng.normal(0.2, 1.3, 900)
    ks = sps.ks_2samp(a, b)
    assert (stats.ks(a, b).value, stats.ks(a, b).p_value) == (ks.statistic, ks.pvalue)
    assert stats.wasserstein_normed(a, b, a.std()).value == pytest.approx(sps.wasserstein_distance(a, b) / a.std())
    p, q = np.array([10, 20, 30, 0]), np.array([12, 18, 25, 5])
    assert stats.jensen_shannon(p, q).value == pytest.approx(distance.jensenshannon(p, q, base=2))
    chi = sps.chi2_contingency(np.vstack([p, q])[:, [0, 1, 2, 3]])
    assert stats.chi_square(p, q).p_value == pytest.approx(chi.pvalue)
    assert stats.mcnemar(30, 12).p_value == pytest.approx(sps.binomtest(30, 42).pvalue)
    x, y = rng.normal(size=200), rng.normal(size=200)
    assert stats.spearman(x, x + y).value == pytest.approx(sps.spearmanr(x, x + y).statistic)


def test_psi_by_hand_with_the_documented_epsilon() -> None:
    p, q = np.array([50, 50, 0]), np.array([40, 50, 10])
    sp, sq = np.array([0.5, 0.5, 1e-4]), np.array([0.4, 0.5, 0.1])
    assert stats.psi(p, q).value == pytest.approx(float(np.sum((sq - sp) * np.log(sq / sp))))


def test_sketch_statistics_match_the_raw_ones_closely() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=200_000), rng.normal(0.05, 1.1, 150_000)
    exact_d = sps.ks_2samp(a, b).statistic
    on_grid = stats.ks_sketch(_sketch(a), _sketch(b))
    assert on_grid.value == pytest.approx(exact_d, abs=0.005)
    exact_w = sps.wasserstein_distance(a, b) / a.std()
    approx = stats.wasserstein_sketch(_sketch(a), _sketch(b), a.std(), max(abs(a).max(), abs(b).max()),
                                      min(a.min(), b.min()), max(a.max(), b.max()))
    assert approx.value == pytest.approx(exact_w, rel=0.05)
    small = rng.normal(size=300)
    assert stats.ks_sketch(_sketch(a), _sketch(small)).p_value == pytest.approx(
        sps.ks_2samp(a, small).pvalue, abs=0.03)


def test_undefined_values_say_why() -> None:
    assert stats.ks(np.zeros(0), np.ones(3)).value is None
    assert "at least 3" in (stats.spearman(np.ones(2), np.ones(2)).note or "")
    assert "constant" in (stats.spearman(np.ones(5), np.arange(5.0)).note or "")
    single = stats.chi_square(np.array([5, 0]), np.array([7, 0]))
    assert (single.value, single.p_value) == (0.0, 1.0)
    assert stats.mcnemar(0, 0).p_value == 1.0
    assert stats.jensen_shannon(np.array([0, 0]), np.array([1, 2])).value is None
