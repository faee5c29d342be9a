"""Primary vs shadow: the paired predictions of one shadow against the primary's, same requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sidecar.drift import stats
from sidecar.drift.columns import MAX_ELEMENTS, array_columns, as_labels, kind_of, tensor_columns, top1
from sidecar.drift.errors import DriftError
from sidecar.drift.judged import Judged
from sidecar.drift.profile import Profile
from sidecar.drift.reader import RowKeys
from sidecar.drift.report_pairs import Confusion, WorstPairs, pair_scores
from sidecar.drift.stats import Statistic
from sidecar.drift.summary import add_columns
from sidecar.drift.thresholds import DriftSettings
from sidecar.drift.window import WindowReport, compare_profiles

SPEARMAN_LIMIT = 2_000_000  # pairs; above it Spearman runs on a seeded uniform sample of this size
TIMELINE_BUCKETS = 48


@dataclass
class _Output:
    """Running sums for one output tensor."""

    name: str
    classes: bool  # top-1 agreement applies (a class output or a score vector)
    pairs: int = 0
    agree: int = 0
    abs_diff: float = 0.0
    elements: int = 0
    primary_sum: float = 0.0
    primary_sq_sum: float = 0.0
    labelled: int = 0
    primary_right: int = 0
    shadow_right: int = 0
    primary_only: int = 0
    shadow_only: int = 0
    scores: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    times: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    confusion: Confusion = field(default_factory=Confusion)
    worst: WorstPairs = field(default_factory=WorstPairs)


@dataclass
class OutputComparison:
    """The verdict on one output."""

    name: str
    pairs: int
    statistics: dict[str, Statistic]
    disagreement_interval: tuple[float, float] | None
    labels: dict[str, int] | None
    disagreement: bool
    reasons: list[str]
    timeline: dict[str, Any]  # "metric" names the measure; the rest are lists, one entry per time bucket
    confusion: dict[str, Any] | None = None  # primary (rows) vs shadow (columns) top-1 classes
    disagreements: list[dict[str, Any]] = field(default_factory=list)  # the pairs that disagree most

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pairs": self.pairs, "disagreement": self.disagreement,
                "reasons": self.reasons, "statistics": {k: v.to_json() for k, v in self.statistics.items()},
                "disagreement_interval": self.disagreement_interval, "labels": self.labels,
                "timeline": self.timeline, "confusion": self.confusion, "disagreements": self.disagreements}


@dataclass
class CompareReport:
    """Primary vs one shadow: paired statistics per output, and the shadow's distribution drift."""

    shadow: str
    outputs: list[OutputComparison]
    distribution: WindowReport
    counts: dict[str, int]
    settings: DriftSettings
    judged: Judged | None = None  # the model and version the shadow answered from (set by the compare job)

    @property
    def disagreement(self) -> bool:
        return any(o.disagreement for o in self.outputs)

    @property
    def drift(self) -> bool:
        return self.distribution.drift

    def to_json(self) -> dict[str, Any]:
        return {"kind": "compare", "shadow": self.shadow,
                "judged": self.judged.to_json() if self.judged is not None else None,
                "disagreement": self.disagreement,
                "drift": self.drift, "counts": self.counts, "settings": self.settings.to_json(),
                "outputs": [o.to_json() for o in self.outputs],
                "distribution": self.distribution.to_json()}


