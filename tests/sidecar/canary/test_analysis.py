"""Canary analysis, pure: the checks, the decisions, the interval window and replaying recorded metrics."""

from __future__ import annotations

import json
import threading

import pytest

from sidecar.canary.analysis import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Decision,
    IntervalMetrics,
    State,
    Window,
    decide,
    evaluate,
    replay,
)
from sidecar.config.canary import AnalysisConfig

CONFIG = AnalysisConfig(interval_secs=1, step_weight=10, max_weight=30, min_requests=10, failure_limit=2,
                        max_error_rate=0.05, max_p99_ratio=1.5, p99_slack_secs=0.01, max_disagreement=0.1,
                        max_mean_abs_diff=0.5)


def interval(**overrides: object) -> IntervalMetrics:
    """A healthy interval: 100 canary requests, no errors, latencies like the primary's, answers that agree."""
    values: dict[str, object] = {
        "start": 0.0, "end": 1.0, "weight": 10.0, "canary_requests": 100, "canary_errors": 0, "canary_p99": 0.020,
        "primary_requests": 900, "primary_errors": 1, "primary_p99": 0.020, "compared_rows": 100, "agree_rows": 98,
        "diff_requests": 100, "diff_sum": 1.0}
    values.update(overrides)
    return IntervalMetrics(**values)  # type: ignore[arg-type]  # fields of each type


@pytest.mark.parametrize("metrics, verdict, failed", [
    (interval(), PASS, []),
    (interval(canary_errors=6), FAIL, ["error_rate"]),
    (interval(canary_errors=5), PASS, []),  # 5% is the limit itself
    (interval(canary_p99=0.041), FAIL, ["p99"]),  # 1.5 x 20 ms + 10 ms = 40 ms
    (interval(canary_p99=0.040), PASS, []),
    (interval(agree_rows=89), FAIL, ["disagreement"]),
    (interval(diff_sum=60.0), FAIL, ["mean_abs_diff"]),
    (interval(canary_errors=50, canary_p99=1.0, agree_rows=0), FAIL, ["error_rate", "p99", "disagreement"]),
    (interval(canary_requests=9, canary_errors=9), INCONCLUSIVE, ["error_rate"]),  # too few to judge
    (interval(compared_rows=0, agree_rows=0), INCONCLUSIVE, []),  # no pairs compared yet
    (interval(primary_requests=0, primary_p99=None), PASS, []),  # at 100% the p99 check cannot apply
])
def test_verdicts(metrics: IntervalMetrics, verdict: str, failed: list[str]) -> None:
    outcome = decide(CONFIG, State(10.0), metrics)
    assert outcome.verdict == verdict, outcome.reason
    assert [c.name for c in outcome.checks if c.status == "fail"] == failed


def test_checks_say_what_they_measured() -> None:
    checks = {c.name: c for c in evaluate(CONFIG, interval(canary_errors=6, primary_requests=0, primary_p99=None))}
    assert checks["error_rate"].value == pytest.approx(0.06) and checks["error_rate"].limit == 0.05
    assert "6/100" in checks["error_rate"].text
    assert checks["p99"].status == "skipped"
    assert checks["disagreement"].value == pytest.approx(0.02) and checks["mean_abs_diff"].value == pytest.approx(0.01)
    only_errors = AnalysisConfig(max_p99_ratio=None)
    assert [c.name for c in evaluate(only_errors, interval())] == ["error_rate"]


@pytest.mark.parametrize("state, metrics, action, weight, failures, phase", [
    (State(10.0), interval(), "ramp", 20.0, 0, "progressing"),
    (State(25.0), interval(), "ramp", 30.0, 0, "progressing"),  # never past max_weight
    (State(30.0), interval(), "ready", 30.0, 0, "ready"),
    (State(30.0, 0, "ready"), interval(), "ready", 30.0, 0, "ready"),
    (State(10.0), interval(canary_errors=50), "hold", 10.0, 1, "progressing"),
    (State(10.0, 1), interval(canary_errors=50), "rollback", 0.0, 2, "rolled_back"),
    (State(30.0, 1, "ready"), interval(canary_errors=50), "rollback", 0.0, 2, "rolled_back"),
    (State(10.0, 1), interval(canary_requests=3), "wait", 10.0, 1, "progressing"),  # neither counts nor resets
    (State(10.0, 1), interval(), "ramp", 20.0, 0, "progressing"),  # a pass ends the run of failures
])
def test_actions(state: State, metrics: IntervalMetrics, action: str, weight: float, failures: int,
                 phase: str) -> None:
    outcome = decide(CONFIG, state, metrics)
    assert (outcome.action, outcome.weight, outcome.failures, outcome.phase) == (action, weight, failures, phase)


