"""The worker's listeners: `HttpTransport` and the gRPC servicer over a `WorkerPlane`, plus forwarding.

Only ``POST .../infer`` and gRPC ``ModelInfer`` are answered here (the fast path); every
other request, and an infer request the fast path cannot carry, is forwarded whole to the
owner (`serving.frontend.forward`). Both listen on the public ports with SO_REUSEPORT,
beside the other workers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from inference_protocol.errors import error_body

from ..access import AccessPolicy
from ..connections import ClientLimits, ConnectionLimit
from ..errors import InvalidInput, PayloadTooLarge, ServingError, Unavailable
from ..grpc import InferenceServicer, _method_handlers
from ..grpc_access import RestrictedProtocols
from ..http import JSON, RETRY_AFTER_SECS, HttpTransport
from .forward import SERVICE, GrpcForwarder, HttpForwarder
from .plane import HELD, RESERVE, SENT, ForwardRaw, WorkerPlane

SEND_LIMIT = 2**31 - 1
CONNECTION_CAP = "grpc.max_allowed_incoming_connections"


class WorkerHttp(HttpTransport):
    """`HttpTransport` whose every endpoint but infer forwards, and whose infer falls back to forwarding."""

    def __init__(self, plane: WorkerPlane, forwarder: HttpForwarder, fast: bool, max_request_bytes: int,
                 access: AccessPolicy, limits: ClientLimits) -> None:
        super().__init__(plane, max_request_bytes, access, limits)  # type: ignore[arg-type]  # the infer path's subset
        self.forwarder = forwarder
        self.fast = fast
        self.plane = plane

    def route(self, method: str, path: str) -> Any:
        routed = super().route(method, path)
        if self.fast and not isinstance(routed, web.Response) and routed[0] == self.infer:
            return routed
        return self.forwarder.forward, ()

    async def infer(self, request: web.BaseRequest, model: str, version: str, span: Any = None) -> web.Response:
        SENT.set(False)
        RESERVE.set(not request.content.is_eof())
        try:
            return await super().infer(request, model, version, span)
        except ForwardRaw:
            return await self.forwarder.forward(request)
        except Unavailable as exc:
            if getattr(exc, "rejected", False):  # the owner's admission refused it: as the one process answers
                return web.Response(body=error_body(str(exc)), status=503, content_type=JSON,
                                    headers={"Retry-After": RETRY_AFTER_SECS})
            raise
        except ServingError as exc:
            if SENT.get():
                if type(exc).__name__ == "DecoupledOnly":  # the owner's HTTP transport says it in HTTP's words
                    return await self.forwarder.forward(request)
                raise
            if isinstance(exc, InvalidInput) and not isinstance(exc, PayloadTooLarge):
                # the body did not decode here: the owner answers it in its own order (an unknown model
                # is a 404 before the body is looked at)
                return await self.forwarder.forward(request)
            raise
        finally:
            held = HELD.get()
            if held is not None:  # reserved, but no infer frame took the place: give it back
                HELD.set(None)
                self.plane.release(held)


async def listen_http(transport: WorkerHttp, host: str, port: int, cap: int,
                      name: str = "http") -> tuple[web.ServerRunner, asyncio.Server, ConnectionLimit]:
    """Serve ``transport`` on ``host:port`` beside the other workers (SO_REUSEPORT), with the connection cap."""
    runner = web.ServerRunner(transport.server(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    assert runner.server is not None
    limit = ConnectionLimit(runner.server, cap, name)
    server = await asyncio.get_running_loop().create_server(limit, host, port, backlog=1024, reuse_address=True,
                                                            reuse_port=True)
    return runner, server, limit


class WorkerGrpc:
    """A grpcio server on the public port (SO_REUSEPORT): ModelInfer here, the rest forwarded."""

    def __init__(self, plane: WorkerPlane, forwarder: GrpcForwarder, fast: bool, max_request_bytes: int,
                 access: AccessPolicy, options: tuple[tuple[str, Any], ...], admission_wait_secs: float,
                 loops: int = 1) -> None:
        self.health = health.aio.HealthServicer()
        servicer = InferenceServicer(plane, admission_wait_secs)  # type: ignore[arg-type]  # the infer path's subset
        infer = _method_handlers(servicer)["ModelInfer"]
        behaviour, serialize = infer.unary_unary, infer.response_serializer
        assert behaviour is not None and serialize is not None

        async def model_infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if fast:
                try:
                    return bytes(serialize(await behaviour(data, context)))  # type: ignore[arg-type]  # the aio context
                except ForwardRaw:
                    pass
            return await forwarder.call("ModelInfer", data, context)

        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            if method.name == "ModelInfer":
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(model_infer)
            elif method.client_streaming:
                handlers[method.name] = forwarder.stream_handler(method.name)
            else:
                handlers[method.name] = forwarder.unary_handler(method.name)
        interceptors = [RestrictedProtocols(access)] if access.restrictions else []
        # several grpcio servers on the port, as `serving.grpc.GrpcTransport` runs (its docstring says why:
        # each accepts one call at a time); the connection cap is shared out among them
        caps = [int(value) for key, value in options if key == CONNECTION_CAP]
        others = [(key, value) for key, value in options if key != CONNECTION_CAP]
        cap = caps[-1] if caps else None
        loops = max(1, min(loops, cap)) if cap else max(1, loops)
        self.servers = []
        for index in range(loops):
            limits = list(others)
            if cap is not None:
                limits.append((CONNECTION_CAP, cap // loops + (1 if index < cap % loops else 0)))
            server = grpc.aio.server(interceptors=interceptors, options=[
                ("grpc.max_receive_message_length", max_request_bytes),
                ("grpc.max_send_message_length", SEND_LIMIT),
                ("grpc.so_reuseport", 1),
                *limits,
            ])
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
            server.add_registered_method_handlers(SERVICE, handlers)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            self.servers.append(server)

    async def start(self, host: str, port: int) -> None:
        for server in self.servers:
            if server.add_insecure_port(f"{host}:{port}") != port:
                raise OSError(f"cannot listen for gRPC on {host}:{port} beside the other workers (SO_REUSEPORT)")
        for server in self.servers:
            await server.start()

    async def set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await asyncio.gather(*(server.stop(grace) for server in self.servers))
