"""What a compare report shows of the pairs themselves: the confusion matrix of the primary's
top-1 class against the shadow's, and the few pairs that disagree most, with the request and
trace ids that lead to them. Both are bounded whatever the number of records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sidecar.drift.reader import RowKeys
from sidecar.drift.summary import sort_labels

MATRIX_CLASSES = 12  # classes a matrix shows (the most frequent); the others are one "other" row and column
MAX_CELLS = 20_000  # distinct (primary, shadow) pairs counted; beyond: an id-like output, no matrix
WORST = 20  # pairs listed per output
LABEL_CHARS = 200  # of a class label (BYTES outputs hold any string): counted and reported cut to this


@dataclass
class Confusion:
    """Counts of (primary class, shadow class), as strings; exact while there are few enough."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    overflow: bool = False

    def add(self, primary: np.ndarray, shadow: np.ndarray) -> None:
        if self.overflow or len(primary) == 0:
            return
        if primary.dtype.kind in "iu" and shadow.dtype.kind in "iu":
            # one int64 code per pair: a 1-D unique is several times faster than unique(axis=0)
            low = min(int(primary.min()), int(shadow.min()))
            span = max(int(primary.max()), int(shadow.max())) - low + 1
            if span > 2**31:
                self.overflow, self.counts = True, {}
                return
            codes, counts = np.unique((primary.astype(np.int64) - low) * span + (shadow - low), return_counts=True)
            pairs = np.stack([codes // span + low, codes % span + low], axis=1)
        else:
            cut = f"U{LABEL_CHARS}"
            pairs, counts = np.unique(np.stack([primary.astype(cut), shadow.astype(cut)], axis=1), axis=0,
                                      return_counts=True)
        for (p, s), count in zip(pairs.tolist(), counts.tolist(), strict=True):
            key = (str(p), str(s))
            self.counts[key] = self.counts.get(key, 0) + int(count)
        if len(self.counts) > MAX_CELLS:
            self.overflow, self.counts = True, {}

    def to_json(self, shown: int = MATRIX_CLASSES) -> dict[str, Any] | None:
        """``classes`` (rows: primary, columns: shadow), ``matrix`` of counts, ``other`` when the
        last row and column sum up the classes not shown; None when there is nothing to show."""
        if self.overflow or not self.counts:
            return None
        totals: dict[str, int] = {}
        for (p, s), count in self.counts.items():
            totals[p] = totals.get(p, 0) + count
            totals[s] = totals.get(s, 0) + count
        ranked = sorted(totals, key=lambda label: -totals[label])
        classes = sort_labels(ranked[:shown])
        other = len(ranked) > shown
        where = {label: i for i, label in enumerate(classes)}
        size = len(classes) + other
        matrix = [[0] * size for _ in range(size)]
        for (p, s), count in self.counts.items():
            matrix[where.get(p, size - 1)][where.get(s, size - 1)] += count
        return {"classes": classes, "other": other, "matrix": matrix}


def _largest(index: np.ndarray, rank: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` entries of ``index`` of the largest ``rank``, largest first; O(n), not a sort."""
    if len(index) > k:
        index = index[np.argpartition(-rank[index], k - 1)[:k]]
    return index[np.argsort(-rank[index], kind="stable")]


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _iso(micros: int) -> str:
    return str(np.datetime64(int(micros), "us")) + "Z"


@dataclass
class WorstPairs:
    """The ``limit`` pairs that disagree most: top-1 disagreements first, then by the largest
    absolute difference between the two answers' elements."""

    limit: int = WORST
    entries: list[tuple[tuple[bool, float], dict[str, Any]]] = field(default_factory=list)

    def add(self, differs: np.ndarray, difference: np.ndarray, classes: tuple[np.ndarray, np.ndarray] | None,
            scores: tuple[np.ndarray, np.ndarray] | None, times: np.ndarray | None,
            keys: RowKeys | None) -> None:
        """One chunk's pairs: ``differs`` (top-1 differs), ``difference`` (NaN when not numeric),
        the top-1 classes and scores (each of the primary, the shadow) when there are any."""
        rank = np.nan_to_num(difference, nan=0.0, posinf=np.finfo(np.float64).max)  # one side NaN: the most
        picked = _largest(np.flatnonzero(differs), rank, self.limit)
        if len(picked) < self.limit:
            picked = np.concatenate([picked, _largest(np.flatnonzero(~differs & (rank > 0)), rank,
                                                      self.limit - len(picked))])
        if not len(picked):
            return
        ids = keys.request_id(picked) if keys is not None else [None] * len(picked)
        traces = keys.trace_id(picked) if keys is not None else [None] * len(picked)
        for n, i in enumerate(picked.tolist()):
            entry: dict[str, Any] = {
                "request_id": ids[n], "trace_id": traces[n],
                "time": _iso(times[i]) if times is not None else None, "agree": not bool(differs[i]),
                "primary_class": str(classes[0][i])[:LABEL_CHARS] if classes is not None else None,
                "shadow_class": str(classes[1][i])[:LABEL_CHARS] if classes is not None else None,
                "primary_score": _finite(scores[0][i]) if scores is not None else None,
                "shadow_score": _finite(scores[1][i]) if scores is not None else None,
                "difference": _finite(difference[i])}
            self.entries.append(((bool(differs[i]), float(rank[i])), entry))
        self.entries.sort(key=lambda item: (not item[0][0], -item[0][1]))
        del self.entries[self.limit:]

    def to_json(self) -> list[dict[str, Any]]:
        return [entry for _, entry in self.entries]


def pair_scores(primary: np.ndarray, shadow: np.ndarray, p_class: np.ndarray | None,
                s_class: np.ndarray | None, diff: np.ndarray | None = None,
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The largest absolute element difference per pair (inf where only one side is finite) and
    each side's score: of its own top-1 class, or the value of a single-value output. ``diff``
    is ``abs(primary - shadow)`` when the caller has it already."""
    diff = np.abs(primary - shadow) if diff is None else diff
    if not np.isfinite(diff).all():  # rare: the cost of the masks only where there is NaN or inf
        one_sided = np.isfinite(primary) != np.isfinite(shadow)
        diff = np.where(one_sided, np.inf, np.nan_to_num(diff, nan=0.0))
    largest = diff.max(axis=1) if diff.shape[1] else np.zeros(len(diff))
    rows = np.arange(len(primary))
    if p_class is None or s_class is None or primary.shape[1] == 1:
        return largest, (primary[:, 0], shadow[:, 0])
    return largest, (primary[rows, np.maximum(p_class, 0)], shadow[rows, np.maximum(s_class, 0)])
