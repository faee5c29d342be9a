"""One HTTP/1.1 client connection to an upstream: writes a request, parses its response.

The protocol half of the lean client (`sidecar.upstream.pool` is the other half): the response
head is parsed here, and the body, delimited by Content-Length, chunked transfer coding
or the end of the connection, is handed over in chunks, with reading paused while more
than ``HIGH_WATER`` bytes wait to be consumed.

Every line an upstream sends is bounded before it is searched or held: the head
(``MAX_HEAD`` bytes, ``MAX_HEADERS`` fields), a chunk-size line (``MAX_CHUNK_LINE``) and
the trailers (``MAX_HEAD`` bytes and ``MAX_HEADERS`` lines, as the head). A shadow that
sends an endless line is cut off there, not buffered.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket

from multidict import CIMultiDict

MAX_HEAD = 64 * 1024
MAX_HEADERS = 128  # header (and trailer) fields, as aiohttp's server allows
MAX_CHUNK_LINE = 4096  # a chunk size and its extensions
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # at most 2**64 - 1: no sign, no prefix, no underscore
HIGH_WATER = 1024 * 1024  # buffered body bytes before reading from the socket pauses


class UpstreamError(ConnectionError):
    """The upstream could not be reached, closed the connection, or did not speak HTTP/1.1."""


class BodyTooLarge(ValueError):
    """A response body over the reader's cap."""


