"""Misbehaving shadows: raw asyncio socket servers, one per kind of fault.

Each reads a whole HTTP/1.1 request (head and Content-Length body) as a real server
would, then misbehaves in its own way. The tests (`test_adversarial_shadows`) and the
fault benchmark (``benchmarks/sidecar_faults.py``, which runs this module) put them
behind a sidecar as shadows::

    python -m tests.sidecar.doubles --port-file ports.json   # every kind; prints nothing, writes the ports

Kinds: ``refuse`` (nothing listens), ``blackhole`` (accepts, never answers), ``reset``
(RST at once), ``reset_mid_body`` (RST after part of a body), ``garbage`` (bytes that are
not HTTP), ``error500``, ``late`` (the right answer, ``LATE_SECS`` late), ``endless`` (200,
a chunked body that never ends), ``huge`` (a Content-Length of a terabyte, then bytes
forever), ``drip`` (one byte every 50 ms), ``stall`` (3 MiB of a 4 MiB body, then
nothing), and ``healthy`` (a v2 answer at once), the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import struct
from pathlib import Path

KINDS = ("refuse", "blackhole", "reset", "reset_mid_body", "garbage", "error500", "late", "endless", "huge", "drip",
         "stall")
LATE_SECS = 5.0
ANSWER = json.dumps({"model_name": "classifier", "model_version": "2", "outputs": [
    {"name": "OUTPUT__0", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}).encode()
CHUNK = b"x" * 65536


def _response(status: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
            "\r\n").encode() + body


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """A request's head and body, or None at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    try:
        await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return head


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _until_closed(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


async def _stream(writer: asyncio.StreamWriter, head: bytes, chunk: bytes, pause: float = 0.0) -> None:
    """Write ``head`` then ``chunk`` forever, at the reader's pace, until it goes away."""
    writer.write(head)
    while True:
        writer.write(chunk)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)


async def _serve(kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if kind == "reset":
        _rst(writer)
        return
    try:
        while await read_request(reader) is not None:
            if kind == "blackhole":
                await _until_closed(reader)
                return
            if kind == "garbage":
                writer.write(b"SSH-2.0-OpenSSH_9.6\r\n" + os.urandom(512))
                await writer.drain()
                writer.close()
                return
            if kind == "reset_mid_body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + CHUNK[:4096])
                await writer.drain()
                _rst(writer)
                return
            if kind == "error500":
                writer.write(_response("500 Internal Server Error", b'{"error": "the shadow broke"}'))
            elif kind in ("late", "healthy"):
                if kind == "late":
                    await asyncio.sleep(LATE_SECS)
                writer.write(_response("200 OK", ANSWER))
            elif kind == "endless":
                chunk = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
                await _stream(writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n", chunk)
            elif kind == "huge":
                await _stream(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", CHUNK)
            elif kind == "drip":
                await _stream(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n", b"{", pause=0.05)
            elif kind == "stall":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n" + CHUNK * 48)
                await writer.drain()
                await _until_closed(reader)
                return
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


class Doubles:
    """Every kind listening on 127.0.0.1 (``refuse``: a port nothing listens on); ``urls[kind]``."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.urls: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # connections being served: ended by close()

    async def _connection(self, kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await _serve(kind, reader, writer)
        finally:
            self._tasks.discard(task)

    async def start(self, kinds: tuple[str, ...] = (*KINDS, "healthy")) -> Doubles:
        for kind in kinds:
            if kind == "refuse":
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
            else:
                server = await asyncio.start_server(functools.partial(self._connection, kind), "127.0.0.1", 0,
                                                    backlog=1024)
                self.servers.append(server)
                port = server.sockets[0].getsockname()[1]
            self.urls[kind] = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        """Stop listening and end every connection (a task left pending would be collected mid-run, noisily)."""
        for server in self.servers:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _main(port_file: Path) -> None:
    doubles = await Doubles().start()
    await asyncio.to_thread(port_file.write_text, json.dumps(doubles.urls))
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True, help="write {kind: url} here once listening")
    asyncio.run(_main(parser.parse_args().port_file))
