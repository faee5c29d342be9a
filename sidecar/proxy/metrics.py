"""The proxies' own series: requests, their durations and the hop, client connections.

On a registry that is passed in (one per sidecar, never global); the series names are
the sidecar's public interface (docs/sidecar.md), so they do not change with the layout.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..buckets import HOP_BUCKETS, LATENCY_BUCKETS


class ProxyMetrics:
    """Series on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter("sidecar_requests", "Requests proxied, by upstream, protocol and status code "
                                "(HTTP status, or the gRPC status name)", ["upstream", "protocol", "code"],
                                registry=r)
        self.request_duration = Histogram("sidecar_request_duration_seconds",
                                          "Time from receiving a request to answering it", ["protocol"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.hop_duration = Histogram("sidecar_hop_duration_seconds",
                                      "Time the sidecar adds to a request: the whole request less the upstream's "
                                      "part", ["protocol"], buckets=HOP_BUCKETS, registry=r)
        self.upstream_duration = Histogram("sidecar_upstream_duration_seconds", "Inference requests: the time the "
                                           "upstream that served them took (primary or canary)",
                                           ["upstream", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self.canary_retries = Counter("sidecar_canary_retries", "Canary failures answered by retrying once on the "
                                      "primary", ["protocol"], registry=r)
        self.client_connections = Gauge("sidecar_client_connections", "Client connections open, by listener (http, "
                                        "metrics, admin)", ["listener"], registry=r)
        self.client_connections_refused = Counter("sidecar_client_connections_refused", "Client connections "
                                                  "answered 503 and closed at once: the listener had its "
                                                  "--max-connections open", ["listener"], registry=r)
        self.client_timeouts = Counter("sidecar_client_timeouts", "Client connections closed because the request "
                                       "head (header) or body (body) did not arrive in time", ["listener", "part"],
                                       registry=r)
