"""Request tracing with OpenTelemetry, switched on by the standard ``OTEL_*`` environment variables.

Off by default, and then free: nothing of OpenTelemetry is imported and `current()` is None, so
the hot paths pay one ``is None`` test. Tracing is on when an exporter is named or an OTLP endpoint
is set, as the OpenTelemetry SDK's own configuration reads them:

- ``OTEL_TRACES_EXPORTER``: ``otlp`` or ``console`` (``none`` turns tracing off);
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: where spans go, which
  alone switches ``otlp`` on;
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``: ``http/protobuf`` (the
  specification's default) or ``grpc``;
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource (the service name defaults to
  the program's: ``serve``, ``sidecar``);
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the sampler, read by the SDK
  (``parentbased_always_on`` unless set);
- ``OTEL_PROPAGATORS``: the propagators (W3C ``traceparent`` and baggage unless set);
- ``OTEL_SDK_DISABLED=true``: off, whatever else is set.

serve and the sidecar both use this module: `configure` once at start, `current` on the paths
that make spans, `shutdown` to flush at exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

logger = logging.getLogger(__name__)

PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "console", "none")


class TracingError(ValueError):
    """An ``OTEL_*`` variable this module cannot honour: the message names it and what it accepts."""


def _setting(environ: Mapping[str, str], *names: str) -> str:
    """The first of ``names`` that is set and not blank, stripped; '' when none is."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return ""


def wanted_exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters ``environ`` asks for: [] when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if not named:
        endpoint = _setting(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    unknown = [e for e in named if e not in EXPORTERS]
    if unknown:
        raise TracingError(f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r}: unknown exporter "
                           f"{unknown[0]!r}; use one or more of {', '.join(EXPORTERS)}")
    return [] if "none" in named else named


def _endpoint(environ: Mapping[str, str], path: str) -> str:
    """The traces endpoint ``environ`` names ('' for the exporter's default): the signal's own as it
    is, or the general one with ``path`` appended, as the specification says for OTLP/HTTP."""
    own = _setting(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if own:
        return own
    general = _setting(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
    return general.rstrip("/") + path if general else ""


class Tracing:
    """Tracing switched on: the tracer, and W3C context in and out of headers and gRPC metadata."""

    def __init__(self, provider: TracerProvider, service: str) -> None:
        from opentelemetry import propagate

        self.provider = provider
        self.service = service
        self.tracer: Tracer = provider.get_tracer("shadowserve")
        self._propagator = propagate.get_global_textmap()

    def extract(self, carrier: Mapping[str, str]) -> Context:
        """The caller's context from its ``traceparent``/``tracestate`` (any mapping of header names,
        as aiohttp's case-insensitive headers or gRPC metadata turned into a dict)."""
        return self._propagator.extract(carrier)

    def inject(self, carrier: MutableMapping[str, str], context: Context | None = None) -> None:
        """Writes ``traceparent`` (and ``tracestate``, baggage) for ``context`` into ``carrier``."""
        self._propagator.inject(carrier, context=context)

    def shutdown(self) -> None:
        """Flushes the spans still queued and stops the exporters."""
        self.provider.shutdown()


_current: Tracing | None = None


def current() -> Tracing | None:
    """The process's tracing, or None when it is off."""
    return _current


def configure(service: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Switches tracing on when ``environ`` (``os.environ`` by default) asks for it; returns it, or
    None. Raises `TracingError` for a setting it cannot honour, before anything starts."""
    global _current
    environ = os.environ if environ is None else environ
    exporters = wanted_exporters(environ)
    if not exporters:
        _current = None
        return None
    protocol = _setting(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or PROTOCOLS[0]
    if "otlp" in exporters and protocol not in PROTOCOLS:
        raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use one of "
                           f"{', '.join(PROTOCOLS)}")
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attributes: dict[str, Any] = {} if _setting(environ, "OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            exporter = GrpcExporter(endpoint=_endpoint(environ, "") or None)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporter = HttpExporter(endpoint=_endpoint(environ, "/v1/traces") or None)
        # spans are exported from the processor's thread, in batches, never on a request's path
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _current = Tracing(provider, service)
    logger.info("tracing on: %s spans exported by %s (%s)", service, ", ".join(exporters), protocol)
    return _current


def shutdown() -> None:
    """Flushes and stops the process's tracing, if it is on."""
    global _current
    if _current is not None:
        _current.shutdown()
        _current = None
