"""What one HTTP client may hold: time to send its headers and its body, and connections per port.

aiohttp has no header timeout of its own, but its keep-alive timer does the job: it runs
from a connection's opening (or the end of its previous response) until a complete
request header has arrived, and closes the connection when it fires first; a request
that is being handled is never cut by it. So ``keepalive_timeout`` is the header
timeout, and also how long an idle keep-alive connection stays open. A body must arrive
whole within its own timeout (`TimedRequest`), whatever pace it drips at. Connections
past a port's cap are closed as they are accepted (`ConnectionLimit`), so a crowd of
slow clients cannot take every file descriptor and the memory behind them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .errors import ServingError

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # aiohttp brings async-timeout on Python 3.10
    from async_timeout import timeout

log = logging.getLogger(__name__)

LINGER_SECS = 2.0  # at most this long spent draining a body left unread (a 503 before the read)
GRPC_IDLE_MS = 300_000  # a gRPC connection without a call for 5 minutes is sent GOAWAY
GRPC_STREAMS = 1024  # concurrent calls on one gRPC connection
REFUSED_LOG_SECS = 10.0  # at most one warning about refused connections this often, per port


@dataclasses.dataclass(frozen=True)
class ClientLimits:
    """The HTTP server's limits (flags ``--http-header-timeout-secs`` and the like)."""

    header_timeout_secs: float = 60.0  # above clients' pool idle timeouts (the sidecar's: 30 s)
    body_timeout_secs: float = 60.0
    max_connections: int = 1024  # per port; 0: no cap
    admission_wait_secs: float = 1.0  # how long a request may wait for a place in a full queue

    def handler_options(self) -> dict[str, Any]:
        """Keywords for aiohttp's request handler (``web.Server``, ``web.AppRunner``)."""
        return {"keepalive_timeout": self.header_timeout_secs,
                "lingering_time": min(LINGER_SECS, self.body_timeout_secs)}


    def grpc_options(self) -> tuple[tuple[str, Any], ...]:
        """grpcio's server options for the same limits, and bounds on what one connection may hold."""
        return (("grpc.max_allowed_incoming_connections", self.max_connections or 2**31 - 1),
                *grpc_client_limits(self.header_timeout_secs, GRPC_IDLE_MS / 1000, GRPC_STREAMS))


def grpc_client_limits(handshake_secs: float, idle_secs: float, streams: int) -> tuple[tuple[str, Any], ...]:
    """grpcio server options that bound a slow or idle client (serve's and the sidecar's listeners)."""
    return (
        # the HTTP/2 preface and settings: gRPC's "headers", from a client that may never send them
        ("grpc.server_handshake_timeout_ms", int(handshake_secs * 1000)),
        ("grpc.max_connection_idle_ms", int(idle_secs * 1000)),  # GOAWAY to a connection with no call
        ("grpc.max_concurrent_streams", streams),
        # keepalive enforcement: pings without calls are refused, pings faster than this count
        # as strikes, and a client past the strikes gets GOAWAY (grpcio's defaults, stated)
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
        ("grpc.http2.max_ping_strikes", 2),
    )


class RequestTimeout(ServingError):
    """The request body did not arrive within --http-body-timeout-secs."""

    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class TimedRequest(web.BaseRequest):
    """A request whose body must arrive whole within ``body_timeout`` seconds of asking for it."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(["_body_timeout"])

    def __init__(self, *args: Any, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body_timeout = body_timeout

    async def read(self) -> bytes:
        payload = self._payload
        if payload.is_eof():  # the whole body has arrived (a small one, in its header's packet): nothing to wait for
            if self._read_bytes is None and payload.exception() is None:  # taken at once, as super().read() would
                body = payload.read_nowait(-1)
                if self._client_max_size and len(body) > self._client_max_size:
                    raise web.HTTPRequestEntityTooLarge(self._client_max_size)
                self._read_bytes = body = body if type(body) is bytes else bytes(body)
                return body
            return await super().read()
        try:
            async with timeout(self._body_timeout):
                return await super().read()
        except asyncio.TimeoutError:  # TimeoutError itself from 3.11 on
            raise RequestTimeout(f"the request body did not arrive within {self._body_timeout:g} s "
                                 "(--http-body-timeout-secs); send it at once, or raise the limit") from None


class _Counted(asyncio.Protocol):
    """Passes every event on to the protocol it wraps, and counts the connection while it is open."""

    __slots__ = ("_inner", "_limit")

    def __init__(self, inner: asyncio.Protocol, limit: ConnectionLimit) -> None:
        self._inner = inner
        self._limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._limit.open -= 1
        self._inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionLimit:
    """A protocol factory that serves at most ``limit`` connections at once (0: any number).

    Wraps another factory (aiohttp's ``web.Server``); a connection accepted past the cap
    is closed at once, before anything is read from it, and the clients already
    connected go on being served.
    """

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int, name: str) -> None:
        self.factory = factory
        self.limit = limit
        self.name = name
        self.open = 0
        self.refused = 0
        self._logged = 0.0

    def __call__(self) -> asyncio.Protocol:
        if self.limit and self.open >= self.limit:
            self.refused += 1
            now = time.monotonic()
            if now - self._logged >= REFUSED_LOG_SECS:
                self._logged = now
                log.warning("%s: %d connections open, the cap (--max-connections); closing new ones "
                            "(%d so far)", self.name, self.open, self.refused)
            return _Refused()
        self.open += 1
        return _Counted(self.factory(), self)


async def listen(runner: web.BaseRunner, host: str, port: int, limits: ClientLimits,
                 name: str) -> tuple[asyncio.Server, ConnectionLimit]:
    """Listen on ``host:port`` for a set-up aiohttp runner, with the connection cap."""
    assert runner.server is not None, "call runner.setup() first"
    factory = ConnectionLimit(runner.server, limits.max_connections, name)
    server = await asyncio.get_running_loop().create_server(factory, host, port, backlog=1024,
                                                            reuse_address=True)
    return server, factory