class PairAccumulator:
    """Collects paired predictions chunk by chunk; `finish` gives the report."""

    def __init__(self, shadow: str, settings: DriftSettings, max_elements: int = MAX_ELEMENTS,
                 distribution: bool = True) -> None:
        self.shadow, self.settings, self.max_elements = shadow, settings, max_elements
        self.distribution = distribution  # also compare the shadow's distribution with the primary's
        self.outputs: dict[str, _Output] = {}
        self.primary = Profile(bins=settings.bins, source={"upstream": "primary"})
        self.shadow_profile = Profile(bins=settings.bins, source={"upstream": shadow})
        self.counts: dict[str, int] = {}
        self.timestamps = True  # the times given are the records' (compare_arrays gives row numbers)

    def add(self, name: str, datatype: str, primary: np.ndarray, shadow: np.ndarray,
            times: np.ndarray | None = None, labels: np.ndarray | None = None,
            known: np.ndarray | None = None, keys: RowKeys | None = None) -> None:
        """Add aligned predictions of one output: arrays of shape (pairs, elements); ``keys`` name
        the request (and trace) of each pair, for the list of the pairs that disagree most."""
        if primary.ndim == 1 or len(primary) == 0:
            return  # pooled tensors (rows of varying size) cannot be paired element by element
        numeric = kind_of(datatype) == "numeric"
        out = self.outputs.get(name)
        if out is None:
            out = self.outputs[name] = _Output(name, classes=not numeric or primary.shape[1] > 1)
        out.pairs += len(primary)
        diff = None
        if numeric:
            diff = np.abs(primary - shadow)
            finite = np.isfinite(diff)
            out.abs_diff += float(diff[finite].sum())
            out.elements += int(finite.sum())
            column = primary[:, 0][np.isfinite(primary[:, 0])]
            out.primary_sum += float(column.sum())
            out.primary_sq_sum += float(np.square(column).sum())
        if out.classes:
            p_class = top1(primary) if numeric else as_labels(primary[:, 0])
            s_class = top1(shadow) if numeric else as_labels(shadow[:, 0])
            same = p_class == s_class
            out.agree += int(same.sum())
            out.confusion.add(p_class, s_class)
            if labels is not None:
                self._labels(out, p_class, s_class, labels, known)
        else:
            same = np.abs(primary[:, 0] - shadow[:, 0])
        self._worst(out, primary, shadow, diff, (p_class, s_class) if out.classes else None,
                    times if self.timestamps else None, keys)
        if numeric:
            # class scores' top-1 is p_class, found above; a single value is its own score
            pick = p_class if out.classes else np.zeros(len(primary), np.int64)
            rows = np.arange(len(primary))
            p_score, s_score = primary[rows, np.maximum(pick, 0)], shadow[rows, np.maximum(pick, 0)]
            ok = np.isfinite(p_score) & np.isfinite(s_score)
            out.scores.append((p_score[ok], s_score[ok]))
        if times is not None:
            out.times.append((times, same))
        for profile, matrix in ((self.primary, primary), (self.shadow_profile, shadow)) if self.distribution else ():
            add_columns(profile.columns, tensor_columns(name, datatype, matrix, max_elements=self.max_elements))

    @staticmethod
    def _worst(out: _Output, primary: np.ndarray, shadow: np.ndarray, diff: np.ndarray | None,
               classes: tuple[np.ndarray, np.ndarray] | None, times: np.ndarray | None,
               keys: RowKeys | None) -> None:
        """Offer this chunk's pairs to the list of those that disagree most (``diff``: the
        absolute differences of a numeric output's elements, None for class tensors)."""
        differs = classes[0] != classes[1] if classes is not None else np.zeros(len(primary), bool)
        if diff is not None:
            p_class, s_class = classes if classes is not None else (None, None)
            difference, scores = pair_scores(primary, shadow, p_class, s_class, diff)
            out.worst.add(differs, difference, classes, scores, times, keys)
        else:
            out.worst.add(differs, np.full(len(primary), np.nan), classes, None, times, keys)

    @staticmethod
    def _labels(out: _Output, p_class: np.ndarray, s_class: np.ndarray, labels: np.ndarray,
                known: np.ndarray | None) -> None:
        if known is None:
            known = np.ones(len(labels), bool)
        if not known.any():
            return
        truth = labels[known]
        if truth.dtype.kind in "iuf":
            truth = truth.astype(np.int64)
            p, s = p_class[known], s_class[known]
        else:
            truth = truth.astype(str)
            p, s = p_class[known].astype(str), s_class[known].astype(str)
        p_ok, s_ok = p == truth, s == truth
        out.labelled += len(truth)
        out.primary_right += int(p_ok.sum())
        out.shadow_right += int(s_ok.sum())
        out.primary_only += int((p_ok & ~s_ok).sum())
        out.shadow_only += int((s_ok & ~p_ok).sum())

    def finish(self) -> CompareReport:
        results = [self._finish(out) for out in self.outputs.values()]
        distribution = compare_profiles(self.primary, self.shadow_profile, self.settings)
        return CompareReport(self.shadow, results, distribution, dict(self.counts), self.settings)

    def _finish(self, out: _Output) -> OutputComparison:
        s = self.settings
        statistics: dict[str, Statistic] = {}
        reasons: list[str] = []
        interval = None
        if out.classes:
            statistics["agreement"], low, high = stats.agreement(out.agree, out.pairs, s.confidence)
            interval = (low, high)
            if out.pairs and low > s.max_disagreement:
                reasons.append(f"top-1 disagreement {1 - out.agree / out.pairs:.3g} "
                               f"(interval {low:.3g}..{high:.3g}) above {s.max_disagreement:.3g}")
        if out.elements:
            statistics["mad"] = stats.Statistic(out.abs_diff / out.elements)
        if out.scores:
            p = np.concatenate([a for a, _ in out.scores])
            q = np.concatenate([b for _, b in out.scores])
            if len(p) > SPEARMAN_LIMIT:
                pick = np.sort(np.random.default_rng(0).choice(len(p), SPEARMAN_LIMIT, replace=False))
                p, q = p[pick], q[pick]
            statistics["spearman"] = stats.spearman(p, q)
        if not out.classes and out.elements:
            mean = out.primary_sum / out.pairs
            std = float(np.sqrt(max(out.primary_sq_sum / out.pairs - mean * mean, 0.0)))
            normed = statistics["mad"].value / stats.scale(std, abs(mean))  # type: ignore[operator]  # set with elements
            statistics["mad_normed"] = stats.Statistic(normed if statistics["mad"].value else 0.0)
            if statistics["mad_normed"].value > s.max_mad:  # type: ignore[operator]  # set on the line above
                reasons.append(f"mean absolute difference {normed:.3g} std above {s.max_mad:.3g}")
            rho = statistics["spearman"].value if "spearman" in statistics else None
            if rho is not None and rho < s.min_spearman:
                reasons.append(f"Spearman correlation {rho:.3g} below {s.min_spearman:.3g}")
        labels = None
        if out.labelled:
            labels = {"labelled": out.labelled, "primary_correct": out.primary_right,
                      "shadow_correct": out.shadow_right, "primary_only": out.primary_only,
                      "shadow_only": out.shadow_only}
            statistics["mcnemar"] = stats.mcnemar(out.primary_only, out.shadow_only)
            p_value = statistics["mcnemar"].p_value
            if p_value is not None and p_value < s.alpha and out.shadow_only < out.primary_only:
                reasons.append(f"shadow less accurate ({out.shadow_right}/{out.labelled} vs "
                               f"{out.primary_right}/{out.labelled}), McNemar p {p_value:.3g}")
        return OutputComparison(out.name, out.pairs, statistics, interval, labels, bool(reasons), reasons,
                                _timeline(out), out.confusion.to_json() if out.classes else None,
                                out.worst.to_json())


