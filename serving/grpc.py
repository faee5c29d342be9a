"""KServe v2 over gRPC (grpcio's asyncio server): a thin layer over the `DataPlane`.

Implements ``inference.GRPCInferenceService`` from the stubs tritonclient ships, and the
standard ``grpc.health.v1.Health`` service for Kubernetes' gRPC probes. Errors become
status codes only here (`ServingError.grpc_code`), with the same messages as HTTP.
The trace and log RPCs answer UNIMPLEMENTED, and so does registering CUDA shared memory
(system shared memory is `serving.shm`'s).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from inference_protocol.protobuf import decode_model_infer_request, encode_model_infer_response, parameter_value

from . import tracing
from .access import AccessPolicy
from .dataplane import DataPlane
from .errors import InvalidInput, NotFound, ServingError, Unsupported
from .grpc_access import RestrictedProtocols
from .grpc_stream import StreamInfer
from .shm import NO_CUDA

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
SEND_LIMIT = 2**31 - 1  # what tritonclient sets on its side

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
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; the server log has the details")
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
        behaviour = getattr(servicer, method.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
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

    @_rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        traced = tracing.current()
        if traced is None:  # all tracing costs a request when it is off
            return await self._infer(request, None)
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
    """The gRPC server: the inference service and the health service, on one port."""

    def __init__(self, dataplane: DataPlane, max_request_bytes: int, access: AccessPolicy = AccessPolicy(),
                 options: tuple[tuple[str, Any], ...] = (), admission_wait_secs: float = 0.0) -> None:
        self.dataplane = dataplane
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(interceptors=[RestrictedProtocols(access)], options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", SEND_LIMIT),
            *options,  # connection limits (serving.connections)
        ])
        handlers = _method_handlers(InferenceServicer(dataplane, admission_wait_secs))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.server.add_registered_method_handlers(SERVICE, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    async def start(self, host: str, port: int) -> int:
        bound = self.server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        await self.update_health()
        await self.server.start()
        return bound

    async def update_health(self) -> None:
        """Mirror the server's readiness into the health service (overall and per service)."""
        status = health_pb2.HealthCheckResponse.SERVING if self.dataplane.ready() else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
