"""Routing decisions: stable across runs, fractions honoured, weights honoured, paths parsed."""

from __future__ import annotations

import pytest

from sidecar.routing import Route, bucket, choose, infer_target, needs_key, sampled

KEYS = [f"request-{i}" for i in range(20_000)]


def test_buckets_are_stable_across_runs_and_processes() -> None:
    # blake2b of the key, not Python's salted hash(): these values never change.
    assert bucket("request-1") == pytest.approx(0.9785382927311853, abs=1e-15)
    assert bucket("request-1", "inputs") != bucket("request-1")
    assert all(0.0 <= bucket(key) < 1.0 for key in KEYS[:1000])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_a_fraction_samples_that_share_of_requests(fraction: float) -> None:
    share = sum(sampled(key, fraction) for key in KEYS) / len(KEYS)
    assert share == pytest.approx(fraction, abs=0.015)


def test_smaller_fractions_sample_subsets_and_equal_fractions_the_same_requests() -> None:
    small = {key for key in KEYS if sampled(key, 0.1)}
    large = {key for key in KEYS if sampled(key, 0.5)}
    assert small < large
    assert small == {key for key in KEYS if sampled(key, 0.1)}


def test_the_edges_need_no_hash() -> None:
    assert all(sampled(key, 1.0) for key in KEYS[:100])
    assert not any(sampled(key, 0.0) for key in KEYS[:100])
    assert not needs_key([0.0, 1.0]) and needs_key([1.0, 0.3])


def test_choose_honours_weights_and_is_sticky() -> None:
    routes = (Route("primary", 9.0), Route("canary", 1.0))
    picks = [choose(key, routes) for key in KEYS]
    assert picks.count("canary") / len(picks) == pytest.approx(0.1, abs=0.015)
    assert picks == [choose(key, routes) for key in KEYS]
    assert choose("any", (Route("primary", 1.0),)) == "primary"
    assert {choose(key, (Route("a", 0.0), Route("b", 1.0))) for key in KEYS[:200]} == {"b"}


@pytest.mark.parametrize("path, target", [
    ("/v2/models/classifier/infer", ("classifier", None)),
    ("/v2/models/classifier/versions/2/infer", ("classifier", "2")),
    ("/v2/models/classifier", None),
    ("/v2/models/classifier/ready", None),
    ("/v2/models//infer", None),
    ("/v2/models/a/b/infer", None),
    ("/v2/health/ready", None),
])
def test_infer_paths(path: str, target: tuple[str, str | None] | None) -> None:
    assert infer_target(path) == target
