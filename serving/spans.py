"""serve's spans, made only while tracing is on (`serving.tracing`); this module imports OpenTelemetry,
so the transports, the instances and in-process calls import it only once `tracing.current()` is
not None.

A request to a model is one trace: its SERVER span (``POST /v2/models/{model_name}/infer``,
``inference.GRPCInferenceService/ModelInfer`` or ``…/ModelStreamInfer``), a child of the caller's
W3C ``traceparent`` (HTTP header, gRPC metadata); a ``queue`` child from the moment it entered its
model's queue to the moment its batch was formed; and a ``compute`` span for the batch that ran
it. A batch computes several requests at once: its one ``compute`` span has a link to every
traced request of the batch and is the child of the first, so a request alone in its batch has
its whole story in one trace. In-process requests (ensemble steps, BLS calls) are INTERNAL spans
``infer {model}``, children of whatever span is current: the ensemble's request, or the
``compute`` span of the batch whose model made the call.

Attributes use Triton's names where Triton's own traces have one (``triton.model_name``,
``triton.model_version``, ``triton.request_id``), the OpenTelemetry conventions for HTTP and RPC,
and ``serving.*`` for the batch (``serving.batch_size``: rows, as Triton counts a batch;
``serving.batch_requests``; ``serving.rows``: a request's own rows; ``serving.instance``).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from .errors import ServingError, failure_text
from .tracing import Tracing

if TYPE_CHECKING:
    from .batching import Pending
    from .instance import ModelInstance

MODEL, VERSION, REQUEST_ID = "triton.model_name", "triton.model_version", "triton.request_id"
ROWS, BATCH_SIZE, BATCH_REQUESTS, INSTANCE = "serving.rows", "serving.batch_size", "serving.batch_requests", \
    "serving.instance"
GRPC_SERVICE = "inference.GRPCInferenceService"
MAX_ATTRIBUTE_CHARS = 256  # a request id or an error message from a client is kept short in every span

Execute = Callable[[list["Pending"], "contextvars.Context | None"], Awaitable[tuple[list[Any], list[Any]]]]


def _short(text: str) -> str:
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS] + "…"


def _version(version: str | int) -> int | str:
    return int(version) if isinstance(version, int) or version.isdigit() else version


def model_attributes(model: str, version: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {MODEL: _short(model)} if model else {}
    if version:
        attributes[VERSION] = _version(_short(version))
    return attributes


def _failed(span: Span, error: BaseException) -> None:
    """A request's error on its span: ``error.type`` always, status ERROR when it is the server's fault
    (a client's mistake leaves a SERVER span's status unset, as the HTTP and RPC conventions say)."""
    if isinstance(error, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")  # the client went away: no one's fault here
        return
    if isinstance(error, ServingError):
        span.set_attribute("error.type", type(error).__name__)
        if error.http_status >= 500:
            span.set_status(Status(StatusCode.ERROR, _short(str(error))))
        return
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, _short(failure_text(error))))


class Request:
    """One request's span, current while the block runs and ended when it ends, whatever happens.

    The SDK's ``start_as_current_span`` does the same through two generator-based context managers;
    this is the cheaper path a request takes, sampled or not. ``on_error`` puts the transport's
    status code for an error on the span.
    """

    __slots__ = ("span", "_token", "_on_error")

    def __init__(self, span: Span, on_error: Callable[[Span, ServingError], None] | None = None) -> None:
        self.span = span
        self._on_error = on_error
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        try:
            if error is not None and self.span.is_recording():
                if isinstance(error, ServingError) and self._on_error is not None:
                    self._on_error(self.span, error)
                _failed(self.span, error)
        finally:
            otel_context.detach(self._token)  # type: ignore[arg-type]  # the token attach returned
            self.span.end()


def _caller(tracing: Tracing, carrier: Mapping[str, str]) -> otel_context.Context | None:
    """The caller's context; None (a root) without a ``traceparent``, for which no propagator need run."""
    return tracing.extract(carrier) if "traceparent" in carrier else None


def _http_code(span: Span, error: ServingError) -> None:
    span.set_attribute("http.response.status_code", error.http_status)


def _grpc_code(span: Span, error: ServingError) -> None:
    span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, error.grpc_code).value[0])


def http_request(tracing: Tracing, headers: Mapping[str, str], model: str, version: str) -> Request:
    """The SERVER span of one HTTP infer request (``with``: current while the block runs); the caller
    sets the response's status with `http_status`."""
    route = "/v2/models/{model_name}" + ("/versions/{model_version}" if version else "") + "/infer"
    attributes = {"http.request.method": "POST", "http.route": route, **model_attributes(model, version)}
    span = tracing.tracer.start_span(f"POST {route}", context=_caller(tracing, headers), kind=SpanKind.SERVER,
                                     attributes=attributes)
    return Request(span, _http_code)


