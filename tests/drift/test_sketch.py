from __future__ import annotations

import numpy as np

from sidecar.drift.sketch import DEFAULT_CAP, Sketch, from_sortable, quantile_edges, sortable


def _sketch(values: np.ndarray, cap: int = DEFAULT_CAP) -> Sketch:
    sketch = Sketch(cap=cap)
    sketch.add(values)
    return sketch


def test_sortable_codes_sort_like_the_floats_and_invert() -> None:
    values = np.array([-np.finfo(float).max, -1e300, -2.5, -1.0, -1e-310, -0.0, 0.0, 1e-310, 1.0, 2.5, 1e300,
                       np.finfo(float).max])
    codes = sortable(values)
    assert np.all(np.diff(codes) >= 0)
    assert codes[5] == codes[6] == 0  # -0.0 and 0.0 are one value
    assert np.array_equal(from_sortable(codes)[values != 0], values[values != 0])


def test_every_value_lies_in_its_bucket_half_open() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, 5000), rng.normal(300, 0.5, 5000), [-1.0] * 10, [0.0] * 10])
    sketch = _sketch(values, cap=256)
    lower, upper = sketch.lower_bounds(), sketch.upper_bounds()
    index = np.searchsorted(lower, values, side="right") - 1
    assert np.all(values >= lower[index]) and np.all(values < upper[index])
    assert np.array_equal(np.bincount(index, minlength=len(lower)), sketch.counts)


def test_cap_bounds_the_buckets_and_resolution_adapts() -> None:
    rng = np.random.default_rng(2)
    wide = _sketch(rng.standard_cauchy(200_000))
    assert len(wide.keys) <= DEFAULT_CAP and wide.total == 200_000
    narrow = _sketch(rng.normal(300, 0.5, 200_000))  # offset data keeps a fine grid
    assert len(quantile_edges(narrow, 10)) == 9
    assert np.ptp(narrow.lower_bounds()) < 10 and narrow.bits >= 10


def test_merge_is_exact_associative_and_commutative() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(0, 1, 30_000), rng.exponential(5, 20_000), rng.normal(-50, 3, 25_000)]
    whole = _sketch(np.concatenate(parts))
    a, b, c = (_sketch(p) for p in parts)
    for merged in (a.merge(b).merge(c), c.merge(a.merge(b)), b.merge(c).merge(a)):
        assert merged.bits == whole.bits
        assert np.array_equal(merged.keys, whole.keys) and np.array_equal(merged.counts, whole.counts)


def test_json_round_trip_is_small_and_exact() -> None:
    sketch = _sketch(np.random.default_rng(4).normal(size=100_000))
    again = Sketch.from_json(sketch.to_json())
    assert np.array_equal(again.keys, sketch.keys) and np.array_equal(again.counts, sketch.counts)
    assert len(str(sketch.to_json())) < 40_000


def test_quantile_edges_split_mass_evenly_and_handle_constants() -> None:
    values = np.random.default_rng(5).normal(size=50_000)
    sketch = _sketch(values)
    edges = quantile_edges(sketch, 10)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=11)
    assert len(edges) == 9 and counts[1:-1].min() > 4500 and counts[1:-1].max() < 5500
    constant = quantile_edges(_sketch(np.full(100, 7.0)), 10)
    assert len(constant) == 2 and constant[0] <= 7.0 < constant[1]
    ties = quantile_edges(_sketch(np.r_[np.zeros(900), np.arange(1, 101.0)]), 10)
    assert ties[0] > 0  # 90% zeros: the zero bucket is one bin, never split
