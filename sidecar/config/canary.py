"""The ``canary`` section of the configuration file: the upstream, its weight and the analysis.

::

    canary:
      http: http://model-candidate:8000
      grpc: model-candidate:8001
      model: models:/classifier@challenger   # what it serves: decisions go to this version in the registry
      weight: 10                 # percent of inference requests, sticky by key
      sticky_header: x-user-id   # the sticky key; else the request id, else random
      timeout: 10s
      copy_fraction: 1.0         # canary-served requests also sent to the primary, to compare answers
      analysis:
        interval: 1m
        step_weight: 10
        max_weight: 50
        min_requests: 50
        failure_limit: 2
        max_error_rate: 0.01
        max_p99_ratio: 1.5       # canary p99 <= ratio x primary p99 + p99_slack
        p99_slack: 10ms
        max_disagreement: 0.05   # top-1 disagreement with the primary
        max_mean_abs_diff: null
        compare_shadow: null     # judge disagreement on this shadow's mirrored pairs instead of copies
        webhooks: {pre_ramp: [http://ci/hook], rollback: [http://chat/hook], timeout: 5s}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model_registry.uris import ModelUri  # pure: the registry's URIs, no MLflow

from .converters import (
    ConfigError,
    fields,
    fraction,
    grpc_target,
    header_name,
    http_url,
    model_uri,
    optional,
    percent,
    positive_duration,
    positive_int,
    positive_number,
    positive_percent,
    url_list,
)


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """The automated analysis: a schedule and thresholds, judged once per interval."""

    interval_secs: float = 60.0
    step_weight: float = 10.0
    max_weight: float = 50.0
    min_requests: int = 20
    failure_limit: int = 2
    max_error_rate: float | None = 0.01
    max_p99_ratio: float | None = 1.5
    p99_slack_secs: float = 0.01
    max_disagreement: float | None = None
    max_mean_abs_diff: float | None = None
    compare_shadow: str | None = None  # None: copies of canary-served requests sent to the primary
    pre_ramp_webhooks: tuple[str, ...] = ()
    rollback_webhooks: tuple[str, ...] = ()
    webhook_timeout_secs: float = 5.0

    @property
    def compares(self) -> bool:
        """Whether a threshold needs predictions compared with the primary's."""
        return self.max_disagreement is not None or self.max_mean_abs_diff is not None


@dataclasses.dataclass(frozen=True)
class CanaryConfig:
    """A canary upstream serving ``weight`` percent of inference requests."""

    http: str | None = None
    grpc: str | None = None
    weight: float = 0.0
    sticky_header: str | None = None  # the sticky key's header (gRPC: metadata key)
    timeout_secs: float = 60.0
    connect_timeout_secs: float = 5.0
    max_connections: int = 1000
    copy_fraction: float = 1.0
    analysis: AnalysisConfig | None = None
    model: ModelUri | None = None  # the registered model it serves: its decisions are written there

    def same_target(self, other: CanaryConfig | None) -> bool:
        """Whether ``other`` is the same canary (the same addresses, the same registered model)."""
        return other is not None and (self.http, self.grpc, self.model) == (other.http, other.grpc, other.model)

    def same_upstream(self, other: CanaryConfig | None) -> bool:
        """Whether ``other`` reaches the canary the same way (its connections can be kept)."""
        return other is not None and (self.http, self.grpc, self.timeout_secs, self.connect_timeout_secs,
                                      self.max_connections) == (other.http, other.grpc, other.timeout_secs,
                                                                other.connect_timeout_secs, other.max_connections)


def _webhooks(value: Any) -> dict[str, Any]:
    return fields(value, "canary.analysis.webhooks",
                  {"pre_ramp": url_list, "rollback": url_list, "timeout": positive_duration},
                  {"pre_ramp": "pre_ramp_webhooks", "rollback": "rollback_webhooks",
                   "timeout": "webhook_timeout_secs"})


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a shadow name")
    return value


_ANALYSIS = {"interval": positive_duration, "step_weight": positive_percent, "max_weight": positive_percent,
             "min_requests": positive_int, "failure_limit": positive_int, "max_error_rate": optional(fraction),
             "max_p99_ratio": optional(positive_number), "p99_slack": positive_duration,
             "max_disagreement": optional(fraction), "max_mean_abs_diff": optional(positive_number),
             "compare_shadow": optional(_name), "webhooks": lambda value: value}
_ANALYSIS_ALIASES = {"interval": "interval_secs", "p99_slack": "p99_slack_secs"}
_CANARY = {"http": optional(http_url), "grpc": optional(grpc_target), "weight": percent,
           "sticky_header": optional(header_name), "timeout": positive_duration, "connect_timeout": positive_duration,
           "max_connections": positive_int, "copy_fraction": fraction, "analysis": lambda value: value,
           "model": model_uri}
_CANARY_ALIASES = {"timeout": "timeout_secs", "connect_timeout": "connect_timeout_secs"}


def analysis_from(data: Any) -> AnalysisConfig | None:
    """Validate ``canary.analysis``; None when absent."""
    if data is None:
        return None
    values = fields(data, "canary.analysis", _ANALYSIS, _ANALYSIS_ALIASES)
    values.update(_webhooks(values.pop("webhooks", None)))
    analysis = AnalysisConfig(**values)
    if analysis.step_weight > analysis.max_weight:
        raise ConfigError(f"canary.analysis.step_weight: {analysis.step_weight:g} is above max_weight "
                          f"{analysis.max_weight:g}")
    return analysis


def canary_from(data: Any) -> CanaryConfig | None:
    """Validate the ``canary`` section; None when absent."""
    if data is None:
        return None
    values = fields(data, "canary", _CANARY, _CANARY_ALIASES)
    values["analysis"] = analysis_from(values.get("analysis"))
    return CanaryConfig(**values)


def check(canary: CanaryConfig, shadows: tuple[str, ...]) -> None:
    """What no single key shows, once the flags are laid over the file (``--canary`` may give the upstream):
    an upstream is given; ``compare_shadow`` names a shadow; a disagreement threshold has answers to compare."""
    if canary.http is None and canary.grpc is None:
        raise ConfigError("canary: give an 'http' URL, a 'grpc' HOST:PORT, or both (or --canary, --canary-grpc)")
    analysis = canary.analysis
    if analysis is None:
        return
    if analysis.compare_shadow is not None and analysis.compare_shadow not in shadows:
        raise ConfigError(f"canary.analysis.compare_shadow: there is no shadow named {analysis.compare_shadow!r} "
                          f"(shadows: {', '.join(shadows) or 'none'})")
    if analysis.compares and analysis.compare_shadow is None and canary.copy_fraction == 0:
        raise ConfigError("canary.analysis: max_disagreement and max_mean_abs_diff need answers to compare: "
                          "set canary.copy_fraction above 0, or analysis.compare_shadow to a shadow running the "
                          "canary's model")
