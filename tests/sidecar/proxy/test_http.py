"""The HTTP hop: the client gets exactly the primary's answer, health, upstream failures, streaming."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Iterator

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
from aiohttp import web

from sidecar.config.file import Config, HeaderRules, PrimaryConfig, ShadowConfig

from ..conftest import ModelServer
from ..support import RunningSidecar, Stub, free_port, wait_until


@pytest.fixture(scope="module")
def sidecar(serve_v1: ModelServer) -> Iterator[RunningSidecar]:
    running = RunningSidecar(Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc)))
    yield running
    running.stop()


def get(url: str, method: str = "GET", **kwargs: object) -> tuple[int, dict[str, str], bytes]:
    async def fetch() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, **kwargs) as response:
                return response.status, dict(response.headers), await response.read()
    return asyncio.run(fetch())


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_gets_exactly_what_the_primary_answers(sidecar: RunningSidecar, serve_v1: ModelServer,
                                                            points: np.ndarray, binary: bool) -> None:
    results = []
    for url in (serve_v1.http, sidecar.http):
        client = httpclient.InferenceServerClient(url)
        inputs = [httpclient.InferInput("INPUT__0", [8, 64], "FP32")]
        inputs[0].set_data_from_numpy(points[:8], binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("OUTPUT__0", binary_data=binary)]
        results.append(client.infer("classifier", inputs, outputs=outputs, request_id="same", model_version="1"))
        client.close()
    direct, proxied = results
    np.testing.assert_array_equal(proxied.as_numpy("OUTPUT__0"), direct.as_numpy("OUTPUT__0"))
    assert proxied.get_response() == direct.get_response()
    assert sidecar.metric("sidecar_requests_total", upstream="primary", protocol="http", code="200") >= 1


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/v2/models/classifier", None),
    ("GET", "/v2/models/classifier/versions/1/config", None),
    ("GET", "/v2/models/nope", None),
    ("POST", "/v2/models/classifier/infer", b"{not json"),
    ("POST", "/v2/models/classifier/infer", b'{"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 3], '
                                            b'"data": [1, 2, 3]}]}'),
    ("GET", "/v2/health/ready", None),
])
def test_status_and_body_pass_through(sidecar: RunningSidecar, serve_v1: ModelServer, method: str, path: str,
                                      body: bytes | None) -> None:
    direct = get(f"{serve_v1.http_url}{path}", method, data=body)
    proxied = get(f"http://{sidecar.http}{path}", method, data=body)
    assert (proxied[0], proxied[2]) == (direct[0], direct[2])
    assert proxied[1]["Content-Type"] == direct[1]["Content-Type"]


def test_liveness_and_readiness_on_both_ports(sidecar: RunningSidecar) -> None:
    for base in (f"http://{sidecar.http}", sidecar.metrics_url):
        assert get(f"{base}/healthz")[0] == 200
        status, _, body = get(f"{base}/readyz")
        assert status == 200 and b"primary answered 200" in body


def test_readiness_follows_the_primary() -> None:
    ready = {"value": False}

    def routes(app: web.Application) -> None:
        async def health(request: web.Request) -> web.Response:
            return web.json_response({"ready": ready["value"]}, status=200 if ready["value"] else 503)
        app.router.add_get("/v2/health/ready", health)

    stub = Stub(routes)
    absent = RunningSidecar(Config(primary=PrimaryConfig(http=f"http://127.0.0.1:{free_port()}", grpc=None)),
                            grpc_listen=None)
    running = RunningSidecar(Config(primary=PrimaryConfig(http=stub.url, grpc=None)), grpc_listen=None)
    try:
        status, _, body = get(f"http://{absent.http}/readyz")
        assert status == 503 and b"primary unreachable" in body
        assert get(f"http://{running.http}/readyz")[0] == 503  # the model is still loading
        ready["value"] = True
        assert get(f"http://{running.http}/readyz")[0] == 200
    finally:
        absent.stop()
        running.stop()
        stub.stop()


def test_a_primary_that_is_down_answers_503_and_one_that_hangs_504() -> None:
    release = asyncio.Event()

    def routes(app: web.Application) -> None:
        async def hang(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="late")
        app.router.add_post("/v2/models/m/infer", hang)

    stub = Stub(routes)
    down = RunningSidecar(Config(primary=PrimaryConfig(http=f"http://127.0.0.1:{free_port()}", grpc=None)),
                          grpc_listen=None)
    slow = RunningSidecar(Config(primary=PrimaryConfig(http=stub.url, grpc=None, timeout_secs=0.3)),
                          grpc_listen=None)
    try:
        status, _, body = get(f"http://{down.http}/v2/models/m/infer", "POST", data=b"{}")
        assert status == 503 and b"upstream connect error" in body
        status, _, body = get(f"http://{slow.http}/v2/models/m/infer", "POST", data=b"{}")
        assert status == 504 and b"upstream request timeout" in body
        assert slow.metric("sidecar_requests_total", upstream="primary", protocol="http", code="504") == 1
    finally:
        stub.loop.loop.call_soon_threadsafe(release.set)
        down.stop()
        slow.stop()
        stub.stop()


def echo_routes(app: web.Application) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername")[1] if request.transport else None
        return web.json_response({"headers": dict(request.headers), "peer": peer, "length": len(body),
                                  "sha": hashlib.sha256(body).hexdigest()},
                                 headers={"X-Upstream": "yes", "Connection": "keep-alive"})

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for index in range(48):
            await response.write(bytes([index]) * 65536)
        await response.write_eof()
        return response

    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_post("/v2/models/m/infer", echo)
    app.router.add_get("/big", big)


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[Stub, Stub, RunningSidecar]]:
    primary, shadow = Stub(echo_routes), Stub(echo_routes)
    config = Config(primary=PrimaryConfig(http=primary.url, grpc=None),
                    shadows=(ShadowConfig("small", http=shadow.url, max_body_bytes=1024),))
    running = RunningSidecar(config, grpc_listen=None)
    yield primary, shadow, running
    running.stop()
    primary.stop()
    shadow.stop()


def test_headers_pass_except_hop_by_hop_and_connections_are_reused(echo: tuple[Stub, Stub, RunningSidecar]) -> None:
    _, _, running = echo

    async def two_requests() -> list[tuple[dict, dict]]:
        out = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for _ in range(2):
                async with session.get(f"http://{running.http}/echo/a%2Fb?q=1&q=2",
                                       headers={"Connection": "keep-alive, X-Drop", "X-Drop": "1", "X-Keep": "2",
                                                "Authorization": "Bearer t", "TE": "trailers"}) as response:
                    out.append((dict(response.headers), await response.json()))
        return out

    (headers, first), (_, second) = asyncio.run(two_requests())
    seen = first["headers"]
    assert seen["X-Keep"] == "2" and seen["Authorization"] == "Bearer t"
    assert "X-Drop" not in seen and "TE" not in seen and "Keep-Alive" not in seen
    assert headers["X-Upstream"] == "yes"
    assert first["peer"] == second["peer"]  # one pooled keep-alive connection to the primary


def test_large_and_chunked_bodies_stream_to_the_primary_and_are_counted_not_mirrored(
        echo: tuple[Stub, Stub, RunningSidecar]) -> None:
    _, _, running = echo
    big = bytes(range(256)) * 8192  # 2 MiB: over the buffer limit and the shadow's max_body_size

    async def chunks() -> object:
        for offset in range(0, len(big), 65536):
            yield big[offset:offset + 65536]

    status, _, body = get(f"http://{running.http}/v2/models/m/infer", "POST", data=big)
    assert status == 200 and f'"sha":"{hashlib.sha256(big).hexdigest()}"'.encode() in body.replace(b" ", b"")
    status, _, body = get(f"http://{running.http}/v2/models/m/infer", "POST", data=chunks())
    assert status == 200 and f'"length":{len(big)}'.encode() in body.replace(b" ", b"")
    assert running.metric("sidecar_shadow_skipped_total", shadow="small", reason="too_large") == 1
    assert running.metric("sidecar_shadow_skipped_total", shadow="small", reason="streamed") == 1
    assert running.metric("sidecar_shadow_requests_total", shadow="small", protocol="http") == 0


def test_large_responses_stream_back(echo: tuple[Stub, Stub, RunningSidecar]) -> None:
    _, _, running = echo
    status, _, body = get(f"http://{running.http}/big")
    assert status == 200 and len(body) == 48 * 65536 and body[-1] == 47


def test_expect_100_continue_is_answered_by_the_proxy(echo: tuple[Stub, Stub, RunningSidecar]) -> None:
    _, _, running = echo
    host, port = running.http.split(":")
    body = b'{"inputs": []}'
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST /echo/x HTTP/1.1\r\nHost: {running.http}\r\nExpect: 100-continue\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the body is sent
        sock.sendall(body)
        reply = b""
        while b'"sha"' not in reply:
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 OK") and b"Expect" not in reply.split(b"\r\n\r\n", 1)[1]


def test_mirrored_copies_follow_the_header_rules_and_share_the_request_id(
        echo: tuple[Stub, Stub, RunningSidecar]) -> None:
    primary, _, _ = echo
    copies: list[dict[str, str]] = []

    def routes(app: web.Application) -> None:
        async def infer(request: web.Request) -> web.Response:
            await request.read()
            copies.append({k.lower(): v for k, v in request.headers.items()})
            return web.json_response({"model_name": "m", "outputs": []})
        app.router.add_post("/v2/models/m/infer", infer)

    shadow = Stub(routes)
    rules = HeaderRules(set=(("x-shadow", "yes"),), remove=frozenset({"authorization", "cookie"}))
    running = RunningSidecar(Config(primary=PrimaryConfig(http=primary.url, grpc=None),
                                    shadows=(ShadowConfig("rules", http=shadow.url, headers=rules),)),
                             grpc_listen=None)
    try:
        status, _, body = get(f"http://{running.http}/v2/models/m/infer", "POST", data=b'{"inputs": []}',
                              headers={"Authorization": "Bearer t", "Cookie": "c=1", "X-Keep": "k",
                                       "Host": "model.example:8080"})
        wait_until(lambda: copies, 10, "the copy")
    finally:
        running.stop()
        shadow.stop()
    seen_by_primary = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    (copy,) = copies
    assert status == 200 and seen_by_primary["authorization"] == "Bearer t"
    assert "authorization" not in copy and "cookie" not in copy
    assert copy["x-keep"] == "k" and copy["x-shadow"] == "yes" and copy["host"] == "model.example-shadow:8080"
    assert copy["x-request-id"] == seen_by_primary["x-request-id"] and len(copy["x-request-id"]) == 32
