"""Values of the configuration file and the flags: durations, sizes, fractions, URLs, and keyed sections.

Each converter takes what YAML or JSON parsed (or a flag's text) and returns the typed value,
or raises `ValueError` with a message that says what is allowed; `fields` converts a mapping
key by key and names the field in a `ConfigError`::

    >>> duration("250ms"), size("64MiB"), percent(12.5)
    (0.25, 67108864, 12.5)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any

# Pure (no MLflow): the URIs a shadow or the canary may be named by.
from model_registry.errors import RegistryError
from model_registry.uris import ModelUri, parse_model_uri

KiB, MiB, GiB = 1024, 1024**2, 1024**3
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "ki": KiB, "kib": KiB, "mi": MiB, "mib": MiB, "gi": GiB, "gib": GiB}
_DURATIONS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field and says what is allowed."""


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
    """A number from 0 to 1."""
    number = _number(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise ValueError(f"{value!r} is not a fraction: use a number from 0 to 1")
    return number


def percent(value: Any) -> float:
    """A percentage from 0 to 100; fractions of a percent are allowed."""
    number = _number(value)
    if number is None or not 0.0 <= number <= 100.0:
        raise ValueError(f"{value!r} is not a percentage: use a number from 0 to 100 (12.5 is allowed)")
    return number


def positive_percent(value: Any) -> float:
    """A percentage above 0, up to 100."""
    number = percent(value)
    if number == 0:
        raise ValueError(f"{value!r} must be more than 0")
    return number


def positive_number(value: Any) -> float:
    """A number above 0."""
    number = _number(value)
    if number is None or not number > 0:
        raise ValueError(f"{value!r} must be a number above 0")
    return number


def positive_int(value: Any) -> int:
    """An integer above 0."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{value!r} must be a positive integer")
    return value


def positive_duration(value: Any) -> float:
    """A duration longer than 0."""
    seconds = duration(value)
    if seconds == 0:
        raise ValueError(f"{value!r} must be longer than 0")
    return seconds


def http_url(value: Any) -> str:
    """An ``http://`` or ``https://`` URL, without a trailing slash."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def url_list(value: Any) -> tuple[str, ...]:
    """One URL or a list of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"{value!r} is not a URL or a list of URLs")
    return tuple(http_url(item) for item in items)


def host_port(value: Any, default_host: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` (``default_host``) or ``[V6]:PORT``; port 0 picks a free port."""
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (port 0..65535; 0 picks a free port)")
    return host.strip("[]") or default_host, int(port)


def model_uri(value: Any) -> ModelUri:
    """A registered model: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a model URI: write models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        return parse_model_uri(value.strip())
    except RegistryError as exc:
        raise ValueError(str(exc)) from None


def grpc_target(value: Any) -> str:
    """``HOST:PORT`` of a gRPC server."""
    host_port(value, default_host="127.0.0.1")
    return value


def optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert``, letting null through as None."""
    return lambda value: None if value is None else convert(value)


def header_name(value: Any) -> str:
    """An HTTP header (or gRPC metadata) name, in lower case."""
    if not isinstance(value, str) or not _HEADER.match(value):
        raise ValueError(f"{value!r} is not a header name")
    return value.lower()


def fields(data: Any, path: str, converters: Mapping[str, Callable[[Any], Any]],
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
