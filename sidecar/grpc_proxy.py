"""The gRPC proxy: a generic proxy of ``inference.GRPCInferenceService`` (and any other service).

Messages pass through as bytes, never decoded on the request path, except a
``ModelInfer`` request's ``id`` when sampling needs it and no header gives a key. Unary
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
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2

from .exchange import CANCELLED, GRPC_TO_HTTP, TIMEOUT, Answer, Exchange
from .health import Health
from .metrics import Metrics
from .mirror import choose_shadows
from .runtime import PRIMARY, Runtime
from .tensors import DecodeError, grpc_request
from .upstream import GRPC_MESSAGE_LIMIT, forward_metadata

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
UNARY = frozenset(f"/{SERVICE}/{m.name}" for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
                  if not m.client_streaming and not m.server_streaming)
REQUEST_ID = "x-request-id"
Metadata = tuple[tuple[str, Any], ...]


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

    def __init__(self, runtime: Callable[[], Runtime], metrics: Metrics, submit: Callable[[Exchange], object],
                 health: Health) -> None:
        self._runtime = runtime
        self.metrics = metrics
        self._submit = submit
        self.health = health
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.server: grpc.aio.Server | None = None
        self._request_duration = metrics.request_duration.labels("grpc")
        self._hop = metrics.hop_duration.labels("grpc")

    async def start(self, host: str, port: int) -> int:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
                                          ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
                                          ("grpc.so_reuseport", 0)])
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
        self.idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def health_check(self, request: health_pb2.HealthCheckRequest,
                           context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        ready, _ = await self.health.ready()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    def _mirror(self, rt: Runtime, request: bytes, metadata: Metadata) -> tuple[Exchange | None, Metadata]:
        request_id = _lookup(metadata, REQUEST_ID) or uuid.uuid4().hex
        key = _lookup(metadata, rt.sample_header)
        if key is None and rt.needs_key:
            try:
                key = grpc_request(request).request_id
            except DecodeError:
                key = None
        chosen = choose_shadows(rt.shadows, key or request_id, "grpc", len(request))
        if not chosen:
            return None, metadata
        if _lookup(metadata, REQUEST_ID) is None:
            metadata = (*metadata, (REQUEST_ID, request_id))
        exchange = Exchange(key or request_id, request_id, time.time(), "", "grpc", request, None, self._submit)
        exchange.expect(len(chosen))
        for shadow in chosen:
            shadow.send_grpc(MODEL_INFER, request, metadata, exchange)
        return exchange, metadata

    def _count(self, code: grpc.StatusCode, received: float, upstream_secs: float | None) -> None:
        self.metrics.requests.labels(PRIMARY, "grpc", code.name).inc()
        total = time.perf_counter() - received
        self._request_duration.observe(total)
        if upstream_secs is not None:  # streams have no single upstream time
            self._hop.observe(max(0.0, total - upstream_secs))

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        received = time.perf_counter()
        rt = self._runtime()
        channel = rt.primary_grpc
        if channel is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar has no gRPC primary (--primary-grpc)")
        metadata = forward_metadata(context.invocation_metadata())
        exchange = None
        if method == MODEL_INFER and rt.shadows:
            exchange, metadata = self._mirror(rt, request, metadata)
        call_factory = rt.grpc_calls.get(method)
        if call_factory is None:
            call_factory = rt.grpc_calls[method] = channel.unary_unary(method)  # type: ignore[union-attr]
        remaining = context.time_remaining()
        limit = rt.config.primary.timeout_secs
        self._enter()
        sent = time.perf_counter()
        answer: Answer | None = None
        code = grpc.StatusCode.CANCELLED
        try:
            call = call_factory(request, metadata=metadata, timeout=limit if remaining is None else min(remaining, limit))
            response = await call
            answer = Answer(PRIMARY, 200, (time.perf_counter() - sent) * 1000, None, response)
            code = grpc.StatusCode.OK
            initial = forward_metadata(tuple(await call.initial_metadata()))
            if initial:
                await context.send_initial_metadata(initial)
            trailing = forward_metadata(tuple(await call.trailing_metadata()))
            if trailing:
                context.set_trailing_metadata(trailing)
            return response
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            timed_out = code == grpc.StatusCode.DEADLINE_EXCEEDED
            answer = Answer(PRIMARY, GRPC_TO_HTTP.get(code.name, 500), (time.perf_counter() - sent) * 1000,
                            TIMEOUT if timed_out else (exc.details() or code.name))
            trailing = forward_metadata(tuple(exc.trailing_metadata() or ()))
            if trailing:
                context.set_trailing_metadata(trailing)
            await context.abort(code, exc.details() or "")
            raise  # not reached: abort raises
        finally:
            self._leave()
            if exchange is not None:
                exchange.set_primary(answer or Answer(PRIMARY, None, None, CANCELLED))
            self._count(code, received, time.perf_counter() - sent)

    async def stream(self, method: str, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        rt = self._runtime()
        if rt.primary_grpc is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar has no gRPC primary (--primary-grpc)")
        received = time.perf_counter()
        remaining = context.time_remaining()
        call = rt.primary_grpc.stream_stream(method)(  # type: ignore[union-attr]
            metadata=forward_metadata(context.invocation_metadata()), timeout=remaining)

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
            self._count(code, received, None)
