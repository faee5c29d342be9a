"""The configuration file: parsing, validation messages (canary and live drift too), and flags laid over it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sidecar.config.file import (
    AnalysisConfig,
    CanaryConfig,
    Config,
    ConfigError,
    DriftConfig,
    HeaderRules,
    PrimaryConfig,
    RecordingConfig,
    ShadowConfig,
    restart_only_changes,
)
from sidecar.config.headers import DEFAULT_DENY, DENY_PREFIXES
from sidecar.config.overrides import load
from sidecar.config.settings import CanaryFlag, ShadowFlag

from ..support import settings

FULL = """
primary: {http: "http://model:8000/", grpc: "model:8001", timeout: 90s, connect_timeout: 250ms, max_connections: 10}
sampling: {header: X-User}
shadows:
  - name: v2
    http: http://v2:8000
    grpc: v2:8001
    fraction: 0.25
    timeout: 1.5
    max_in_flight: 8
    max_body_size: 2MiB
    max_response_size: 256kB
    headers: {set: {X-Shadow: "yes"}, remove: [X-Tenant, X-Corp-Auth-*], keep: [Cookie]}
  - {name: grpc-only, grpc: "v3:8001"}
recording: {dir: /records, inputs: sampled, inputs_fraction: 0.5, max_input_size: 10kB, segment_records: 100,
            segment_seconds: 2m, max_size: 1Gi, queue_records: 5, queue_size: 1MB}
