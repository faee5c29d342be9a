"""The HTTP/1.1 upstream client against scripted servers: framing, keep-alive, streamed bodies, failures, limits."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sidecar.upstream.pool import Pool, TooLarge, UpstreamError

from ..support import free_port

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def run(script: Script, client: Callable[[Pool, list[int]], Awaitable[None]], limit: int = 10,
        keepalive: float = 30.0) -> list[int]:
    """Serve ``script`` on every connection and run ``client``; returns the count of connections."""
    connections: list[int] = []

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            try:
                await script(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1], limit, 5.0, keepalive)
        try:
            await client(pool, connections)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())
    return connections


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(reader)
        reply = b"echo:" + body
        writer.write(b"HTTP/1.1 200 OK\r\nX-Seen: " + head.split(b"\r\n")[0] + b"\r\nContent-Length: "
                     + str(len(reply)).encode() + b"\r\n\r\n" + reply)
        await writer.drain()


def test_keep_alive_reuses_one_connection() -> None:
    async def client(pool: Pool, connections: list[int]) -> None:
        for index in range(3):
            response = await pool.request("POST", "/v2/x?q=%2F", [("Host", "h")], f"{index}".encode(), 5)
            assert (response.status, response.reason) == (200, "OK")
            assert response.headers["x-seen"] == "POST /v2/x?q=%2F HTTP/1.1" and response.content_length == 6
            assert await response.read() == f"echo:{index}".encode()

    assert len(run(keep_alive, client)) == 1


async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n"
           b"5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
    for index in range(len(raw)):  # one byte at a time: every parser state sees a split
        writer.write(raw[index:index + 1])
        await writer.drain()
    await read_request(reader)
    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await writer.drain()
    await reader.read()


def test_chunked_bodies_split_anywhere_and_the_connection_is_reused() -> None:
    async def client(pool: Pool, connections: list[int]) -> None:
        response = await pool.request("GET", "/", [], b"", 5)
        assert response.content_length is None and await response.read() == b"hello world"
        response = await pool.request("GET", "/", [], b"", 5)
        assert response.status == 204 and await response.read() == b""

    assert len(run(chunked, client)) == 1


async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n")
    for _ in range(40):
        writer.write(b"x" * 65536)  # over the high-water mark: reading pauses until consumed
        await writer.drain()


def test_a_body_delimited_by_close_streams_with_back_pressure_and_is_not_reused() -> None:
    async def client(pool: Pool, connections: list[int]) -> None:
        for _ in range(2):
            response = await pool.request("GET", "/", [], b"", 5)
            assert response.status == 200 and response.content_length is None
            sizes = [len(chunk) async for chunk in response.iter_chunks()]
            assert sum(sizes) == 40 * 65536

    assert len(run(until_close, client)) == 2


def test_head_responses_have_no_body() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            await writer.drain()

    async def client(pool: Pool, connections: list[int]) -> None:
        for _ in range(2):
            response = await pool.request("HEAD", "/", [], b"", 5)
            assert response.content_length == 1000 and await response.read() == b""

    assert len(run(script, client)) == 1


@pytest.mark.parametrize("reply", [b"\x00\xffnot http\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_garbage_and_truncated_responses_are_upstream_errors(reply: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async def client(pool: Pool, connections: list[int]) -> None:
        with pytest.raises(UpstreamError):
            response = await pool.request("POST", "/", [], b"x", 5)
            await response.read()
        assert pool._open == 0

    run(script, client)


def test_refused_connections_and_timeouts() -> None:
    async def main() -> None:
        pool = Pool("127.0.0.1", free_port(), 10, 5.0, 30.0)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool.request("GET", "/", [], b"", 5)

    asyncio.run(main())

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async def client(pool: Pool, connections: list[int]) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await pool.request("GET", "/", [], b"", 0.2)
        assert pool._open == 0

    run(silent, client)


def test_connections_the_upstream_closed_while_idle_are_not_reused() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def client(pool: Pool, connections: list[int]) -> None:
        for _ in range(3):
            response = await pool.request("GET", "/", [], b"", 5)
            assert await response.read() == b"ok"
            for _ in range(100):  # let the upstream's FIN arrive while the connection is idle
                if all(conn.closed for conn, _ in pool._idle):
                    break
                await asyncio.sleep(0.01)

    assert len(run(one_then_close, client)) == 3


def test_the_limit_queues_requests_and_caps_bodies() -> None:
    async def client(pool: Pool, connections: list[int]) -> None:
        async def one(index: int) -> bytes:
            response = await pool.request("POST", "/", [], str(index).encode(), 5)
            return await response.read()

        # four at once over one connection: each waits for the one before it to be read
        assert await asyncio.gather(*(one(i) for i in range(4))) == [f"echo:{i}".encode() for i in range(4)]
        assert pool._open == 1
        response = await pool.request("POST", "/", [], b"x" * 100, 5)
        with pytest.raises(TooLarge):
            await response.read(max_bytes=50)

    assert len(run(keep_alive, client, limit=1)) == 1


async def echo_framing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers with how the request body came: its framing header, then the body as received."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        framing = next(line for line in lines if line.lower().startswith((b"content-length:", b"transfer-encoding:")))
        if framing.lower().startswith(b"content-length:"):
            body = await reader.readexactly(int(framing.split(b":")[1]))
        else:
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                body += (await reader.readexactly(size + 2))[:-2]
                if size == 0:
                    break
        reply = framing + b"|" + body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(reply)).encode() + b"\r\n\r\n" + reply)
        await writer.drain()


def test_streamed_bodies_go_chunked_or_with_their_declared_length_on_a_reused_connection() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"ab", b"", b"cde"):
            yield part

    async def client(pool: Pool, connections: list[int]) -> None:
        response = await pool.request("POST", "/", [], parts(), 5)
        assert await response.read() == b"Transfer-Encoding: chunked|abcde"
        response = await pool.request("POST", "/", [("Content-Length", "5")], parts(), 5)
        assert await response.read() == b"Content-Length: 5|abcde"

    assert len(run(echo_framing, client)) == 1


def test_a_streamed_body_that_breaks_fails_its_request() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"ab"
        raise ConnectionResetError("the client went away")

    async def client(pool: Pool, connections: list[int]) -> None:
        with pytest.raises(UpstreamError, match="client went away"):
            response = await pool.request("POST", "/", [], broken(), 5)
            await response.read()
        assert pool._open == 0

    run(echo_framing, client)


def test_https_upstreams_are_reached_over_tls() -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)

    async def main() -> None:
        server = await asyncio.start_server(keep_alive, "127.0.0.1", 0, ssl=server_tls)
        pool = Pool("localhost", server.sockets[0].getsockname()[1], 2, 5.0, 30.0, client_tls)
        try:
            for _ in range(2):
                response = await pool.request("POST", "/", [], b"tls", 5)
                assert await response.read() == b"echo:tls"
            assert pool._open == 1  # one TLS connection, kept alive
        finally:
            pool.close()
            server.close()

    asyncio.run(main())
