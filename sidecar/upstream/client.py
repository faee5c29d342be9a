"""The clients of one upstream: `HttpUpstream` (HTTP/1.1, plain or TLS) and gRPC channels.

Each upstream (the primary, the canary, each shadow) has its own connection pool, so a
shadow that hangs holds its own connections, never the primary's. Every HTTP request to
an upstream, proxied, mirrored, a readiness probe or a webhook, goes through
`HttpUpstream.send`, whatever its body (held or streamed) and scheme:

    upstream = HttpUpstream("http://127.0.0.1:8000", timeout=60.0, connect_timeout=5.0, limit=100)
    response = await upstream.send("POST", "/v2/models/m/infer", headers, body)
    data = await response.read(max_bytes=4 << 20)      # or: async for chunk in response.iter_chunks()
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable

import grpc
import yarl

from .connection import TooLarge, UpstreamError
from .pool import Body, Pool, Response

__all__ = ["GRPC_MESSAGE_LIMIT", "HttpUpstream", "Response", "TooLarge", "UpstreamError", "grpc_channel", "once"]

GRPC_MESSAGE_LIMIT = 2**31 - 1
# Idle upstream connections close after this; below the keep-alive of aiohttp servers (75 s)
# such as serve, so the sidecar, not the upstream, closes an idle connection.
KEEPALIVE_SECS = 30.0
ONCE_MAX_BYTES = 1024 * 1024  # a webhook's answer is read, never kept: more is refused


class HttpUpstream:
    """One HTTP upstream: a base URL and its keep-alive connection pool; requests in flight are counted."""

    def __init__(self, base_url: str, timeout: float, connect_timeout: float, limit: int) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.in_flight = 0
        url = yarl.URL(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"{base_url!r}: an upstream URL is http:// or https://")
        self.prefix = url.raw_path.rstrip("/")
        tls = ssl.create_default_context() if url.scheme == "https" else None
        self.pool = Pool(url.raw_host or "127.0.0.1", url.port or (443 if tls else 80), limit, connect_timeout,
                         KEEPALIVE_SECS, tls)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def closed(self) -> bool:
        return self.pool.closed

    async def send(self, method: str, raw_path: str, headers: Iterable[tuple[str, str]], body: Body = b"", *,
                   timeout: float | None = None) -> Response:
        """Send a request for ``raw_path`` (path and query as received) and wait for the response head.

        ``body`` is held (bytes) or streamed (an async iterable: with the Content-Length in
        ``headers`` when known, else chunked). ``timeout`` (the upstream's by default) covers
        connecting, sending and the whole response. Raises `UpstreamError` (an OSError) when
        the upstream cannot be reached or breaks the protocol, TimeoutError past the deadline.
        """
        return await self.pool.request(method, self.prefix + raw_path, headers, body,
                                       self.timeout if timeout is None else timeout)

    def begin(self) -> float:
        self.in_flight += 1
        self._idle.clear()
        return time.perf_counter()

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def close(self, wait: float = 0.0) -> None:
        """Close the pool, first letting requests in flight finish for up to ``wait`` seconds."""
        if wait > 0 and self.in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), wait)
            except asyncio.TimeoutError:
                pass
        self.pool.close()


async def once(method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes, timeout: float,
               max_bytes: int = ONCE_MAX_BYTES) -> tuple[int, bytes]:
    """One request to any URL, on a connection of its own (webhooks: rare, to any host); its status and body.

    Raises as `HttpUpstream.send` does, and `TooLarge` for an answer over ``max_bytes``.
    """
    parsed = yarl.URL(url)
    upstream = HttpUpstream(str(parsed.origin()), timeout, timeout, 1)
    try:
        response = await upstream.send(method, parsed.raw_path_qs, headers, body)
        return response.status, await response.read(max_bytes)
    finally:
        await upstream.close()


def grpc_channel(target: str, max_receive: int = GRPC_MESSAGE_LIMIT) -> grpc.aio.Channel:
    """An insecure channel with no send limit of its own (the servers keep theirs).

    A shadow's channel gets its ``max_response_size`` as the receive limit: a larger answer
    fails as RESOURCE_EXHAUSTED before it is held.
    """
    return grpc.aio.insecure_channel(target, options=[
        ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", max_receive),
    ])
