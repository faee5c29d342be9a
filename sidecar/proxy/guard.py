"""Slow and surplus clients on the sidecar's HTTP listeners: head and body deadlines, a connection cap.

aiohttp's server has no deadline for a request head: a client that sends a few bytes of
headers and then waits (slowloris) holds its connection, a file descriptor and a parser
for as long as it likes. `ConnectionGuard` wraps each connection's protocol, as a
production server's front does (nginx ``client_header_timeout``, Go's
``ReadHeaderTimeout``):

- the request head must arrive within ``header_timeout`` of the connection opening, or of
  the first byte of the next request on a keep-alive connection (an idle keep-alive
  connection is aiohttp's ``keepalive_timeout``, not this); else 408 and close;
- the body must have arrived ``body_timeout`` after the head; else the connection closes;
- at most ``max_connections`` are open at once; one more is answered 503 and closed
  at once, so that the clients already connected are served.

The handler tells the guard where a request starts and ends: `head_received` and
`request_done` (the HTTP proxy calls them; applications get `middleware`).

    guard = ConnectionGuard("http", 4096, 10.0, 60.0, metrics)
    site = GuardedSite(runner, "0.0.0.0", 8080, guard)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web

from .metrics import ProxyMetrics


def _answer(status: str, message: str) -> bytes:
    """A whole response, written straight to the transport (no handler runs for it)."""
    body = orjson.dumps({"error": message})
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


BUSY = _answer("503 Service Unavailable", "too many connections to the sidecar: retry later, or raise its "
                                          "--max-connections")
SLOW = _answer("408 Request Timeout", "the request head did not arrive in time (--header-timeout-secs)")


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the deadlines around it."""

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self._make = make
        self.inner: Any = None
        self.transport: asyncio.Transport | None = None
        self.awaiting_head = True
        self._received = False  # bytes of the head being awaited
        self._early = False  # bytes arrived while a request was being handled (a pipelined head)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)  # a server's stream protocol is given a stream transport
        self.transport = tcp
        guard = self.guard
        if guard.open >= guard.max_connections:
            guard.refused.inc()
            tcp.write(BUSY)
            transport.close()
            return
        self.inner = self._make()
        guard.opened(self)
        self.inner.connection_made(transport)
        self._arm(guard.header_timeout, self._head_late)

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_late(self) -> None:
        self._timer = None
        if self.awaiting_head and self.transport is not None and not self.transport.is_closing():
            self.guard.timeouts.labels(self.guard.name, "header").inc()
            if self._received:
                self.transport.write(SLOW)
            self.transport.close()

    def _body_late(self, request: web.BaseRequest) -> None:
        self._timer = None
        if not self.awaiting_head and not request.content.is_eof() and self.transport is not None:
            self.guard.timeouts.labels(self.guard.name, "body").inc()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.awaiting_head:
            if not self._received:
                self._received = True
                if self._timer is None:  # a keep-alive connection's next request starts
                    self._arm(self.guard.header_timeout, self._head_late)
        else:
            self._early = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.inner is not None:
            self.guard.closed(self)
            self.inner.connection_lost(exc)
            self.inner = None

    # -- told by the handler ------------------------------------------------------------------
    def head(self, request: web.BaseRequest) -> None:
        self.awaiting_head = False
        self._received = self._early = False
        self._disarm()
        if not request.content.is_eof():
            self._arm(self.guard.body_timeout, lambda: self._body_late(request))

    def done(self) -> None:
        self.awaiting_head = True
        self._disarm()
        if self._early:  # part of the next head is already here: its deadline runs from now
            self._received = True
            self._arm(self.guard.header_timeout, self._head_late)


class ConnectionGuard:
    """The deadlines and the cap of one listener (``name`` labels its metrics)."""

    def __init__(self, name: str, max_connections: int, header_timeout: float, body_timeout: float,
                 metrics: ProxyMetrics) -> None:
        self.name = name
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.open = 0
        self._by_inner: dict[Any, _Guarded] = {}
        self._gauge = metrics.client_connections.labels(name)
        self.refused = metrics.client_connections_refused.labels(name)
        self.timeouts = metrics.client_timeouts

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's (``runner.server``)."""
        return lambda: _Guarded(self, make)

    def opened(self, conn: _Guarded) -> None:
        self.open += 1
        self._gauge.set(self.open)
        self._by_inner[conn.inner] = conn

    def closed(self, conn: _Guarded) -> None:
        self.open -= 1
        self._gauge.set(self.open)
        self._by_inner.pop(conn.inner, None)

    def head_received(self, request: web.BaseRequest) -> None:
        conn = self._by_inner.get(request.protocol)
        if conn is not None:
            conn.head(request)

    def request_done(self, request: web.BaseRequest) -> None:
        conn = self._by_inner.get(request.protocol)
        if conn is not None:
            conn.done()

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.head_received(request)
        try:
            return await handler(request)
        finally:
            self.request_done(request)


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a `ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 backlog: int = 1024) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
