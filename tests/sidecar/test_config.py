"""The configuration file: parsing, validation messages, and flags laid over it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sidecar.config import (Config, ConfigError, HeaderRules, PrimaryConfig, RecordingConfig, ShadowConfig, load,
                            restart_only_changes)
from sidecar.settings import ShadowFlag

from .support import settings

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
    headers: {set: {X-Shadow: "yes"}, remove: [Authorization, Cookie]}
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
        "v2", "http://v2:8000", "v2:8001", 0.25, 1.5, 8, 2 * 1024 * 1024,
        HeaderRules((("x-shadow", "yes"),), frozenset({"authorization", "cookie"})))
    assert config.shadows[1] == ShadowConfig("grpc-only", grpc="v3:8001")
    assert config.recording == RecordingConfig(Path("/records"), "sampled", 0.5, 10_000, 100, 120.0, 1024**3, 5,
                                               1_000_000)


def test_json_and_an_empty_file(tmp_path: Path) -> None:
    config = load(settings(config_file=write(tmp_path, '{"shadows": [{"name": "a", "http": "http://a:1"}]}',
                                             "c.json")))
    assert config.shadows == (ShadowConfig("a", "http://a:1"),)
    assert load(settings(config_file=write(tmp_path, ""))) == Config()


def test_shadow_defaults_drop_authorization() -> None:
    shadow = ShadowConfig("s", "http://s")
    assert shadow.headers.remove == frozenset({"authorization"})
    assert (shadow.fraction, shadow.max_body_bytes, shadow.timeout_secs) == (1.0, 64 * 1024 * 1024, 10.0)


def test_an_empty_remove_list_keeps_every_header(tmp_path: Path) -> None:
    path = write(tmp_path, "shadows: [{name: a, http: 'http://a', headers: {remove: []}}]")
    assert load(settings(config_file=path)).shadows[0].headers.remove == frozenset()


@pytest.mark.parametrize("text, message", [
    ("shadows: [{name: a, http: 'http://a', fraction: 1.5}]", "shadows[0].fraction: 1.5 is not a fraction"),
    ("shadows: [{name: a, http: 'http://a', fractoin: 0.5}]", "shadows[0].fractoin: unknown key; did you mean "
                                                             "'fraction'?"),
    ("shadows: [{name: a}]", "give an 'http' URL, a 'grpc' HOST:PORT, or both"),
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