def _timeline(out: _Output) -> dict[str, Any]:
    """Agreement rate (or mean absolute difference) per time bucket, for the report's plot."""
    if not out.times:
        return {}
    times = np.concatenate([t for t, _ in out.times])
    values = np.concatenate([v for _, v in out.times]).astype(np.float64)
    low, high = int(times.min()), int(times.max())
    edges = np.linspace(low, high + 1, TIMELINE_BUCKETS + 1)
    where = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, TIMELINE_BUCKETS - 1)
    counts = np.bincount(where, minlength=TIMELINE_BUCKETS)
    sums = np.bincount(where, weights=np.nan_to_num(values), minlength=TIMELINE_BUCKETS)
    keep = counts > 0
    return {"metric": "agreement" if out.classes else "mean_abs_diff",
            "start_us": edges[:-1][keep].astype(np.int64).tolist(), "pairs": counts[keep].tolist(),
            "value": (sums[keep] / counts[keep]).tolist()}


def compare_arrays(primary: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], *,
                   labels: np.ndarray | None = None, settings: DriftSettings | None = None,
                   name: str = "shadow", distribution: bool = True,
                   request_ids: Sequence[str] | None = None) -> CompareReport:
    """Primary vs shadow on aligned numpy arrays (first axis: the same requests in both).

    Example::

        import numpy as np
        from sidecar.drift import compare_arrays

        probs = np.random.default_rng(0).dirichlet(np.ones(10), 2000)
        report = compare_arrays({"probs": probs}, {"probs": probs[:, ::-1]})
        assert report.disagreement

    ``distribution=False`` skips the distribution comparison (``report.distribution`` is then empty);
    ``request_ids`` (one per row) name the rows in the list of the pairs that disagree most.
    """
    settings = settings or DriftSettings()
    accumulator = PairAccumulator(name, settings, distribution=distribution)
    accumulator.timestamps = False
    if labels is not None:
        labels = np.asarray(labels)
    keys = None
    if request_ids is not None:
        ids = np.asarray([str(i) for i in request_ids], dtype=object)
        keys = RowKeys(ids, None, np.arange(len(ids)))
    for output, p in primary.items():
        if output not in shadow:
            continue
        if len(shadow[output]) != len(p) or any(x is not None and len(x) != len(p) for x in (labels, request_ids)):
            raise DriftError(f"output {output!r}: primary, shadow (and labels, request ids) must have the same length")
        p_cols = array_columns({output: p})
        datatype = "FP64" if any(kind == "numeric" for kind, _ in p_cols.values()) else "INT64"
        p2, s2 = np.asarray(p).reshape(len(p), -1), np.asarray(shadow[output]).reshape(len(p), -1)
        if datatype == "FP64":
            p2, s2 = p2.astype(np.float64), s2.astype(np.float64)
        accumulator.add(output, datatype, p2, s2, np.arange(len(p2), dtype=np.int64), labels, keys=keys)
    pairs = max((o.pairs for o in accumulator.outputs.values()), default=0)
    accumulator.counts = {"records": pairs, "paired_predictions": pairs}
    return accumulator.finish()
