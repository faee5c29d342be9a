"""Slow and surplus clients: head and body deadlines, the connection cap, and gRPC's handshake deadline.

Real sidecars (started as production starts them) with short limits; the slow clients are
raw sockets that send part of a request and wait, as slowloris does.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest
from aiohttp import web

from sidecar.config.file import Config, PrimaryConfig

from ..support import RunningSidecar, SidecarProcess, Stub

HEADER_SECS = 0.5
REQUEST = b"GET /v2/models/m HTTP/1.1\r\nHost: sidecar\r\n\r\n"


@pytest.fixture(scope="module")
def primary() -> Iterator[Stub]:
    def routes(app: web.Application) -> None:
        async def model(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"name": "m"})
        app.router.add_route("*", "/v2/models/m", model)

    stub = Stub(routes)
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def sidecar(primary: Stub) -> Iterator[RunningSidecar]:
    running = RunningSidecar(Config(primary=PrimaryConfig(http=primary.url, grpc="127.0.0.1:1")),
                             header_timeout_secs=HEADER_SECS, body_timeout_secs=HEADER_SECS)
    yield running
    running.stop()


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    start, data = time.monotonic(), b""
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def answer(sock: socket.socket) -> bytes:
    """One whole response (the stub's answers carry a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("listener", ["http", "metrics", "admin"])
def test_a_partial_head_is_answered_408_and_closed_after_the_header_timeout(sidecar: RunningSidecar,
                                                                             listener: str) -> None:
    address = {"http": sidecar.http, "metrics": sidecar.metrics_url[7:], "admin": sidecar.admin_url[7:]}[listener]
    before = sidecar.metric("sidecar_client_timeouts_total", listener=listener, part="header")
    with connect(address) as sock:
        sock.sendall(b"GET /v2/models/m HTTP/1.1\r\nHost: sidecar\r\nX-Slow: ")
        data, took = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ") and b"did not arrive in time" in data
    assert HEADER_SECS * 0.8 <= took < HEADER_SECS + 3
    assert sidecar.metric("sidecar_client_timeouts_total", listener=listener, part="header") == before + 1


def test_a_connection_that_sends_nothing_is_closed(sidecar: RunningSidecar) -> None:
    with connect(sidecar.http) as sock:
        data, took = read_until_closed(sock)
    assert data == b"" and took < HEADER_SECS + 3


def test_a_body_that_does_not_arrive_closes_the_connection(sidecar: RunningSidecar) -> None:
    before = sidecar.metric("sidecar_client_timeouts_total", listener="http", part="body")
    with connect(sidecar.http) as sock:
        sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: s\r\nContent-Length: 100\r\n\r\n0123456789")
        _, took = read_until_closed(sock)
    assert took < HEADER_SECS + 3
    assert sidecar.metric("sidecar_client_timeouts_total", listener="http", part="body") == before + 1


def test_an_idle_keep_alive_connection_is_not_cut_by_the_header_timeout(sidecar: RunningSidecar) -> None:
    with connect(sidecar.http) as sock:
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_SECS * 2)  # idle between requests: the keep-alive timeout's business, not this
        sock.sendall(REQUEST)
        assert answer(sock).startswith(b"HTTP/1.1 200")
        # the next head arrives in pieces, each in time, but not whole: cut after the deadline
        sock.sendall(b"GET /v2/models/m HTTP/1.1\r\n")
        data, took = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and took < HEADER_SECS + 3


def test_over_the_connection_cap_is_answered_503_while_connected_clients_are_served(primary: Stub) -> None:
    running = RunningSidecar(Config(primary=PrimaryConfig(http=primary.url, grpc="127.0.0.1:1")),
                             header_timeout_secs=30.0, max_connections=4)
    slow = [connect(running.http) for _ in range(3)]
    try:
        for sock in slow:
            sock.sendall(b"GET /v2/models/m HTTP/1.1\r\n")
        with connect(running.http) as good:
            good.sendall(REQUEST)
            assert answer(good).startswith(b"HTTP/1.1 200")  # four open: the cap
            with connect(running.http) as extra:
                data, took = read_until_closed(extra)
            assert data.startswith(b"HTTP/1.1 503 ") and b"--max-connections" in data and took < 3
            assert running.metric("sidecar_client_connections_refused_total", listener="http") == 1
            for _ in range(3):  # the connected client goes on being served
                good.sendall(REQUEST)
                assert answer(good).startswith(b"HTTP/1.1 200")
        for sock in slow:
            sock.close()
        deadline = time.monotonic() + 10
        while running.metric("sidecar_client_connections", listener="http") > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://{running.http}/v2/models/m", timeout=10) as response:
            assert response.status == 200  # room again once they left
    finally:
        for sock in slow:
            sock.close()
        running.stop()


def test_a_grpc_connection_that_never_completes_its_handshake_is_closed(sidecar: RunningSidecar) -> None:
    with connect(sidecar.grpc) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n")  # part of the HTTP/2 preface, then nothing
        _, took = read_until_closed(sock)
    assert took < HEADER_SECS + 5


def test_the_production_process_on_uvloop_cuts_a_partial_head_too(primary: Stub) -> None:
    process = SidecarProcess("--listen", "127.0.0.1:0", "--grpc-listen", "off", "--metrics-port", "0",
                             "--primary", primary.url, "--header-timeout-secs", str(HEADER_SECS))
    try:
        with connect(process.http) as sock:
            sock.sendall(b"GET /v2/models/m HTTP/1.1\r\nHost: s")
            data, took = read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 408 ") and took < HEADER_SECS + 3
        with urllib.request.urlopen(f"http://{process.http}/v2/models/m", timeout=10) as response:
            assert response.status == 200
    finally:
        process.process.terminate()
        process.finish(15)
        process.kill()
