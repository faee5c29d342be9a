"""The sidecar's own metrics, on a registry that is passed in (one per sidecar, never global).

Label values are bounded: upstreams and shadows come from the configuration, models and
outputs from the model servers, status codes from HTTP and gRPC.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets in seconds, fine at the low end where a proxy hop lives.
HOP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0)


class Metrics:
    """Every series the sidecar exports; ``registry`` is what /metrics serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("sidecar_requests", "Requests proxied, by upstream, protocol and status code "
                                "(HTTP status, or the gRPC status name)", ["upstream", "protocol", "code"],
                                registry=r)
        self.request_duration = Histogram("sidecar_request_duration_seconds",
                                          "Time from receiving a request to answering it", ["protocol"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.hop_duration = Histogram("sidecar_hop_duration_seconds",
                                      "Time the sidecar adds to a request: the whole request less the upstream's "
                                      "part", ["protocol"], buckets=HOP_BUCKETS, registry=r)
        self.client_connections = Gauge("sidecar_client_connections", "Client connections open, by listener (http, "
                                        "metrics, admin)", ["listener"], registry=r)
        self.client_connections_refused = Counter("sidecar_client_connections_refused", "Client connections "
                                                  "answered 503 and closed at once: the listener had its "
                                                  "--max-connections open", ["listener"], registry=r)
        self.client_timeouts = Counter("sidecar_client_timeouts", "Client connections closed because the request "
                                       "head (header) or body (body) did not arrive in time", ["listener", "part"],
                                       registry=r)
        self.shadow_sends = Counter("sidecar_shadow_requests", "Copies sent to a shadow", ["shadow", "protocol"],
                                    registry=r)
        self.shadow_successes = Counter("sidecar_shadow_successes", "Shadow answers with status 200 / OK (the body "
                                        "is checked later: see invalid_response errors)",
                                        ["shadow"], registry=r)
        self.shadow_errors = Counter("sidecar_shadow_errors", "Shadow answers that failed, by reason: status (an "
                                     "error status), connection (refused, reset, not HTTP/1.1 or malformed), "
                                     "too_large (an answer over max_response_size), memory_budget (no room left in "
                                     "--shadow-memory-budget-bytes while it was read), invalid_response (a 200 whose "
                                     "body is not a v2 response, counted when decoded)", ["shadow", "reason"],
                                     registry=r)
        self.shadow_timeouts = Counter("sidecar_shadow_timeouts", "Shadow requests past the shadow's timeout",
                                       ["shadow"], registry=r)
        self.shadow_drops = Counter("sidecar_shadow_dropped", "Copies not sent because the shadow had "
                                    "max_in_flight requests pending", ["shadow"], registry=r)
        self.shadow_skipped = Counter("sidecar_shadow_skipped", "Sampled copies not sent, by reason: too_large "
                                      "(over max_body_size), streamed (a body of unknown length), no_upstream (no "
                                      "upstream for the protocol), unreachable (resting after failures in a row: "
                                      "refused, timed out, too large), memory_budget (no room in "
                                      "--shadow-memory-budget-bytes for the body), stopping", ["shadow", "reason"],
                                      registry=r)
        self.shadow_cancelled = Counter("sidecar_shadow_cancelled", "Shadow requests cancelled at shutdown",
                                        ["shadow"], registry=r)
        self.shadow_memory_held = Gauge("sidecar_shadow_memory_bytes", "Bytes held for shadow copies: their request "
                                        "bodies and the response bytes read so far, all shadows", registry=r)
        self.shadow_memory_budget = Gauge("sidecar_shadow_memory_budget_bytes", "The most shadow copies may hold "
                                          "(--shadow-memory-budget-bytes)", registry=r)
        self.shadow_in_flight = Gauge("sidecar_shadow_in_flight", "Shadow requests pending", ["shadow"], registry=r)
        self.shadow_duration = Histogram("sidecar_shadow_duration_seconds", "Shadow request latency",
                                         ["shadow"], buckets=LATENCY_BUCKETS, registry=r)
        self.compared_rows = Counter("sidecar_shadow_compared_rows", "Rows (first dimension) of an output "
                                     "compared between primary and shadow", ["shadow", "model", "output"],
                                     registry=r)
        self.top1_agree_rows = Counter("sidecar_shadow_top1_agree_rows", "Compared rows whose top-1 (the argmax "
                                       "of class scores, or the value itself for integer, bool and BYTES outputs) "
                                       "is the same", ["shadow", "model", "output"], registry=r)
        self.abs_diff = Histogram("sidecar_shadow_mean_abs_diff", "Mean absolute difference between primary and "
                                  "shadow values of an output, one observation per request",
                                  ["shadow", "model", "output"], buckets=DIFF_BUCKETS, registry=r)
        self.mismatches = Counter("sidecar_shadow_mismatches", "Outputs that could not be compared, by reason: "
                                  "missing (one side lacks it), shape, datatype", ["shadow", "model", "reason"],
                                  registry=r)
        self.recorder_queue = Gauge("sidecar_recorder_queue_depth", "Records waiting to be decoded and written",
                                    registry=r)
        self.records_written = Counter("sidecar_records_written", "Records written to finished segments",
                                       registry=r)
        self.records_lost = Counter("sidecar_records_lost", "Records not written, by reason: queue_full, "
                                    "write_error, encode_error, shutdown", ["reason"], registry=r)
        self.segments_rotated = Counter("sidecar_segments_rotated", "Segments finished (fsynced and renamed)",
                                        registry=r)
        self.segments_deleted = Counter("sidecar_segments_deleted", "Segments deleted to stay under the disk "
                                        "quota", registry=r)
        self.inputs_skipped = Counter("sidecar_record_inputs_skipped", "Records whose inputs were to be kept "
                                      "but exceeded max_input_size", registry=r)
        self.config_reloads = Counter("sidecar_config_reloads", "Configuration file reloads, by result "
                                      "(applied or rejected)", ["result"], registry=r)
        self.config_last_reload = Gauge("sidecar_config_last_reload_success_timestamp_seconds",
                                        "When the configuration was last applied", registry=r)
        self.upstream_duration = Histogram("sidecar_upstream_duration_seconds", "Inference requests: the time the "
                                           "upstream that served them took (primary or canary)",
                                           ["upstream", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self._canary(r)
        self._live_drift(r)

    def _canary(self, r: CollectorRegistry) -> None:
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
        self.canary_retries = Counter("sidecar_canary_retries", "Canary failures answered by retrying once on the "
                                      "primary", ["protocol"], registry=r)
        self.canary_webhooks = Counter("sidecar_canary_webhook_calls", "Webhook calls, by hook (pre_ramp, rollback) "
                                       "and result (ok, refused, error)", ["hook", "result"], registry=r)
        self.canary_compared_rows = Counter("sidecar_canary_compared_rows", "Rows of a canary-served answer compared "
                                            "with the primary's answer to a copy of the request",
                                            ["model", "output"], registry=r)
        self.canary_agree_rows = Counter("sidecar_canary_top1_agree_rows", "Compared canary rows with the primary's "
                                         "top-1", ["model", "output"], registry=r)
        self.canary_abs_diff = Histogram("sidecar_canary_mean_abs_diff", "Mean absolute difference between the "
                                         "canary's and the primary's values of an output, one observation per "
                                         "request", ["model", "output"], buckets=DIFF_BUCKETS, registry=r)

    def _live_drift(self, r: CollectorRegistry) -> None:
        labels = ["model", "upstream", "output"]
        self.live_psi = Gauge("sidecar_live_drift_psi", "Population stability index of the recent predictions "
                              "against the reference profile", labels, registry=r)
        self.live_js = Gauge("sidecar_live_drift_js", "Jensen-Shannon distance (base 2) of the recent predictions "
                             "against the reference profile", labels, registry=r)
        self.live_count = Gauge("sidecar_live_drift_window_predictions", "Predictions in the live drift window",
                                labels, registry=r)
        self.live_dropped = Counter("sidecar_live_drift_dropped", "Answers not observed for live drift because the "
                                    "recorder's queue was full", registry=r)
