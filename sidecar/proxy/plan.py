"""How one request is served, whatever its transport: the routing plan and the metrics it leaves.

Both proxies describe a request as an `Incoming` (a header lookup, the body when held, the
request's ``id`` decoded from it on demand) and ask `Proxy.plan` for a `Plan`: which
upstream serves it (the canary for its weight's share of sticky keys, else the primary),
which copies go out (the shadows sampled; the primary's copy when the canary serves) and
the `Exchange` that pairs their answers for the records and live drift. What a request
leaves on /metrics (the upstream's time, the canary's analysis window, the count and the
hop) is written once too, in `Observer`. The proxies keep only their transports.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from ..canary.controller import Controller
from ..mirror.exchange import CANCELLED, Answer, Exchange
from ..mirror.shadow import Shadow, choose_copies
from ..routing import CANARY, PRIMARY, sampled, split, sticky_key, upstream_failed
from ..spans import TRACEPARENT, RequestSpan, Spans, client_trace_id  # pure: no OpenTelemetry until it is on
from .health import Health
from .metrics import ProxyMetrics
from .upstreams import Upstreams

REQUEST_ID = "x-request-id"


SHARED_MEMORY = b"shared_memory_region"  # the parameter naming a region, in JSON and protobuf bodies alike


class Incoming:
    """What the plan reads of a request: a header (or metadata) lookup, the body when held, its ``id``."""

    __slots__ = ("_decode", "_id", "body", "header_length", "lookup", "model", "protocol", "size", "span")

    def __init__(self, protocol: str, lookup: Callable[[str], str | None], body: bytes | None, size: int | None,
                 decode_id: Callable[[bytes], str | None], model: str = "", header_length: int | None = None,
                 span: RequestSpan | None = None) -> None:
        self.protocol = protocol
        self.span = span  # the request's span, when tracing is on
        self.lookup = lookup
        self.body = body  # None: streamed through, never held
        self.size = size  # None: unknown (chunked)
        self.model = model
        self.header_length = header_length
        self._decode = decode_id
        self._id: str | None = None

    def body_id(self) -> str | None:
        """The ``id`` in the request body (decoded once, and only when asked), or None."""
        if self._id is None and self.body is not None:
            self._id = self._decode(self.body) or ""
        return self._id or None

    def trace_id(self) -> str | None:
        """The client's trace (`sidecar.spans`): the request span's, else its own ``traceparent``'s."""
        if self.span is not None:
            return self.span.trace_id
        return client_trace_id(self.lookup(TRACEPARENT))


class Plan:
    """Who serves a request and who gets copies; `settle` gives the exchange the served answer."""

    __slots__ = ("add_request_id", "copies", "exchange", "served")

    def __init__(self, served: str) -> None:
        self.served = served
        self.copies: list[Shadow] = []
        self.exchange: Exchange | None = None
        self.add_request_id: str | None = None  # the id to add to the forwarded headers, as Envoy does

    def settle(self, answer: Answer | None) -> None:
        """The served upstream's answer (None: cancelled before one came) to the exchange, if any."""
        if self.exchange is not None:
            self.exchange.set_primary(answer or Answer(self.served, None, None, CANCELLED))


def _sticky(header: str | None, request: Incoming) -> str:
    value = request.lookup(header) if header else None
    request_id = request.lookup(REQUEST_ID)
    if value is None and request_id is None:
        request_id = request.body_id()
    return sticky_key(value, request_id, "") or uuid.uuid4().hex


