"""The sidecar's spans (OpenTelemetry): the request, the call that serves it, and one per shadow copy.

Tracing is switched on by the standard ``OTEL_*`` variables (`serving.tracing`, configured at
start-up with the service name ``sidecar``). When it is off the proxies hold no `Spans`, this
module imports nothing of OpenTelemetry, and a client's ``traceparent`` goes upstream as it came.
When it is on, every proxied request gets:

- a SERVER span, a child of the client's W3C context (``traceparent``/``tracestate`` in the HTTP
  headers or the gRPC metadata), named as OpenTelemetry's conventions name them:
  ``POST /v2/models/{model}/infer``, ``inference.GRPCInferenceService/ModelInfer``;
- a CLIENT span per attempt on the upstream that serves it (``primary POST``, ``canary
  inference.GRPCInferenceService/ModelInfer``; a failed canary attempt retried on the primary is
  a second one), whose context replaces the client's ``traceparent`` upstream, so that serve's
  spans join the trace;
- a CLIENT span per shadow copy (``shadow NAME ...``), a child of the request's span, started and
  ended by the copy's own task (never on the primary's path), whose context goes to the shadow.
  A copy that times out, cannot connect or answers too much ends with that as its ``error.type``;
  a copy that is not sent (skipped, dropped at ``max_in_flight``, over the memory budget) is a
  ``shadow.skipped`` event on the request's span.

A record's ``trace_id`` (`RequestSpan.trace_id`, `client_trace_id`) is the client's trace: the
request span's when it is sampled, else the one in the client's own ``traceparent``, else null.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from serving.tracing import FLUSH_TIMEOUT_S

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span

    from serving.tracing import Tracing

    from .mirror.exchange import Answer

log = logging.getLogger(__name__)

TRACEPARENT, TRACESTATE, BAGGAGE = "traceparent", "tracestate", "baggage"
TRACE_CONTEXT = (TRACEPARENT, TRACESTATE)  # replaced by the sidecar's own context upstream
FLUSH_SECS = FLUSH_TIMEOUT_S  # at stop, what a collector that hangs may cost the exit
MAX_NAME = 128  # an unknown gRPC method's name is the client's: spans' names stay short
# As the W3C Trace Context specification (and OpenTelemetry's propagator, so that a trace id is
# read the same with tracing on or off): version, trace id, parent id, flags, and for versions
# after 00 more fields after a dash.
_TRACEPARENT = re.compile(r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_MAX_TRACEPARENT = 512


def client_trace_id(traceparent: str | None) -> str | None:
    """The trace id (32 lowercase hex) of a W3C ``traceparent`` value, or None when absent or invalid.

    >>> client_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    '4bf92f3577b34da6a3ce929d0e0e4736'
    """
    if not traceparent or len(traceparent) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.search(traceparent)
    if match is None:
        return None
    version, trace_id, parent_id, _, more = match.groups()
    if trace_id == "0" * 32 or parent_id == "0" * 16 or version == "ff" or (version == "00" and more):
        return None
    return trace_id


_FIXED = frozenset({"/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index", "/v2/logging",
                    "/v2/trace/setting"})
_REGION_OPS = frozenset({"status", "register", "unregister"})


def route(path: str) -> str | None:
    """A v2 path with its model name and version templated (``/v2/models/{model}/infer``), or None
    for a path outside the v2 API, whose name would be the client's choice."""
    if path in _FIXED:
        return path
    parts = path.split("/")
    if len(parts) < 4 or parts[1] != "v2" or not parts[3]:
        return None
    if parts[2] in ("systemsharedmemory", "cudasharedmemory"):
        if len(parts) == 6 and parts[3] == "region" and parts[4] and parts[5] in _REGION_OPS:
            return f"/v2/{parts[2]}/region/{{region}}/{parts[5]}"
        return path if len(parts) == 4 and parts[3] in _REGION_OPS else None
    if parts[2] == "models":
        head, rest = ["", "v2", "models", "{model}"], parts[4:]
    elif parts[2] == "repository" and len(parts) == 6 and parts[3] == "models":
        return f"/v2/repository/models/{{model}}/{parts[5]}" if parts[5] in ("load", "unload") else None
    else:
        return None
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        head, rest = [*head, "versions", "{version}"], rest[2:]
    if len(rest) > 1 or (rest and rest[0] not in ("infer", "ready", "config", "stats")):
        return None
    return "/".join(head + rest)


