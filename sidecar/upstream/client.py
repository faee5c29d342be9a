"""Pooled keep-alive clients for upstreams (HTTP and gRPC), and the header rules of a proxy hop.

Each upstream (the primary, each shadow) has its own connection pool, so a shadow that
hangs holds its own connections, never the primary's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp
import grpc
import yarl
from multidict import CIMultiDict

from ..config.headers import HeaderRules
from .pool import Pool

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade"})
# gRPC metadata the channel sets itself (or rejects): never copied onto a forwarded call.
GRPC_RESERVED = frozenset({"content-type", "user-agent", "te", "grpc-timeout", "grpc-encoding",
                           "grpc-accept-encoding", "grpc-message-type", "grpc-status", "grpc-message", "host"})
GRPC_MESSAGE_LIMIT = 2**31 - 1
# Idle upstream connections close after this; below the keep-alive of aiohttp servers (75 s)
# such as serve, so the sidecar, not the upstream, closes an idle connection.
KEEPALIVE_SECS = 30.0


def _without_hop_by_hop(headers: Mapping[str, str]) -> CIMultiDict[str]:
    # Copy in C, then delete the few names that must go: faster than filtering in Python.
    out = CIMultiDict(headers)
    connection = out.get("Connection")
    for name in HOP_BY_HOP:
        if name in out:
            del out[name]
    if connection:
        for token in connection.split(","):
            token = token.strip()
            if token and token in out:
                del out[token]
    if "Content-Length" in out:
        del out["Content-Length"]  # set again for the body actually sent
    return out


def forward_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The request headers to send upstream: all but the hop-by-hop ones (and those named in Connection).

    ``Expect: 100-continue`` is answered by the proxy itself, as Envoy does, so it is not forwarded.
    """
    out = _without_hop_by_hop(headers)
    if "Expect" in out:
        del out["Expect"]
    return out


def response_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The upstream response headers to pass to the client (the length is set by the response itself)."""
    return _without_hop_by_hop(headers)


def shadow_headers(headers: CIMultiDict[str], rules: HeaderRules) -> CIMultiDict[str]:
    """A mirrored copy's headers: the rules applied, and ``-shadow`` appended to the host, as Envoy does."""
    keeps = rules.keeps
    out = CIMultiDict((k, v) for k, v in headers.items() if keeps(k.lower()))
    for name, value in rules.set:
        out[name] = value
    host = out.get("Host")
    if host:
        name, sep, port = host.rpartition(":")
        out["Host"] = f"{name}-shadow:{port}" if sep and port.isdigit() else f"{host}-shadow"
    return out


def shadow_metadata(metadata: tuple[tuple[str, str | bytes], ...], rules: HeaderRules) -> tuple[tuple[str, str | bytes], ...]:
    """A mirrored gRPC call's metadata, with the shadow's header rules applied."""
    set_names = {name for name, _ in rules.set}
    keeps = rules.keeps
    kept = tuple((k, v) for k, v in metadata if keeps(k) and k not in set_names)
    return kept + rules.set


def forward_metadata(metadata: tuple[tuple[str, str | bytes], ...] | None) -> tuple[tuple[str, str | bytes], ...]:
    """Invocation metadata to send upstream: without pseudo-headers and what gRPC sets itself."""
    if not metadata:
        return ()
    return tuple((k, v) for k, v in metadata if not k.startswith(":") and k not in GRPC_RESERVED)


class HttpUpstream:
    """One HTTP upstream: a base URL and keep-alive connection pools; requests in flight are counted.

    ``pool`` (the lean client, plain HTTP only) carries requests whose body is in memory;
    ``session`` (aiohttp) carries streamed bodies, HTTPS and the readiness probe.
    """

    def __init__(self, base_url: str, timeout: float, connect_timeout: float, limit: int) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.in_flight = 0
        url = yarl.URL(base_url)
        self.prefix = url.raw_path.rstrip("/")
        self.pool = (Pool(url.host or "127.0.0.1", url.port or 80, limit, connect_timeout, KEEPALIVE_SECS)
                     if url.scheme == "http" else None)
        self._idle = asyncio.Event()
        self._idle.set()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=KEEPALIVE_SECS),
            timeout=aiohttp.ClientTimeout(total=timeout, connect=connect_timeout),
            # A proxy passes bodies and headers through as they are: no decompression, no
            # headers of its own, no cookie jar shared between clients.
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)

    def target(self, raw_path: str) -> str:
        """The request target for the lean client: the base URL's path, then the path and query as received."""
        return self.prefix + raw_path

    def url(self, raw_path: str) -> yarl.URL:
        """The upstream URL for a request's path and query, as received (not re-encoded)."""
        return yarl.URL(self.base_url + raw_path, encoded=True)

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
        if self.pool is not None:
            self.pool.close()
        await self.session.close()


def grpc_channel(target: str, max_receive: int = GRPC_MESSAGE_LIMIT) -> grpc.aio.Channel:
    """An insecure channel with no send limit of its own (the servers keep theirs).

    A shadow's channel gets its ``max_response_size`` as the receive limit: a larger answer
    fails as RESOURCE_EXHAUSTED before it is held.
    """
    return grpc.aio.insecure_channel(target, options=[
        ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", max_receive),
    ])
