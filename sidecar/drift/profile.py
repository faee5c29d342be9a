"""Profiles: the summaries of every column of a window, saved as one small JSON file.

A profile is the reference of window drift and of the sidecar's live drift gauges. It holds,
per column, the fitted bins (edges and exact counts), moments, NaN/inf counts, a mergeable
quantile sketch and, for classes, the count per class. Profiles of parts of a window merge
into the profile of the whole: build them per segment or per day in parallel, then
``shadowserve-drift merge``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.drift.columns import MAX_ELEMENTS, array_columns
from sidecar.drift.errors import DriftError
from sidecar.drift.sketch import Sketch, pack, unpack
from sidecar.drift.summary import CategoricalColumn, Column, NumericColumn, add_columns

FORMAT = "shadowserve.drift.profile/1"
DEFAULT_BINS = 10


@dataclass
class Profile:
    """Summaries per column of one window, plus where the window came from.

    Example::

        import numpy as np
        from sidecar.drift import Profile

        reference = Profile.from_arrays({"probs": np.random.default_rng(0).dirichlet(np.ones(10), 5000)})
        reference.save("reference.json")
        same = Profile.load("reference.json")
        both = reference.merge(same)  # the profile of the two windows together
    """

    columns: dict[str, Column] = field(default_factory=dict)
    bins: int = DEFAULT_BINS
    source: dict[str, Any] = field(default_factory=dict)  # model, upstream, records, time range
    edges: dict[str, np.ndarray] = field(default_factory=dict)  # fixed bins to count exactly

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], *, bins: int = DEFAULT_BINS,
                    max_elements: int = MAX_ELEMENTS) -> Profile:
        """A profile of numpy arrays (first axis: one prediction row each)."""
        profile = cls(bins=bins)
        profile.add(arrays, max_elements=max_elements)
        return profile

    def add(self, arrays: dict[str, np.ndarray], *, max_elements: int = MAX_ELEMENTS) -> None:
        """Add a batch of predictions, as numpy arrays keyed by output name."""
        add_columns(self.columns, array_columns(arrays, max_elements=max_elements), self.edges)
        self.source["predictions"] = self.predictions()

    def predictions(self) -> int:
        return max((c.total for c in self.columns.values()), default=0)

    def bins_of(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The fitted bin edges of a numeric column and its exact counts per bin."""
        column = self.columns[name]
        if not isinstance(column, NumericColumn):
            raise DriftError(f"column {name!r} holds classes: it has no bins")
        return column.fit_bins(self.bins)

    def merge(self, other: Profile) -> Profile:
        """The profile of both windows together (bins are refitted on the merged sketch)."""
        if self.bins != other.bins:
            raise DriftError(f"cannot merge profiles with {self.bins} and {other.bins} bins: rebuild one with --bins")
        columns: dict[str, Column] = {}
        for name in list(self.columns) + [n for n in other.columns if n not in self.columns]:
            mine, theirs = self.columns.get(name), other.columns.get(name)
            if mine is None or theirs is None:
                kept = mine or theirs
                assert kept is not None, "the name comes from one of the two profiles"
                columns[name] = kept
            elif mine.kind != theirs.kind:
                raise DriftError(f"column {name!r} is {mine.kind} in one profile and {theirs.kind} in the other")
            else:
                columns[name] = mine.merge(theirs)  # type: ignore[arg-type]  # same kind, checked above
        return Profile(columns, self.bins, _merge_sources(self.source, other.source))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "bins": self.bins, "source": self.source,
                "columns": {name: _column_json(column, self.bins) for name, column in self.columns.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        if data.get("format") != FORMAT:
            raise DriftError(f"not a drift profile (format {data.get('format')!r}, expected {FORMAT!r})")
        columns = {name: _column_from_json(body) for name, body in data["columns"].items()}
        return cls(columns, int(data["bins"]), dict(data.get("source", {})))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            data = json.loads(Path(path).read_text())
            return cls.from_json(data)
        except (OSError, ValueError, KeyError, TypeError) as error:
            if isinstance(error, DriftError):
                raise
            raise DriftError(f"cannot read profile {path}: {error}") from error


def _merge_sources(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key in ("records", "predictions"):
        merged[key] = int(a.get(key, 0)) + int(b.get(key, 0))
    for key, pick in (("first", min), ("last", max)):
        values = [v for v in (a.get(key), b.get(key)) if v]
        merged[key] = pick(values) if values else None
    for key in ("model", "upstream"):
        if a.get(key) != b.get(key):
            merged[key] = None if not (a.get(key) and b.get(key)) else f"{a.get(key)}+{b.get(key)}"
    return merged


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _column_json(column: Column, bins: int) -> dict[str, Any]:
    if isinstance(column, CategoricalColumn):
        return {"kind": "categorical", "counts": column.counts, "overflow": column.overflow}
    edges, counts = column.fit_bins(bins)
    body: dict[str, Any] = {
        "kind": "numeric", "count": column.count, "nan": column.nan, "posinf": column.posinf,
        "neginf": column.neginf, "mean": column.mean, "m2": column.m2, "std": column.std,
        "min": _finite(column.minimum), "max": _finite(column.maximum),
        "quantiles": column.quantiles(),
        "bins": {"edges": edges.tolist(), "counts": counts.tolist()},
        "sketch": column.sketch.to_json(),
    }
    if column.raw is not None:
        body["raw"] = pack(column.raw.astype("<f8"))
    return body


def _column_from_json(body: dict[str, Any]) -> Column:
    if body["kind"] == "categorical":
        return CategoricalColumn({str(k): int(v) for k, v in body["counts"].items()}, bool(body["overflow"]))
    minimum, maximum = body.get("min"), body.get("max")
    raw = body.get("raw")
    return NumericColumn(
        int(body["count"]), int(body["nan"]), int(body["posinf"]), int(body["neginf"]),
        float(body["mean"]), float(body["m2"]),
        math.inf if minimum is None else float(minimum), -math.inf if maximum is None else float(maximum),
        Sketch.from_json(body["sketch"]), None if raw is None else unpack(raw, "<f8").astype(np.float64))
