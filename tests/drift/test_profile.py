from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sidecar.drift import DriftError, Profile
from sidecar.drift.summary import RAW_LIMIT, CategoricalColumn, NumericColumn

from .conftest import softmax


def _probs(rng: np.random.Generator, n: int) -> np.ndarray:
    return softmax(rng.normal(size=(n, 10)))


def test_columns_per_element_and_top1() -> None:
    profile = Profile.from_arrays({"probs": _probs(np.random.default_rng(0), 100), "label": np.arange(100) % 3,
                                   "score": np.linspace(0, 1, 100)})
    assert set(profile.columns) == {f"probs[{i}]" for i in range(10)} | {"probs.top1", "label", "score"}
    assert isinstance(profile.columns["probs.top1"], CategoricalColumn)
    label = profile.columns["label"]
    assert isinstance(label, CategoricalColumn) and label.counts == {"0": 34, "1": 33, "2": 33}
    assert isinstance(profile.columns["score"], NumericColumn)


def test_profiles_of_parts_merge_into_the_profile_of_the_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    parts = [_probs(rng, 40_000), _probs(rng, 25_000), _probs(rng, 35_000)]
    whole = Profile.from_arrays({"probs": np.concatenate(parts)})
    saved = []
    for i, part in enumerate(parts):  # through files, as parallel jobs would
        Profile.from_arrays({"probs": part}).save(tmp_path / f"{i}.json")
        saved.append(Profile.load(tmp_path / f"{i}.json"))
    merged = saved[0].merge(saved[1]).merge(saved[2])
    for name in whole.columns:
        a, b = whole.columns[name], merged.columns[name]
        if isinstance(a, NumericColumn):
            assert isinstance(b, NumericColumn)
            for x, y in zip(whole.bins_of(name), merged.bins_of(name), strict=True):
                assert np.array_equal(x, y)
            assert (a.count, a.minimum, a.maximum) == (b.count, b.minimum, b.maximum)
            assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.std == pytest.approx(b.std, rel=1e-9)
        else:
            assert isinstance(b, CategoricalColumn) and a.counts == b.counts
    assert merged.source["predictions"] == 100_000


def test_profile_file_is_small_and_round_trips(tmp_path: Path) -> None:
    profile = Profile.from_arrays({"probs": _probs(np.random.default_rng(2), 300_000)})
    path = tmp_path / "p.json"
    profile.save(path)
    assert path.stat().st_size < 250_000  # 11 columns summarising 3.3 million values
    again = Profile.load(path)
    for name, column in profile.columns.items():
        if isinstance(column, NumericColumn):
            assert np.array_equal(profile.bins_of(name)[1], again.bins_of(name)[1])
            assert column.raw is None  # too many values to keep verbatim


def test_small_windows_keep_raw_values_until_the_limit() -> None:
    rng = np.random.default_rng(3)
    small = Profile.from_arrays({"x": rng.normal(size=RAW_LIMIT // 2)})
    column = small.columns["x"]
    assert isinstance(column, NumericColumn) and column.raw is not None and len(column.raw) == RAW_LIMIT // 2
    both = small.merge(small).merge(small)
    merged_x = both.columns["x"]
    assert isinstance(merged_x, NumericColumn) and merged_x.raw is None


def test_bad_profiles_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(DriftError, match="not a drift profile"):
        Profile.load(bad)
    with pytest.raises(DriftError, match="cannot read profile"):
        Profile.load(tmp_path / "missing.json")
    with pytest.raises(DriftError, match="bins"):
        Profile.from_arrays({"x": np.ones(3)}, bins=10).merge(Profile.from_arrays({"x": np.ones(3)}, bins=20))
    with pytest.raises(DriftError, match="numeric in one"):
        Profile.from_arrays({"x": np.ones(3)}).merge(Profile.from_arrays({"x": np.ones(3, int)}))


def test_too_many_classes_is_marked_not_failed() -> None:
    profile = Profile.from_arrays({"id": np.arange(5000)})
    ids = profile.columns["id"]
    assert isinstance(ids, CategoricalColumn) and ids.overflow
