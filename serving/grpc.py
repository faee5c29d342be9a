"""KServe v2 over gRPC (grpcio's asyncio server): a thin layer over the `DataPlane`.

Implements ``inference.GRPCInferenceService`` from the stubs tritonclient ships, and the
standard ``grpc.health.v1.Health`` service for Kubernetes' gRPC probes. Errors become
status codes only here (`ServingError.grpc_code`), with the same messages as HTTP.
The trace and log RPCs answer UNIMPLEMENTED, and so does registering CUDA shared memory
(system shared memory is `serving.shm`'s).

grpcio's asyncio server accepts one call at a time: it asks its core for the next call,
and only when that answer has crossed the completion-queue thread and reached the event
loop does it ask again, so calls enter at most one or two per turn of the loop, however
many wait on the connections, and the batcher sees them one by one (a mean batch of 2-3
rows at 64 concurrent calls, against 32 over HTTP, whose reads of every ready connection
land in one turn). So the port is served by several servers (`ACCEPT_LOOPS`), bound to it
with SO_REUSEPORT: the kernel spreads the connections over them, and each accepts calls on
its own. The calls of one connection still enter through one server; clients that want
large batches over gRPC open several connections, as HTTP clients do.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from inference_protocol.protobuf import decode_model_infer_request, encode_model_infer_response, parameter_value

from . import tracing
from .access import AccessPolicy
from .errors import InvalidInput, NotFound, ServingError, Unsupported
from .grpc_access import interceptors
from .grpc_stream import StreamInfer
from .shm import NO_CUDA

if TYPE_CHECKING:  # annotations only: the front-end workers import this module without torch
    from .dataplane import DataPlane

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
SEND_LIMIT = 2**31 - 1  # what tritonclient sets on its side
# grpcio servers on the gRPC port, each accepting calls on its own (the module's docstring says
# why); elsewhere SO_REUSEPORT does not spread connections over sockets, so one server there
ACCEPT_LOOPS = 8 if sys.platform.startswith("linux") else 1
CONNECTION_CAP = "grpc.max_allowed_incoming_connections"
INTERNAL = "internal server error; the server log has the details"

T = TypeVar("T")


def _status(error: ServingError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.grpc_code)


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map errors to gRPC status codes."""
    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(_status(exc), str(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:  # never a traceback to the client
            log.exception("unhandled error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)
        raise AssertionError("unreachable")  # context.abort raises
    return wrapper


async def _parse(request_type: Any, data: bytes, context: grpc.aio.ServicerContext) -> Any:
    try:
        return request_type.FromString(data)
    except DecodeError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid {request_type.__name__} message (corrupt protobuf bytes)")


def _parsing(behaviour: Callable[..., Awaitable[Any]], request_type: Any) -> Callable[..., Awaitable[Any]]:
    async def handler(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(await _parse(request_type, data, context), context)
    return handler


def _method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's methods, taking their requests as bytes.

    With the generated handlers grpcio parses a request before any code of ours runs and
    answers UNKNOWN when the bytes do not parse; parsed here, corrupt bytes get
    INVALID_ARGUMENT, and in a stream only the corrupt message fails.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        serialize = getattr(pb, method.output_type.name).SerializeToString
        if method.name == "ModelInfer":  # the hot path: parsing and error mapping in one coroutine
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(servicer.model_infer,
                                                                        response_serializer=serialize)
            continue
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:  # ModelStreamInfer parses each message itself
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, response_serializer=serialize)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing(behaviour, getattr(pb, method.input_type.name)), response_serializer=serialize)
    return handlers


def _unimplemented(what: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server")
    return method


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, admission_wait_secs: float = 0.0) -> None:
        self.dataplane = dataplane
        self.admission_wait_secs = admission_wait_secs

    @_rpc
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_rpc
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_rpc
    async def ModelReady(self, request: Any, context: Any) -> Any:
        # As Triton's gRPC endpoint: an unknown model is not ready, not an error
        # (tritonclient's is_model_ready would raise on one).
        try:
            ready = self.dataplane.model_ready(request.name, request.version)
        except NotFound:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.dataplane.metadata(), pb.ServerMetadataResponse())

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.dataplane.model_metadata(request.name, request.version),
                                     pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return pb.ModelConfigResponse(config=self.dataplane.model_spec(request.name, request.version).proto)

    @_rpc
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = self.dataplane.model_stats(request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        """ModelInfer on the request's bytes: the handler `_method_handlers` gives grpcio.

        What `_parsing` and `_rpc` do around the other methods, in this one coroutine: on the
        hot path each wrapper costs a coroutine and an exception frame per call. It answers a
        ``ModelInferResponse`` message (the handler's ``response_serializer`` makes the bytes).
        Over another dataplane object (one with `admission`, `infer`), build an
        `InferenceServicer` on it and take ``_method_handlers(servicer)["ModelInfer"]``.
        """
        try:
            request = pb.ModelInferRequest.FromString(data)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the request is not a valid ModelInferRequest message (corrupt protobuf bytes)")
        try:
            traced = tracing.current()
            if traced is None:  # all tracing costs a request when it is off
                return await self._infer(request, None)
            return await self._traced_infer(traced, request, context)
        except ServingError as exc:
            await context.abort(_status(exc), str(exc))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:  # never a traceback to the client
            log.exception("unhandled error in %s", "ModelInfer")
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)
        raise AssertionError("unreachable")  # context.abort raises

    async def _traced_infer(self, traced: tracing.Tracing, request: Any, context: Any) -> Any:
        from . import spans

        parent = spans.grpc_parent(traced, context.invocation_metadata())
        with spans.grpc_request(traced, parent, "ModelInfer", request.model_name, request.model_version) as span:
            return await self._infer(request, span)

    async def _infer(self, request: Any, span: Any) -> Any:
        # a place in the queue before the tensors are decoded and checked, as over HTTP; nothing
        # is awaited between leaving the block and the queue, so the place passes to this request
        async with self.dataplane.admission(request.model_name, request.model_version, self.admission_wait_secs):
            infer_request = decode_model_infer_request(request)
        response = await self.dataplane.infer(request.model_name, request.model_version, infer_request, span)
        return encode_model_infer_response(response)

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        """Each request's responses (`serving.grpc_stream`: in order, and decoupled models' as they come)."""
        traced = tracing.current()
        parent = None
        if traced is not None:  # every request of the stream joins the caller's trace, from the call's metadata
            from . import spans

            parent = spans.grpc_parent(traced, context.invocation_metadata())
        async for message in StreamInfer(self.dataplane, self.admission_wait_secs, parent).run(requests):
            yield message

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict({"models": self.dataplane.repository_index(request.ready)},
                                     pb.RepositoryIndexResponse())

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        config = None
        for key, value in request.parameters.items():
            if key == "config":
                config = parameter_value(value)  # the repository checks it is a string
            elif key.startswith("file:"):
                raise InvalidInput(f"failed to load '{request.model_name}', failed to poll from model repository: "
                                   "loading model files through the load request is not supported; put them in "
                                   "the model repository")
        await self.dataplane.load_model(request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_rpc
    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.dataplane.shared_memory.status(request.name or None):
            response.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return response

    @_rpc
    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        self.dataplane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        self.dataplane.shared_memory.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    # No CUDA regions here: none to list or unregister (Triton's examples clear both kinds first).
    @_rpc
    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        if request.name:
            raise NotFound(f"Unable to find cuda shared memory region: '{request.name[:64]}'; {NO_CUDA}")
        return pb.CudaSharedMemoryStatusResponse()

    @_rpc
    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        raise Unsupported(NO_CUDA)

    @_rpc
    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        return pb.CudaSharedMemoryUnregisterResponse()

    TraceSetting = _unimplemented("the trace extension")
    LogSettings = _unimplemented("the logging extension")


class GrpcTransport:
    """The gRPC server: the inference service and the health service, on one port.

    ``accept_loops`` grpcio servers share the port (SO_REUSEPORT), with one set of handlers;
    a connection cap in ``options`` is split among them, so that together they hold no more.
    """

    def __init__(self, dataplane: DataPlane, max_request_bytes: int, access: AccessPolicy = AccessPolicy(),
                 options: tuple[tuple[str, Any], ...] = (), admission_wait_secs: float = 0.0,
                 accept_loops: int = ACCEPT_LOOPS) -> None:
        self.dataplane = dataplane
        self.health = health.aio.HealthServicer()
        handlers = _method_handlers(InferenceServicer(dataplane, admission_wait_secs))
        caps = _split_cap(options, max(1, accept_loops))
        self.servers = [self._server(handlers, access, max_request_bytes, options, cap) for cap in caps]

    def _server(self, handlers: dict[str, grpc.RpcMethodHandler], access: AccessPolicy, max_request_bytes: int,
                options: tuple[tuple[str, Any], ...], cap: int | None) -> grpc.aio.Server:
        limits = [(key, value) for key, value in options if key != CONNECTION_CAP]
        if cap is not None:
            limits.append((CONNECTION_CAP, cap))
        server = grpc.aio.server(interceptors=interceptors(access), options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", SEND_LIMIT),
            ("grpc.so_reuseport", 1),  # grpcio's default on Linux, stated: the servers share the port
            *limits,  # connection limits (serving.connections)
        ])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        return server

    async def start(self, host: str, port: int) -> int:
        if port:
            _check_free(host, port)
        bound = self.servers[0].add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        for server in self.servers[1:]:  # the same port: a port 0 was chosen by the first
            if server.add_insecure_port(f"{host}:{bound}") != bound:
                raise OSError(f"cannot listen for gRPC on {host}:{bound} a second time (SO_REUSEPORT); "
                              "is another program bound to it without SO_REUSEPORT?")
        await self.update_health()
        for server in self.servers:
            await server.start()
        return bound

    async def update_health(self) -> None:
        """Mirror the server's readiness into the health service (overall and per service)."""
        status = health_pb2.HealthCheckResponse.SERVING if self.dataplane.ready() else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await asyncio.gather(*(server.stop(grace) for server in self.servers))


def _split_cap(options: tuple[tuple[str, Any], ...], servers: int) -> list[int | None]:
    """Each server's share of the connection cap in ``options`` (None: no cap given), together the cap.

    A cap smaller than ``servers`` runs that many servers, one connection each. The kernel
    spreads connections over the servers at random, so near the cap a connection can be
    refused by a full server while another still has room.
    """
    caps = [int(value) for key, value in options if key == CONNECTION_CAP]
    if not caps:
        return [None] * servers
    cap = max(1, caps[-1])
    servers = min(servers, cap)
    return [cap // servers + (1 if index < cap % servers else 0) for index in range(servers)]


def _check_free(host: str, port: int) -> None:
    """Raise OSError when something listens on ``host:port`` already.

    The servers bind with SO_REUSEPORT, with which they would also share the port with another
    process that holds it so (an older serve): the connections would be split between the two,
    silently. A plain bind is refused while anything listens there.
    """
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return  # grpcio's own bind then says what is wrong with the address
    for family, kind, proto, _, address in addresses:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # a family this host does not have (IPv6 switched off): nothing can listen there
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections in TIME_WAIT are no owner
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot listen for gRPC on {host}:{port}: another program listens on it; "
                                  "stop it or choose another --grpc-port") from None
