"""The response parser against hostile upstreams: every line bounded, only well-formed sizes, no other exception.

Scripted servers send one malformed or oversized response each; the client (llhttp, bounded by
`sidecar.upstream.connection`) must fail that request with `UpstreamError` (or `TooLarge`)
at once, hold no more than the bounds, and serve the next request on a fresh connection. A
property test feeds the parser arbitrary bytes.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.upstream.connection import MAX_HEAD, MAX_HEADERS, Connection, UpstreamError
from sidecar.upstream.pool import Pool, TooLarge

from .test_pool import read_request

MAX_CHUNK_LINE = 4096  # a chunk size and its extensions, as long as an upstream may send
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HOSTILE = {
    "status not ASCII digits": b"HTTP/1.1 \xc2\xb2\xc2\xb2\xc2\xb2 OK\r\nContent-Length: 0\r\n\r\n",
    "not HTTP/1.x": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "Content-Length not ASCII": b"HTTP/1.1 200 OK\r\nContent-Length: \xc2\xb2\r\n\r\n",
    "Content-Lengths that disagree": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "a negative chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nok\r\n0\r\n\r\n",
    "a chunk size with a prefix": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
    "a chunk size with an underscore": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
    "an endless chunk-size line": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + b"a" * (MAX_CHUNK_LINE + 10),
    "endless trailers": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
                        + b"X-T: 1\r\n" * (MAX_HEADERS + 5),
    "an endless chunk extension": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x="
                                  + b"e" * (MAX_HEAD + 10),
    "one endless trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"x" * (MAX_HEAD + 10),
    "too many header fields": b"HTTP/1.1 200 OK\r\n" + b"X-H: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n",
    "an endless head": b"HTTP/1.1 200 OK\r\nX-H: " + b"h" * (MAX_HEAD + 10),
}


def exchange(response: bytes, cap: int | None = None) -> tuple[BaseException | None, bytes]:
    """One hostile response, then a good one on the next connection: (what the first raised, the second's body)."""
    served: list[int] = []

    async def main() -> tuple[BaseException | None, bytes]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served.append(1)
            try:
                await read_request(reader)
                writer.write(response if len(served) == 1 else OK)
                await writer.drain()
                await reader.read()  # hold the connection open: the client must not wait for its end
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1], 4, 5.0, 30.0)
        error: BaseException | None = None
        try:
            try:
                first = await pool.request("GET", "/", [], b"", 5)
                await first.read(cap)
            except (UpstreamError, TooLarge) as exc:
                error = exc
            second = await pool.request("GET", "/", [], b"", 5)
            return error, await second.read()
        finally:
            pool.close()
            server.close()

    return asyncio.run(asyncio.wait_for(main(), 10))


@pytest.mark.parametrize("what", list(HOSTILE))
def test_a_hostile_response_fails_that_request_alone(what: str) -> None:
    error, after = exchange(HOSTILE[what])
    assert isinstance(error, UpstreamError), f"{what}: {error!r}"
    assert after == b"ok"


def test_a_content_length_over_the_cap_fails_before_the_body_is_read() -> None:
    error, after = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n" + b"x" * 1000, cap=4096)
    assert isinstance(error, TooLarge) and "1000000000000 bytes is over the limit of 4096" in str(error)
    assert after == b"ok"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=64), st.sampled_from([
    b"HTTP/1.1 200 OK\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"\r\n", b"5\r\n",
    b"0\r\n", b"ffffffffffffffff\r\n", b";ext=1\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"])), max_size=30))
def test_the_parser_raises_nothing_but_its_own_error_and_holds_little(parts: list[bytes]) -> None:
    conn = Connection()
    conn._reset(False)
    for part in parts:
        conn.data_received(part)  # an UpstreamError ends the response inside; nothing else may escape
        assert conn._framing <= MAX_HEAD + 64
