"""The configuration in force: the ``--config`` file with the start-up flags laid over it.

Flags win over the file; a ``--shadow`` replaces the file's shadow of the same name.
"""

from __future__ import annotations

import dataclasses

from .canary import CanaryConfig, check
from .converters import ConfigError
from .file import Config, DriftConfig, ShadowConfig, from_mapping, parse_text, read_file
from .settings import CanaryFlag, Settings

__all__ = ["load", "with_overrides"]


def _canary(config: CanaryConfig | None, settings: Settings) -> CanaryConfig | None:
    flag: CanaryFlag | None = settings.canary
    if flag is None and settings.canary_grpc is None and settings.sticky_header is None:
        return config
    canary = config or CanaryConfig()
    if flag is not None:
        canary = dataclasses.replace(canary, http=flag.url)
        if flag.weight is not None:
            canary = dataclasses.replace(canary, weight=flag.weight)
    if settings.canary_grpc is not None:
        canary = dataclasses.replace(canary, grpc=settings.canary_grpc)
    if settings.sticky_header is not None:
        canary = dataclasses.replace(canary, sticky_header=settings.sticky_header)
    return canary


def _drift_overrides(config: DriftConfig | None, settings: Settings) -> DriftConfig | None:
    drift = config
    if settings.drift_profile is not None:
        drift = dataclasses.replace(drift, profile=settings.drift_profile) if drift else DriftConfig(
            settings.drift_profile)
    if settings.drift_window is not None:
        if drift is None:
            raise ConfigError("--drift-window needs a reference profile: give --drift-profile or drift.profile")
        drift = dataclasses.replace(drift, window=settings.drift_window)
    return drift


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
    if settings.shadow_headers_remove or settings.shadow_headers_allow is not None:
        shadows = [dataclasses.replace(shadow, headers=shadow.headers.adding(
            settings.shadow_headers_remove, settings.shadow_headers_allow)) for shadow in shadows]
    canary = _canary(config.canary, settings)
    if canary is not None:
        check(canary, tuple(shadow.name for shadow in shadows))
    return Config(primary=primary, shadows=tuple(shadows), sampling=config.sampling, recording=recording,
                  canary=canary, drift=_drift_overrides(config.drift, settings))


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