class Spans:
    """Span making for one sidecar while tracing is on: this is where OpenTelemetry is imported."""

    def __init__(self, tracing: Tracing) -> None:
        from opentelemetry import trace

        self.tracing = tracing
        self.tracer = tracing.tracer
        self.trace = trace
        self.server, self.client = trace.SpanKind.SERVER, trace.SpanKind.CLIENT

    def http(self, method: str, path: str, headers: Mapping[str, str]) -> RequestSpan:
        """The SERVER span of an HTTP request, joined to the client's context in ``headers``."""
        templated = route(path)
        name = f"{method} {templated}" if templated else method
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
        if templated:
            attributes["http.route"] = templated
        return RequestSpan(self, name, headers, attributes)

    def grpc(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> RequestSpan:
        """The SERVER span of a gRPC call (``/package.Service/Method``), joined to the client's metadata."""
        service, _, rpc = method.lstrip("/").partition("/")
        carrier = {k: v for k, v in metadata if isinstance(v, str)}
        attributes = {"rpc.system": "grpc", "rpc.service": service[:MAX_NAME], "rpc.method": rpc[:MAX_NAME]}
        return RequestSpan(self, method.lstrip("/")[:MAX_NAME], carrier, attributes)


class RequestSpan:
    """One incoming request's SERVER span, and the CLIENT spans of the calls made for it."""

    __slots__ = ("_traceparent", "context", "name", "span", "spans")

    def __init__(self, spans: Spans, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> None:
        self.spans = spans
        self.name = name
        parent = spans.tracing.extract(carrier)
        self._traceparent = carrier.get(TRACEPARENT)  # read again only for a record of a span not sampled
        self.span: Span = spans.tracer.start_span(name, context=parent, kind=spans.server, attributes=attributes)
        self.context: Context = spans.trace.set_span_in_context(self.span, parent)

    @property
    def trace_id(self) -> str | None:
        """The trace a record names: this span's when sampled, else the client's own, else None."""
        context = self.span.get_span_context()
        if context.trace_flags.sampled:
            return f"{context.trace_id:032x}"
        return client_trace_id(self._traceparent)

    def call(self, upstream: str, retry: bool = False) -> CallSpan:
        """A CLIENT span for the attempt on ``upstream`` (``primary`` or ``canary``) that serves the request."""
        attributes: dict[str, Any] = {"shadowserve.upstream": upstream, "shadowserve.role": upstream}
        if retry:
            attributes["shadowserve.retry"] = True
        return CallSpan(self, f"{upstream} {self.name}", attributes)

    def shadow(self, name: str, started_ns: int) -> CallSpan:
        """A CLIENT span for a copy to shadow ``name``, dispatched at ``started_ns`` (``time.time_ns()``)."""
        attributes = {"shadowserve.upstream": name, "shadowserve.role": "shadow"}
        return CallSpan(self, f"shadow {name} {self.name}", attributes, started_ns)

    def model(self, name: str, version: str | None) -> None:
        """The model an inference request names, under serve's attribute names (Triton's)."""
        self.span.set_attribute("triton.model_name", name[:MAX_NAME])
        if version:
            self.span.set_attribute("triton.model_version", version[:MAX_NAME])

    def skipped(self, shadow: str, reason: str) -> None:
        """A copy ``shadow`` did not get (``reason``: ``max_in_flight``, ``too_large``, ``unreachable``, ...)."""
        self.span.add_event("shadow.skipped", {"shadowserve.upstream": shadow, "shadowserve.reason": reason})

    def end_http(self, status: int | None, error: BaseException | None = None) -> None:
        """Ends the span with the HTTP status the client got (None: no answer, ``error`` says why)."""
        span = self.span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if status is None or status >= 500:
            # a server span's 4xx is the client's fault, not an error of the request (the conventions)
            described = type(error).__name__ if error is not None else "no response"
            span.set_attribute("error.type", str(status) if status is not None else described)
            span.set_status(self.spans.trace.Status(self.spans.trace.StatusCode.ERROR, described))
        span.end()

    def end_grpc(self, code: str) -> None:
        """Ends the span with the gRPC status the client got (a name, as ``grpc.StatusCode.name``)."""
        _end_grpc(self.spans, self.span, code, server=True)


_GRPC_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
               "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
               "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
               "DATA_LOSS": 15, "UNAUTHENTICATED": 16}
# The conventions: on a server these codes are the server's failure; on a client every code but OK.
_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})


