"""The statistics, each computed by scipy where scipy has it.

Every function returns a `Statistic`: a value (or None with a ``note`` saying why it is
undefined: never a silent NaN) and, for tests, a p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.spatial import distance

from sidecar.drift.sketch import Sketch, aligned_counts

PSI_EPSILON = 1e-4  # share given to an empty bin in PSI (Evidently's choice too): ln(0) is undefined
KS_EXACT_LIMIT = 1_000  # effective sample size up to which kstwo (not its limit) gives KS p-values
SCALE_FLOOR = 1e-3  # normed Wasserstein divides by max(std, SCALE_FLOOR * largest |value|)


@dataclass(frozen=True)
class Statistic:
    """One statistic: ``value`` is None only when undefined, and then ``note`` says why."""

    value: float | None
    p_value: float | None = None
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"value": self.value}
        if self.p_value is not None:
            body["p_value"] = self.p_value
        if self.note:
            body["note"] = self.note
        return body


def undefined(note: str) -> Statistic:
    return Statistic(None, None, note)


def ks(reference: np.ndarray, current: np.ndarray) -> Statistic:
    """Two-sample Kolmogorov–Smirnov on raw values (``scipy.stats.ks_2samp``, method auto)."""
    if len(reference) == 0 or len(current) == 0:
        return undefined("no finite values in a window")
    result = stats.ks_2samp(reference, current)
    return Statistic(float(result.statistic), float(result.pvalue))


def ks_sketch(reference: Sketch, current: Sketch) -> Statistic:
    """KS on the two sketches' common grid: D is the largest CDF gap at bucket boundaries;
    the p-value is scipy's asymptotic one (``kstwo`` with n·m/(n+m), as ``ks_2samp`` does)."""
    n, m = reference.total, current.total
    if n == 0 or m == 0:
        return undefined("no finite values in a window")
    _, _, a, b = aligned_counts(reference, current)
    d = float(np.max(np.abs(np.cumsum(a) / n - np.cumsum(b) / m)))
    p = ks_p_value(d, n * m / (n + m))
    return Statistic(d, p, "on the sketch grid")


def ks_p_value(d: float, effective_n: float) -> float:
    """Two-sided KS p-value: scipy's ``kstwo`` (as ``ks_2samp``'s asymptotic mode) up to
    ``KS_EXACT_LIMIT``, the limiting ``kstwobign`` beyond (kstwo's cost grows with n; beyond
    a thousand they differ by a few percent of p, far from any decision)."""
    if effective_n <= KS_EXACT_LIMIT:
        return float(np.clip(stats.kstwo.sf(d, round(effective_n)), 0.0, 1.0))
    return float(np.clip(stats.kstwobign.sf(d * np.sqrt(effective_n)), 0.0, 1.0))


def scale(std: float, largest_abs: float) -> float:
    """The normalising scale of the Wasserstein distance: the reference's std, floored."""
    return max(std, SCALE_FLOOR * largest_abs)


def wasserstein_normed(reference: np.ndarray, current: np.ndarray, std: float) -> Statistic:
    """W1 (``scipy.stats.wasserstein_distance``) over the reference's std (floored)."""
    if len(reference) == 0 or len(current) == 0:
        return undefined("no finite values in a window")
    w = float(stats.wasserstein_distance(reference, current))
    return _normed(w, scale(std, max(np.abs(reference).max(), np.abs(current).max())))


def wasserstein_sketch(reference: Sketch, current: Sketch, std: float, largest_abs: float,
                       low: float, high: float) -> Statistic:
    """Normed W1 between the sketches, mass at each bucket's midpoint (within [low, high])."""
    if reference.total == 0 or current.total == 0:
        return undefined("no finite values in a window")
    lower, upper, a, b = aligned_counts(reference, current)
    points = np.clip(np.where(np.isfinite(upper), (lower + upper) / 2, lower), low, high)
    w = float(stats.wasserstein_distance(points, points, a, b))
    statistic = _normed(w, scale(std, largest_abs))
    return Statistic(statistic.value, None, "on the sketch grid")


def _normed(w: float, by: float) -> Statistic:
    if w == 0.0:
        return Statistic(0.0)
    return Statistic(w / by)  # by > 0 whenever w > 0: some value is non-zero


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts.astype(float)


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> Statistic:
    """Jensen–Shannon distance of two histograms (``scipy.spatial.distance.jensenshannon``,
    base 2: 0 for the same shares, 1 for disjoint ones)."""
    if reference.sum() == 0 or current.sum() == 0:
        return undefined("a window is empty")
    value = float(distance.jensenshannon(reference.astype(float), current.astype(float), base=2))
    return Statistic(0.0 if math.isnan(value) else min(max(value, 0.0), 1.0))


def psi(reference: np.ndarray, current: np.ndarray, epsilon: float = PSI_EPSILON) -> Statistic:
    """Population stability index, sum (q - p) ln(q / p), empty bins counted as ``epsilon``."""
    if reference.sum() == 0 or current.sum() == 0:
        return undefined("a window is empty")
    p = np.where(reference == 0, epsilon, shares(reference))
    q = np.where(current == 0, epsilon, shares(current))
    return Statistic(float(np.sum((q - p) * np.log(q / p))))


def chi_square(reference: np.ndarray, current: np.ndarray) -> Statistic:
    """Chi-square test of homogeneity of two class histograms (``scipy.stats.chi2_contingency``;
    scipy applies Yates' correction to 2x2 tables)."""
    if reference.sum() == 0 or current.sum() == 0:
        return undefined("a window is empty")
    table = np.vstack([reference, current])
    table = table[:, table.sum(axis=0) > 0]  # a class seen in neither window says nothing
    if table.shape[1] < 2:
        return Statistic(0.0, 1.0, "a single class in both windows")
    result = stats.chi2_contingency(table)
    return Statistic(float(result.statistic), float(result.pvalue))


def agreement(agree: int, total: int, confidence: float = 0.95) -> tuple[Statistic, float, float]:
    """Top-1 agreement rate, with the Wilson interval of the disagreement rate."""
    if total == 0:
        return undefined("no paired predictions"), math.nan, math.nan
    interval = stats.binomtest(total - agree, total).proportion_ci(confidence, method="wilson")
    return Statistic(agree / total), float(interval.low), float(interval.high)


def mcnemar(primary_only: int, shadow_only: int) -> Statistic:
    """McNemar's exact test on the discordant pairs (``scipy.stats.binomtest``, p = 1/2):
    ``primary_only`` pairs where only the primary was right, ``shadow_only`` the other way."""
    discordant = primary_only + shadow_only
    if discordant == 0:
        return Statistic(0.0, 1.0, "no pair where exactly one was right")
    return Statistic(float(primary_only - shadow_only) / discordant,
                     float(stats.binomtest(primary_only, discordant, 0.5).pvalue))


def spearman(primary: np.ndarray, shadow: np.ndarray) -> Statistic:
    """Spearman rank correlation (``scipy.stats.spearmanr``; ties get average ranks)."""
    if len(primary) < 3:
        return undefined(f"{len(primary)} pair(s): needs at least 3")
    if np.all(primary == primary[0]) or np.all(shadow == shadow[0]):
        return undefined("constant scores: rank correlation is undefined")
    result = stats.spearmanr(primary, shadow)
    return Statistic(float(result.statistic), float(result.pvalue))
