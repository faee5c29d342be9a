"""Fixtures: synthetic records written as real Parquet segments in the recorder's schema."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.drift.synthetic import write_records


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def no_nan(document: Any) -> None:
    """Fails on any NaN or infinity anywhere in a JSON-like document."""
    json.dumps(document, allow_nan=False)
    if isinstance(document, float):
        assert math.isfinite(document)


def class_windows(rng: np.random.Generator, n: int = 3000) -> Callable[[float], np.ndarray]:
    """Draws windows of ``n`` 10-class softmax outputs, class 0's logit raised by the boost given."""
    def window(boost: float) -> np.ndarray:
        logits = rng.normal(0, 1, (n, 10))
        logits[:, 0] += boost
        return softmax(logits)
    return window


def says5_for_3(primary: np.ndarray) -> np.ndarray:
    """A shadow that agrees with ``primary`` except that it says 5 where the primary says 3."""
    shadow = primary.copy()
    says3 = primary.argmax(axis=1) == 3
    shadow[says3, 5] = primary[says3, 3] + 0.01
    return shadow


@pytest.fixture
def records(tmp_path: Path) -> dict[str, Path]:
    """Reference and current windows (3,000 records each) with a 10-class output and a shadow.

    ``same``: the current window drawn like the reference; ``shifted``: class 0 boosted.
    The shadow ``v2`` agrees with the primary except that it says 5 where the primary says 3.
    """
    rng = np.random.default_rng(7)
    window = class_windows(rng)
    reference = window(0.0)
    shadow = says5_for_3(reference)
    write_records(tmp_path / "reference", {"probs": reference}, shadows={"v2": {"probs": shadow}},
                  segment_rows=1000)
    write_records(tmp_path / "same", {"probs": window(0.0)}, segment_rows=1000)
    write_records(tmp_path / "shifted", {"probs": window(1.5)}, segment_rows=1000)
    (tmp_path / "reference" / "segment-99999.parquet.tmp").write_bytes(b"not finished")  # in progress
    return {"reference": tmp_path / "reference", "same": tmp_path / "same", "shifted": tmp_path / "shifted",
            "root": tmp_path}
