"""Detection and false-alarm rates of every detector at the default thresholds, on synthetic
data with planted shifts, over seeded repetitions. ``benchmarks/drift_bench.py --proof`` prints
the table for docs/drift.md (200 repetitions); the tests check it with bounds.

Example::

    from sidecar.drift.proof import markdown, run

    print(markdown(run(repetitions=50)))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from sidecar.drift.paired import compare_arrays
from sidecar.drift.thresholds import DriftSettings
from sidecar.drift.window import ColumnResult, window_drift

SIZES = (500, 20_000)  # per window: the p-value regime and the threshold regime
CLASSES = 10
Sample = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Row:
    scenario: str
    size: int
    detector: str
    rate: float  # share of repetitions flagged
    shifted: bool  # a planted shift (rate = detection) or none (rate = false alarms)


def _normal(mean: float, sd: float) -> Sample:
    return lambda rng, n: rng.normal(mean, sd, n)


def _classes(first: float) -> Sample:
    prior = np.full(CLASSES, (1 - first) / (CLASSES - 1))
    prior[0] = first
    return lambda rng, n: rng.choice(CLASSES, n, p=prior)


NUMERIC = {"none": _normal(0, 1), "mean shift +0.5 sd": _normal(0.5, 1), "scale x1.5": _normal(0, 1.5)}
PRIORS = {"none": _classes(0.1), "class prior 0.10 -> 0.20": _classes(0.2)}


def _column_votes(column: ColumnResult, settings: DriftSettings) -> dict[str, bool]:
    votes = {"default": column.drift}
    st = column.statistics
    if "ks" in st:
        votes["ks p<0.05"] = bool(st["ks"].p_value is not None and st["ks"].p_value < settings.alpha)
        wasserstein = settings.thresholds["wasserstein"]
        votes[f"wasserstein>={wasserstein}"] = (st["wasserstein"].value or 0) >= wasserstein
    if "chi2" in st:
        votes["chi2 p<0.05"] = bool(st["chi2"].p_value is not None and st["chi2"].p_value < settings.alpha)
    votes[f"js>={settings.thresholds['js']}"] = (st["js"].value or 0) >= settings.thresholds["js"]
    votes[f"psi>={settings.thresholds['psi']}"] = (st["psi"].value or 0) >= settings.thresholds["psi"]
    return votes


def _window_votes(sample: Sample, baseline: Sample, rng: np.random.Generator, n: int,
                  settings: DriftSettings) -> dict[str, bool]:
    reference, current = baseline(rng, n), sample(rng, n)
    report = window_drift({"x": reference}, {"x": current}, settings)
    return _column_votes(report.columns[0], settings)


def _paired_votes(flip: bool, rng: np.random.Generator, n: int, settings: DriftSettings) -> dict[str, bool]:
    """Primary and shadow: the same 10-class model (80% accurate) with independent small noise,
    so they disagree on about 1% of requests and are equally accurate; with ``flip``, the
    shadow also says 5 wherever the primary says 3."""
    truth = rng.integers(0, CLASSES, n)
    logits = rng.normal(0, 1, (n, CLASSES))
    right = rng.random(n) < 0.8
    logits[np.arange(n), np.where(right, truth, (truth + 1 + rng.integers(0, CLASSES - 1, n)) % CLASSES)] += 4
    primary = logits + rng.normal(0, 0.1, (n, CLASSES))
    shadow = logits + rng.normal(0, 0.1, (n, CLASSES))
    if flip:
        says3 = np.argmax(primary, axis=1) == 3
        shadow[says3, 5] = shadow[says3, 3] + 1

    def softmax(z: np.ndarray) -> np.ndarray:
        return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)

    report = compare_arrays({"probs": softmax(primary)}, {"probs": softmax(shadow)}, labels=truth, settings=settings,
                            distribution=False)
    output = report.outputs[0]
    mcnemar = output.statistics["mcnemar"]
    return {"default": output.disagreement,
            f"disagreement>{settings.max_disagreement}": any("disagreement" in r for r in output.reasons),
            "mcnemar p<0.05": bool(mcnemar.p_value is not None and mcnemar.p_value < settings.alpha)}


Case = Callable[[np.random.Generator, int, DriftSettings], dict[str, bool]]


def _cases() -> Iterator[tuple[str, bool, Case]]:
    for name, sample in NUMERIC.items():
        yield f"numeric: {name}", name != "none", partial(_window_votes, sample, NUMERIC["none"])
    for name, sample in PRIORS.items():
        yield f"classes: {name}", name != "none", partial(_window_votes, sample, PRIORS["none"])
    for flip in (False, True):
        yield f"shadow: {'class 3 flipped to 5' if flip else 'none'}", flip, partial(_paired_votes, flip)


def run(repetitions: int = 200, seed: int = 0, sizes: tuple[int, ...] = SIZES,
        settings: DriftSettings | None = None) -> list[Row]:
    """Rates per scenario, window size and detector over ``repetitions`` seeded runs."""
    settings = settings or DriftSettings()
    rows = []
    for number, (scenario, shifted, case) in enumerate(_cases()):
        for size in sizes:
            rng = np.random.default_rng([seed, number, size])
            flagged: dict[str, int] = {}
            for _ in range(repetitions):
                for detector, vote in case(rng, size, settings).items():
                    flagged[detector] = flagged.get(detector, 0) + int(vote)
            rows += [Row(scenario, size, d, count / repetitions, shifted) for d, count in flagged.items()]
    return rows


def markdown(rows: list[Row]) -> str:
    """The rates as a Markdown table: one line per scenario and size, one column per detector."""
    detectors = list(dict.fromkeys(r.detector for r in rows))
    lines = ["| scenario | n per window | " + " | ".join(detectors) + " |",
             "|---|---:|" + "---:|" * len(detectors)]
    keys = list(dict.fromkeys((r.scenario, r.size) for r in rows))
    for scenario, size in keys:
        rates = {r.detector: r.rate for r in rows if (r.scenario, r.size) == (scenario, size)}
        cells = [f"{rates[d]:.0%}" if d in rates else "" for d in detectors]
        lines.append(f"| {scenario} | {size:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
