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
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the sampler (``parentbased_always_on``
  unless set; ``always_off`` records nothing, so it leaves tracing off);
- ``OTEL_PROPAGATORS``: the propagators (W3C ``traceparent`` and baggage unless set);
- ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``,
  ``OTEL_BSP_EXPORT_TIMEOUT``: the batch span processor; ``OTEL_EXPORTER_OTLP_TIMEOUT`` /
  ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT``: an export's time, retries included (seconds);
- ``OTEL_SDK_DISABLED=true``: off, whatever else is set.

Every one is checked at start (`serving.tracing_env`): one that cannot be honoured is a one-line
`TracingError`, where the SDK would log a warning and quietly use its default. serve and the
sidecar both use this module: `configure` once at start, `current` on the paths that make spans,
`shutdown` to flush at exit, which waits for a stuck collector 2 s at most.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .tracing_env import ProcessorSettings, TracingError, check_endpoint, export_timeout_s, propagator, sampler

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

__all__ = ["Tracing", "TracingError", "configure", "current", "set_current", "shutdown", "wanted_exporters"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "console", "none")
FLUSH_TIMEOUT_S = 2.0  # the most a stop waits for the last spans: a collector that hangs must not hold a drain
# the SDK's loggers that speak once per span or per export when a collector is down or stuck
SDK_LOGGERS = ("opentelemetry.sdk._shared_internal", "opentelemetry.exporter.otlp.common.http",
               "opentelemetry.exporter.otlp.proto.http.trace_exporter",
               "opentelemetry.exporter.otlp.proto.grpc.exporter")


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

    def __init__(self, provider: TracerProvider, service: str, propagator: TextMapPropagator | None = None,
                 flush_timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        from opentelemetry import propagate

        self.provider = provider
        self.service = service
        self.flush_timeout_s = flush_timeout_s
        self.tracer: Tracer = provider.get_tracer("shadowserve")
        self._propagator = propagator if propagator is not None else propagate.get_global_textmap()

    def extract(self, carrier: Mapping[str, str]) -> Context:
        """The caller's context from its ``traceparent``/``tracestate`` (any mapping of header names,
        as aiohttp's case-insensitive headers or gRPC metadata turned into a dict)."""
        return self._propagator.extract(carrier)

    def inject(self, carrier: MutableMapping[str, str], context: Context | None = None) -> None:
        """Writes ``traceparent`` (and ``tracestate``, baggage) for ``context`` into ``carrier``."""
        self._propagator.inject(carrier, context=context)

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Flushes the spans still queued and stops the exporters, waiting at most ``timeout_s``
        (`flush_timeout_s` by default); False when that was not enough (the rest is dropped with
        the process).

        The SDK's own shutdown waits up to 30 s for its worker, whose last export may retry for
        the exporter's whole timeout: it runs on a daemon thread here, so that a stuck collector
        costs a stop ``timeout_s`` and no more.
        """
        timeout_s = self.flush_timeout_s if timeout_s is None else timeout_s
        done = threading.Thread(target=self.provider.shutdown, name="tracing-shutdown", daemon=True)
        started = time.monotonic()
        done.start()
        done.join(timeout_s)
        if done.is_alive():
            logger.warning("tracing: spans not flushed within %gs (is the collector reachable?); dropping them",
                           timeout_s)
            return False
        logger.debug("tracing: flushed in %.3fs", time.monotonic() - started)
        return True


class _OncePerMinute(logging.Filter):
    """Lets each message of the SDK through once a minute: a collector that is down must not turn
    every span into a log line (the SDK warns per span dropped from a full queue)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -60.0) < 60.0:
            return False
        if len(self._last) > 256:  # bounded: the keys are the SDK's message templates, few
            self._last.clear()
        self._last[key] = now
        return True


_QUIET = _OncePerMinute()
_current: Tracing | None = None


def current() -> Tracing | None:
    """The process's tracing, or None when it is off."""
    return _current


def set_current(tracing: Tracing | None) -> Tracing | None:
    """Makes ``tracing`` the process's (a test's provider with an in-memory exporter, say); returns
    the one it replaces, without shutting it down."""
    global _current
    previous, _current = _current, tracing
    return previous


def _resource_attributes(environ: Mapping[str, str], service: str) -> dict[str, Any]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,...``, percent-encoded) with the service name on top."""
    attributes: dict[str, Any] = {}
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, equals, value = pair.partition("=")
        if not pair.strip():
            continue
        if not equals or not key.strip():
            raise TracingError(f"OTEL_RESOURCE_ATTRIBUTES has {pair.strip()!r}; use key=value pairs separated "
                               "by commas")
        attributes[unquote(key.strip())] = unquote(value.strip())
    attributes["service.name"] = _setting(environ, "OTEL_SERVICE_NAME") or attributes.get("service.name") or service
    return attributes


def _shown(endpoint: str) -> str:
    """An endpoint as the log shows it: scheme, host, port and path; never a user:password in it."""
    if not endpoint:
        return "the exporter's default endpoint"
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path


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
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if _setting(environ, name):
            check_endpoint(name, _setting(environ, name))
    # every setting is checked before anything is built, so a bad one starts nothing
    chosen_sampler, chosen_propagator = sampler(environ), propagator(environ)
    processing, timeout = ProcessorSettings.read(environ), export_timeout_s(environ)
    attributes = _resource_attributes(environ, service)
    if _setting(environ, "OTEL_TRACES_SAMPLER").lower() == "always_off":
        # nothing would ever be recorded: off, and free, as without OTEL_* (and a caller's
        # traceparent passes a sidecar untouched, instead of naming spans that exist nowhere)
        logger.info("tracing off: OTEL_TRACES_SAMPLER=always_off records nothing")
        _current = None
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    # shut down by `shutdown` (bounded), not by the SDK's own exit hook, which may wait 30 s on a stuck collector
    provider = TracerProvider(resource=Resource.create(attributes), sampler=chosen_sampler, shutdown_on_exit=False)
    for name in exporters:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            exporter = GrpcExporter(endpoint=_endpoint(environ, "") or None, timeout=timeout)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporter = HttpExporter(endpoint=_endpoint(environ, "/v1/traces") or None, timeout=timeout)
        # spans are exported from the processor's thread, in batches, never on a request's path
        provider.add_span_processor(BatchSpanProcessor(exporter, **processing.options()))
    for name in SDK_LOGGERS:
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)
    shutdown()  # a tracing configured before: flushed, stopped and no longer flushed again at exit
    # a stop waits for the last export no longer than OTEL_BSP_EXPORT_TIMEOUT allows one, and 2 s at most
    _current = Tracing(provider, service, chosen_propagator, min(FLUSH_TIMEOUT_S, processing.export_timeout_ms / 1000))
    atexit.register(_current.shutdown)  # a process that never called `shutdown` still flushes, as briefly
    where = _shown(_endpoint(environ, "" if protocol == "grpc" else "/v1/traces"))
    logger.info("tracing on: %s spans exported by %s (%s, %s)", attributes["service.name"], ", ".join(exporters),
                protocol, where)
    return _current


def shutdown(timeout_s: float | None = None) -> bool:
    """Flushes and stops the process's tracing, if it is on, waiting at most ``timeout_s`` (see
    `Tracing.shutdown`); False when spans were left behind."""
    global _current
    tracing, _current = _current, None
    if tracing is None:
        return True
    atexit.unregister(tracing.shutdown)
    return tracing.shutdown(timeout_s)