"""


def write(tmp_path: Path, text: str, name: str = "sidecar.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_full_file(tmp_path: Path) -> None:
    config = load(settings(config_file=write(tmp_path, FULL)))
    assert config.primary == PrimaryConfig("http://model:8000", "model:8001", 90.0, 0.25, 10)
    assert config.sampling.header == "x-user"
    assert config.shadows[0] == ShadowConfig(
        "v2", "http://v2:8000", "v2:8001", 0.25, 1.5, 8, 2 * 1024 * 1024, 256_000,
        HeaderRules((("x-shadow", "yes"),), DEFAULT_DENY | {"x-tenant"}, (*DENY_PREFIXES, "x-corp-auth-"),
                    frozenset({"cookie"})))
    assert config.shadows[1] == ShadowConfig("grpc-only", grpc="v3:8001")
    assert config.recording == RecordingConfig(Path("/records"), "sampled", 0.5, 10_000, 100, 120.0, 1024**3, 5,
                                               1_000_000)


def test_json_and_an_empty_file(tmp_path: Path) -> None:
    config = load(settings(config_file=write(tmp_path, '{"shadows": [{"name": "a", "http": "http://a:1"}]}',
                                             "c.json")))
    assert config.shadows == (ShadowConfig("a", "http://a:1"),)
    assert load(settings(config_file=write(tmp_path, ""))) == Config()


def test_shadow_defaults_drop_credentials() -> None:
    shadow = ShadowConfig("s", "http://s")
    dropped = ("authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token", "x-amz-security-token",
               "x-goog-api-key", "x-goog-iam-authorization-token", "x-csrf-token", "x-functions-key", "api-key")
    assert not any(shadow.headers.keeps(name) for name in dropped)
    assert shadow.headers.keeps("x-user-id") and shadow.headers.keeps("content-type")
    assert (shadow.fraction, shadow.max_body_bytes, shadow.max_response_bytes, shadow.timeout_secs) == (
        1.0, 64 * 1024 * 1024, 4 * 1024 * 1024, 10.0)


def test_remove_adds_to_the_defaults_and_keep_exempts_named_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "shadows: [{name: a, http: 'http://a', headers: {remove: [x-secret, x-corp-*], "
                           "keep: [cookie]}}]")
    rules = load(settings(config_file=path)).shadows[0].headers
    assert not rules.keeps("authorization") and not rules.keeps("x-secret") and not rules.keeps("x-corp-token")
    assert rules.keeps("cookie") and rules.keeps("x-corpus")
    empty = write(tmp_path, "shadows: [{name: a, http: 'http://a', headers: {remove: []}}]", "empty.yaml")
    assert load(settings(config_file=empty)).shadows[0].headers == HeaderRules()


def test_allow_list_mode_and_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "shadows: [{name: a, http: 'http://a', headers: {allow: [x-user-id, Cookie]}}]")
    rules = load(settings(config_file=path)).shadows[0].headers
    assert rules.keeps("x-user-id") and rules.keeps("cookie") and rules.keeps("content-type")
    assert not rules.keeps("x-tenant") and not rules.keeps("authorization")
    # the client's trace context goes with every copy; baggage, which may carry user data, does not
    assert rules.keeps("traceparent") and rules.keeps("tracestate") and not rules.keeps("baggage")
    flagged = load(settings(shadows=(ShadowFlag("b", "http://b"),), shadow_headers_remove=("x-tenant", "x-corp-*")))
    rules = flagged.shadows[0].headers
    assert not rules.keeps("x-tenant") and not rules.keeps("x-corp-key") and not rules.keeps("cookie")
    allowed = load(settings(shadows=(ShadowFlag("b", "http://b"),), shadow_headers_allow=("x-user-id",)))
    assert allowed.shadows[0].headers.keeps("x-user-id") and not allowed.shadows[0].headers.keeps("x-other")


@pytest.mark.parametrize("text, message", [
    ("shadows: [{name: a, http: 'http://a', fraction: 1.5}]", "shadows[0].fraction: 1.5 is not a fraction"),
    ("shadows: [{name: a, http: 'http://a', fractoin: 0.5}]", "shadows[0].fractoin: unknown key; did you mean "
                                                             "'fraction'?"),
    ("shadows: [{name: a}]", "give an 'http' URL, a 'grpc' HOST:PORT, or both"),
    ("shadows: [{name: a, http: 'http://a', headers: {allow: [a], remove: [b]}}]", "give it alone"),
    ("shadows: [{name: a, http: 'http://a', headers: {keep: cookie}}]", "'keep' must be a list of header names"),
    ("shadows: [{name: a, http: 'http://a', max_response_size: lots}]", "shadows[0].max_response_size: 'lots' is not"),
    ("shadows: [{name: a, http: 'http://a'}, {name: a, grpc: 'b:1'}]", "used twice"),
    ("shadows: [{name: a, http: 'http://a', timeout: soon}]", "shadows[0].timeout: 'soon' is not a duration"),
    ("shadows: [{name: a, http: 'http://a', headers: {sett: {}}}]", "shadows[0].headers: unknown key 'sett'"),
    ("primary: {http: 'model:8000'}", "primary.http: 'model:8000' is not an http"),
    ("recording: {inputs: some}", "recording.inputs: 'some' is not one of none, sampled, all"),
    ("recording: {max_size: lots}", "recording.max_size: 'lots' is not a size"),
    ("shadow: []", "shadow: unknown key; did you mean 'shadows'?"),
    ("shadows: {a: 1}", "shadows: expected a list"),
    ("[1, 2]", "expected a mapping"),
    ("primary: {http: [unclosed", "not valid YAML"),
])
def test_invalid_files_are_refused_with_a_message_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load(settings(config_file=path))
    assert message in str(error.value)
    assert str(error.value).startswith(str(path))


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load(settings(config_file=tmp_path / "absent.yaml"))


def test_flags_win_and_a_flag_shadow_replaces_the_file_one_of_its_name(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load(settings(config_file=path, primary="http://flag:1", primary_grpc="flag:2",
                           record_dir=Path("/elsewhere"),
                           shadows=(ShadowFlag("v2", "http://flag-v2:8000", 0.5), ShadowFlag("new", "http://n:1"))))
    assert (config.primary.http, config.primary.grpc, config.primary.timeout_secs) == ("http://flag:1", "flag:2",
                                                                                         90.0)
    assert config.recording.dir == Path("/elsewhere")
    assert [s.name for s in config.shadows] == ["grpc-only", "v2", "new"]
    v2 = config.shadow("v2")
    assert v2 is not None and (v2.http, v2.fraction, v2.grpc, v2.max_in_flight) == ("http://flag-v2:8000", 0.5,
                                                                                      "v2:8001", 8)


def test_restart_only_changes_are_named() -> None:
    old = Config()
    new = dataclasses.replace(old, recording=dataclasses.replace(old.recording, dir=Path("/x"), inputs="all"))
    assert restart_only_changes(old, new) == ["recording.dir"]


CANARY = """
shadows: [{name: v2, http: "http://v2:8000"}]
canary:
  http: http://candidate:8000/
  grpc: candidate:8001
  weight: 12.5
  sticky_header: X-User-Id
  timeout: 2s
  copy_fraction: 0.5
  analysis:
    interval: 30s
    step_weight: 5
    max_weight: 40
    min_requests: 50
    failure_limit: 3
    max_error_rate: 0.02
    max_p99_ratio: 2
    p99_slack: 5ms
    max_disagreement: 0.05
    max_mean_abs_diff: null
    compare_shadow: v2
    webhooks: {pre_ramp: "http://ci/gate", rollback: ["http://chat/a", "http://chat/b"], timeout: 1s}
