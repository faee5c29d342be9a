from __future__ import annotations

import numpy as np
import pytest

from sidecar.drift import LiveDrift, Profile, window_drift


def test_window_slides_and_matches_offline_statistics() -> None:
    rng = np.random.default_rng(0)
    reference = Profile.from_arrays({"score": rng.normal(size=50_000), "cls": rng.integers(0, 3, 50_000)})
    live = LiveDrift(reference, window=2000)
    assert live.snapshot()["score"].psi is None  # nothing seen yet: no value, not NaN
    shifted = rng.normal(1.0, 1.0, 3000)
    for start in range(0, 3000, 100):  # responses of 100 predictions
        live.observe({"score": shifted[start:start + 100, None]})
    moved = live.snapshot()["score"]
    assert moved.count == 2000 and moved.psi is not None and moved.psi > 0.5  # set once values came
    offline = window_drift(reference, {"score": shifted[-2000:]}).columns[0]
    assert moved.psi == pytest.approx(offline.statistics["psi"].value)
    assert moved.js == pytest.approx(offline.statistics["js"].value)
    for _ in range(25):  # back to normal: the shifted values leave the window
        live.observe({"score": rng.normal(size=(100, 1))})
    back = live.snapshot()["score"].psi
    assert back is not None and back < 0.05


def test_unseen_classes_nan_and_big_batches() -> None:
    rng = np.random.default_rng(1)
    live = LiveDrift(Profile.from_arrays({"cls": rng.integers(0, 3, 10_000), "x": rng.normal(size=10_000)}),
                     window=500)
    live.observe({"cls": np.full(1000, 7), "x": np.full(1000, np.nan)})  # a batch bigger than the window
    snap = live.snapshot()
    assert snap["cls"].count == 500 and snap["cls"].js == pytest.approx(1.0)
    psi = snap["x"].psi
    assert snap["x"].js == pytest.approx(1.0) and psi is not None and psi > 5
    live.observe({"unknown": np.ones(3)})  # outputs missing from the reference are ignored
    assert set(live.snapshot()) == {"cls", "x"}
