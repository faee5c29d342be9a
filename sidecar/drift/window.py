"""Window drift: a reference window against a current one, column by column."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sidecar.drift import stats
from sidecar.drift.profile import Profile
from sidecar.drift.sketch import quantile_edges
from sidecar.drift.stats import Statistic
from sidecar.drift.summary import CategoricalColumn, Column, NumericColumn, sort_labels
from sidecar.drift.thresholds import DriftSettings

P_VALUE_TESTS = ("ks", "chi2")
HISTOGRAM_CLASSES = 20  # classes drawn in the report (the most frequent); all are tested


@dataclass
class ColumnResult:
    """The verdict on one column."""

    name: str
    kind: str
    reference: dict[str, Any]
    current: dict[str, Any]
    statistics: dict[str, Statistic]
    test: str | None = None
    threshold: float | None = None
    drift: bool = False
    reason: str = ""
    histogram: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "drift": self.drift, "test": self.test,
                "threshold": self.threshold,
                "value": None if self.test is None else _decision_value(self.statistics[self.test], self.test),
                "reason": self.reason, "reference": self.reference, "current": self.current,
                "statistics": {k: v.to_json() for k, v in self.statistics.items()},
                "histogram": self.histogram}


def _decision_value(statistic: Statistic, test: str) -> float | None:
    return statistic.p_value if test in P_VALUE_TESTS else statistic.value


@dataclass
class WindowReport:
    """Window drift over every column; ``drift`` is true when any column drifted."""

    columns: list[ColumnResult]
    settings: DriftSettings
    reference: dict[str, Any] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        return any(c.drift for c in self.columns)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "window", "drift": self.drift,
                "drifted_columns": [c.name for c in self.columns if c.drift],
                "reference": self.reference, "current": self.current,
                "settings": self.settings.to_json(), "columns": [c.to_json() for c in self.columns]}


def _summary(column: Column | None) -> dict[str, Any]:
    if column is None:
        return {"count": 0}
    if isinstance(column, CategoricalColumn):
        top = sorted(column.counts.items(), key=lambda kv: -kv[1])[:5]
        return {"count": column.total, "classes": len(column.counts), "top": dict(top)}
    body: dict[str, Any] = {"count": column.total, "finite": column.count, "nan": column.nan,
                            "posinf": column.posinf, "neginf": column.neginf}
    if column.count:
        body.update(mean=column.mean, std=column.std, min=column.minimum, max=column.maximum,
                    quantiles=column.quantiles())
    return body


def _common_bins(ref: NumericColumn, cur: NumericColumn, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's bins and both windows' exact counts in them.

    The current window was usually counted in the reference's bins as it was read; when it
    was summarised on its own (a saved profile, a shadow), both sketches go to their common
    grid and the bins are fitted there, where both windows' counts are exact.
    """
    edges, ref_bins = ref.fit_bins(bins)
    if (cur.edges is not None and np.array_equal(cur.edges, edges)) or cur.raw is not None:
        return edges, ref_bins, cur.counts_in(edges)
    common = replace(ref, sketch=ref.sketch.at_bits(cur.sketch.bits), edges=None, binned=None)
    edges = quantile_edges(common.sketch, bins)
    return edges, common.counts_in(edges), cur.counts_in(edges)


def _numeric(name: str, ref: NumericColumn, cur: NumericColumn, ref_profile: Profile,
             settings: DriftSettings) -> ColumnResult:
    edges, ref_bins, cur_bins = _common_bins(ref, cur, ref_profile.bins)
    if ref.nonfinite or cur.nonfinite:  # NaN and inf as one more bin of the histograms
        ref_bins, cur_bins = np.append(ref_bins, ref.nonfinite), np.append(cur_bins, cur.nonfinite)
    largest = max(abs(v) for v in (ref.minimum, ref.maximum, cur.minimum, cur.maximum)
                  if np.isfinite(v)) if ref.count and cur.count else 0.0
    if ref.raw is not None and cur.raw is not None:
        ks = stats.ks(ref.raw, cur.raw)
        wasserstein = stats.wasserstein_normed(ref.raw, cur.raw, ref.std)
    else:
        ks = stats.ks_sketch(ref.sketch, cur.sketch)
        low, high = min(ref.minimum, cur.minimum), max(ref.maximum, cur.maximum)
        wasserstein = stats.wasserstein_sketch(ref.sketch, cur.sketch, ref.std, largest, low, high)
    statistics = {"ks": ks, "wasserstein": wasserstein, "js": stats.jensen_shannon(ref_bins, cur_bins),
                  "psi": stats.psi(ref_bins, cur_bins, settings.psi_epsilon)}
    test = settings.numeric_test
    if test == "auto":
        test = "ks" if min(ref.count, cur.count) <= settings.small_sample else "wasserstein"
    plot = {"edges": edges.tolist(), "reference": ref_bins.tolist(), "current": cur_bins.tolist(),
            "nonfinite": bool(ref.nonfinite or cur.nonfinite)}
    return ColumnResult(name, "numeric", _summary(ref), _summary(cur), statistics, test, histogram=plot)


