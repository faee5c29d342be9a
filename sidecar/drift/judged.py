"""Which model version a comparison judged: the ``model_version`` the shadow's answers carried.

A promotion is only as good as its evidence, and evidence is only good for the version it
measured: ``shadowserve-registry promote --evidence`` accepts a compare report only for the
exact version named in its ``judged`` field. The versions are counted over the shadow
responses that answered (no error) to requests the primary answered, in the same window the
comparison read; one small pass over a few narrow columns (no tensors)::

    from pathlib import Path
    from sidecar.drift import Window
    from sidecar.drift.judged import judged_versions

    judged_versions(Window(Path("records/"), model="classifier"), "v2").to_json()
    # {"model": "classifier", "version": "2"}
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidecar.drift.errors import DriftError
from sidecar.drift.reader import Window, segment_files

UNKNOWN = "unknown"  # the key counting shadow answers that carried no model_version


@dataclass(frozen=True)
class Judged:
    """The model of the records and the shadow's versions, with how many paired answers each gave."""

    model: str | None  # None when the records hold several models (or none is named)
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        """The one version every counted answer carried; None when there were several, or none."""
        if len(self.versions) == 1:
            (only,) = self.versions
            return None if only == UNKNOWN else only
        return None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"model": self.model, "version": self.version}
        if self.version is None:
            document["versions"] = dict(sorted(self.versions.items()))
        return document

    def describe(self) -> str:
        """For the terminal and HTML headers: ``classifier version 2`` or ``classifier versions 2 (n), 3 (m)``."""
        model = self.model or "several models"
        if self.version is not None:
            return f"{model} version {self.version}"
        if not self.versions:
            return f"{model}, no version"
        return f"{model} versions " + ", ".join(f"{v} ({n:,})" for v, n in sorted(self.versions.items()))


def _mask(batch: pa.RecordBatch, window: Window) -> pa.Array:
    masks = [pc.invert(pc.equal(pc.struct_field(batch.column("primary"), "upstream"), "canary").fill_null(False)),
             pc.is_null(pc.struct_field(batch.column("primary"), "error"))]  # the primary answered, itself
    if window.model is not None:
        masks.append(pc.equal(batch.column("model"), window.model).fill_null(False))
    stamps = batch.column("timestamp")
    if window.since is not None:
        masks.append(pc.greater_equal(stamps, pa.scalar(window.since, stamps.type)).fill_null(False))
    if window.until is not None:
        masks.append(pc.less(stamps, pa.scalar(window.until, stamps.type)).fill_null(False))
    mask = masks[0]
    for more in masks[1:]:
        mask = pc.and_(mask, more)
    return mask


def judged_versions(window: Window, shadow: str) -> Judged:
    """The model and the versions of ``shadow``'s answers in ``window`` (the records a compare reads)."""
    models: set[str] = set()
    versions: collections.Counter[str] = collections.Counter()
    columns = ["timestamp", "model", "primary.upstream", "primary.error", "shadows.list.element.upstream",
               "shadows.list.element.error", "shadows.list.element.model_version"]
    for path in segment_files(window.path):
        try:
            file = pq.ParquetFile(path)
            if "shadows" not in file.schema_arrow.names:
                continue
            for batch in file.iter_batches(columns=columns):
                batch = batch.filter(_mask(batch, window))
                if not batch.num_rows:
                    continue
                shadows = batch.column("shadows")
                flat = pc.list_flatten(shadows)
                parents = pc.list_parent_indices(shadows)
                answered = pc.and_(pc.equal(pc.struct_field(flat, "upstream"), shadow).fill_null(False),
                                   pc.is_null(pc.struct_field(flat, "error")))
                counted = pc.struct_field(flat, "model_version").filter(answered)
                if not len(counted):
                    continue
                models.update(m for m in pc.unique(batch.column("model").take(parents.filter(answered))).to_pylist()
                              if m is not None)
                for value, count in zip(*_value_counts(counted), strict=True):
                    versions[UNKNOWN if value is None else str(value)] += count
        except (OSError, pa.ArrowException) as error:
            raise DriftError(f"cannot read segment {path}: {error}") from error
    model = window.model if window.model is not None else (next(iter(models)) if len(models) == 1 else None)
    return Judged(model, dict(versions))


def _value_counts(values: pa.Array) -> tuple[list[Any], list[int]]:
    counts = pc.value_counts(values)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()
