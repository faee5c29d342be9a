"""The run-time configuration: upstreams, shadows, sampling and recording, as typed frozen objects.

It comes from the ``--config`` file (YAML or JSON; re-read when it changes), with the
start-up flags laid over it. A file that does not parse or validate raises
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
        headers: {set: {x-shadow: "true"}, remove: [authorization, cookie]}
    recording: {dir: /records, inputs: sampled, inputs_fraction: 0.1, max_input_size: 1MiB}
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .settings import Settings, parse_address

KiB, MiB, GiB = 1024, 1024**2, 1024**3
INPUT_MODES = ("none", "sampled", "all")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field and says what is allowed."""


@dataclasses.dataclass(frozen=True)
class HeaderRules:
    """Header changes for mirrored copies: names in ``remove`` are lower case."""

    set: tuple[tuple[str, str], ...] = ()
    remove: frozenset[str] = frozenset({"authorization"})


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
    max_body_bytes: int = 64 * MiB
    headers: HeaderRules = HeaderRules()


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
class Config:
    """The whole run-time configuration."""

    primary: PrimaryConfig = PrimaryConfig()
    shadows: tuple[ShadowConfig, ...] = ()
    sampling: SamplingConfig = SamplingConfig()
    recording: RecordingConfig = RecordingConfig()

    def shadow(self, name: str) -> ShadowConfig | None:
        return next((shadow for shadow in self.shadows if shadow.name == name), None)


# -- values ----------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "ki": KiB, "kib": KiB, "mi": MiB, "mib": MiB, "gi": GiB, "gib": GiB}
_DURATIONS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def duration(value: Any) -> float:
    """Seconds, as a number or a string with a unit: ``1.5``, ``"250ms"``, ``"5s"``, ``"2m"``."""
    number = _number(value)
    if number is None and isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", value)
        if match:
            number = float(match.group(1)) * _DURATIONS[match.group(2) or "s"]
    if number is None or number < 0:
        raise ValueError(f"{value!r} is not a duration: give seconds (5, 0.25) or a string like 250ms, 5s, 2m")
    return number


def size(value: Any) -> int:
    """Bytes, as an integer or a string with a unit: ``"64MiB"``, ``"1Gi"``, ``"500kB"``."""
    number = _number(value)
    if number is None and isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if match and match.group(2).lower() in _UNITS:
            number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if number is None or number < 0 or number != int(number):
        raise ValueError(f"{value!r} is not a size: give bytes (1048576) or a string like 64MiB, 1GiB, 500kB")
    return int(number)