class Connection(asyncio.Protocol):
    """One connection: parses one response at a time into head and body chunks."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # held against the pool's limit until discarded
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._reset(False)

    def _reset(self, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.keep_alive = True
        self.length: int | None = None  # Content-Length, when given
        self._mode = "head"  # head, length, chunked, close, done
        self._remaining = 0  # bytes left in the body (length) or in the current chunk (chunked)
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._paused = False
        self._trailers = self._trailer_bytes = 0  # trailer lines and bytes read so far

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one write: send it now

    def data_received(self, data: bytes) -> None:
        if not self._buffer and self._mode == "length" and len(data) <= self._remaining:
            # The common case of a body arriving: hand the bytes over without copying them twice.
            self._push(data)
            self._remaining -= len(data)
            if self._remaining == 0:
                self._finish()
            return
        if not self._buffer and self._mode == "close":
            self._push(data)
            return
        self._buffer += data
        try:
            self._parse()
        except UpstreamError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if self._mode == "close":
            self._finish()
        elif self._mode != "done" or self._buffer:
            self._fail(UpstreamError("the upstream closed the connection before the response was complete"))
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._mode == "close":
            self._finish()
        elif self._mode != "done":
            self._fail(UpstreamError(f"connection lost: {exc or 'closed by the upstream'}"))

    # -- parsing ---------------------------------------------------------------------------
    def _parse(self) -> None:
        while True:
            if self._mode == "head":
                end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
                if end < 0:
                    if len(self._buffer) > MAX_HEAD:
                        raise UpstreamError(f"response head over {MAX_HEAD // 1024} KiB")
                    return
                self._head(bytes(self._buffer[:end]))
                del self._buffer[:end + 4]
                if self._mode == "head":  # an interim 1xx response: the real one follows
                    continue
                self._wake()
            elif self._mode == "length":
                take = min(self._remaining, len(self._buffer))
                if take:
                    self._push(bytes(self._buffer[:take]))
                    del self._buffer[:take]
                    self._remaining -= take
                if self._remaining == 0:
                    self._finish()
                return
            elif self._mode == "chunked":
                if not self._chunk():
                    return
            elif self._mode == "close":
                if self._buffer:
                    self._push(bytes(self._buffer))
                    self._buffer.clear()
                return
            else:
                if self._buffer:
                    raise UpstreamError("data after the end of the response")
                return

    def _head(self, head: bytes) -> None:
        lines = head.decode("utf-8", "replace").split("\r\n")  # one decode for the whole head
        parts = lines[0].split(" ", 2)
        if (len(parts) < 2 or parts[0] not in ("HTTP/1.0", "HTTP/1.1") or len(parts[1]) != 3
                or not parts[1].isascii() or not parts[1].isdigit()):
            raise UpstreamError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        if 100 <= self.status < 200 and self.status != 101:
            return  # interim: stay in head mode
        if len(lines) - 1 > MAX_HEADERS:
            raise UpstreamError(f"response with {len(lines) - 1} header lines: at most {MAX_HEADERS} are read")
        headers: CIMultiDict[str] = CIMultiDict()
        add = headers.add
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[0] in " \t" or name[-1] in " \t":
                raise UpstreamError(f"malformed response header line {line[:80]!r}")
            add(name, value.strip())
        self.headers = headers
        connection = headers.get("Connection", "").lower()
        self.keep_alive = ("close" not in connection) and (parts[0] != "HTTP/1.0" or "keep-alive" in connection)
        encoding = headers.get("Transfer-Encoding", "").lower()
        lengths = headers.getall("Content-Length", ())
        if lengths:
            # Only ASCII digits ('²' is a digit to str.isdigit), and several must agree (RFC 9112 §6.3).
            if len(set(lengths)) != 1 or not (lengths[0].isascii() and lengths[0].isdigit()):
                raise UpstreamError(f"invalid Content-Length {', '.join(lengths)[:80]!r}")
            self.length = int(lengths[0])
        if self.head_only or self.status in (204, 304):
            self._mode = "done"  # no body, whatever the length says (it is the GET's, for HEAD)
        elif "chunked" in encoding:
            self._mode, self._remaining, self.length = "chunked", -1, None
        elif self.length is not None:
            self._remaining = self.length
            self._mode = "length" if self.length else "done"
        else:
            self._mode, self.keep_alive = "close", False
        if self._mode == "done":
            self._finish(wake=False)

    def _chunk(self) -> bool:
        """Consume what the buffer holds of the chunked body; False when more data is needed."""
        if self._remaining == -1:  # at a chunk-size line
            end = self._buffer.find(b"\r\n", 0, MAX_CHUNK_LINE + 2)
            if end < 0:
                if len(self._buffer) > MAX_CHUNK_LINE:
                    raise UpstreamError(f"chunk-size line over {MAX_CHUNK_LINE} bytes")
                return False
            size = bytes(self._buffer[:end].split(b";", 1)[0].strip(b" \t"))
            if not _CHUNK_SIZE.fullmatch(size):
                raise UpstreamError(f"invalid chunk size {size[:20]!r}")
            self._remaining = int(size, 16)
            del self._buffer[:end + 2]
            if self._remaining == 0:
                self._remaining = -2  # trailers, up to an empty line
                self._trailers = self._trailer_bytes = 0
            return True
        if self._remaining == -2:
            end = self._buffer.find(b"\r\n", 0, MAX_HEAD + 2)
            if end < 0:
                if len(self._buffer) > MAX_HEAD - self._trailer_bytes:
                    raise UpstreamError(f"trailers over {MAX_HEAD // 1024} KiB")
                return False
            del self._buffer[:end + 2]
            if end == 0:
                self._finish()
                return True
            self._trailers += 1
            self._trailer_bytes += end + 2
            if self._trailers > MAX_HEADERS or self._trailer_bytes > MAX_HEAD:
                raise UpstreamError(f"trailers over {MAX_HEADERS} lines or {MAX_HEAD // 1024} KiB")
            return True
        if len(self._buffer) < self._remaining + 2:
            if self._remaining and len(self._buffer) > 0:
                take = min(self._remaining, len(self._buffer))
                self._push(bytes(self._buffer[:take]))
                del self._buffer[:take]
                self._remaining -= take
            return False
        if self._remaining:
            self._push(bytes(self._buffer[:self._remaining]))
        if self._buffer[self._remaining:self._remaining + 2] != b"\r\n":
            raise UpstreamError("chunk not followed by CRLF")
        del self._buffer[:self._remaining + 2]
        self._remaining = -1
        return True

    def _push(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish(self, wake: bool = True) -> None:
        self._mode = "done"
        if wake:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._mode = "done"
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- used by Response ------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing unread: the response is complete and no byte follows it."""
        return self._mode == "done" and not self._buffer and not self.chunks

    @property
    def close_delimited(self) -> bool:
        return self._mode == "close"

    @property
    def head_done(self) -> bool:
        return self._mode != "head"

    @property
    def body_done(self) -> bool:
        return self._mode == "done"

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
        self._reset(head_only)
        self._error = None
        assert self.transport is not None
        self.transport.write(payload)
