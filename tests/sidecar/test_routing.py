"""Routing decisions: stable across runs, fractions honoured, weights honoured, the canary split, retries, paths."""

from __future__ import annotations

import pytest

from sidecar.routing import (
    Route,
    bucket,
    choose,
    infer_target,
    needs_key,
    retry_on_primary,
    sampled,
    split,
    sticky_key,
    upstream_failed,
)

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


# -- the canary split ----------------------------------------------------------------------------

SPLIT_KEYS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize("weight", [0.5, 1.0, 10.0, 12.5, 33.3, 50.0, 90.0, 99.0])
def test_the_observed_split_matches_the_weight_within_a_binomial_999_interval(weight: float) -> None:
    from scipy.stats import binom

    canary = sum(split(key, weight) == "canary" for key in SPLIT_KEYS)
    low, high = binom.interval(0.999, len(SPLIT_KEYS), weight / 100)
    assert low <= canary <= high, (weight, canary, low, high)


def test_the_split_is_sticky_and_only_adds_keys_as_the_weight_grows() -> None:
    assert [split(key, 25.0) for key in SPLIT_KEYS[:2000]] == [split(key, 25.0) for key in SPLIT_KEYS[:2000]]
    previous: set[str] = set()
    for weight in (0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0):
        on_canary = {key for key in SPLIT_KEYS if split(key, weight) == "canary"}
        assert previous <= on_canary, f"a key left the canary when the weight rose to {weight}"
        previous = on_canary
    assert previous == set(SPLIT_KEYS)
    assert not any(split(key, 0.0) == "canary" for key in SPLIT_KEYS)


def test_the_split_is_independent_of_shadow_sampling() -> None:
    canary = {key for key in SPLIT_KEYS if split(key, 50.0) == "canary"}
    mirrored = {key for key in SPLIT_KEYS if sampled(key, 0.5)}
    assert abs(len(canary & mirrored) / len(SPLIT_KEYS) - 0.25) < 0.03  # not the same half


@pytest.mark.parametrize("header, request_id, expected", [
    ("alice", "req-1", "alice"),
    (None, "req-1", "req-1"),
    ("", "req-1", "req-1"),
    (None, None, "random"),
])
def test_sticky_key_prefers_the_header_then_the_request_id(header: str | None, request_id: str | None,
                                                           expected: str) -> None:
    assert sticky_key(header, request_id, "random") == expected


@pytest.mark.parametrize("served, status, idempotent, held, retried", [
    ("canary", None, True, True, True),      # refused, reset or timed out
    ("canary", 500, True, True, True),
    ("canary", 503, True, True, True),
    ("canary", 429, True, True, True),       # overloaded
    ("canary", 200, True, True, False),
    ("canary", 400, True, True, False),      # the client's mistake: the primary would say the same
    ("canary", 404, True, True, False),
    ("canary", 500, False, True, False),     # not idempotent
    ("canary", 500, True, False, False),     # the body streamed through: nothing to resend
    ("primary", 500, True, True, False),     # the primary is never retried
])
def test_retry_on_primary(served: str, status: int | None, idempotent: bool, held: bool, retried: bool) -> None:
    assert retry_on_primary(served, status, idempotent=idempotent, body_held=held) is retried
    assert upstream_failed(status) is (status is None or status == 429 or status >= 500)
