"""One HTTP/1.1 client connection to an upstream: writes a request, parses its response with llhttp.

The protocol half of the upstream client (`sidecar.upstream.pool` is the other half). The
response is parsed by ``httptools.HttpResponseParser`` (llhttp, Node.js's parser), which
checks the framing: status line, Content-Length (ASCII digits, duplicates that agree),
chunk sizes, Transfer-Encoding. The body, delimited by Content-Length, chunked transfer
coding or the end of the connection, is handed over in chunks, with reading paused while
more than ``HIGH_WATER`` bytes wait to be consumed.

What llhttp does not bound is bounded here, as it arrives: the head (``MAX_HEAD`` bytes,
``MAX_HEADERS`` fields), and what stands between two pieces of body, chunk extensions and
the trailers (``MAX_HEAD`` bytes, ``MAX_HEADERS`` fields); llhttp itself refuses a chunk
size over 16 hex digits.
A shadow that sends an endless line is cut off there, not buffered.
"""

from __future__ import annotations

import asyncio
import collections
import socket

import httptools
from multidict import CIMultiDict

MAX_HEAD = 64 * 1024
MAX_HEADERS = 128  # header (and trailer) fields, as aiohttp's server allows
CHUNK_FRAMING = 24  # a chunk's size line and CRLFs without extensions: up to 16 hex digits and 8 bytes
HIGH_WATER = 1024 * 1024  # buffered body bytes before reading from the socket pauses


class UpstreamError(ConnectionError):
    """The upstream could not be reached, closed the connection, or did not speak HTTP/1.1."""


class TooLarge(ValueError):
    """A response body over the reader's cap, or (``over_budget``) over what the memory budget had room for."""

    def __init__(self, message: str, over_budget: bool = False) -> None:
        super().__init__(message)
        self.over_budget = over_budget


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing; the reason is in the connection's error."""


class Connection(asyncio.Protocol):
    """One connection: parses one response at a time into head and body chunks."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # held against the pool's limit until discarded
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._error: BaseException | None = None
        self._reset(False)
        self._done = True  # no request yet: bytes now are bytes nobody asked for

    def _reset(self, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.keep_alive = True
        self.length: int | None = None  # Content-Length, when given
        self.close_delimited = False
        self.head_done = False
        self._done = False
        self._final = False  # the final (not 1xx) response has begun
        self._fields = 0  # header or trailer fields of the part being read
        self._framing = 0  # bytes not body since the head began, a piece of body or a chunk began
        self._fed_body = self._fed_chunks = 0  # body bytes and chunks in the feed being parsed
        self._fed_mark = False  # the feed being parsed held the end of a head, a chunk size or body
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection gives a Transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one write: send it now

    def data_received(self, data: bytes) -> None:
        if self._done:
            if self._error is None:
                self._fail(UpstreamError("data after the end of the response"))
            return
        self._fed_body = self._fed_chunks = 0
        self._fed_mark = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback stopped the parser: it set the error, or (a HEAD's head) ended the response.
            if self._error is None and not (self.head_only and self._done):
                self._fail(UpstreamError(f"invalid response from the upstream: {exc}"))
            return
        # llhttp gives no positions, so count per feed what was not body, less what a chunk's
        # own size line takes; a feed that held a head's end, a chunk size or body starts afresh.
        framing = max(0, len(data) - self._fed_body - CHUNK_FRAMING * self._fed_chunks)
        self._framing = framing if self._fed_mark else self._framing + framing
        if self._framing > MAX_HEAD and not self._done:  # a response complete in this feed is whole
            self._fail(UpstreamError(f"response head, chunk-size lines or trailers over {MAX_HEAD // 1024} KiB"))

    def eof_received(self) -> bool:
        self._end("closed by the upstream")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(str(exc) if exc else "closed by the upstream")
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamError("connection lost while sending the request"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _end(self, why: str) -> None:
        self.closed = True
        self.keep_alive = False
        if self.close_delimited and not self._done:
            self._finish()  # the end of the connection is the end of this body
        elif not self._done:
            self._fail(UpstreamError(f"connection lost before the response was complete: {why}"))

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._final:
            self._stop(UpstreamError("data after the end of the response"))

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADERS:
            self._stop(UpstreamError(f"response with over {MAX_HEADERS} header (or trailer) fields"))
        if not self.head_done:
            # aiohttp decodes header bytes as UTF-8 with replacement; so do we.
            self.headers.add(name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim: the real response follows
            self.headers, self._fields, self._fed_mark = CIMultiDict(), 0, True
            return
        self._final = True
        self.status = status
        self.head_done = True
        self._fields = 0
        self._fed_mark = True
        headers = self.headers
        lengths = headers.getall("Content-Length", ())
        if lengths:
            self.length = int(lengths[0])  # llhttp checked it: digits, and duplicates agree
        chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        no_body = self.head_only or status in (204, 304)
        self.close_delimited = not (no_body or chunked or lengths)
        self.keep_alive = self._parser.should_keep_alive() and not self.close_delimited
        if chunked:
            self.length = None
        self._wake()
        if self.head_only:
            # llhttp cannot be told that the request was HEAD: its body is never sent, so stop here.
            self._finish()
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self._fed_body += len(body)
        self._fed_mark = True
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_chunk_header(self) -> None:
        self._fed_chunks += 1
        self._fed_mark = True

    def on_message_complete(self) -> None:
        if not self._final:
            return  # an interim response ended; the final one follows
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        self._finish()

    # -- state -----------------------------------------------------------------------------
    def _stop(self, exc: BaseException) -> None:
        self._fail(exc)
        raise _Stop

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._done = True
        self.keep_alive = False
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def fail(self, exc: BaseException) -> None:
        """End the response with ``exc`` (the request could not be sent) and close the connection."""
        self._fail(exc)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- used by the pool and Response ---------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing unread: the response is complete and no byte follows it."""
        return self._done and self._error is None and not self.chunks

    @property
    def body_done(self) -> bool:
        return self._done

    async def wait(self, deadline: float) -> None:
        """Wait for more of the response; raises the connection's error, or TimeoutError at ``deadline``
        (the event loop's clock)."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        handle = loop.call_at(deadline, self._timeout)
        try:
            await self._waiter
        finally:
            handle.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _timeout(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(asyncio.TimeoutError())

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def send(self, payload: bytes, head_only: bool) -> None:
        """Start a request: its head (and body, when held) in one write."""
        self._reset(head_only)
        self._error = None
        assert self.transport is not None
        self.transport.write(payload)

    def write(self, data: bytes) -> None:
        """More of a streamed request body."""
        if self.transport is None or self.transport.is_closing():
            raise UpstreamError("the upstream closed the connection while the request was sent")
        self.transport.write(data)

    async def drain(self, deadline: float) -> None:
        """Wait until the socket takes more of a streamed request body (or TimeoutError at ``deadline``)."""
        if not self._write_paused:
            return
        loop = asyncio.get_running_loop()
        self._drain = loop.create_future()
        try:
            await asyncio.wait_for(self._drain, max(0.0, deadline - loop.time()))
        finally:
            self._drain = None