def _end_grpc(spans: Spans, span: Span, code: str, server: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", _GRPC_CODES.get(code, 2))
    if code != "OK" and (not server or code in _SERVER_ERRORS):
        span.set_attribute("error.type", code)
        span.set_status(spans.trace.Status(spans.trace.StatusCode.ERROR, code))
    span.end()


class CallSpan:
    """A CLIENT span: an attempt on the serving upstream, or one copy to a shadow."""

    __slots__ = ("context", "span", "spans")

    def __init__(self, parent: RequestSpan, name: str, attributes: dict[str, Any],
                 started_ns: int | None = None) -> None:
        spans = self.spans = parent.spans
        self.span: Span = spans.tracer.start_span(name, context=parent.context, kind=spans.client,
                                                  attributes=attributes, start_time=started_ns)
        self.context: Context = spans.trace.set_span_in_context(self.span, parent.context)

    def headers(self, carrier: MutableMapping[str, str]) -> None:
        """This span's ``traceparent`` (and ``tracestate``) in ``carrier``, in place of the client's."""
        injected = self._injected()
        for name in {*TRACE_CONTEXT, *injected}:
            if name in carrier:
                del carrier[name]  # CIMultiDict: every value, whatever its case
        carrier.update(injected)

    def metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> tuple[tuple[str, str | bytes], ...]:
        """gRPC metadata with this span's context in place of the client's."""
        injected = self._injected()
        kept = tuple((k, v) for k, v in metadata if k not in TRACE_CONTEXT and k not in injected)
        return kept + tuple(injected.items())

    def _injected(self) -> dict[str, str]:
        """The propagators' fields for this span (W3C's unless ``OTEL_PROPAGATORS`` says otherwise),
        without baggage: the client's own goes as the header rules say, never re-added."""
        injected: dict[str, str] = {}
        self.spans.tracing.inject(injected, self.context)
        injected.pop(BAGGAGE, None)
        return injected

    def end_http(self, status: int | None, error: str | None = None) -> None:
        """Ends the span with the upstream's HTTP status, or with ``error`` when none came."""
        span = self.span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None or status is None or status >= 400:
            kind = error or (str(status) if status is not None else "cancelled")  # none came: the client left
            span.set_attribute("error.type", kind)
            span.set_status(self.spans.trace.Status(self.spans.trace.StatusCode.ERROR, kind))
        span.end()

    def end_grpc(self, code: str) -> None:
        """Ends the span with the upstream's gRPC status name."""
        _end_grpc(self.spans, self.span, code, server=False)

    def end_answer(self, answer: Answer | None, protocol: str) -> None:
        """Ends a shadow copy's span with its `Answer` (None: the copy died without one)."""
        if answer is None:
            self.end_http(None, "cancelled")
            return
        if answer.error is not None:
            self.span.add_event(f"shadow.{answer.error}" if answer.error in _EVENTS else "shadow.error",
                                {"shadowserve.error": answer.error[:256]})
        if protocol == "grpc":
            self.span.set_attribute("rpc.system", "grpc")
        self.end_http(answer.status, None if answer.error is None else answer.error[:256])


_EVENTS = frozenset({"timeout", "connection", "cancelled", "too_large", "memory_budget"})


def flush(tracing: Tracing | None) -> bool:
    """Exports the spans still queued and stops tracing, for at most `FLUSH_SECS` (serve's bound, or
    ``OTEL_BSP_EXPORT_TIMEOUT`` when shorter: `serving.tracing.Tracing.shutdown`); True when
    everything was flushed in time."""
    if tracing is None:
        return True
    from serving import tracing as process_tracing

    # the process's own (configured at start-up) is stopped through the module, which forgets it
    return process_tracing.shutdown() if process_tracing.current() is tracing else tracing.shutdown()
