"""Canary analysis: what one interval measured, the checks on it, and the decision (pure).

Each interval the controller (`sidecar.canary.controller`) takes the `Window` into an
`IntervalMetrics` and calls `decide`: if the canary served fewer than ``min_requests``,
the interval is inconclusive (nothing changes); else every configured threshold is
checked. All pass: ramp by ``step_weight`` up to ``max_weight``, and once an interval
passes at ``max_weight``, the canary is ready to promote. Any fails: hold, and roll back
to 0 when ``failure_limit`` conclusive intervals in a row failed. `decide` depends on
nothing but its arguments, and every decision records its metrics, so `replay` gives the
same decisions from the recorded metrics::

    >>> from sidecar.config.canary import AnalysisConfig
    >>> config = AnalysisConfig(step_weight=10, max_weight=20, min_requests=5, max_p99_ratio=None)
    >>> good = IntervalMetrics(0, 60, 10, canary_requests=50, primary_requests=450)
    >>> [(o.action, o.weight) for o in replay(config, State(10), [good, good])]
    [('ramp', 20.0), ('ready', 20.0)]
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..config.canary import AnalysisConfig
from ..routing import CANARY

PASS, FAIL, INCONCLUSIVE, NO_DATA, SKIPPED = "pass", "fail", "inconclusive", "no_data", "skipped"
# Phases: off (no canary), idle (weight 0), manual (a weight, no analysis), progressing, ready
# (ready to promote), rolled_back (stays at 0 until an operator sets a weight), promoted (100%).
ANALYSED = ("progressing", "ready")
MAX_SAMPLES = 20_000  # latencies kept per upstream and interval (a uniform reservoir beyond)


@dataclasses.dataclass(frozen=True)
class IntervalMetrics:
    """What one interval measured: requests, failures and p99 latency per upstream; compared predictions."""

    start: float
    end: float
    weight: float
    canary_requests: int = 0
    canary_errors: int = 0
    canary_p99: float | None = None  # seconds
    primary_requests: int = 0
    primary_errors: int = 0
    primary_p99: float | None = None
    compared_rows: int = 0  # rows with a top-1 compared with the primary's
    agree_rows: int = 0
    diff_requests: int = 0  # requests with a mean absolute difference
    diff_sum: float = 0.0

    @property
    def error_rate(self) -> float | None:
        return self.canary_errors / self.canary_requests if self.canary_requests else None

    @property
    def disagreement(self) -> float | None:
        return 1.0 - self.agree_rows / self.compared_rows if self.compared_rows else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.diff_sum / self.diff_requests if self.diff_requests else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(error_rate=self.error_rate, disagreement=self.disagreement, mean_abs_diff=self.mean_abs_diff)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IntervalMetrics:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclasses.dataclass(frozen=True)
class Check:
    """One threshold on one interval: ``pass``, ``fail``, ``no_data`` or ``skipped`` (cannot apply)."""

    name: str
    status: str
    value: float | None
    limit: float | None
    text: str


@dataclasses.dataclass(frozen=True)
class State:
    """Where the analysis stands: the weight, conclusive failed intervals in a row, the phase."""

    weight: float
    failures: int = 0
    phase: str = "progressing"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A decision: the verdict of the interval, the action and the state after it."""

    verdict: str  # pass, fail or inconclusive
    action: str  # ramp, ready, hold, rollback or wait
    weight: float
    failures: int
    phase: str
    reason: str
    checks: tuple[Check, ...] = ()


@dataclasses.dataclass(frozen=True)
class Decision:
    """An entry of the decision log: an analysis decision or an operator's change, with its reason."""

    time: float
    source: str  # analysis, admin or config
    action: str  # ramp, ready, hold, wait, rollback, set or promote
    weight_from: float
    weight_to: float
    phase: str
    reason: str
    verdict: str | None = None  # analysis decisions only
    failures: int = 0
    metrics: IntervalMetrics | None = None
    checks: tuple[Check, ...] = ()
    ramp_refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["metrics"] = self.metrics.to_dict() if self.metrics is not None else None
        data["checks"] = [dataclasses.asdict(check) for check in self.checks]
        return data


def _p99(samples: list[float]) -> float | None:
    return float(np.percentile(samples, 99)) if samples else None


class Window:
    """The current interval's measurements; `observe` on the event loop, `pairs` from any thread."""

    def __init__(self, start: float) -> None:
        self._lock = threading.Lock()
        self._random = random.Random()
        self.reset(start)

    def reset(self, start: float) -> None:
        self.start = start
        self._requests = {CANARY: 0, "primary": 0}
        self._errors = {CANARY: 0, "primary": 0}
        self._latencies: dict[str, list[float]] = {CANARY: [], "primary": []}
        with self._lock:
            self._compared = self._agree = self._diff_requests = 0
            self._diff_sum = 0.0

    def observe(self, upstream: str, seconds: float | None, failed: bool) -> None:
        """One request served (or failed) by ``primary`` or ``canary``; ``seconds`` None for streams."""
        count = self._requests[upstream] = self._requests[upstream] + 1
        if failed:
            self._errors[upstream] += 1
        if seconds is not None:
            samples = self._latencies[upstream]
            if len(samples) < MAX_SAMPLES:
                samples.append(seconds)
            else:  # Algorithm R: every request equally likely to be kept
                slot = self._random.randrange(count)
                if slot < MAX_SAMPLES:
                    samples[slot] = seconds

    def pairs(self, rows: int, agree: int | None, mean_abs_diff: float | None) -> None:
        """One output of one request compared with the primary's answer."""
        with self._lock:
            if agree is not None:
                self._compared += rows
                self._agree += agree
            if mean_abs_diff is not None:
                self._diff_requests += 1
                self._diff_sum += mean_abs_diff

    def metrics(self, end: float, weight: float) -> IntervalMetrics:
        """The interval so far (nothing is reset)."""
        with self._lock:
            compared, agree, diff_requests, diff_sum = self._compared, self._agree, self._diff_requests, self._diff_sum
        return IntervalMetrics(self.start, end, weight, self._requests[CANARY], self._errors[CANARY],
                               _p99(self._latencies[CANARY]), self._requests["primary"], self._errors["primary"],
                               _p99(self._latencies["primary"]), compared, agree, diff_requests, diff_sum)

    def take(self, end: float, weight: float) -> IntervalMetrics:
        """The finished interval; the next one starts at ``end``."""
        metrics = self.metrics(end, weight)
        self.reset(end)
        return metrics