def test_a_refused_ramp_holds() -> None:
    outcome = decide(CONFIG, State(10.0), interval(), ramp_refused="the pre-ramp webhook http://ci answered 409")
    assert (outcome.verdict, outcome.action, outcome.weight) == (PASS, "hold", 10.0)
    assert "409" in outcome.reason


def test_a_good_canary_ramps_to_max_then_is_ready() -> None:
    outcomes = replay(CONFIG, State(10.0), [interval(), interval(canary_requests=2), interval(), interval(),
                                            interval()])
    assert [(o.action, o.weight) for o in outcomes] == [("ramp", 20.0), ("wait", 20.0), ("ramp", 30.0),
                                                        ("ready", 30.0), ("ready", 30.0)]


def test_failure_limit_failures_in_a_row_roll_back_and_nothing_follows() -> None:
    bad = interval(canary_errors=40)
    outcomes = replay(CONFIG, State(10.0), [bad, interval(canary_requests=1), bad, interval()])
    assert [o.action for o in outcomes] == ["hold", "wait", "rollback"]
    assert "rollback after 2 failed interval(s) in a row: error rate 0.4" in outcomes[-1].reason


def test_decisions_round_trip_through_json_and_replay_the_same() -> None:
    metrics = [interval(), interval(canary_p99=0.5), interval(canary_p99=0.5)]
    outcomes = replay(CONFIG, State(10.0), metrics)
    log = [json.loads(json.dumps(Decision(0.0, "analysis", o.action, 0.0, o.weight, o.phase, o.reason, o.verdict,
                                          o.failures, m, o.checks).to_dict()))
           for o, m in zip(outcomes, metrics, strict=True)]
    again = replay(CONFIG, State(10.0), [IntervalMetrics.from_dict(entry["metrics"]) for entry in log])
    assert [(o.action, o.weight, o.reason) for o in again] == [(e["action"], e["weight_to"], e["reason"]) for e in log]
    assert [o.action for o in again] == ["ramp", "hold", "rollback"]


def test_the_window_measures_one_interval() -> None:
    window = Window(100.0)
    for index in range(200):
        window.observe("primary", 0.010 + index * 1e-5, failed=False)
    for index in range(100):
        window.observe("canary", 0.001 * (index + 1), failed=index < 3)
    window.observe("canary", None, failed=True)  # a stream: counted, no latency
    def compare() -> None:
        for _ in range(50):
            window.pairs(4, 3, 0.25)

    threads = [threading.Thread(target=compare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window.pairs(1, None, None)  # an output with neither top-1 nor values: nothing
    metrics = window.take(101.0, 10.0)
    assert (metrics.start, metrics.end, metrics.weight) == (100.0, 101.0, 10.0)
    assert (metrics.canary_requests, metrics.canary_errors, metrics.primary_requests) == (101, 4, 200)
    assert metrics.canary_p99 == pytest.approx(0.09901)  # numpy's linear interpolation over 1..100 ms
    assert (metrics.compared_rows, metrics.agree_rows) == (800, 600) and metrics.disagreement == pytest.approx(0.25)
    assert metrics.mean_abs_diff == pytest.approx(0.25)
    fresh = window.take(102.0, 10.0)
    assert (fresh.start, fresh.canary_requests, fresh.compared_rows, fresh.canary_p99) == (101.0, 0, 0, None)


def test_the_window_keeps_a_bounded_uniform_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.canary.analysis as canary

    monkeypatch.setattr(canary, "MAX_SAMPLES", 100)
    window = Window(0.0)
    for index in range(10_000):
        window.observe("canary", 1.0 if index < 5_000 else 2.0, failed=False)
    samples = window._latencies["canary"]
    assert len(samples) == 100 and 20 < samples.count(2.0) < 80  # both halves represented
    assert window.metrics(1.0, 5.0).canary_requests == 10_000
