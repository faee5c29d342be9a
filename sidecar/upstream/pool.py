"""Keep-alive HTTP/1.1 connections to one upstream, and the responses read from them.

aiohttp's client costs several times what the rest of the hop does (hundreds of
microseconds a request on a small machine; ``benchmarks/sidecar_bench.py`` measures the
two side by side); a proxy needs far less of it. A request whose body is in memory goes
out in one write; a streamed body (an async iterable) follows its head with the declared
Content-Length, or in chunked transfer coding when no length is known, while the
response is already awaited. The response (`sidecar.upstream.connection` parses it) is
read whole, capped, or chunk by chunk. Connections are kept alive; one the upstream
closed while idle is never reused.

    pool = Pool("127.0.0.1", 8000, limit=100, connect_timeout=5.0, keepalive_secs=30.0)
    response = await pool.request("POST", "/v2/models/m/infer", headers, body, timeout=60.0)
    data = await response.read(max_bytes=4 << 20)
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

from .connection import Connection, TooLarge, UpstreamError

__all__ = ["Body", "Pool", "Response", "TooLarge", "UpstreamError"]

Body = bytes | AsyncIterable[bytes]
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class Response:
    """A response whose head has arrived; read its body with `read` or `iter_chunks`, once."""

    def __init__(self, pool: Pool, conn: Connection, deadline: float, writer: asyncio.Task[None] | None) -> None:
        self._pool = pool
        self._conn = conn
        self._deadline = deadline
        self._writer = writer  # still sending a streamed request body
        self.status = conn.status
        self.reason = conn.reason
        self.headers = conn.headers
        self.content_length = None if conn.close_delimited else conn.length

    async def read(self, max_bytes: int | None = None, budget: Callable[[int], bool] | None = None) -> bytes:
        """The whole body, within the request's deadline.

        More than ``max_bytes`` raises `TooLarge` (at once when the Content-Length says so);
        ``budget`` is asked for each part's size as it arrives, and a False raises `TooLarge`
        with ``over_budget`` set. Either way the connection is closed, the rest never read.
        """
        conn, parts, total = self._conn, [], 0
        try:
            length = self.content_length
            if max_bytes is not None and length is not None and length > max_bytes:
                raise TooLarge(f"response of {length} bytes is over the limit of {max_bytes} bytes")
            while True:
                if conn.chunks:
                    data = conn.take()
                    total += len(data)
                    if max_bytes is not None and total > max_bytes:
                        raise TooLarge(f"response is over the limit of {max_bytes} bytes")
                    if budget is not None and not budget(len(data)):
                        raise TooLarge(f"no room in the shadow memory budget for {total} bytes of response", True)
                    parts.append(data)
                if conn.body_done and not conn.chunks:
                    break
                await conn.wait(self._deadline)
        except BaseException:
            self._end(False)
            raise
        self._end(True)
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
            self._end(False)
            raise
        self._end(True)

    def _end(self, complete: bool) -> None:
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()  # answered before the whole request was sent: the connection cannot carry another
            complete = False
        if complete:
            self._pool.release(self._conn)
        else:
            self._pool.discard(self._conn)


def _head(method: str, target: str, headers: Iterable[tuple[str, str]], body: Body, host: str) -> tuple[bytes, bool]:
    """The request head, and whether a streamed body goes in chunked transfer coding."""
    lines = [f"{method} {target} HTTP/1.1"]
    has_host = False
    held = isinstance(body, bytes)
    length: str | None = None
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lower = name.lower()
        if lower in _FRAMING:  # the framing is this client's: it knows what it sends
            if lower == "content-length" and not held:
                length = value
            continue
        has_host = has_host or lower == "host"
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.append(f"Host: {host}")
    if isinstance(body, bytes):
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    else:
        lines.append("Transfer-Encoding: chunked")
    # aiohttp decodes request headers as UTF-8 with surrogate escapes: this restores the bytes sent.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"), not held and length is None


async def _pump(conn: Connection, body: AsyncIterable[bytes], chunked: bool, deadline: float) -> None:
    """Send a streamed request body; a failure ends the response with it (the proxy answers 503)."""
    try:
        async for chunk in body:
            if chunk:
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain(deadline)
        if chunked:
            conn.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever broke the body breaks this request, reported as one
        conn.fail(exc if isinstance(exc, (UpstreamError, asyncio.TimeoutError))
                  else UpstreamError(f"the request body could not be sent: {type(exc).__name__}: {exc}"))


class Pool:
    """Keep-alive connections to one upstream, at most ``limit`` open at once; ``tls`` for HTTPS."""

    def __init__(self, host: str, port: int, limit: int, connect_timeout: float, keepalive_secs: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.keepalive_secs = keepalive_secs
        self.tls = tls
        self._authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
        self._idle: list[tuple[Connection, float]] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed = False

    async def _acquire(self, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        while self._idle:
            conn, since = self._idle.pop()
            if not conn.closed and now - since < self.keepalive_secs:
                return conn
            self.discard(conn)
        while self._open >= self.limit:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self._idle:
                return await self._acquire(deadline)
        self._open += 1
        tls = self.tls
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(Connection, self.host, self.port, ssl=tls,
                                       server_hostname=self.host if tls is not None else None),
                min(self.connect_timeout, max(0.0, deadline - loop.time())))
        except asyncio.TimeoutError:
            self._gone()
            raise
        except OSError as exc:
            self._gone()
            raise UpstreamError(f"cannot connect to {self._authority}: {exc.strerror or exc}") from None
        except BaseException:
            self._gone()
            raise
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

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]], body: Body,
                      timeout: float) -> Response:
        """Send a request and wait for the response head; the body is read from the `Response`."""
        if self.closed:
            raise UpstreamError("the connection pool is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        head, chunked = _head(method, target, headers, body, self._authority)
        conn = await self._acquire(deadline)
        writer = None
        try:
            if isinstance(body, bytes):
                conn.send(head + body if body else head, method == "HEAD")
            else:
                conn.send(head, method == "HEAD")
                writer = loop.create_task(_pump(conn, body, chunked, deadline))
            while not conn.head_done:
                await conn.wait(deadline)
        except BaseException:
            if writer is not None:
                writer.cancel()
            self.discard(conn)
            raise
        return Response(self, conn, deadline, writer)

    def close(self) -> None:
        self.closed = True
        for conn, _ in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