def http_status(span: Span, status: int) -> None:
    """The status code an HTTP request was answered with; 5xx is the server's error."""
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))


def grpc_parent(tracing: Tracing, metadata: Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context | None:
    """The caller's context from a gRPC call's invocation metadata (text keys only); None for none."""
    return _caller(tracing, {key: value for key, value in metadata or () if isinstance(value, str)})


def grpc_request(tracing: Tracing, parent: otel_context.Context | None, method: str, model: str,
                 version: str) -> Request:
    """The SERVER span of one gRPC inference request (a ModelInfer call, or one message of a stream)."""
    attributes = {"rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": method,
                  "rpc.grpc.status_code": 0, **model_attributes(model, version)}  # an error sets its own code
    span = tracing.tracer.start_span(f"{GRPC_SERVICE}/{method}", context=parent, kind=SpanKind.SERVER,
                                     attributes=attributes)
    return Request(span, _grpc_code)


def grpc_error(span: Span, error: Exception) -> None:
    """A request of a stream that failed with its own error message (the stream goes on)."""
    if span.is_recording():
        code = error.grpc_code if isinstance(error, ServingError) else "INTERNAL"
        span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, code).value[0])
        _failed(span, error)


def inprocess_request(tracing: Tracing, model: str, version: str | None) -> Request:
    """The INTERNAL span of an in-process request (an ensemble step, a BLS call), in the caller's trace."""
    return Request(tracing.tracer.start_span(f"infer {model}", kind=SpanKind.INTERNAL,
                                             attributes=model_attributes(model, version or "")))


async def batch(tracing: Tracing, instance: ModelInstance, items: list[Pending],
                execute: Execute) -> tuple[list[Any], list[Any]]:
    """Runs ``execute`` on a batch inside its ``compute`` span (linked to each traced request, which
    also gets its ``queue`` span); untraced batches (no request sampled) run as they are."""
    traced = [(item, span) for item in items
              if (span := getattr(item.payload, "span", None)) is not None and span.is_recording()]
    if not traced:
        return await execute(items, None)
    tracer = tracing.tracer
    offset = time.time_ns() - time.monotonic_ns()  # the batcher's clock is monotonic; spans take epoch time
    version = _version(instance.handler.version)
    for item, span in traced:
        span.set_attributes({VERSION: version, ROWS: item.rows})
        request_id = getattr(item.payload, "id", None)
        if request_id:
            span.set_attribute(REQUEST_ID, _short(str(request_id)))
    spec = instance.spec
    compute = tracer.start_span(
        "compute", context=trace.set_span_in_context(traced[0][1]), kind=SpanKind.INTERNAL,
        links=[Link(span.get_span_context()) for _, span in traced],
        attributes={MODEL: spec.name, VERSION: version, INSTANCE: instance.label,
                    BATCH_SIZE: sum(item.rows for item in items), BATCH_REQUESTS: len(items)})
    token = otel_context.attach(trace.set_span_in_context(compute))
    try:  # current here and, through the copied context, on the instance's thread: BLS calls join this trace
        results, executions = await execute(items, contextvars.copy_context())
    except BaseException as error:  # the whole batch failed: every request gets this error
        compute.set_attribute("serving.failed_requests", len(items))
        _failed(compute, error)
        compute.end()
        raise
    finally:
        otel_context.detach(token)
        _queue_spans(tracer, traced, offset)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        compute.set_attribute("serving.failed_requests", len(failures))
        if len(failures) == len(results):
            _failed(compute, failures[0])
    _timings(compute, executions)
    compute.end()
    return results, executions


def _queue_spans(tracer: Any, traced: list[tuple[Pending, Span]], offset: int) -> None:
    """Each traced request's wait, ended where its compute began: known only once it did, since a
    staged batch starts on the instance's thread (one that never started ends now)."""
    now = time.monotonic_ns()
    for item, span in traced:
        queued = tracer.start_span("queue", context=trace.set_span_in_context(span), kind=SpanKind.INTERNAL,
                                   start_time=item.enqueued_ns + offset)
        queued.end(end_time=(item.dispatched_ns or now) + offset)


def _timings(span: Span, executions: list[Any]) -> None:
    """Input, infer and output times of the batch's executions (more than one when it was split)."""
    totals = [sum(timings[i] for _, timings in executions) for i in range(3)] if executions else [0, 0, 0]
    span.set_attributes({"serving.compute_input_us": totals[0] // 1000, "serving.compute_infer_us": totals[1] // 1000,
                         "serving.compute_output_us": totals[2] // 1000, "serving.executions": len(executions)})
