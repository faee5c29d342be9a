"""The thresholds and tests that decide drift and disagreement (`DriftSettings`).

Every default of those decisions, in one place; each is overridable (the CLI's flags, which
take their defaults from here) and reported with the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sidecar.drift.errors import DriftError
from sidecar.drift.profile import DEFAULT_BINS
from sidecar.drift.stats import PSI_EPSILON, SCALE_FLOOR

NUMERIC_TESTS = ("auto", "ks", "wasserstein", "js", "psi")
CATEGORICAL_TESTS = ("auto", "chi2", "js", "psi")
CORRECTIONS = ("bonferroni", "none")


def _thresholds() -> dict[str, float]:
    return {
        "wasserstein": 0.1,  # normed W1: a tenth of the reference's std (Evidently's default)
        "js": 0.1,  # Jensen–Shannon distance, base 2 (Evidently's default)
        "psi": 0.2,  # the usual "significant shift" line of PSI
    }


@dataclass(frozen=True)
class DriftSettings:
    """How drift and disagreement are decided.

    Window drift, per column: when the smaller window has at most ``small_sample`` values, a
    p-value test (KS for numbers, chi-square for classes) at ``alpha`` (Bonferroni-corrected
    over the columns tested that way); otherwise a distance with a threshold (normed
    Wasserstein for numbers, Jensen–Shannon for classes), because on millions of rows p-values
    flag shifts too small to matter. A numeric column also drifts when its share of NaN/inf
    grows by more than ``max_nonfinite_increase``.

    Primary vs shadow, per output: disagreement when the Wilson interval of the top-1
    disagreement rate lies wholly above ``max_disagreement``; for single-value outputs, when
    the mean absolute difference over the primary's std exceeds ``max_mad`` or the Spearman
    correlation falls below ``min_spearman``; with labels, when McNemar's test says the
    shadow is less accurate at ``alpha``.

    Example::

        settings = DriftSettings(small_sample=500, thresholds={"wasserstein": 0.2, "js": 0.1, "psi": 0.2})
    """

    small_sample: int = 1000
    alpha: float = 0.05
    correction: str = "bonferroni"  # or "none"
    numeric_test: str = "auto"
    categorical_test: str = "auto"
    thresholds: dict[str, float] = field(default_factory=_thresholds)
    bins: int = DEFAULT_BINS
    psi_epsilon: float = PSI_EPSILON
    scale_floor: float = SCALE_FLOOR
    max_nonfinite_increase: float = 0.01
    max_disagreement: float = 0.05
    confidence: float = 0.95
    max_mad: float = 0.1
    min_spearman: float = 0.9

    def __post_init__(self) -> None:
        if self.numeric_test not in NUMERIC_TESTS:
            raise DriftError(f"unknown numeric test {self.numeric_test!r}: use one of {', '.join(NUMERIC_TESTS)}")
        if self.categorical_test not in CATEGORICAL_TESTS:
            raise DriftError(f"unknown class test {self.categorical_test!r}: use one of {', '.join(CATEGORICAL_TESTS)}")
        if self.correction not in CORRECTIONS:
            raise DriftError(f"unknown correction {self.correction!r}: use {' or '.join(CORRECTIONS)}")
        if not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise DriftError("alpha and confidence must lie strictly between 0 and 1")
        if self.bins < 2:
            raise DriftError(f"bins must be at least 2, not {self.bins}")
        unknown = set(self.thresholds) - set(_thresholds())
        if unknown:
            raise DriftError(f"unknown threshold(s) {', '.join(sorted(unknown))}: use wasserstein, js or psi")

    def with_overrides(self, overrides: dict[str, Any]) -> DriftSettings:
        """A copy with ``overrides``; thresholds given partly keep the other defaults."""
        if "thresholds" in overrides:
            overrides = {**overrides, "thresholds": {**self.thresholds, **overrides["thresholds"]}}
        return replace(self, **overrides)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
