"""Primary vs shadow agreement, per output: top-1 equality by row and mean absolute difference.

Top-1 is the argmax of the last dimension for class scores (a float output whose last
dimension is over 1), and the value itself for integer, BOOL and BYTES outputs; a
float output with one value per row has no top-1, only the difference. Top-1 is
`inference_protocol.predictions.top1`, as in the drift job and the runtime's metrics: a
row holding NaN has top-1 -1, so two NaN rows agree and a NaN row never agrees with a
real class. The offline drift
job computes the full statistics; these are the live signal on /metrics.

A record served by the primary compares each shadow with the primary; a record served by
the canary compares the canary with the primary's answer to the copy (the shadow entry
named ``primary``), into the ``sidecar_canary_*`` series, and leaves the shadows alone (a
shadow compared with the canary says nothing about the shadow). Both also go to the
canary analysis (`pairs`), which picks the source it judges by.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from inference_protocol.datatypes import FLOAT_DATATYPES
from inference_protocol.predictions import top1

from ..routing import CANARY, PRIMARY
from .decode import TensorValue
from .metrics import RecordMetrics
from .tables import Record

Pairs = Callable[[str, int, "int | None", "float | None"], None]  # source, rows, agreeing rows, mean abs diff

@dataclasses.dataclass(frozen=True)
class Comparison:
    """One output compared: ``rows`` positions, of which ``agree`` have the same top-1."""

    output: str
    rows: int = 0
    agree: int | None = None  # None: the output has no top-1
    mean_abs_diff: float | None = None  # None: not numeric
    problem: str | None = None  # missing, shape or datatype: nothing else is set


def _top1(primary: np.ndarray, shadow: np.ndarray, datatype: str) -> tuple[int, int] | None:
    if datatype in FLOAT_DATATYPES:
        if primary.ndim < 2 or primary.shape[-1] < 2:
            return None
        a, b = top1(primary), top1(shadow)
        return int(a.size), int(np.count_nonzero(a == b))
    rows = primary.shape[0] if primary.ndim else 1
    same = (primary == shadow).reshape(rows, -1).all(axis=1) if rows else np.zeros(0, dtype=bool)
    return int(rows), int(np.count_nonzero(same))


def compare_output(primary: TensorValue, shadow: TensorValue) -> Comparison:
    """Compare one output of the primary with the same output of a shadow."""
    name = primary.name
    if primary.datatype != shadow.datatype and "BYTES" in (primary.datatype, shadow.datatype):
        return Comparison(name, problem="datatype")
    if primary.shape != shadow.shape:
        return Comparison(name, problem="shape")
    a, b = primary.array(), shadow.array()
    top1 = _top1(a, b, primary.datatype)
    diff = None
    if primary.values is not None and shadow.values is not None and primary.values.size:
        value = float(np.mean(np.abs(primary.values - shadow.values)))
        diff = value if math.isfinite(value) else None
    rows = top1[0] if top1 else (a.shape[0] if a.ndim else 1)
    return Comparison(name, rows=rows, agree=top1[1] if top1 else None, mean_abs_diff=diff)


def compare(primary: list[TensorValue], shadow: list[TensorValue]) -> list[Comparison]:
    """Compare every output the primary returned with the shadow's output of the same name."""
    by_name = {tensor.name: tensor for tensor in shadow}
    out = []
    for tensor in primary:
        other = by_name.get(tensor.name)
        out.append(Comparison(tensor.name, problem="missing") if other is None else compare_output(tensor, other))
    return out


class Agreement:
    """Feeds the agreement metrics (and the canary analysis, through ``pairs``) from finished records."""

    def __init__(self, metrics: RecordMetrics, pairs: Pairs | None = None) -> None:
        self.metrics = metrics
        self.pairs = pairs

    def observe(self, record: Record) -> None:
        served = record.primary.outputs
        if served is None:
            return
        if record.primary.upstream == CANARY:
            copy = next((s for s in record.shadows if s.upstream == PRIMARY and s.outputs is not None), None)
            if copy is not None:
                self._canary(record.model, copy.outputs, served)  # type: ignore[arg-type]
            return
        m = self.metrics
        for shadow in record.shadows:
            if shadow.outputs is None or shadow.upstream == PRIMARY:
                continue
            for result in compare(served, shadow.outputs):
                if result.problem is not None:
                    m.mismatches.labels(shadow.upstream, record.model, result.problem).inc()
                    continue
                labels = (shadow.upstream, record.model, result.output)
                if result.agree is not None:
                    m.compared_rows.labels(*labels).inc(result.rows)
                    m.top1_agree_rows.labels(*labels).inc(result.agree)
                if result.mean_abs_diff is not None:
                    m.abs_diff.labels(*labels).observe(result.mean_abs_diff)
                if self.pairs is not None:
                    self.pairs(shadow.upstream, result.rows, result.agree, result.mean_abs_diff)

    def _canary(self, model: str, primary: list[TensorValue], canary: list[TensorValue]) -> None:
        m = self.metrics
        for result in compare(primary, canary):
            if result.problem is not None:
                m.mismatches.labels(CANARY, model, result.problem).inc()
                continue
            if result.agree is not None:
                m.canary_compared_rows.labels(model, result.output).inc(result.rows)
                m.canary_agree_rows.labels(model, result.output).inc(result.agree)
            if result.mean_abs_diff is not None:
                m.canary_abs_diff.labels(model, result.output).observe(result.mean_abs_diff)
            if self.pairs is not None:
                self.pairs("copies", result.rows, result.agree, result.mean_abs_diff)
