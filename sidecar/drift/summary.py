"""Mergeable summaries of one column of a window of predictions (collected in a Profile).

A numeric column keeps exact counts of NaN, +inf and -inf, exact moments (count, mean, sum of
squared deviations, min, max; merged with Chan's formula), a `Sketch` of the finite values,
and the values themselves while there are at most `RAW_LIMIT` of them (so small windows get
scipy's exact tests). Its bins are fitted on the sketch: edges on bucket boundaries near the
quantiles, outer bins open-ended, counts exact. A categorical column keeps a count per class.

Summaries built per segment and merged equal the summary of all segments at once (up to float
rounding in the moments), so a month of traffic is profiled in parallel and combined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from sidecar.drift.columns import Columns
from sidecar.drift.errors import DriftError
from sidecar.drift.sketch import Sketch, quantile_edges

RAW_LIMIT = 2000  # finite values kept verbatim per column (scipy's exact tests on small windows)
MAX_CLASSES = 1000  # more distinct classes than this: not a class column (free text, ids)


@dataclass
class NumericColumn:
    """Summary of one numeric column; ``edges`` (when set) are fixed bins counted exactly."""

    count: int = 0
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    sketch: Sketch = field(default_factory=Sketch)
    raw: np.ndarray | None = field(default_factory=lambda: np.zeros(0))
    edges: np.ndarray | None = None
    binned: np.ndarray | None = None
    kind: str = "numeric"

    @property
    def total(self) -> int:
        return self.count + self.nan + self.posinf + self.neginf

    @property
    def nonfinite(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        finite_mask = np.isfinite(values)
        finite = values if finite_mask.all() else values[finite_mask]
        if len(finite) < len(values):
            bad = values[~finite_mask]
            self.nan += int(np.isnan(bad).sum())
            self.posinf += int((bad == np.inf).sum())
            self.neginf += int((bad == -np.inf).sum())
        if self.edges is not None:
            if self.binned is None:
                self.binned = np.zeros(len(self.edges) + 1, np.int64)
            self.binned += np.bincount(np.searchsorted(self.edges, finite, side="right"),
                                       minlength=len(self.edges) + 1)
        if len(finite) == 0:
            return
        mean = float(finite.mean())
        m2 = float(np.square(finite - mean).sum())
        self._merge_moments(len(finite), mean, m2, float(finite.min()), float(finite.max()))
        self.sketch.add(finite)
        if self.raw is not None:
            self.raw = np.sort(np.concatenate([self.raw, finite])) if self.count <= RAW_LIMIT else None

    def _merge_moments(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)

    def merge(self, other: NumericColumn) -> NumericColumn:
        result = NumericColumn(self.count, self.nan + other.nan, self.posinf + other.posinf,
                               self.neginf + other.neginf, self.mean, self.m2, self.minimum,
                               self.maximum, self.sketch.merge(other.sketch))
        if other.count:
            result._merge_moments(other.count, other.mean, other.m2, other.minimum, other.maximum)
        if self.raw is not None and other.raw is not None and result.count <= RAW_LIMIT:
            result.raw = np.sort(np.concatenate([self.raw, other.raw]))
        else:
            result.raw = None
        return result

    def fit_bins(self, bins: int) -> tuple[np.ndarray, np.ndarray]:
        """Edges fitted on this column (the reference) and exact counts per bin."""
        edges = quantile_edges(self.sketch, bins)
        return edges, self.counts_in(edges)

    def counts_in(self, edges: np.ndarray) -> np.ndarray:
        """Finite values per bin of ``edges`` (bins are [e[i-1], e[i]), outer ones open)."""
        if self.binned is not None and self.edges is not None and np.array_equal(edges, self.edges):
            return self.binned
        if self.raw is not None:
            return np.bincount(np.searchsorted(edges, self.raw, side="right"), minlength=len(edges) + 1)
        # exact when every edge is a bucket boundary of this sketch (true for its own edges)
        where = np.searchsorted(edges, self.sketch.lower_bounds(), side="right")
        return np.bincount(where, weights=self.sketch.counts, minlength=len(edges) + 1).astype(np.int64)

    def quantiles(self, qs: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)) -> dict[str, float]:
        if self.count == 0:
            return {}
        if self.raw is not None:
            values = np.quantile(self.raw, qs)
        else:  # the bucket midpoint where the cumulative count crosses q (within the bucket width)
            cum = np.cumsum(self.sketch.counts)
            idx = np.searchsorted(cum, np.array(qs) * cum[-1])
            mid = (self.sketch.lower_bounds() + self.sketch.upper_bounds()) / 2
            values = np.clip(mid[np.minimum(idx, len(mid) - 1)], self.minimum, self.maximum)
        return {f"p{round(q * 100)}": float(v) for q, v in zip(qs, values, strict=True)}


@dataclass
class CategoricalColumn:
    """Counts per class label (labels are strings; numbers are written as integers)."""

    counts: dict[str, int] = field(default_factory=dict)
    overflow: bool = False
    kind: str = "categorical"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, labels: np.ndarray) -> None:
        unique, counts = np.unique(labels, return_counts=True)
        for label, count in zip(unique.tolist(), counts.tolist(), strict=True):
            key = str(label)
            self.counts[key] = self.counts.get(key, 0) + int(count)
        self._check()

    def merge(self, other: CategoricalColumn) -> CategoricalColumn:
        counts = dict(self.counts)
        for key, count in other.counts.items():
            counts[key] = counts.get(key, 0) + count
        result = CategoricalColumn(counts, self.overflow or other.overflow)
        result._check()
        return result

    def _check(self) -> None:
        if len(self.counts) > MAX_CLASSES:
            self.overflow = True


Column = NumericColumn | CategoricalColumn


def new_column(kind: str, edges: np.ndarray | None = None) -> Column:
    if kind == "numeric":
        return NumericColumn(edges=edges)
    return CategoricalColumn()


def add_columns(target: dict[str, Column], columns: Columns,
                edges: dict[str, np.ndarray] | None = None) -> None:
    """Add a chunk of column data to the summaries in ``target`` (created on first sight)."""
    for name, (kind, values) in columns.items():
        column = target.get(name)
        if column is None:
            column = target[name] = new_column(kind, (edges or {}).get(name))
        elif column.kind != kind:
            raise DriftError(f"column {name!r} is {column.kind} in one chunk and {kind} in another: "
                             "its datatype changed within the window")
        column.add(values)


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Class labels in reading order: numbers by value, then the other labels alphabetically."""
    def key(label: str) -> tuple[int, float, str]:
        try:
            return (0, float(int(label)), "")
        except ValueError:
            return (1, 0.0, label)
    return sorted(labels, key=key)