def _limit(name: str, value: float | None, limit: float, text: str) -> Check:
    if value is None:
        return Check(name, NO_DATA, None, limit, f"{name}: no data")
    return Check(name, PASS if value <= limit else FAIL, value, limit, text)


def evaluate(config: AnalysisConfig, m: IntervalMetrics) -> tuple[Check, ...]:
    """Every configured threshold on one interval."""
    checks = []
    if config.max_error_rate is not None:
        rate = m.error_rate
        checks.append(_limit("error_rate", rate, config.max_error_rate,
                             f"error rate {rate or 0:.4g} ({m.canary_errors}/{m.canary_requests}), "
                             f"limit {config.max_error_rate:g}"))
    if config.max_p99_ratio is not None:
        if m.primary_p99 is None:
            checks.append(Check("p99", SKIPPED, m.canary_p99, None, "p99: the primary served nothing to compare with"))
        else:
            limit = config.max_p99_ratio * m.primary_p99 + config.p99_slack_secs
            checks.append(_limit("p99", m.canary_p99, limit,
                                 f"p99 {m.canary_p99 or 0:.4g}s, limit {config.max_p99_ratio:g} x primary "
                                 f"{m.primary_p99:.4g}s + {config.p99_slack_secs:g}s = {limit:.4g}s"))
    if config.max_disagreement is not None:
        value = m.disagreement
        checks.append(_limit("disagreement", value, config.max_disagreement,
                             f"top-1 disagreement {value or 0:.4g} ({m.compared_rows - m.agree_rows}/"
                             f"{m.compared_rows} rows), limit {config.max_disagreement:g}"))
    if config.max_mean_abs_diff is not None:
        value = m.mean_abs_diff
        checks.append(_limit("mean_abs_diff", value, config.max_mean_abs_diff,
                             f"mean absolute difference {value or 0:.4g}, limit {config.max_mean_abs_diff:g}"))
    return tuple(checks)


def decide(config: AnalysisConfig, state: State, m: IntervalMetrics, *, ramp_refused: str | None = None) -> Outcome:
    """The decision at the end of an interval; ``ramp_refused`` is a pre-ramp webhook's refusal, if any."""
    checks = evaluate(config, m)
    failed = [c for c in checks if c.status == FAIL]
    missing = [c for c in checks if c.status == NO_DATA]
    if m.canary_requests < config.min_requests:
        return Outcome(INCONCLUSIVE, "wait", state.weight, state.failures, state.phase,
                       f"inconclusive: the canary served {m.canary_requests} request(s), fewer than min_requests "
                       f"{config.min_requests}", checks)
    if failed:
        failures = state.failures + 1
        reason = "; ".join(c.text for c in failed)
        if failures >= config.failure_limit:
            return Outcome(FAIL, "rollback", 0.0, failures, "rolled_back",
                           f"rollback after {failures} failed interval(s) in a row: {reason}", checks)
        return Outcome(FAIL, "hold", state.weight, failures, state.phase,
                       f"failed ({failures} of {config.failure_limit} in a row before rollback): {reason}", checks)
    if missing:
        return Outcome(INCONCLUSIVE, "wait", state.weight, state.failures, state.phase,
                       "inconclusive: no data for " + ", ".join(c.name for c in missing), checks)
    passed = "; ".join(c.text for c in checks) or "no thresholds configured"
    if state.weight >= config.max_weight:
        return Outcome(PASS, "ready", state.weight, 0, "ready", f"ready to promote at {state.weight:g}%: {passed}",
                       checks)
    if ramp_refused is not None:
        return Outcome(PASS, "hold", state.weight, 0, state.phase, f"passed, but {ramp_refused}: {passed}", checks)
    weight = min(state.weight + config.step_weight, config.max_weight)
    return Outcome(PASS, "ramp", weight, 0, "progressing", f"ramp {state.weight:g}% -> {weight:g}%: {passed}",
                   checks)


def replay(config: AnalysisConfig, state: State, intervals: Iterable[IntervalMetrics],
           refusals: dict[int, str] | None = None) -> list[Outcome]:
    """The decisions a run of intervals leads to, from ``state``; ``refusals`` maps an index to a webhook's refusal."""
    outcomes = []
    for index, metrics in enumerate(intervals):
        outcome = decide(config, state, metrics, ramp_refused=(refusals or {}).get(index))
        outcomes.append(outcome)
        state = State(outcome.weight, outcome.failures, outcome.phase)
        if outcome.action == "rollback":
            break
    return outcomes