class Observer:
    """One protocol's series: upstream time (and the canary's window), counts, request time and the hop."""

    def __init__(self, metrics: ProxyMetrics, protocol: str, rollout: Controller) -> None:
        self._metrics = metrics
        self._protocol = protocol
        self._rollout = rollout
        self._requests: dict[tuple[str, str], Any] = {}
        self._request_duration = metrics.request_duration.labels(protocol)
        self._hop = metrics.hop_duration.labels(protocol)
        self._upstream_duration = {name: metrics.upstream_duration.labels(name, protocol) for name in (PRIMARY, CANARY)}
        self.retries = metrics.canary_retries.labels(protocol)

    def upstream(self, name: str, seconds: float | None, status: int | None) -> None:
        """An inference attempt's time on ``name`` (None: a stream) and HTTP status (None: no answer)."""
        if seconds is not None:
            self._upstream_duration[name].observe(seconds)
        if self._rollout.observing:
            self._rollout.observe(name, seconds, upstream_failed(status))

    def answered(self, upstream: str, code: str, received: float, upstream_secs: float | None) -> None:
        """A request answered: counted, timed, and the hop (``upstream_secs`` None: streamed, no single time)."""
        counter = self._requests.get((upstream, code))
        if counter is None:
            counter = self._requests[(upstream, code)] = self._metrics.requests.labels(upstream, self._protocol, code)
        counter.inc()
        total = time.perf_counter() - received
        self._request_duration.observe(total)
        if upstream_secs is not None:
            self._hop.observe(max(0.0, total - upstream_secs))


class Proxy:
    """What both listeners hold: the upstreams in force, the recorder's queue, health and the rollout."""

    def __init__(self, upstreams: Callable[[], Upstreams], metrics: ProxyMetrics, submit: Callable[[Exchange], object],
                 health: Health, rollout: Controller, protocol: str) -> None:
        self._upstreams = upstreams
        self.metrics = metrics
        self._submit = submit
        self.health = health
        self.rollout = rollout
        self.protocol = protocol
        self.in_flight = 0  # the drain waits for it to reach 0
        self.observer = Observer(metrics, protocol, rollout)
        self.spans: Spans | None = None  # tracing on: set by the composition root

    def routes(self, ups: Upstreams) -> bool:
        """Whether a request may go anywhere but the primary, or leave copies: else it needs no plan.

        The common case (no shadow, no live drift, no canary taking traffic) then builds
        nothing per request.
        """
        return bool(ups.shadows or ups.observe_fraction or (ups.canary is not None and self.rollout.weight > 0))

    def plan(self, ups: Upstreams, request: Incoming, *, infer: bool, canary_here: bool, mirror: bool) -> Plan:
        """Route ``request``: the canary (when it serves this transport: ``canary_here``) or the primary.

        Copies and an exchange only for an inference request that may be mirrored
        (``mirror``) and whose body is held.
        """
        canary, weight = ups.canary, self.rollout.weight
        plan = Plan(PRIMARY)
        if infer and request.body is not None and SHARED_MEMORY in request.body:
            # its tensors are in regions registered with the primary's process: a canary would not
            # find them, and a shadow on the same host would write its outputs into the client's region
            for shadow in ups.shadows:
                shadow.skip("shared_memory", request.span)
            return plan
        if infer and canary is not None and canary_here and weight > 0 and split(
                _sticky(canary.header, request), weight) == CANARY:
            plan.served = CANARY
        if mirror and (ups.shadows or plan.served == CANARY or ups.observe_fraction):
            self._copies(ups, request, plan)
        return plan

    def _copies(self, ups: Upstreams, request: Incoming, plan: Plan) -> None:
        given_id = request.lookup(REQUEST_ID)
        request_id = given_id or uuid.uuid4().hex
        key = request.lookup(ups.sample_header)
        if key is None and ups.needs_key:
            key = request.body_id()
        key = key or request_id
        copies = ups.canary.copies if plan.served == CANARY and ups.canary is not None else None
        chosen = choose_copies(ups.shadows, copies, key, request.protocol, request.size, request.span)
        body = request.body
        if body is None:
            return  # streamed: every copy chosen was refused as such, and counted
        if not chosen and not (ups.observe_fraction and sampled(key, ups.observe_fraction, "drift")):
            return
        if chosen and given_id is None:
            plan.add_request_id = request_id  # so the upstreams' logs correlate
        exchange = Exchange(key, request_id, time.time(), request.model, request.protocol, body,
                            request.header_length, self._submit, record=bool(chosen), trace_id=request.trace_id())
        exchange.expect(len(chosen))
        plan.copies, plan.exchange = chosen, exchange
