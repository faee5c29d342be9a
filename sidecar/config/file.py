"""The run-time configuration: upstreams, shadows, canary, sampling, recording and live drift, as typed objects.

It comes from the ``--config`` file (YAML or JSON; re-read when it changes), with the
start-up flags laid over it (`sidecar.config.overrides`). A file that does not parse or validate raises
`ConfigError` with a message naming the field, so the caller can keep the last good
configuration::

    primary: {http: http://127.0.0.1:8000, grpc: 127.0.0.1:8001, timeout: 60s}
    sampling: {header: x-request-id}
    shadows:
      - name: v2
        http: http://classifier-v2:8000
        grpc: classifier-v2:8001
        fraction: 0.25
        timeout: 5s
        max_in_flight: 64
        max_body_size: 64MiB
        max_response_size: 4MiB
        headers: {set: {x-shadow: "true"}, remove: [x-tenant-secret, x-corp-auth-*]}
      - model: models:/classifier@challenger   # the registered model it serves; the name defaults to the alias
        http: http://classifier-challenger:8000
    recording: {dir: /records, inputs: sampled, inputs_fraction: 0.1, max_input_size: 1MiB}
    canary: {http: http://classifier-v2:8000, grpc: classifier-v2:8001, weight: 10, sticky_header: x-user-id}
    drift: {profile: /etc/shadowserve/reference.json, window: 10000}

The ``canary`` section (its analysis included) is described in `sidecar.config.canary`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from model_registry.uris import ModelUri  # pure: the registry's URIs, no MLflow

from .canary import AnalysisConfig, CanaryConfig, canary_from
from .converters import (
    ConfigError,
    GiB,
    MiB,
    fields,
    fraction,
    grpc_target,
    header_name,
    http_url,
    model_uri,
    optional,
    positive_duration,
    positive_int,
    size,
)
from .headers import HeaderRules, header_rules

__all__ = ["AnalysisConfig", "CanaryConfig", "Config", "ConfigError", "DriftConfig", "HeaderRules", "PrimaryConfig",
           "RecordingConfig", "SamplingConfig", "ShadowConfig", "from_mapping", "restart_only_changes"]

INPUT_MODES = ("none", "sampled", "all")
RESERVED = ("primary", "canary")  # upstream names of the records; no shadow may take them
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclasses.dataclass(frozen=True)
class PrimaryConfig:
    http: str = "http://127.0.0.1:8000"
    grpc: str | None = "127.0.0.1:8001"
    timeout_secs: float = 60.0
    connect_timeout_secs: float = 5.0
    max_connections: int = 1000


@dataclasses.dataclass(frozen=True)
class ShadowConfig:
    name: str
    http: str | None = None
    grpc: str | None = None
    fraction: float = 1.0
    timeout_secs: float = 10.0
    max_in_flight: int = 64
    max_body_bytes: int = 64 * MiB  # a request body copied to the shadow
    max_response_bytes: int = 4 * MiB  # a shadow's answer: read up to this, then the copy fails
    headers: HeaderRules = HeaderRules()
    model: ModelUri | None = None  # the registered model it serves (models:/NAME@ALIAS), if named


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    header: str = "x-request-id"  # hashed to decide sampling; else the v2 request id


@dataclasses.dataclass(frozen=True)
class RecordingConfig:
    dir: Path | None = None
    inputs: str = "none"  # none, sampled or all
    inputs_fraction: float = 0.01  # with inputs: sampled
    max_input_bytes: int = 1 * MiB
    segment_records: int = 10_000
    segment_secs: float = 60.0
    max_bytes: int = 1 * GiB  # disk quota of the directory; the oldest segments go first
    queue_records: int = 10_000
    queue_bytes: int = 256 * MiB


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """Live drift: a reference profile (built by ``shadowserve-drift profile``) and the window it is compared with."""

    profile: Path
    window: int = 10_000  # predictions per column, per model and upstream
    model: str | None = None  # None: the profile's own model, else every model
    fraction: float = 1.0  # share of inference requests whose answers are observed


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run-time configuration."""

    primary: PrimaryConfig = PrimaryConfig()
    shadows: tuple[ShadowConfig, ...] = ()
    sampling: SamplingConfig = SamplingConfig()
    recording: RecordingConfig = RecordingConfig()
    canary: CanaryConfig | None = None
    drift: DriftConfig | None = None

    def shadow(self, name: str) -> ShadowConfig | None:
        return next((shadow for shadow in self.shadows if shadow.name == name), None)

    def models(self) -> tuple[ModelUri, ...]:
        """The registered models the canary and the shadows are named by (the registry is opened for them)."""
        named = [self.canary.model] if self.canary is not None and self.canary.model is not None else []
        named += [shadow.model for shadow in self.shadows if shadow.model is not None]
        return tuple(dict.fromkeys(named))


