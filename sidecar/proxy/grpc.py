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
readiness (the primary's, unless draining), for Kubernetes' gRPC probes.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2

from serving.connections import grpc_client_limits  # pure: the same client limits as serve's listener

from inference_protocol.errors import GRPC_TO_HTTP

from ..mirror.exchange import CANCELLED, TIMEOUT, Answer, Exchange
from .health import Health
from .metrics import ProxyMetrics
from ..mirror.shadow import choose_copies
from ..canary.controller import Controller
from ..routing import CANARY, PRIMARY, retry_on_primary, sampled, split, sticky_key, upstream_failed
from .upstreams import CanaryUpstream, Runtime
from ..config.settings import Settings
from ..records.decode import DecodeError, grpc_request
from ..upstream.client import GRPC_MESSAGE_LIMIT, forward_metadata

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_STREAM_INFER = f"/{SERVICE}/ModelStreamInfer"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
UNARY = frozenset(f"/{SERVICE}/{m.name}" for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
                  if not m.client_streaming and not m.server_streaming)
REQUEST_ID = "x-request-id"
Metadata = tuple[tuple[str, Any], ...]


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
                handler = grpc.unary_unary_rpc_method_handler(functools.partial(proxy.unary, method))
            else:
                handler = grpc.stream_stream_rpc_method_handler(functools.partial(proxy.stream, method))
            self._cache[method] = handler
        return handler


class GrpcProxy:
    """The gRPC listener's handlers; `start` binds a grpc.aio server."""

    def __init__(self, runtime: Callable[[], Runtime], metrics: ProxyMetrics, submit: Callable[[Exchange], object],
                 health: Health, canary: Controller) -> None:
        self._runtime = runtime
        self.metrics = metrics
        self._submit = submit
        self.health = health
        self.canary = canary
        self.in_flight = 0  # the drain waits for it to reach 0
        self.server: grpc.aio.Server | None = None
        self._request_duration = metrics.request_duration.labels("grpc")
        self._hop = metrics.hop_duration.labels("grpc")
        self._upstream_duration = {name: metrics.upstream_duration.labels(name, "grpc") for name in (PRIMARY, CANARY)}
        self._retries = metrics.canary_retries.labels("grpc")

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

    def _enter(self) -> None:
        self.in_flight += 1

    def _leave(self) -> None:
        self.in_flight -= 1

    async def health_check(self, request: health_pb2.HealthCheckRequest,
                           context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        ready, _ = await self.health.ready()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    def _sticky(self, canary: CanaryUpstream, metadata: Metadata, request: bytes | None) -> str:
        header = _lookup(metadata, canary.header) if canary.header else None
        request_id = _lookup(metadata, REQUEST_ID)
        if header is None and request_id is None and request is not None:
            try:
                request_id = grpc_request(request).request_id
            except DecodeError:
                request_id = None
        return sticky_key(header, request_id, "") or uuid.uuid4().hex

    def _exchange(self, rt: Runtime, request: bytes, metadata: Metadata, served: str) -> tuple[Exchange | None,
                                                                                                Metadata]:
        """Send the copies (shadows; the primary's when the canary serves); an exchange collects the answers."""
        request_id = _lookup(metadata, REQUEST_ID) or uuid.uuid4().hex
        key = _lookup(metadata, rt.sample_header)
        if key is None and rt.needs_key:
            try:
                key = grpc_request(request).request_id
            except DecodeError:
                key = None
        key = key or request_id
        copies = rt.canary.copies if served == CANARY and rt.canary is not None else None
        chosen = choose_copies(rt.shadows, copies, key, "grpc", len(request))
        if not chosen and not (rt.observe_fraction and sampled(key, rt.observe_fraction, "drift")):
            return None, metadata
        if chosen and _lookup(metadata, REQUEST_ID) is None:
            metadata = (*metadata, (REQUEST_ID, request_id))
        exchange = Exchange(key, request_id, time.time(), "", "grpc", request, None, self._submit, record=bool(chosen))
        exchange.expect(len(chosen))
        for shadow in chosen:
            shadow.send_grpc(MODEL_INFER, request, metadata, exchange)
        return exchange, metadata

    def _count(self, upstream: str, code: grpc.StatusCode, received: float, upstream_secs: float | None) -> None:
        self.metrics.requests.labels(upstream, "grpc", code.name).inc()
        total = time.perf_counter() - received
        self._request_duration.observe(total)
        if upstream_secs is not None:  # streams have no single upstream time
            self._hop.observe(max(0.0, total - upstream_secs))

    def _observe(self, name: str, infer: bool, seconds: float | None, code: grpc.StatusCode) -> None:
        if infer:
            if seconds is not None:
                self._upstream_duration[name].observe(seconds)
            if self.canary.observing:
                self.canary.observe(name, seconds, upstream_failed(GRPC_TO_HTTP.get(code.name, 500)))

    async def _attempt(self, name: str, channel: grpc.aio.Channel, calls: dict[str, Any], method: str,
                       request: bytes, metadata: Metadata, context: grpc.aio.ServicerContext,
                       limit: float) -> tuple[grpc.aio.UnaryUnaryCall | grpc.aio.AioRpcError, Answer, float]:
        """One unary call: the finished call, or its error; the answer for the records; the seconds it took."""
        factory = calls.get(method)
        if factory is None:
            factory = calls[method] = channel.unary_unary(method)
        remaining = context.time_remaining()
        sent = time.perf_counter()
        call = factory(request, metadata=metadata, timeout=limit if remaining is None else min(remaining, limit))
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            elapsed = time.perf_counter() - sent
            code = exc.code()
            error = TIMEOUT if code == grpc.StatusCode.DEADLINE_EXCEEDED else (exc.details() or code.name)
            self._observe(name, method == MODEL_INFER, elapsed, code)
            return exc, Answer(name, GRPC_TO_HTTP.get(code.name, 500), elapsed * 1000, error), elapsed
        elapsed = time.perf_counter() - sent
        self._observe(name, method == MODEL_INFER, elapsed, grpc.StatusCode.OK)
        return call, Answer(name, 200, elapsed * 1000, None, response), elapsed

    @staticmethod
    def _details(rt: Runtime, served: str, error: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> str:
        """The message for a failed call: the upstream's own, or, when it never answered, one naming it (as Envoy)."""
        code, details = error.code(), error.details() or ""
        canary = rt.canary.config if served == CANARY and rt.canary is not None else None
        target = canary.grpc if canary is not None else rt.config.primary.grpc
        if code == grpc.StatusCode.UNAVAILABLE and not error.trailing_metadata():
            return f"upstream connect error: the {served} at {target} cannot be reached ({details})"
        remaining = context.time_remaining()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and (remaining is None or remaining > 0.05):
            limit = canary.timeout_secs if canary is not None else rt.config.primary.timeout_secs
            return f"upstream request timeout: the {served} at {target} did not answer within {limit:g}s"
        return details

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        received = time.perf_counter()
        rt = self._runtime()
        primary = rt.primary_grpc
        if primary is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar has no gRPC primary (--primary-grpc)")
            raise AssertionError("not reached: abort raises")
        metadata = forward_metadata(context.invocation_metadata())
        served, channel, calls, limit = PRIMARY, primary, rt.grpc_calls, rt.config.primary.timeout_secs
        canary, weight, infer = rt.canary, self.canary.weight, method == MODEL_INFER
        if infer and canary is not None and canary.grpc is not None and weight > 0:
            if split(self._sticky(canary, metadata, request), weight) == CANARY:
                served, channel, calls, limit = CANARY, canary.grpc, canary.grpc_calls, canary.config.timeout_secs
        exchange = None
        if infer and (rt.shadows or served == CANARY or rt.observe_fraction):
            exchange, metadata = self._exchange(rt, request, metadata, served)
        self._enter()
        answer: Answer | None = None
        code = grpc.StatusCode.CANCELLED
        elapsed: float | None = None
        first = 0.0
        try:
            outcome, answer, elapsed = await self._attempt(served, channel, calls, method, request, metadata,
                                                           context, limit)
            remaining = context.time_remaining()
            if isinstance(outcome, grpc.aio.AioRpcError) and retry_on_primary(
                    served, answer.status, idempotent=True, body_held=True) and (remaining is None or remaining > 0):
                self._retries.inc()
                served, first, answer = PRIMARY, elapsed, None  # a cancelled retry is not the canary's answer
                outcome, answer, elapsed = await self._attempt(PRIMARY, primary, rt.grpc_calls, method, request,
                                                               metadata, context, rt.config.primary.timeout_secs)
            elapsed += first
            if isinstance(outcome, grpc.aio.AioRpcError):
                code = outcome.code()
                trailing = forward_metadata(tuple(outcome.trailing_metadata() or ()))
                if trailing:
                    context.set_trailing_metadata(trailing)
                await context.abort(code, self._details(rt, served, outcome, context))
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
            self._leave()
            if exchange is not None:
                exchange.set_primary(answer or Answer(served, None, None, CANCELLED))
            self._count(served, code, received, elapsed)

    async def stream(self, method: str, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        rt = self._runtime()
        channel = rt.primary_grpc
        if channel is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar has no gRPC primary (--primary-grpc)")
            raise AssertionError("not reached: abort raises")
        received = time.perf_counter()
        metadata = forward_metadata(context.invocation_metadata())
        served = PRIMARY
        canary, weight, infer = rt.canary, self.canary.weight, method == MODEL_STREAM_INFER
        if infer and canary is not None and canary.grpc is not None and weight > 0:
            if split(self._sticky(canary, metadata, None), weight) == CANARY:
                served, channel = CANARY, canary.grpc  # the whole stream: one upstream
        call = channel.stream_stream(method)(metadata=metadata, timeout=context.time_remaining())

        async def pump() -> None:
            async for message in requests:
                await call.write(message)
            await call.done_writing()

        self._enter()
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
            self._leave()
            self._observe(served, infer, None, code)
            self._count(served, code, received, None)
