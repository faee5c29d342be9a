"""The gRPC proxy: a generic proxy of ``inference.GRPCInferenceService`` (and any other service).

Messages pass through as bytes, never decoded on the request path, except a
``ModelInfer`` request's ``id`` when sampling or the canary split needs it and no
metadata gives a key. ``ModelInfer`` calls go to the canary for its weight's share of
sticky keys, and a failed canary call is retried once on the primary (within the
client's deadline); a ``ModelStreamInfer`` stream is pinned to one upstream. Unary
methods are proxied as unary calls, everything else (``ModelStreamInfer``, unknown
services) as bidirectional streams, which carry any cardinality. Status codes, details,
initial and trailing metadata come back as the primary sent them; the client's deadline
carries over. ``grpc.health.v1.Health/Check`` is answered by the sidecar from its own
readiness (the primary's, unless draining), for Kubernetes' gRPC probes. With tracing on
(`sidecar.spans`) a call (a whole stream) is a SERVER span and each call upstream a CLIENT span
whose ``traceparent`` metadata replaces the client's.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2

from inference_protocol.errors import GRPC_TO_HTTP
from serving.connections import grpc_client_limits  # pure: the same client limits as serve's listener

from ..canary.controller import Controller
from ..config.settings import Settings
from ..mirror.exchange import TIMEOUT, Answer, Exchange
from ..records.decode import DecodeError, grpc_request
from ..routing import CANARY, PRIMARY, retry_on_primary
from ..spans import RequestSpan
from ..upstream.client import GRPC_MESSAGE_LIMIT
from ..upstream.headers import Metadata, forward_metadata
from .health import Health
from .metrics import ProxyMetrics
from .plan import REQUEST_ID, Incoming, Plan, Proxy
from .upstreams import Upstreams

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_STREAM_INFER = f"/{SERVICE}/ModelStreamInfer"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
UNARY = frozenset(f"/{SERVICE}/{m.name}"
                  for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
                  if not m.client_streaming and not m.server_streaming)



def grpc_server_options(settings: Settings) -> list[tuple[str, Any]]:
    """What bounds slow and idle gRPC clients, as the HTTP listener's guard does (`sidecar.proxy.guard`).

    A connection must finish its HTTP/2 handshake within ``--header-timeout-secs``; one
    with no call for ``--grpc-max-connection-idle-secs`` gets GOAWAY; at most
    ``--grpc-max-concurrent-streams`` calls run on one connection; pings without calls
    are refused past a few strikes (grpc's defaults).
    """
    return list(grpc_client_limits(settings.header_timeout_secs, settings.grpc_max_connection_idle_secs,
                                   settings.grpc_max_concurrent_streams))


def _lookup(metadata: Metadata, name: str) -> str | None:
    for key, value in metadata:
        if key == name and isinstance(value, str):
            return value
    return None


class _Route(NamedTuple):
    """Where a unary call goes: the upstream's name, its channel, the channel's call objects, its timeout."""

    name: str
    channel: grpc.aio.Channel
    calls: dict[str, grpc.aio.UnaryUnaryMultiCallable]
    limit: float


def _request_id(request: bytes) -> str | None:
    try:
        return grpc_request(request).request_id
    except DecodeError:
        return None


def _code_status(code: grpc.StatusCode) -> int:
    return GRPC_TO_HTTP.get(code.name, 500)


def _aborted(context: grpc.aio.ServicerContext) -> str:
    """The status a call that raised ends with: the one it was aborted with, else (a bug, or the
    client gone) UNKNOWN or CANCELLED."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "CANCELLED" if context.cancelled() else "UNKNOWN"


class _Handlers(grpc.GenericRpcHandler):
    def __init__(self, proxy: GrpcProxy) -> None:
        self._proxy = proxy
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._cache.get(method)
        if handler is None:
            proxy = self._proxy
            if method == HEALTH_CHECK:
                handler = grpc.unary_unary_rpc_method_handler(
                    proxy.health_check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString)
            elif method in UNARY:
                # tracing off: the call pays no frame for it (spans are set before the server starts)
                call = proxy.unary if proxy.spans is None else proxy.traced_unary
                handler = grpc.unary_unary_rpc_method_handler(functools.partial(call, method))
            else:
                handler = grpc.stream_stream_rpc_method_handler(functools.partial(proxy.stream, method))
            self._cache[method] = handler
        return handler


class GrpcProxy(Proxy):
    """The gRPC listener's handlers; `start` binds a grpc.aio server."""

    def __init__(self, upstreams: Callable[[], Upstreams], metrics: ProxyMetrics,
                 submit: Callable[[Exchange], object], health: Health, rollout: Controller) -> None:
        super().__init__(upstreams, metrics, submit, health, rollout, "grpc")
        self.server: grpc.aio.Server | None = None

    async def start(self, host: str, port: int, options: Sequence[tuple[str, Any]] = ()) -> int:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
                                          ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
                                          ("grpc.so_reuseport", 0), *options])
        server.add_generic_rpc_handlers((_Handlers(self),))
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        await server.start()
        self.server = server
        return bound

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)

    async def health_check(self, request: health_pb2.HealthCheckRequest,
                           context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        ready, _ = await self.health.ready()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    def _plan(self, ups: Upstreams, request: bytes | None, metadata: Metadata, infer: bool,
              span: RequestSpan | None) -> Plan:
        if not infer or not self.routes(ups):
            return Plan(PRIMARY)

        def lookup(name: str) -> str | None:
            return _lookup(metadata, name)
        incoming = Incoming("grpc", lookup, request, len(request) if request is not None else None, _request_id,
                            span=span)
        canary = ups.canary
        return self.plan(ups, incoming, infer=infer, canary_here=canary is not None and canary.grpc is not None,
                         mirror=request is not None and infer)

    async def _attempt(self, route: _Route, method: str, request: bytes, metadata: Metadata,
                       context: grpc.aio.ServicerContext, span: RequestSpan | None = None,
                       retry: bool = False) -> tuple[grpc.aio.UnaryUnaryCall | grpc.aio.AioRpcError, Answer, float]:
        """One unary call: the finished call, or its error; the answer for the records; the seconds it took."""
        name, channel, calls, limit = route
        factory = calls.get(method)
        if factory is None:
            factory = calls[method] = channel.unary_unary(method)
        if span is None:
            return await self._call(factory, name, method, request, metadata, context, limit)
        attempt = span.call(name, retry)
        code = "CANCELLED"
        try:
            outcome = await self._call(factory, name, method, request, attempt.metadata(metadata), context, limit)
            code = outcome[0].code().name if isinstance(outcome[0], grpc.aio.AioRpcError) else "OK"
            return outcome
        finally:
            attempt.end_grpc(code)

    async def _call(self, factory: grpc.aio.UnaryUnaryMultiCallable, name: str, method: str, request: bytes,
                    metadata: Metadata, context: grpc.aio.ServicerContext,
                    limit: float) -> tuple[grpc.aio.UnaryUnaryCall | grpc.aio.AioRpcError, Answer, float]:
        remaining = context.time_remaining()
        sent = time.perf_counter()
        call = factory(request, metadata=metadata, timeout=limit if remaining is None else min(remaining, limit))
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            elapsed = time.perf_counter() - sent
            code = exc.code()
            error = TIMEOUT if code == grpc.StatusCode.DEADLINE_EXCEEDED else (exc.details() or code.name)
            if method == MODEL_INFER:
                self.observer.upstream(name, elapsed, _code_status(code))
            return exc, Answer(name, _code_status(code), elapsed * 1000, error), elapsed
        elapsed = time.perf_counter() - sent
        if method == MODEL_INFER:
            self.observer.upstream(name, elapsed, 200)
        return call, Answer(name, 200, elapsed * 1000, None, response), elapsed

    @staticmethod
    def _details(ups: Upstreams, served: str, error: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> str:
        """The message for a failed call: the upstream's own, or, when it never answered, one naming it (as Envoy)."""
        code, details = error.code(), error.details() or ""
        canary = ups.canary.config if served == CANARY and ups.canary is not None else None
        target = canary.grpc if canary is not None else ups.config.primary.grpc
        if code == grpc.StatusCode.UNAVAILABLE and not error.trailing_metadata():
            return f"upstream connect error: the {served} at {target} cannot be reached ({details})"
        remaining = context.time_remaining()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and (remaining is None or remaining > 0.05):
            limit = canary.timeout_secs if canary is not None else ups.config.primary.timeout_secs
            return f"upstream request timeout: the {served} at {target} did not answer within {limit:g}s"
        return details

    async def traced_unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """`unary` in a SERVER span."""
        spans = self.spans
        if spans is None:
            return await self.unary(method, request, context)
        span = spans.grpc(method, context.invocation_metadata() or ())
        code = "CANCELLED"
        try:
            response = await self.unary(method, request, context, span)
            code = "OK"
            return response
        except BaseException:
            code = _aborted(context)
            raise
        finally:
            span.end_grpc(code)

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext,
                    span: RequestSpan | None = None) -> bytes:
        received = time.perf_counter()
        ups = self._upstreams()
        primary = ups.primary_grpc
        if primary is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar has no gRPC primary (--primary-grpc)")
            raise AssertionError("not reached: abort raises")
        metadata = forward_metadata(context.invocation_metadata())
        plan = self._plan(ups, request, metadata, method == MODEL_INFER, span)
        if plan.add_request_id is not None:
            metadata = (*metadata, (REQUEST_ID, plan.add_request_id))
        if plan.exchange is not None:  # copies go only with one
            for shadow in plan.copies:
                shadow.send_grpc(MODEL_INFER, request, metadata, plan.exchange, span)
        on_primary = _Route(PRIMARY, primary, ups.grpc_calls, ups.config.primary.timeout_secs)
        canary = ups.canary
        route = (_Route(CANARY, canary.grpc, canary.grpc_calls, canary.config.timeout_secs)
                 if plan.served == CANARY and canary is not None and canary.grpc is not None else on_primary)
        self.in_flight += 1
        answer: Answer | None = None
        code = grpc.StatusCode.CANCELLED
        elapsed: float | None = None
        first = 0.0
        try:
            outcome, answer, elapsed = await self._attempt(route, method, request, metadata, context, span)
            remaining = context.time_remaining()
            if isinstance(outcome, grpc.aio.AioRpcError) and retry_on_primary(
                    plan.served, answer.status, idempotent=True, body_held=True) and (
                    remaining is None or remaining > 0):
                self.observer.retries.inc()
                plan.served, first, answer = PRIMARY, elapsed, None  # a cancelled retry is not the canary's answer
                outcome, answer, elapsed = await self._attempt(on_primary, method, request, metadata, context, span,
                                                               retry=True)
            elapsed += first
            if isinstance(outcome, grpc.aio.AioRpcError):
                code = outcome.code()
                trailing = forward_metadata(tuple(outcome.trailing_metadata() or ()))
                if trailing:
                    context.set_trailing_metadata(trailing)
                await context.abort(code, self._details(ups, plan.served, outcome, context))
            code = grpc.StatusCode.OK
            initial = forward_metadata(tuple(await outcome.initial_metadata()))
            if initial:
                await context.send_initial_metadata(initial)
            trailing = forward_metadata(tuple(await outcome.trailing_metadata()))
            if trailing:
                context.set_trailing_metadata(trailing)
            assert answer is not None and answer.body is not None
            return answer.body
        finally:
            self.in_flight -= 1
            plan.settle(answer)
            self.observer.answered(plan.served, code.name, received, elapsed)

    async def stream(self, method: str, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        ups = self._upstreams()
        channel = ups.primary_grpc
        if channel is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar has no gRPC primary (--primary-grpc)")
            raise AssertionError("not reached: abort raises")
        received = time.perf_counter()
        spans = self.spans
        span = spans.grpc(method, context.invocation_metadata() or ()) if spans is not None else None
        metadata = forward_metadata(context.invocation_metadata())
        infer = method == MODEL_STREAM_INFER
        plan = self._plan(ups, None, metadata, infer, span)
        if plan.served == CANARY and ups.canary is not None and ups.canary.grpc is not None:
            channel = ups.canary.grpc  # the whole stream: one upstream
        attempt = span.call(plan.served) if span is not None else None  # one span for the whole stream
        if attempt is not None:
            metadata = attempt.metadata(metadata)
        call: grpc.aio.StreamStreamCall = channel.stream_stream(method)(metadata=metadata,
                                                                        timeout=context.time_remaining())

        async def pump() -> None:
            async for message in requests:
                await call.write(message)
            await call.done_writing()

        self.in_flight += 1
        pumping = asyncio.ensure_future(pump())
        code = grpc.StatusCode.CANCELLED
        try:
            initial = forward_metadata(tuple(await call.initial_metadata()))
            if initial:
                await context.send_initial_metadata(initial)
            async for response in call:
                yield response
            code = await call.code()
            trailing = forward_metadata(tuple(await call.trailing_metadata()))
            if trailing:
                context.set_trailing_metadata(trailing)
            if code != grpc.StatusCode.OK:
                await context.abort(code, await call.details() or "")
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            trailing = forward_metadata(tuple(exc.trailing_metadata() or ()))
            if trailing:
                context.set_trailing_metadata(trailing)
            await context.abort(code, exc.details() or "")
        finally:
            pumping.cancel()
            call.cancel()
            self.in_flight -= 1
            if infer:
                self.observer.upstream(plan.served, None, _code_status(code))
            self.observer.answered(plan.served, code.name, received, None)
            if attempt is not None and span is not None:
                attempt.end_grpc(code.name)
                span.end_grpc(code.name)
