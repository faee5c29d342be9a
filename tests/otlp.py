"""A real OTLP trace receiver for tests, over OTLP/HTTP (protobuf) and OTLP/gRPC.

It listens on two free localhost ports (aiohttp for ``POST /v1/traces`` on its own event loop in a
thread, grpcio's ``TraceService`` on grpcio's own threads), decodes every export the way a
collector would, and keeps the spans for assertions. Sync and async tests use it alike::

    with Receiver() as receiver:
        server = Serve(repository, env=receiver.env("grpc"))   # or "http/protobuf"
        ...
        [span] = receiver.wait_for(name="ModelInfer")          # blocks up to `timeout` seconds
        assert span.kind == "SERVER" and span.parent_span_id == caller_span_id

``Receiver(behaviour="hang")`` holds every export open until the receiver closes and
``behaviour="refuse"`` answers each with HTTP 503 / gRPC UNAVAILABLE: a collector that is stuck or
overloaded. (A collector that is down is a free port nobody listens on: `free_port`.)
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

Behaviour = Literal["accept", "hang", "refuse"]
MAX_EXPORT_BYTES = 32 << 20  # a test never sends more; a bigger body is a bug worth a 413


@dataclass(frozen=True)
class Link:
    """A span link: the linked span's ids (lowercase hex) and the link's attributes."""

    trace_id: str
    span_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A span event: its name, attributes and time (ns since the epoch)."""

    name: str
    attributes: dict[str, Any]
    time_unix_nano: int


@dataclass(frozen=True)
class Span:
    """One received span, decoded: ids are lowercase hex ('' for no parent), ``kind`` is
    ``SERVER``/``CLIENT``/``INTERNAL``/``PRODUCER``/``CONSUMER``, ``status`` ``UNSET``/``OK``/``ERROR``,
    ``service`` the resource's ``service.name``."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[Link, ...]
    attributes: dict[str, Any]
    events: tuple[Event, ...]
    status: str
    status_message: str
    service: str
    resource: dict[str, Any]
    start_unix_nano: int
    end_unix_nano: int


def free_port() -> int:
    """A localhost TCP port free at the time of asking (nothing listens on it afterwards)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """The spans of one export request, flattened, each with its resource."""
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(Span(
                    name=span.name,
                    kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    links=tuple(Link(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))
                                for link in span.links),
                    attributes=_attributes(span.attributes),
                    events=tuple(Event(event.name, _attributes(event.attributes), event.time_unix_nano)
                                 for event in span.events),
                    status=trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                    status_message=span.status.message,
                    service=str(resource.get("service.name", "")), resource=resource,
                    start_unix_nano=span.start_time_unix_nano, end_unix_nano=span.end_time_unix_nano))
    return spans


class Receiver:
    """An OTLP trace receiver on free localhost ports (HTTP and gRPC), collecting decoded spans.

    Use it as a context manager; `env` gives the ``OTEL_*`` variables that point an SDK at it.
    """

    def __init__(self, behaviour: Behaviour = "accept") -> None:
        self.behaviour = behaviour
        self.exports = 0  # export requests received, answered or not
        self._spans: list[Span] = []
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-receiver", daemon=True)
        self._runner: web.AppRunner | None = None
        self._http_closed = asyncio.Event()  # set on the receiver's loop, at close
        self._grpc: grpc.Server | None = None
        self.http_port = 0
        self.grpc_port = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Receiver:
        self._thread.start()
        self.http_port = asyncio.run_coroutine_threadsafe(self._start_http(), self._loop).result(10)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stops both servers; exports held by ``behaviour="hang"`` are released first."""
        self._closed.set()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._http_closed.set)
        if self._grpc is not None:
            self._grpc.stop(grace=0).wait(5)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _start_http(self) -> int:
        app = web.Application(client_max_size=MAX_EXPORT_BYTES)
        app.router.add_post("/v1/traces", self._http_export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]  # started just above

    # -- where an SDK sends spans ----------------------------------------------------------------
    @property
    def http_endpoint(self) -> str:
        """The OTLP/HTTP traces URL (``…/v1/traces``)."""
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def grpc_endpoint(self) -> str:
        """The OTLP/gRPC endpoint (``http://host:port``: plaintext)."""
        return f"http://127.0.0.1:{self.grpc_port}"

    def env(self, protocol: Literal["http/protobuf", "grpc"] = "http/protobuf", **extra: str) -> dict[str, str]:
        """The ``OTEL_*`` variables that send a process's spans here over ``protocol`` (plus ``extra``),
        with a short export delay so that spans arrive within a test's patience."""
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50", **extra}

    # -- what arrived ----------------------------------------------------------------------------
    def spans(self, name: str | None = None) -> list[Span]:
        """The spans received so far, in arrival order (only those called ``name``, if given)."""
        with self._changed:
            return [s for s in self._spans if name is None or s.name == name]

    def clear(self) -> None:
        """Forgets the spans received so far."""
        with self._changed:
            self._spans.clear()

    def wait_for(self, predicate: Callable[[Span], bool] | None = None, *, name: str | None = None,
                 count: int = 1, timeout: float = 10.0) -> list[Span]:
        """The spans matching ``name`` and ``predicate`` once at least ``count`` have arrived (all of
        them, in arrival order); raises AssertionError, listing what did arrive, after ``timeout``."""
        def matching() -> list[Span]:
            return [s for s in self._spans if (name is None or s.name == name) and (predicate is None or predicate(s))]

        deadline = time.monotonic() + timeout
        with self._changed:
            while len(found := matching()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(f"{s.name}({s.kind})" for s in self._spans) or "nothing"
                    raise AssertionError(f"{len(found)} of {count} matching spans after {timeout}s; received: {seen}")
                self._changed.wait(left)
            return found

    async def wait_for_async(self, predicate: Callable[[Span], bool] | None = None, *, name: str | None = None,
                             count: int = 1, timeout: float = 10.0) -> list[Span]:
        """`wait_for` for async tests, without blocking their event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, name=name, count=count, timeout=timeout)

    def _received(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        spans = decode(request)
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    # -- the two transports ----------------------------------------------------------------------
    async def _http_export(self, request: web.Request) -> web.Response:
        self.exports += 1
        if self.behaviour == "hang":
            await self._http_closed.wait()  # a stuck collector: held until the test ends
            return web.Response(status=503)
        if self.behaviour == "refuse":
            return web.Response(status=503, text="overloaded (test receiver)")
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        message = trace_service_pb2.ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except DecodeError as error:  # the sender's fault: 400, as a collector says
            return web.Response(status=400, text=f"not an ExportTraceServiceRequest: {error}")
        self._received(message)
        return web.Response(body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,  # the proto's name
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        self.receiver.exports += 1
        if self.receiver.behaviour == "hang":
            self.receiver._closed.wait()
        if self.receiver.behaviour != "accept":
            context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded (test receiver)")
        self.receiver._received(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def spans_of_trace(spans: list[Span], trace_id: str) -> Iterator[Span]:
    """The spans of one trace, as they arrived."""
    return (s for s in spans if s.trace_id == trace_id)
