"""The gRPC side of `serving.access`: an interceptor that refuses restricted RPCs.

It runs before the servicer and before the request message is decoded: a refused call
costs no parsing. The answer is PERMISSION_DENIED (Triton answers UNAVAILABLE, which
clients and meshes retry as if the server were down; a missing credential is not that)
with Triton's message naming the metadata key, never its value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .access import GRPC_HEADER_PREFIX, GRPC_METHOD_GROUPS, AccessPolicy


def interceptors(policy: AccessPolicy) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors a server needs for ``policy``: none when nothing is restricted.

    grpcio runs an interceptor as coroutines on every call, before the handler: about 15%
    of the event loop's time per ModelInfer on the `simple` model, for a check that has
    nothing to refuse when no restriction is configured.
    """
    return [RestrictedProtocols(policy)] if policy.restrictions else []


class RestrictedProtocols(grpc.aio.ServerInterceptor):
    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler | None]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        group = GRPC_METHOD_GROUPS.get(details.method, "")
        if self.policy.restricted(group) is None:  # an open group: no metadata to look at
            return await continuation(details)
        metadata = {key: value for key, value in details.invocation_metadata or ()
                    if isinstance(value, str)}  # binary (-bin) metadata is never a credential here
        message = self.policy.denial(group, metadata, GRPC_HEADER_PREFIX)
        handler = await continuation(details)
        if message is None or handler is None:
            return handler
        return _refusal(handler, message)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts; the request bytes stay undecoded."""
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    async def streaming(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    identity = None  # no deserializer: the raw bytes are passed and ignored
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, identity, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(unary, identity, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(streaming, identity, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(streaming, identity, handler.response_serializer)
