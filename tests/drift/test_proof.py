"""Detection and false-alarm rates at the default thresholds, with bounds (docs/drift.md has
the 200-repetition table; here 100 seeded repetitions keep CI fast)."""

from __future__ import annotations

import pytest

from sidecar.drift.proof import Row, markdown, run


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return run(repetitions=100, seed=1)


def _rate(rows: list[Row], scenario: str, size: int, detector: str = "default") -> float:
    (row,) = [r for r in rows if r.scenario.endswith(scenario) and r.size == size and r.detector == detector]
    return row.rate


@pytest.mark.parametrize("size", [500, 20_000])
def test_default_detectors_detect_planted_shifts(rows: list[Row], size: int) -> None:
    assert _rate(rows, "mean shift +0.5 sd", size) >= 0.95
    assert _rate(rows, "scale x1.5", size) >= 0.9
    assert _rate(rows, "class prior 0.10 -> 0.20", size) >= (0.75 if size == 500 else 0.95)
    assert _rate(rows, "class 3 flipped to 5", size) >= 0.95


@pytest.mark.parametrize("size", [500, 20_000])
def test_default_detectors_rarely_false_alarm(rows: list[Row], size: int) -> None:
    for scenario in ("numeric: none", "classes: none", "shadow: none"):
        assert _rate(rows, scenario, size) <= 0.12, scenario  # alpha 0.05 plus sampling noise
    if size == 20_000:  # distance thresholds: no false alarms at all on large windows
        assert _rate(rows, "numeric: none", size) == 0.0 and _rate(rows, "classes: none", size) == 0.0


def test_large_samples_are_why_p_values_are_not_the_default(rows: list[Row]) -> None:
    # at 20,000 per window the KS test still holds its alpha, but a 0.5 sd shift and a far
    # smaller one look alike to it; the threshold tests are the ones whose answer means something
    assert _rate(rows, "numeric: none", 20_000, "ks p<0.05") <= 0.12
    assert "| numeric: none | 500 |" in markdown(rows)
