"""The ``OTEL_*`` settings tracing honours beyond the exporter, read from one mapping and checked.

The SDK reads these from ``os.environ`` itself and, given one it cannot use, logs a warning and
goes on with its default (an unknown sampler becomes ``parentbased_always_on``: every request
traced). Here a setting that cannot be honoured stops start-up with a one-line `TracingError`
naming the variable and what it accepts, and the settings come from the mapping `configure` was
given, so that a test or an embedding program can pass its own. Imports nothing of OpenTelemetry
until the objects are built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.sdk.trace.sampling import Sampler

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
PROPAGATORS = ("tracecontext", "baggage", "none")  # others (b3, jaeger, ...) load from their packages' entry points


class TracingError(ValueError):
    """An ``OTEL_*`` variable this module cannot honour: the message names it and what it accepts."""


def _number(environ: Mapping[str, str], name: str, default: float, *, integer: bool = False,
            low: float = 0.0, high: float = float("inf")) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # nan fails too
        kind = "an integer" if integer else "a number"
        bounds = f" from {low:g} to {high:.0f}" if high != float("inf") else f" of at least {low:g}"
        raise TracingError(f"{name}={raw!r} is not valid; use {kind}{bounds}")
    return value


@dataclass(frozen=True)
class ProcessorSettings:
    """The batch span processor's ``OTEL_BSP_*`` settings (the specification's names and defaults)."""

    schedule_delay_ms: float = 5000
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    export_timeout_ms: float = 30000

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> ProcessorSettings:
        queue = int(_number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, integer=True, low=1, high=1 << 20))
        batch = int(_number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", min(512, queue), integer=True, low=1,
                            high=queue))
        return cls(_number(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000, low=1, high=3_600_000), queue, batch,
                   _number(environ, "OTEL_BSP_EXPORT_TIMEOUT", 30000, low=1, high=3_600_000))

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``BatchSpanProcessor``."""
        return {"schedule_delay_millis": self.schedule_delay_ms, "max_queue_size": self.max_queue_size,
                "max_export_batch_size": self.max_export_batch_size,
                "export_timeout_millis": self.export_timeout_ms}


def export_timeout_s(environ: Mapping[str, str]) -> float:
    """Seconds an OTLP export may take, retries included: ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` or
    ``OTEL_EXPORTER_OTLP_TIMEOUT`` (seconds, as the Python SDK reads them), 10 by default."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        if environ.get(name, "").strip():
            return _number(environ, name, 10.0, low=0.001, high=3600)
    return 10.0


def check_endpoint(name: str, endpoint: str) -> None:
    """An OTLP endpoint must be an http(s) URL with a host; a bare ``host:port`` is a common slip."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint)
        host, _ = parts.hostname, parts.port  # a port that is not a number raises here
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise TracingError(f"{name}={endpoint!r} is not an OTLP endpoint; use a URL such as "
                           "http://otel-collector:4318 (OTLP/HTTP) or http://otel-collector:4317 (gRPC)")


def sampler(environ: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` (``parentbased_always_on`` by default) with ``OTEL_TRACES_SAMPLER_ARG``."""
    from opentelemetry.sdk.trace import sampling

    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        raise TracingError(f"OTEL_TRACES_SAMPLER={name!r} is not a sampler this server knows; use one of "
                           f"{', '.join(SAMPLERS)}")
    if name.endswith("traceidratio"):
        ratio = _number(environ, "OTEL_TRACES_SAMPLER_ARG", 1.0, high=1.0)
        return sampling.TraceIdRatioBased(ratio) if name == "traceidratio" else sampling.ParentBasedTraceIdRatio(ratio)
    chosen: Sampler = {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF,
                       "parentbased_always_on": sampling.DEFAULT_ON,
                       "parentbased_always_off": sampling.DEFAULT_OFF}[name]
    return chosen


def propagator(environ: Mapping[str, str]) -> TextMapPropagator:
    """``OTEL_PROPAGATORS`` (W3C ``tracecontext,baggage`` by default) as one composite propagator."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.util._importlib_metadata import entry_points

    raw = environ.get("OTEL_PROPAGATORS", "").strip()
    names = [n.strip().lower() for n in (raw or "tracecontext,baggage").split(",") if n.strip()]
    chosen: list[TextMapPropagator] = []
    for name in names:
        if name == "none":
            continue
        if name == "tracecontext":
            chosen.append(TraceContextTextMapPropagator())
        elif name == "baggage":
            chosen.append(W3CBaggagePropagator())
        else:
            found = list(entry_points(group="opentelemetry_propagator", name=name))
            if not found:
                raise TracingError(f"OTEL_PROPAGATORS={raw!r}: propagator {name!r} is not installed; use "
                                   f"{', '.join(PROPAGATORS)}, or install its package")
            chosen.append(found[0].load()())
    return CompositePropagator(chosen)
