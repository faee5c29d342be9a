"""Requests a worker does not answer itself, passed on whole to the owner's own transports.

HTTP: the method, path and query, headers and body go to the owner's aiohttp server on its
private Unix socket, and its answer comes back unchanged. gRPC: a unary call's request
bytes go to the same method of the owner's grpcio server (no parsing on the way, metadata
passed on), its response bytes come back, and an error comes back with its code and
details; ModelStreamInfer is a raw stream-to-stream pass-through. So everything but the
infer fast path answers exactly as one process, from one implementation.

Every forwarded call is bounded: in time (`FORWARD_TIMEOUT_S`, or the client's deadline
when sooner) and, for HTTP answers, in bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..errors import Unavailable

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
FORWARD_TIMEOUT_S = 600.0  # a model load may take minutes; the owner bounds each of its own operations
MAX_ANSWER_BYTES = 2**31 - 1  # an HTTP answer passed back: what gRPC allows a message
# hop-by-hop headers, and those the receiving server writes itself
# (and Expect: the worker has answered 100-continue already, and the body is read whole)
SKIPPED_REQUEST = frozenset(["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                             "upgrade", "content-length", "expect"])
SKIPPED_ANSWER = SKIPPED_REQUEST | {"date", "server"}
SKIPPED_METADATA = frozenset(["user-agent", "te", "content-type"])
UNAVAILABLE = "the model server did not answer; retry"


class HttpForwarder:
    """An HTTP client of the owner's private socket."""

    def __init__(self, socket_path: str, timeout_s: float = FORWARD_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.UnixConnector(self.socket_path, limit=256)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding",
                                                                 "Content-Type"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.BaseRequest, *args: str) -> web.Response:
        """The owner's answer to ``request`` (an endpoint of `HttpTransport`: its errors map as any other's)."""
        assert self._session is not None, "start() first"
        body = await request.read()  # bounded by --max-request-bytes and the body timeout, as in the owner
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in SKIPPED_REQUEST)
        url = URL.build(scheme="http", host="owner", path=request.raw_path.split("?", 1)[0],
                        query_string=request.query_string, encoded=True)
        try:
            async with self._session.request(request.method, url, headers=headers, data=body or None,
                                             allow_redirects=False) as answer:
                if answer.content_length is not None and answer.content_length > MAX_ANSWER_BYTES:
                    raise Unavailable(f"the model server's answer of {answer.content_length} bytes is larger than "
                                      f"{MAX_ANSWER_BYTES} bytes")
                payload = await answer.read()  # the owner's answers always say their length
                kept = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in SKIPPED_ANSWER)
                return web.Response(status=answer.status, body=payload, headers=kept)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("forwarding %s %s to the model server failed: %s", request.method, request.path[:200],
                        exc or type(exc).__name__)
            raise Unavailable(UNAVAILABLE) from None


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    given = context.invocation_metadata() or ()
    return tuple((key, value) for key, value in given
                 if not key.startswith((":", "grpc-")) and key not in SKIPPED_METADATA)


def _timeout(context: grpc.aio.ServicerContext, bound: float | None) -> float | None:
    remaining = context.time_remaining()
    if bound is None:
        return remaining
    return bound if remaining is None else min(remaining, bound)


class GrpcForwarder:
    """A gRPC client of the owner's private socket, carrying raw bytes both ways."""

    def __init__(self, socket_path: str, timeout_s: float = FORWARD_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.channel = grpc.aio.insecure_channel(f"unix:{socket_path}", options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self._unary: dict[str, Any] = {}

    async def close(self) -> None:
        await self.channel.close()

    def unary_handler(self, method: str) -> grpc.RpcMethodHandler:
        async def handler(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.call(method, data, context)
        return grpc.unary_unary_rpc_method_handler(handler)

    def stream_handler(self, method: str) -> grpc.RpcMethodHandler:
        async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for answer in self.stream(method, requests, context):  # grpcio asks for an async generator function
                yield answer
        return grpc.stream_stream_rpc_method_handler(handler)

    async def call(self, method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The owner's answer to one unary call; its error (code, details) is this call's."""
        callable_ = self._unary.get(method)
        if callable_ is None:
            callable_ = self._unary[method] = self.channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            answer: bytes = await callable_(data, metadata=_metadata(context),
                                            timeout=_timeout(context, self.timeout_s))
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        return answer

    async def stream(self, method: str, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """A bidirectional stream, message for message; bounded only by the client's deadline (streams are long)."""
        call: Any = self.channel.stream_stream(f"/{SERVICE}/{method}")(
            requests, metadata=_metadata(context), timeout=_timeout(context, None))  # type: ignore[arg-type]  # bytes both ways
        try:
            async for answer in call:
                yield answer
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        finally:
            call.cancel()