def _categorical(name: str, ref: CategoricalColumn, cur: CategoricalColumn,
                 settings: DriftSettings) -> ColumnResult:
    labels = sort_labels(set(ref.counts) | set(cur.counts))
    ref_counts = np.array([ref.counts.get(k, 0) for k in labels], np.int64)
    cur_counts = np.array([cur.counts.get(k, 0) for k in labels], np.int64)
    statistics = {"chi2": stats.chi_square(ref_counts, cur_counts), "js": stats.jensen_shannon(ref_counts, cur_counts),
                  "psi": stats.psi(ref_counts, cur_counts, settings.psi_epsilon)}
    test = settings.categorical_test
    if test == "auto":
        test = "chi2" if min(ref.total, cur.total) <= settings.small_sample else "js"
    shown = np.argsort(-(ref_counts / max(ref.total, 1) + cur_counts / max(cur.total, 1)), kind="stable")
    shown = np.sort(shown[:HISTOGRAM_CLASSES])
    plot = {"labels": [labels[i] for i in shown], "reference": ref_counts[shown].tolist(),
            "current": cur_counts[shown].tolist(), "unseen": sorted(set(cur.counts) - set(ref.counts))[:20]}
    result = ColumnResult(name, "categorical", _summary(ref), _summary(cur), statistics, test, histogram=plot)
    if ref.overflow or cur.overflow:
        result.test, result.reason = None, "more distinct values than a class column holds: not tested"
    return result


def _missing(name: str, ref: Column | None, cur: Column | None) -> ColumnResult:
    where = "current" if cur is None or cur.total == 0 else "reference"
    known = ref or cur
    assert known is not None, "a column missing from both windows is never compared"
    kind = known.kind
    return ColumnResult(name, kind, _summary(ref), _summary(cur), {}, None, drift=True,
                        reason=f"no values in the {where} window")


def _decide(result: ColumnResult, ref: Column, cur: Column, settings: DriftSettings, alpha: float) -> None:
    if result.test is None:
        return
    statistic = result.statistics[result.test]
    if result.test in P_VALUE_TESTS:
        result.threshold = alpha
        p = statistic.p_value
        if p is not None:
            result.drift = p < alpha
            result.reason = f"{result.test} p-value {p:.3g} {'<' if result.drift else '>='} {alpha:.3g}"
    else:
        threshold = result.threshold = settings.thresholds[result.test]
        if statistic.value is not None:
            result.drift = statistic.value >= threshold
            result.reason = f"{result.test} {statistic.value:.3g} {'>=' if result.drift else '<'} {threshold:.3g}"
    if statistic.value is None and statistic.p_value is None:
        # e.g. only NaN in one window: a change no distance can measure, so say drift plainly
        result.drift = (_finite_count(ref) > 0) != (_finite_count(cur) > 0)
        result.reason = f"{result.test} undefined: {statistic.note}"
    if isinstance(ref, NumericColumn) and isinstance(cur, NumericColumn) and ref.total and cur.total:
        before, after = ref.nonfinite / ref.total, cur.nonfinite / cur.total
        if after - before > settings.max_nonfinite_increase:
            result.drift = True
            result.reason += f"; NaN/inf share rose from {before:.3g} to {after:.3g}"


def _finite_count(column: Column) -> int:
    return column.count if isinstance(column, NumericColumn) else column.total


def compare_profiles(reference: Profile, current: Profile, settings: DriftSettings | None = None) -> WindowReport:
    """Window drift of ``current`` against ``reference``, every column."""
    settings = settings or DriftSettings()
    names = list(reference.columns) + [n for n in current.columns if n not in reference.columns]
    results: list[tuple[ColumnResult, Column | None, Column | None]] = []
    for name in names:
        ref, cur = reference.columns.get(name), current.columns.get(name)
        if ref is None or cur is None or ref.total == 0 or cur.total == 0:
            results.append((_missing(name, ref, cur), ref, cur))
        elif isinstance(ref, NumericColumn) and isinstance(cur, NumericColumn):
            results.append((_numeric(name, ref, cur, reference, settings), ref, cur))
        elif isinstance(ref, CategoricalColumn) and isinstance(cur, CategoricalColumn):
            results.append((_categorical(name, ref, cur, settings), ref, cur))
        else:
            results.append((ColumnResult(name, ref.kind, _summary(ref), _summary(cur), {}, None, True,
                                         reason=f"{ref.kind} in the reference but {cur.kind} now"), ref, cur))
    tested = sum(1 for r, _, _ in results if r.test in P_VALUE_TESTS)
    alpha = settings.alpha / tested if settings.correction == "bonferroni" and tested > 1 else settings.alpha
    for result, ref, cur in results:
        if ref is not None and cur is not None and ref.total and cur.total:
            _decide(result, ref, cur, settings, alpha)
    return WindowReport([r for r, _, _ in results], settings, dict(reference.source), dict(current.source))


def current_profile(reference: Profile) -> Profile:
    """An empty profile that counts numeric columns exactly in the reference's bins."""
    edges = {name: reference.bins_of(name)[0] for name, column in reference.columns.items()
             if isinstance(column, NumericColumn)}
    return Profile(bins=reference.bins, edges=edges)


def window_drift(reference: Profile | Mapping[str, np.ndarray], current: Profile | Mapping[str, np.ndarray],
                 settings: DriftSettings | None = None) -> WindowReport:
    """Window drift between two windows given as profiles or as numpy arrays.

    Example::

        import numpy as np
        from sidecar.drift import window_drift

        rng = np.random.default_rng(0)
        report = window_drift({"score": rng.normal(size=5000)}, {"score": rng.normal(0.5, 1, 5000)})
        assert report.drift and report.columns[0].test == "wasserstein"
    """
    settings = settings or DriftSettings()
    if not isinstance(reference, Profile):
        reference = Profile.from_arrays(dict(reference), bins=settings.bins)
    if not isinstance(current, Profile):
        arrays = dict(current)
        current = current_profile(reference)
        current.add(arrays)
    return compare_profiles(reference, current, settings)