# -- values ----------------------------------------------------------------------------------

def input_mode(value: Any) -> str:
    if value not in INPUT_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(INPUT_MODES)}")
    return str(value)


# -- sections --------------------------------------------------------------------------------

_PRIMARY = {"http": http_url, "grpc": optional(grpc_target), "timeout": positive_duration,
            "connect_timeout": positive_duration, "max_connections": positive_int}
_SHADOW: dict[str, Callable[[Any], Any]] = {
    "name": str, "http": optional(http_url), "grpc": optional(grpc_target), "fraction": fraction,
    "timeout": positive_duration, "max_in_flight": positive_int, "max_body_size": size,
    "max_response_size": size, "headers": header_rules, "model": model_uri}
_RECORDING = {"dir": optional(Path), "inputs": input_mode, "inputs_fraction": fraction, "max_input_size": size,
              "segment_records": positive_int, "segment_seconds": positive_duration, "max_size": size,
              "queue_records": positive_int, "queue_size": size}
_ALIASES = {"timeout": "timeout_secs", "connect_timeout": "connect_timeout_secs", "max_body_size": "max_body_bytes",
            "max_response_size": "max_response_bytes",
            "max_input_size": "max_input_bytes", "segment_seconds": "segment_secs", "max_size": "max_bytes",
            "queue_size": "queue_bytes"}
_DRIFT: dict[str, Callable[[Any], Any]] = {"profile": Path, "window": positive_int, "model": optional(str),
                                           "fraction": fraction}
_TOP = ("primary", "shadows", "sampling", "recording", "canary", "drift")


def _shadows(data: Any) -> list[ShadowConfig]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError("shadows: expected a list of shadows, each with a name and an http and/or grpc upstream")
    shadows: list[ShadowConfig] = []
    for index, item in enumerate(data):
        path = f"shadows[{index}]"
        values = fields(item, path, _SHADOW, _ALIASES)
        if "name" not in values and values.get("model") is not None:
            model = values["model"]  # named by its alias (challenger), or v3 for a fixed version
            values["name"] = model.alias if model.alias is not None else f"v{model.version}"
        name = values.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{path}.name: give each shadow a name of letters, digits, '.', '_' or '-' "
                              "(or a model: models:/NAME@ALIAS, which names it by its alias)")
        if name in RESERVED:
            raise ConfigError(f"{path}.name: {name!r} names the {name} in the records; give the shadow another name")
        if values.get("http") is None and values.get("grpc") is None:
            raise ConfigError(f"{path} ({name}): give an 'http' URL, a 'grpc' HOST:PORT, or both")
        if any(shadow.name == name for shadow in shadows):
            raise ConfigError(f"{path}: the name {name!r} is used twice; shadow names must be distinct")
        shadows.append(ShadowConfig(**values))
    return shadows


def from_mapping(data: Any) -> Config:
    """Validate a parsed file (a mapping, or None for an empty file) into a `Config`."""
    top = fields(data, "", {key: lambda value: value for key in _TOP})
    sampling = fields(top.get("sampling"), "sampling", {"header": header_name})
    return Config(
        primary=PrimaryConfig(**fields(top.get("primary"), "primary", _PRIMARY, _ALIASES)),
        shadows=tuple(_shadows(top.get("shadows"))),
        sampling=SamplingConfig(**sampling),
        recording=RecordingConfig(**fields(top.get("recording"), "recording", _RECORDING, _ALIASES)),
        canary=canary_from(top.get("canary")),
        drift=_drift(top.get("drift")),
    )


def _drift(data: Any) -> DriftConfig | None:
    if data is None:
        return None
    values = fields(data, "drift", _DRIFT)
    if "profile" not in values:
        raise ConfigError("drift: give the reference 'profile' (a file written by shadowserve-drift profile)")
    return DriftConfig(**values)


def read_file(path: Path) -> Any:
    """Parse a YAML or JSON file (by its suffix; YAML otherwise, which reads JSON too)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return parse_text(path, data)


def parse_text(path: Path, data: bytes) -> Any:
    """Parse the bytes of a configuration file; ``path`` names it and its suffix picks the format."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text) if text.strip() else None
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") \
            from None


RESTART_ONLY = ("dir", "segment_records", "segment_secs", "max_bytes", "queue_records", "queue_bytes")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Recording settings that a reload cannot change (the recorder keeps the old ones)."""
    return [f"recording.{name}" for name in RESTART_ONLY
            if getattr(old.recording, name) != getattr(new.recording, name)]
