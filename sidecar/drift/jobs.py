"""The jobs behind the command line: records in, a profile or a report out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from sidecar.drift.columns import INPUT_PREFIX, MAX_ELEMENTS, tensor_columns
from sidecar.drift.errors import DriftError
from sidecar.drift.judged import judged_versions
from sidecar.drift.paired import CompareReport, PairAccumulator
from sidecar.drift.profile import Profile
from sidecar.drift.reader import INPUTS, PRIMARY, Chunk, Progress, Window, read_chunks
from sidecar.drift.summary import add_columns
from sidecar.drift.thresholds import DriftSettings
from sidecar.drift.window import WindowReport, compare_profiles, current_profile


def _iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    return str(np.datetime64(int(micros), "us")) + "Z"


class _Source:
    """What a window held: records, responses, time range, upstream names seen."""

    def __init__(self, window: Window, upstream: str) -> None:
        self.window, self.upstream = window, upstream
        self.records = self.responses = self.failed = 0
        self.first: int | None = None
        self.last: int | None = None
        self.upstreams: set[str] = set()

    def see(self, chunk: Chunk, source: str) -> None:
        self.records += chunk.records
        self.responses += chunk.responses.get(source, 0)
        self.failed += chunk.failed.get(source, 0)
        self.upstreams |= chunk.upstreams
        low, high = int(chunk.timestamps.min()), int(chunk.timestamps.max())
        self.first = low if self.first is None else min(self.first, low)
        self.last = high if self.last is None else max(self.last, high)

    def check(self) -> None:
        if self.records == 0:
            raise DriftError(f"no records in {self.window.describe()}")
        if self.responses == 0:
            seen = ", ".join(sorted(self.upstreams)) or "none"
            raise DriftError(f"no responses from {self.upstream!r} in {self.window.describe()} (shadows seen: {seen})")

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.window.path), "model": self.window.model, "upstream": self.upstream,
                "records": self.records, "responses": self.responses, "failed": self.failed,
                "first": _iso(self.first), "last": _iso(self.last)}


def _fill(profile: Profile, window: Window, upstream: str, inputs: bool, max_elements: int,
          progress: Progress | None) -> _Source:
    source = _Source(window, upstream)
    shadows = () if upstream == PRIMARY else (upstream,)
    for chunk in read_chunks(window, shadows=shadows, inputs=inputs, progress=progress):
        source.see(chunk, upstream)
        for origin, prefix in ((upstream, ""), (INPUTS, INPUT_PREFIX)):
            for name, block in chunk.tensors.get(origin, {}).items():
                columns = tensor_columns(name, block.datatype, block.take(), prefix=prefix, max_elements=max_elements)
                add_columns(profile.columns, columns, profile.edges)
    source.check()
    profile.source.update(source.to_json(), predictions=profile.predictions())
    return source


def profile_records(window: Window, *, upstream: str = PRIMARY, inputs: bool = True,
                    settings: DriftSettings | None = None, max_elements: int = MAX_ELEMENTS,
                    progress: Progress | None = None) -> Profile:
    """The profile of the predictions (and recorded inputs) of ``upstream`` in ``window``.

    Example::

        from pathlib import Path
        from sidecar.drift import Window, profile_records

        profile_records(Window(Path("records/"), model="classifier")).save("reference.json")
    """
    profile = Profile(bins=(settings or DriftSettings()).bins)
    _fill(profile, window, upstream, inputs, max_elements, progress)
    return profile


def report_records(reference: Profile | Window, current: Window, *, upstream: str = PRIMARY,
                   inputs: bool = True, settings: DriftSettings | None = None,
                   max_elements: int = MAX_ELEMENTS, progress: Progress | None = None) -> WindowReport:
    """Window drift of the records in ``current`` against a reference profile or window.

    Example::

        from pathlib import Path
        from sidecar.drift import Profile, Window, report_records

        report = report_records(Profile.load("reference.json"), Window(Path("records/"), model="classifier"))
        print(report.drift, [c.name for c in report.columns if c.drift])
    """
    settings = settings or DriftSettings()
    if isinstance(reference, Window):
        reference = profile_records(reference, upstream=upstream, inputs=inputs, settings=settings,
                                    max_elements=max_elements, progress=progress)
    profile = current_profile(reference)
    _fill(profile, current, upstream, inputs, max_elements, progress)
    return compare_profiles(reference, profile, settings)


def load_labels(path: Path) -> tuple[pa.Array, np.ndarray]:
    """Request ids and their labels, from a Parquet or CSV file with ``request_id`` and ``label``."""
    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pv.read_csv(path)
    except (OSError, pa.ArrowException) as error:
        raise DriftError(f"cannot read labels {path}: {error}") from error
    if not {"request_id", "label"} <= set(table.column_names):
        raise DriftError(f"labels {path} need columns request_id and label (found {', '.join(table.column_names)})")
    label = table.column("label").combine_chunks()
    values = label.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(label.type):
        values = values.astype(np.int64)
    else:
        values = np.asarray(label.cast(pa.string()).to_pylist(), dtype=object)
    return table.column("request_id").combine_chunks().cast(pa.string()), values


def compare_records(window: Window, shadow: str, *, labels: Path | None = None,
                    settings: DriftSettings | None = None, max_elements: int = MAX_ELEMENTS,
                    progress: Progress | None = None) -> CompareReport:
    """Primary vs ``shadow`` on the recorded pairs in ``window``.

    Example::

        from pathlib import Path
        from sidecar.drift import Window, compare_records

        report = compare_records(Window(Path("records/")), "v2", labels=Path("labels.parquet"))
        print(report.disagreement, report.outputs[0].statistics["agreement"].value)
    """
    settings = settings or DriftSettings()
    ids, truth = load_labels(labels) if labels else (None, None)
    accumulator = PairAccumulator(shadow, settings, max_elements)
    source = _Source(window, shadow)
    counts = {"records": 0, "primary_failed": 0, "shadow_responses": 0, "shadow_failed": 0,
              "paired_predictions": 0, "unpaired_tensors": 0}
    for chunk in read_chunks(window, shadows=(shadow,), request_ids=True, progress=progress):
        source.see(chunk, shadow)
        counts["records"] += chunk.records
        counts["primary_failed"] += chunk.failed[PRIMARY]
        counts["shadow_responses"] += chunk.responses.get(shadow, 0)
        counts["shadow_failed"] += chunk.failed.get(shadow, 0)
        row_labels = known = None
        if ids is not None and truth is not None and chunk.request_ids is not None:
            where = pc.index_in(pa.array(chunk.request_ids, pa.string()), value_set=ids)
            index = where.fill_null(-1).to_numpy(zero_copy_only=False)
            known, row_labels = index >= 0, truth[np.maximum(index, 0)]
        for name, p in chunk.tensors[PRIMARY].items():
            s = chunk.tensors.get(shadow, {}).get(name)
            if s is None or p.width < 0 or s.width != p.width:
                counts["unpaired_tensors"] += len(p.rows)
                continue
            _, pi, si = np.intersect1d(p.rows, s.rows, return_indices=True)
            same = p.batch[pi] == s.batch[si]
            pi, si = pi[same], si[same]
            counts["unpaired_tensors"] += len(p.rows) - len(pi)
            rows = p.prediction_rows(pi)
            pred_labels = pred_known = None
            if row_labels is not None and known is not None:
                single = np.repeat(p.batch[pi] == 1, p.batch[pi])  # a label names one prediction
                pred_labels, pred_known = row_labels[rows], known[rows] & single
            accumulator.add(name, p.datatype, p.take(pi), s.take(si), chunk.timestamps[rows],
                            pred_labels, pred_known, keys=chunk.keys(rows))
    source.check()
    counts["paired_predictions"] = max((o.pairs for o in accumulator.outputs.values()), default=0)
    if counts["paired_predictions"] == 0:
        raise DriftError(f"no prediction of {shadow!r} pairs with the primary's in {window.describe()}: "
                         "the shadow failed on every request, or its outputs differ in name or shape")
    accumulator.counts = counts
    report = accumulator.finish()
    report.distribution.reference = {**source.to_json(), "upstream": PRIMARY}
    report.distribution.current = source.to_json()
    report.judged = judged_versions(window, shadow)  # what a promotion's evidence must name
    return report
