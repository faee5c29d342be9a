"""Live drift: a sliding window of recent predictions in a reference profile's bins.

The sidecar feeds every recorded response's outputs to `LiveDrift.observe` (off the request
path) and reads `LiveDrift.snapshot` when Prometheus scrapes, exporting PSI and Jensen–Shannon
per column as gauges, so alerts fire without an offline job. Observing costs O(values · log
bins); a snapshot costs O(bins) per column. Not thread-safe: use it from one thread or event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sidecar.drift import stats
from sidecar.drift.columns import MAX_ELEMENTS, array_columns
from sidecar.drift.profile import Profile
from sidecar.drift.summary import CategoricalColumn, NumericColumn

DEFAULT_WINDOW = 10_000  # predictions per column in the sliding window


@dataclass(frozen=True)
class LiveValue:
    """PSI and Jensen–Shannon distance of the window against the reference (None until data)."""

    psi: float | None
    js: float | None
    count: int


class _Column:
    def __init__(self, reference: np.ndarray, window: int) -> None:
        self.reference = reference  # counts per bin, the last bin for NaN/inf or unseen classes
        self.counts = np.zeros(len(reference), np.int64)
        self.ring = np.zeros(window, np.int32)
        self.position = 0
        self.filled = 0

    def push(self, bins: np.ndarray) -> None:
        size, n = len(self.ring), len(bins)
        if n >= size:
            self.ring[:] = bins[-size:]
            self.counts = np.bincount(self.ring, minlength=len(self.counts))
            self.position, self.filled = 0, size
            return
        slots = (self.position + np.arange(n)) % size
        if self.filled == size:  # the oldest values leave the window
            self.counts -= np.bincount(self.ring[slots], minlength=len(self.counts))
        self.ring[slots] = bins
        self.counts += np.bincount(bins, minlength=len(self.counts))
        self.position = (self.position + n) % size
        self.filled = min(size, self.filled + n)


class _Numeric(_Column):
    def __init__(self, column: NumericColumn, bins: int, window: int) -> None:
        self.edges, counts = column.fit_bins(bins)
        super().__init__(np.append(counts, column.nonfinite), window)

    def bin(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        index = np.searchsorted(self.edges, values, side="right")
        return np.where(np.isfinite(values), index, len(self.edges) + 1).astype(np.int32)


class _Classes(_Column):
    def __init__(self, column: CategoricalColumn, window: int) -> None:
        self.labels = sorted(column.counts)
        super().__init__(np.array([column.counts[k] for k in self.labels] + [0], np.int64), window)
        self.lookup = {label: i for i, label in enumerate(self.labels)}

    def bin(self, values: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(values, return_inverse=True)
        other = len(self.labels)  # classes the reference never saw share the last bin
        mapped = np.array([self.lookup.get(str(u), other) for u in unique.tolist()], np.int32)
        return mapped[inverse.reshape(-1)]


class LiveDrift:
    """Sliding-window PSI and Jensen–Shannon per column, against a reference profile.

    Example::

        import numpy as np
        from sidecar.drift import LiveDrift, Profile

        rng = np.random.default_rng(0)
        live = LiveDrift(Profile.from_arrays({"score": rng.normal(size=10_000)}), window=1000)
        live.observe({"score": rng.normal(1.0, 1.0, size=(500, 1))})  # one response, batch of 500
        live.snapshot()["score"].psi  # large: the window moved
    """

    def __init__(self, reference: Profile, *, window: int = DEFAULT_WINDOW, max_elements: int = MAX_ELEMENTS) -> None:
        self.max_elements = max_elements
        self.columns: dict[str, _Numeric | _Classes] = {}
        for name, column in reference.columns.items():
            if isinstance(column, NumericColumn) and column.total:
                self.columns[name] = _Numeric(column, reference.bins, window)
            elif isinstance(column, CategoricalColumn) and column.total and not column.overflow:
                self.columns[name] = _Classes(column, window)

    def observe(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Add one response's (or batch's) outputs: arrays whose first axis is the batch."""
        for name, (_, values) in array_columns(outputs, max_elements=self.max_elements).items():
            column = self.columns.get(name)
            if column is not None and len(values):
                column.push(column.bin(values))

    def snapshot(self) -> dict[str, LiveValue]:
        """PSI and JS of every column's window now."""
        result = {}
        for name, column in self.columns.items():
            if column.filled == 0:
                result[name] = LiveValue(None, None, 0)
                continue
            result[name] = LiveValue(stats.psi(column.reference, column.counts).value,
                                     stats.jensen_shannon(column.reference, column.counts).value, column.filled)
        return result
