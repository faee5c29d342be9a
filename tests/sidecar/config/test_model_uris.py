"""Shadows and the canary named by registered model (models:/NAME@ALIAS), and --registry-uri."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from model_registry.uris import ModelUri
from sidecar.config.file import ConfigError, from_mapping
from sidecar.config.overrides import load
from sidecar.config.settings import Settings, parse

CHALLENGER = ModelUri("classifier", alias="challenger")


def _config(text: str) -> object:
    return yaml.safe_load(text)


def test_a_shadow_named_by_its_alias_and_a_canary_by_its_model() -> None:
    config = from_mapping(_config("""
        shadows:
          - {model: "models:/classifier@challenger", http: "http://challenger:8000"}
          - {model: "models:/classifier/3", http: "http://v3:8000"}
          - {name: pinned, model: " models:/classifier/2 ", grpc: "v2:8001"}
        canary: {http: "http://challenger:8000", model: "models:/classifier@challenger", weight: 5}
    """))
    assert [(s.name, s.model) for s in config.shadows] == [
        ("challenger", CHALLENGER), ("v3", ModelUri("classifier", version=3)),
        ("pinned", ModelUri("classifier", version=2))]
    assert config.canary is not None and config.canary.model == CHALLENGER
    # each model once, the canary's first: what the sidecar resolves through the registry
    assert config.models() == (CHALLENGER, ModelUri("classifier", version=3), ModelUri("classifier", version=2))


def test_without_models_the_registry_is_never_needed() -> None:
    config = from_mapping(_config("shadows: [{name: v2, http: 'http://v2:8000'}]\ncanary: {http: 'http://c:8000'}"))
    assert config.models() == () and config.shadows[0].model is None
    assert config.canary is not None and config.canary.model is None


@pytest.mark.parametrize(("text", "message"), [
    ("shadows: [{model: 'classifier@challenger', http: 'http://x:1'}]",
     "shadows[0].model: 'classifier@challenger' is not a model URI"),
    ("shadows: [{model: 'models:/classifier', http: 'http://x:1'}]",
     "shadows[0].model: 'models:/classifier' names no version or alias"),
    ("shadows: [{model: 'models:/classifier@latest', http: 'http://x:1'}]",
     "shadows[0].model: alias 'latest' is not valid"),
    ("shadows: [{model: 'models:/classifier/0', http: 'http://x:1'}]",
     "shadows[0].model: version '0' is not valid"),
    ("shadows: [{model: 7, http: 'http://x:1'}]", "shadows[0].model: 7 is not a model URI"),
    ("shadows: [{model: 'models:/m@canary', http: 'http://x:1'}]",
     "shadows[0].name: 'canary' names the canary in the records"),
    ("shadows: [{http: 'http://x:1'}]", "shadows[0].name: give each shadow a name"),
    ("canary: {http: 'http://x:1', model: 'models:/@challenger'}", "canary.model: model name '' is not valid"),
])
def test_a_bad_model_uri_is_a_config_error_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        from_mapping(_config(text))
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)


def test_a_flag_shadow_keeps_the_model_of_the_file_shadow_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("shadows: [{model: 'models:/classifier@challenger', http: 'http://old:8000'}]\n")
    config = load(parse(["--config", str(path), "--shadow", "challenger=http://new:8000@0.5"], environ={}))
    (shadow,) = config.shadows
    assert (shadow.name, shadow.http, shadow.fraction, shadow.model) == ("challenger", "http://new:8000", 0.5,
                                                                         CHALLENGER)


def test_registry_flags_and_environment() -> None:
    assert Settings().registry_uri is None and Settings().registry_flush_secs == 5.0
    flagged = parse(["--registry-uri", "http://mlflow:5000", "--registry-flush-secs", "1.5"], environ={})
    assert (flagged.registry_uri, flagged.registry_flush_secs) == ("http://mlflow:5000", 1.5)
    env = {"SIDECAR_REGISTRY_URI": "sqlite:////var/registry.db", "SIDECAR_REGISTRY_FLUSH_SECS": "0"}
    assert parse([], environ=env).registry_uri == "sqlite:////var/registry.db"
    assert parse([], environ=env).registry_flush_secs == 0.0
    assert parse(["--registry-uri", "http://flag:5000"], environ=env).registry_uri == "http://flag:5000"
