"""Reloads of the configuration file.

On a registry that is passed in (one per sidecar, never global); the series names are
the sidecar's public interface (docs/sidecar.md), so they do not change with the layout.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ConfigMetrics:
    """Series on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.config_reloads = Counter("sidecar_config_reloads", "Configuration file reloads, by result "
                                      "(applied or rejected)", ["result"], registry=r)
        self.config_last_reload = Gauge("sidecar_config_last_reload_success_timestamp_seconds",
                                        "When the configuration was last applied", registry=r)
