"""A lean HTTP/1.1 keep-alive client for the hop to an upstream.

aiohttp's client costs several times what the rest of the hop does (hundreds of
microseconds a request on a small machine); a proxy needs far less of it. This client
sends a request held in memory with one write and reads the response through
`sidecar.upstream.http1`, whole or chunk by chunk. Connections are pooled per upstream and kept
alive; one the upstream closed while idle is never reused.

    pool = Pool("127.0.0.1", 8000, limit=100, connect_timeout=5.0, keepalive_secs=30.0)
    response = await pool.request("POST", "/v2/models/m/infer", headers, body, timeout=60.0)
    data = await response.read()
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Iterable

from .http1 import BodyTooLarge, Connection, UpstreamError

__all__ = ["BodyTooLarge", "OverBudget", "Pool", "Response", "UpstreamError"]


class OverBudget(BodyTooLarge):
    """A response body that the memory budget had no room for while it was read."""


class Response:
    """A response whose head has arrived; read its body with `read` or `iter_chunks`, once."""

    def __init__(self, pool: Pool, conn: Connection, deadline: float) -> None:
        self._pool = pool
        self._conn = conn
        self._deadline = deadline
        self.status = conn.status
        self.reason = conn.reason
        self.headers = conn.headers
        self.content_length = None if conn.close_delimited else conn.length

    async def read(self, cap: int | None = None, charge: Callable[[int], bool] | None = None) -> bytes:
        """The whole body, within the request's deadline.

        More than ``cap`` bytes raises `BodyTooLarge` (at once when the Content-Length says
        so); ``charge`` is asked for each part's size as it arrives, and a False raises
        `OverBudget`. Either way the connection is closed, the rest never read.
        """
        conn, parts, total = self._conn, [], 0
        try:
            if cap is not None and self.content_length is not None and self.content_length > cap:
                raise BodyTooLarge(f"response of {self.content_length} bytes is over the limit of {cap} bytes")
            while True:
                if conn.chunks:
                    data = conn.take()
                    total += len(data)
                    if cap is not None and total > cap:
                        raise BodyTooLarge(f"response is over the limit of {cap} bytes")
                    if charge is not None and not charge(len(data)):
                        raise OverBudget(f"no room in the shadow memory budget for {total} bytes of response")
                    parts.append(data)
                if conn.body_done and not conn.chunks:
                    break
                await conn.wait(self._deadline)
        except BaseException:
            self._pool.discard(conn)
            raise
        self._pool.release(conn)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        conn = self._conn
        try:
            while True:
                if conn.chunks:
                    yield conn.take()
                    continue
                if conn.body_done:
                    break
                await conn.wait(self._deadline)
        except BaseException:
            self._pool.discard(conn)
            raise
        self._pool.release(conn)


def _payload(method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, host: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    has_host = False
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        has_host = has_host or name.lower() == "host"
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.append(f"Host: {host}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    # aiohttp decodes request headers as UTF-8 with surrogate escapes: this restores the bytes sent.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


class Pool:
    """Keep-alive connections to one upstream, at most ``limit`` open at once."""

    def __init__(self, host: str, port: int, limit: int, connect_timeout: float, keepalive_secs: float) -> None:
        self.host, self.port = host, port
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive_secs = keepalive_secs
        self._authority = f"{host}:{port}"
        self._idle: list[tuple[Connection, float]] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed = False

    async def _acquire(self, deadline: float) -> Connection:
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if not conn.closed and now - since < self.keepalive_secs:
                return conn
            self.discard(conn)
        while self._open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - asyncio.get_running_loop().time()))
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self._idle:
                return await self._acquire(deadline)
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                asyncio.get_running_loop().create_connection(Connection, self.host, self.port),
                min(self.connect_timeout, max(0.0, deadline - asyncio.get_running_loop().time())))
        except asyncio.TimeoutError:
            self._gone()
            raise
        except OSError as exc:
            self._gone()
            raise UpstreamError(f"cannot connect to {self._authority}: {exc.strerror or exc}") from None
        return conn

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _gone(self) -> None:
        self._open -= 1
        self._wake_one()

    def release(self, conn: Connection) -> None:
        """Back to the pool, if it may carry another request."""
        if conn.keep_alive and not conn.closed and not self.closed and conn.idle:
            self._idle.append((conn, time.monotonic()))
            self._wake_one()
        else:
            self.discard(conn)

    def discard(self, conn: Connection) -> None:
        """Close a connection that must not be reused."""
        if conn.transport is not None:
            conn.transport.close()
        conn.closed = True
        if conn.counted:
            conn.counted = False
            self._gone()

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes,
                      timeout: float) -> Response:
        """Send a request and wait for the response head; the body is read from the `Response`."""
        if self.closed:
            raise UpstreamError("the connection pool is closed")
        deadline = asyncio.get_running_loop().time() + timeout
        payload = _payload(method, target, headers, body, self._authority)
        conn = await self._acquire(deadline)
        try:
            conn.send(payload, method == "HEAD")
            while not conn.head_done:
                await conn.wait(deadline)
        except BaseException:
            self.discard(conn)
            raise
        return Response(self, conn, deadline)

    def close(self) -> None:
        self.closed = True
        for conn, _ in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
