"""The canary's weight, phase, decisions, analysis intervals and webhook calls.

On a registry that is passed in (one per sidecar, never global); the series names are
the sidecar's public interface (docs/sidecar.md), so they do not change with the layout.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CanaryMetrics:
    """Series on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.canary_weight = Gauge("sidecar_canary_weight", "Percent of inference requests routed to the canary",
                                   registry=r)
        self.canary_phase = Gauge("sidecar_canary_phase", "1 for the canary's current phase: off, idle, manual, "
                                  "progressing, ready (to promote), rolled_back, promoted", ["phase"], registry=r)
        self.canary_changes = Counter("sidecar_canary_changes", "Canary decisions and weight changes, by source "
                                      "(analysis, admin, config) and action (ramp, ready, hold, wait, rollback, "
                                      "set, promote)", ["source", "action"], registry=r)
        self.canary_rollbacks = Counter("sidecar_canary_rollbacks", "Canary rollbacks, by source (analysis or admin)",
                                        ["source"], registry=r)
        self.canary_promotions = Counter("sidecar_canary_promotions", "Canary promotions (100% to the canary)",
                                         registry=r)
        self.canary_intervals = Counter("sidecar_canary_analysis_intervals", "Analysis intervals judged, by verdict "
                                        "(pass, fail, inconclusive)", ["verdict"], registry=r)
        self.canary_last_interval = Gauge("sidecar_canary_last_interval", "What the last analysis interval measured: "
                                          "canary_requests, error_rate, canary_p99_seconds, primary_p99_seconds, "
                                          "disagreement, mean_abs_diff", ["measure"], registry=r)
        self.canary_webhooks = Counter("sidecar_canary_webhook_calls", "Webhook calls, by hook (pre_ramp, rollback) "
                                       "and result (ok, refused, error)", ["hook", "result"], registry=r)


class RegistryMetrics:
    """The sidecar's calls to the model registry (`sidecar.canary.registry`), on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.registry_writes = Counter("sidecar_registry_writes", "Canary decisions written to the model registry "
                                       "(audit entry and version tags), by outcome: written, failed (the registry "
                                       "was down or answered an error), dropped (the queue was full, or the "
                                       "sidecar stopped first)", ["outcome"], registry=r)
        self.registry_resolutions = Counter("sidecar_registry_resolutions", "Model URIs of the canary and shadows "
                                            "resolved to a version, by outcome: resolved, failed, dropped",
                                            ["outcome"], registry=r)
        self.registry_queued = Gauge("sidecar_registry_queued", "Registry calls waiting for the worker thread",
                                     registry=r)