drift: {profile: /etc/ref.json, window: 500, model: classifier, fraction: 0.25}
"""


def test_a_canary_and_live_drift(tmp_path: Path) -> None:
    config = load(settings(config_file=write(tmp_path, CANARY)))
    assert config.canary == CanaryConfig(
        "http://candidate:8000", "candidate:8001", 12.5, "x-user-id", 2.0, copy_fraction=0.5,
        analysis=AnalysisConfig(30.0, 5.0, 40.0, 50, 3, 0.02, 2.0, 0.005, 0.05, None, "v2", ("http://ci/gate",),
                                ("http://chat/a", "http://chat/b"), 1.0))
    assert config.drift == DriftConfig(Path("/etc/ref.json"), 500, "classifier", 0.25)
    assert load(settings(config_file=write(tmp_path, "canary: {grpc: 'c:1'}"))).canary == CanaryConfig(grpc="c:1")


@pytest.mark.parametrize("text, message", [
    ("canary: {weight: 10}", "canary: give an 'http' URL, a 'grpc' HOST:PORT, or both"),
    ("canary: {http: 'http://c', weight: 101}", "canary.weight: 101 is not a percentage"),
    ("canary: {http: 'http://c', wieght: 1}", "canary.wieght: unknown key; did you mean 'weight'?"),
    ("canary: {http: 'http://c', analysis: {step_weight: 60, max_weight: 50}}", "step_weight: 60 is above"),
    ("canary: {http: 'http://c', analysis: {max_weight: 0}}", "canary.analysis.max_weight: 0 must be more than 0"),
    ("canary: {http: 'http://c', analysis: {failure_limit: 0}}", "canary.analysis.failure_limit: 0 must be"),
    ("canary: {http: 'http://c', analysis: {interval: 0}}", "canary.analysis.interval: 0 must be longer"),
    ("canary: {http: 'http://c', analysis: {webhooks: {pre_ramp: ftp://x}}}", "canary.analysis.webhooks.pre_ramp"),
    ("canary: {http: 'http://c', analysis: {compare_shadow: v9}}", "there is no shadow named 'v9'"),
    ("canary: {http: 'http://c', copy_fraction: 0, analysis: {max_disagreement: 0.1}}", "set canary.copy_fraction"),
    ("shadows: [{name: primary, http: 'http://a'}]", "shadows[0].name: 'primary' names the primary"),
    ("shadows: [{name: canary, http: 'http://a'}]", "'canary' names the canary"),
    ("drift: {window: 10}", "drift: give the reference 'profile'"),
    ("drift: {profile: p.json, window: -1}", "drift.window: -1 must be a positive integer"),
])
def test_invalid_canary_and_drift_sections(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(settings(config_file=write(tmp_path, text)))
    assert message in str(error.value)


def test_canary_and_drift_flags_are_laid_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CANARY)
    config = load(settings(config_file=path, canary=CanaryFlag("http://flag:1", 30.0), canary_grpc="flag:2",
                           sticky_header="x-tenant", drift_profile=Path("other.json"), drift_window=9))
    assert config.canary is not None and config.canary.analysis is not None  # the file's analysis stays
    assert (config.canary.http, config.canary.grpc, config.canary.weight, config.canary.sticky_header) == (
        "http://flag:1", "flag:2", 30.0, "x-tenant")
    assert config.drift == DriftConfig(Path("other.json"), 9, "classifier", 0.25)
    without_weight = load(settings(config_file=path, canary=CanaryFlag("http://flag:1")))
    assert without_weight.canary is not None and without_weight.canary.weight == 12.5
    flags_only = load(settings(canary=CanaryFlag("http://c:1", 10.0), drift_profile=Path("p.json")))
    assert flags_only.canary == CanaryConfig("http://c:1", weight=10.0)
    assert flags_only.drift == DriftConfig(Path("p.json"))
    with pytest.raises(ConfigError, match="--drift-window needs a reference profile"):
        load(settings(drift_window=5))
