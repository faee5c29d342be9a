"""Copies sent to shadows: sent, answered, failed, skipped, dropped, and the memory they hold.

On a registry that is passed in (one per sidecar, never global); the series names are
the sidecar's public interface (docs/sidecar.md), so they do not change with the layout.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..buckets import LATENCY_BUCKETS


class MirrorMetrics:
    """Series on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
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
                                      "--shadow-memory-budget-bytes for the body), stopping, shared_memory (the "
                                      "request names a shared-memory region of the primary's host)",
                                      ["shadow", "reason"], registry=r)
        self.shadow_cancelled = Counter("sidecar_shadow_cancelled", "Shadow requests cancelled at shutdown",
                                        ["shadow"], registry=r)
        self.shadow_memory_held = Gauge("sidecar_shadow_memory_bytes", "Bytes held for shadow copies: their request "
                                        "bodies and the response bytes read so far, all shadows", registry=r)
        self.shadow_memory_budget = Gauge("sidecar_shadow_memory_budget_bytes", "The most shadow copies may hold "
                                          "(--shadow-memory-budget-bytes)", registry=r)
        self.shadow_in_flight = Gauge("sidecar_shadow_in_flight", "Shadow requests pending", ["shadow"], registry=r)
        self.shadow_duration = Histogram("sidecar_shadow_duration_seconds", "Shadow request latency",
                                         ["shadow"], buckets=LATENCY_BUCKETS, registry=r)

    def add_shadows(self, names: Iterable[str]) -> None:
        """Export every per-shadow counter of ``names`` at 0 before its first event.

        A counter that appears only at its first increment reads as *No data* on a dashboard
        and as nothing at all to ``rate()``: a healthy shadow that never dropped a copy must
        show a drop rate of 0, not a gap.
        """
        for name in names:
            for counter in (self.shadow_successes, self.shadow_timeouts, self.shadow_drops, self.shadow_cancelled):
                counter.labels(name)