def fraction(value: Any) -> float:
    number = _number(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise ValueError(f"{value!r} is not a fraction: use a number from 0 to 1")
    return number


def positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{value!r} must be a positive integer")
    return value


def positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds == 0:
        raise ValueError(f"{value!r} must be longer than 0")
    return seconds


def http_url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def grpc_target(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not HOST:PORT")
    try:
        parse_address(value, default_host="127.0.0.1")
    except Exception:  # noqa: BLE001 - argparse's error type; the message below says it all
        raise ValueError(f"{value!r} is not HOST:PORT") from None
    return value


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def header_name(value: Any) -> str:
    if not isinstance(value, str) or not _HEADER.match(value):
        raise ValueError(f"{value!r} is not a header name")
    return value.lower()


def input_mode(value: Any) -> str:
    if value not in INPUT_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(INPUT_MODES)}")
    return str(value)


def header_rules(value: Any) -> HeaderRules:
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping with 'set' (name: value) and/or 'remove' (a list of names)")
    unknown = sorted(set(value) - {"set", "remove"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; use 'set' and 'remove'")
    fields = dict(value)
    pairs = fields.get("set") or {}
    if not isinstance(pairs, Mapping):
        raise ValueError("'set' must map header names to values")
    remove = fields.get("remove", sorted(HeaderRules().remove))
    if not isinstance(remove, list):
        raise ValueError("'remove' must be a list of header names")
    return HeaderRules(tuple((header_name(k), str(v)) for k, v in pairs.items()),
                       frozenset(header_name(name) for name in remove))


def _fields(data: Any, path: str, converters: Mapping[str, Callable[[Any], Any]],
            aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Convert each key of a mapping; unknown keys are errors, with a suggestion."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'the file'}: expected a mapping of keys to values, got {type(data).__name__}")
    aliases = aliases or {}
    out: dict[str, Any] = {}
    for key, raw in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in converters:
            close = difflib.get_close_matches(str(key), list(converters), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(converters)}"
            raise ConfigError(f"{where}: unknown key{hint}")
        try:
            out[aliases.get(key, key)] = converters[key](raw)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return out


# -- sections --------------------------------------------------------------------------------

_PRIMARY = {"http": http_url, "grpc": optional(grpc_target), "timeout": positive_duration,
            "connect_timeout": positive_duration, "max_connections": positive_int}
_SHADOW: dict[str, Callable[[Any], Any]] = {"name": str, "http": optional(http_url), "grpc": optional(grpc_target), "fraction": fraction,
           "timeout": positive_duration, "max_in_flight": positive_int, "max_body_size": size,
           "headers": header_rules}
_RECORDING = {"dir": optional(Path), "inputs": input_mode, "inputs_fraction": fraction, "max_input_size": size,
              "segment_records": positive_int, "segment_seconds": positive_duration, "max_size": size,
              "queue_records": positive_int, "queue_size": size}
_ALIASES = {"timeout": "timeout_secs", "connect_timeout": "connect_timeout_secs", "max_body_size": "max_body_bytes",
            "max_input_size": "max_input_bytes", "segment_seconds": "segment_secs", "max_size": "max_bytes",
            "queue_size": "queue_bytes"}
_TOP = ("primary", "shadows", "sampling", "recording")


def _shadows(data: Any) -> list[ShadowConfig]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError("shadows: expected a list of shadows, each with a name and an http and/or grpc upstream")
    shadows: list[ShadowConfig] = []
    for index, item in enumerate(data):
        path = f"shadows[{index}]"
        fields = _fields(item, path, _SHADOW, _ALIASES)
        name = fields.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{path}.name: give each shadow a name of letters, digits, '.', '_' or '-'")
        if fields.get("http") is None and fields.get("grpc") is None:
            raise ConfigError(f"{path} ({name}): give an 'http' URL, a 'grpc' HOST:PORT, or both")
        if any(shadow.name == name for shadow in shadows):
            raise ConfigError(f"{path}: the name {name!r} is used twice; shadow names must be distinct")
        shadows.append(ShadowConfig(**fields))
    return shadows


def from_mapping(data: Any) -> Config:
    """Validate a parsed file (a mapping, or None for an empty file) into a `Config`."""
    top = _fields(data, "", {key: lambda value: value for key in _TOP})
    sampling = _fields(top.get("sampling"), "sampling", {"header": header_name})
    return Config(
        primary=PrimaryConfig(**_fields(top.get("primary"), "primary", _PRIMARY, _ALIASES)),
        shadows=tuple(_shadows(top.get("shadows"))),
        sampling=SamplingConfig(**sampling),
        recording=RecordingConfig(**_fields(top.get("recording"), "recording", _RECORDING, _ALIASES)),
    )


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


def with_overrides(config: Config, settings: Settings) -> Config:
    """Lay the start-up flags over a configuration: flags win, ``--shadow`` replaces a same-named shadow."""
    primary = config.primary
    if settings.primary is not None:
        primary = dataclasses.replace(primary, http=settings.primary)
    if settings.primary_grpc is not None:
        primary = dataclasses.replace(primary, grpc=settings.primary_grpc)
    recording = config.recording
    if settings.record_dir is not None:
        recording = dataclasses.replace(recording, dir=settings.record_dir)
    flagged = {flag.name: flag for flag in settings.shadows}
    shadows = [shadow for shadow in config.shadows if shadow.name not in flagged]
    for flag in settings.shadows:
        base = config.shadow(flag.name) or ShadowConfig(flag.name)
        shadows.append(dataclasses.replace(base, http=flag.url, fraction=flag.fraction))
    return Config(primary=primary, shadows=tuple(shadows), sampling=config.sampling, recording=recording)


def load(settings: Settings, data: bytes | None = None) -> Config:
    """The configuration in force: the ``--config`` file (or its ``data``, if given) with the flags laid over it."""
    path = settings.config_file
    if path is None:
        return with_overrides(Config(), settings)
    try:
        parsed = read_file(path) if data is None else parse_text(path, data)
        return with_overrides(from_mapping(parsed), settings)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None


RESTART_ONLY = ("dir", "segment_records", "segment_secs", "max_bytes", "queue_records", "queue_bytes")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Recording settings that a reload cannot change (the recorder keeps the old ones)."""
    return [f"recording.{name}" for name in RESTART_ONLY
            if getattr(old.recording, name) != getattr(new.recording, name)]
