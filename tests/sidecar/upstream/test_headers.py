"""Credentials never reach a shadow, over HTTP or gRPC; the canary, which answers the client, gets them all.

The shadows are real servers that record what they received (an aiohttp server, a
grpc.aio server); the primary is a real ``serve``; the client sends the credential
headers browsers, API gateways and the clouds use.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from aiohttp import web

from sidecar.config.file import CanaryConfig, Config, PrimaryConfig, ShadowConfig
from sidecar.config.headers import HeaderRules

from ..conftest import ModelServer
from ..support import LoopThread, RunningSidecar, Stub, wait_until

CREDENTIALS = {"Authorization": "Bearer secret", "Cookie": "session=secret", "X-Api-Key": "secret",
               "X-Auth-Token": "secret", "X-Amz-Security-Token": "secret", "X-Goog-Iam-Authorization-Token": "secret",
               "X-Goog-Api-Key": "secret", "X-Csrf-Token": "secret", "Api-Key": "secret", "X-Functions-Key": "secret",
               "Ocp-Apim-Subscription-Key": "secret", "X-Access-Token": "secret"}
PLAIN = {"X-User-Id": "u-7", "X-Tenant": "acme"}


class Recorder:
    """An HTTP server and a gRPC server that keep the headers / metadata of every request."""

    def __init__(self) -> None:
        self.loop = LoopThread("recorder")
        self.http: list[dict[str, str]] = []
        self.grpc: list[dict[str, str]] = []

        def routes(app: web.Application) -> None:
            async def handle(request: web.Request) -> web.Response:
                await request.read()
                self.http.append({k.lower(): v for k, v in request.headers.items()})
                return web.json_response({"model_name": "classifier", "outputs": []})
            app.router.add_route("*", "/{tail:.*}", handle)

        self.stub = Stub(routes, self.loop)
        self.url = self.stub.url
        self.server, port = self.loop.call(self._grpc())
        self.grpc_target = f"127.0.0.1:{port}"

    async def _grpc(self) -> tuple[grpc.aio.Server, int]:
        recorder = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
                async def record(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    metadata = context.invocation_metadata()
                    assert metadata is not None  # grpc.aio gives a call's metadata to its handler
                    recorder.grpc.append({k: v for k, v in metadata if isinstance(v, str)})
                    return b""
                return grpc.unary_unary_rpc_method_handler(record)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((Handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    def close(self) -> None:
        self.loop.call(self.server.stop(0))
        self.stub.stop()
        self.loop.close()


@pytest.fixture(scope="module")
def recorders() -> Iterator[tuple[Recorder, Recorder]]:
    shadow, canary = Recorder(), Recorder()
    yield shadow, canary
    shadow.close()
    canary.close()


def http_infer(address: str, points: np.ndarray, headers: dict[str, str]) -> None:
    client = httpclient.InferenceServerClient(address)
    inputs = [httpclient.InferInput("INPUT__0", [1, 64], "FP32")]
    inputs[0].set_data_from_numpy(points[:1])
    try:
        client.infer("classifier", inputs, headers=headers)
    finally:
        client.close()


def grpc_infer(address: str, points: np.ndarray, headers: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(address)
    inputs = [grpcclient.InferInput("INPUT__0", [1, 64], "FP32")]
    inputs[0].set_data_from_numpy(points[:1])
    try:
        client.infer("classifier", inputs, headers={k.lower(): v for k, v in headers.items()})
    finally:
        client.close()


def test_http_copies_lose_every_credential_header_and_the_canary_keeps_them(
        recorders: tuple[Recorder, Recorder], serve_v1: ModelServer, points: np.ndarray) -> None:
    shadow, canary = recorders
    shadow.http.clear()
    canary.http.clear()
    running = RunningSidecar(Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                                    shadows=(ShadowConfig("rec", http=shadow.url),),
                                    canary=CanaryConfig(http=canary.url, weight=100.0, copy_fraction=0.0)))
    try:
        http_infer(running.http, points, {**CREDENTIALS, **PLAIN})
        wait_until(lambda: shadow.http, 10, "the shadow's copy")
    finally:
        running.stop()
    (copy,) = shadow.http
    leaked = sorted(name for name in CREDENTIALS if name.lower() in copy)
    assert leaked == [], f"credentials reached the shadow: {leaked}"
    assert copy["x-user-id"] == "u-7" and copy["x-tenant"] == "acme" and "inference-header-content-length" in copy
    (served,) = canary.http  # the canary answers the client: it gets the client's headers, as any route does
    assert all(served.get(name.lower()) == value for name, value in CREDENTIALS.items())


def test_grpc_copies_lose_every_credential_key(recorders: tuple[Recorder, Recorder], serve_v1: ModelServer,
                                               points: np.ndarray) -> None:
    shadow, _ = recorders
    shadow.grpc.clear()
    assert serve_v1.grpc is not None
    running = RunningSidecar(Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                                    shadows=(ShadowConfig("rec", grpc=shadow.grpc_target),)))
    try:
        grpc_infer(running.grpc, points, {**CREDENTIALS, **PLAIN})
        wait_until(lambda: shadow.grpc, 10, "the shadow's copy")
    finally:
        running.stop()
    (copy,) = shadow.grpc
    leaked = sorted(name for name in CREDENTIALS if name.lower() in copy)
    assert leaked == [], f"credentials reached the shadow over gRPC: {leaked}"
    assert copy["x-user-id"] == "u-7" and copy["x-tenant"] == "acme"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_allow_list_mode_sends_only_the_named_headers(recorders: tuple[Recorder, Recorder], serve_v1: ModelServer,
                                                      points: np.ndarray, protocol: str) -> None:
    shadow, _ = recorders
    seen = shadow.http if protocol == "http" else shadow.grpc
    seen.clear()
    rules = HeaderRules(set=(("x-shadow", "yes"),), allow=frozenset({"x-user-id"}))
    http, grpc_target = (shadow.url, None) if protocol == "http" else (None, shadow.grpc_target)
    running = RunningSidecar(Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                                    shadows=(ShadowConfig("rec", http=http, grpc=grpc_target, headers=rules),)))
    try:
        (http_infer if protocol == "http" else grpc_infer)(getattr(running, protocol), points,
                                                           {**CREDENTIALS, **PLAIN, "X-Other": "o"})
        wait_until(lambda: seen, 10, "the shadow's copy")
    finally:
        running.stop()
    (copy,) = seen
    assert copy["x-user-id"] == "u-7" and copy["x-shadow"] == "yes"
    sent = {name.lower() for name in (*CREDENTIALS, *PLAIN, "X-Other")}
    assert sorted(sent & set(copy)) == ["x-user-id"]
    if protocol == "http":  # what a v2 request needs still goes
        assert "inference-header-content-length" in copy and copy["host"].startswith("127.0.0.1-shadow")


def test_a_removed_prefix_and_a_kept_default(recorders: tuple[Recorder, Recorder], serve_v1: ModelServer,
                                             points: np.ndarray) -> None:
    shadow, _ = recorders
    shadow.http.clear()
    rules = HeaderRules(keep=frozenset({"cookie"})).adding(["x-tenant*"])
    running = RunningSidecar(Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=None),
                                    shadows=(ShadowConfig("rec", http=shadow.url, headers=rules),)))
    try:
        http_infer(running.http, points, {**CREDENTIALS, **PLAIN, "X-Tenant-Key": "k"})
        wait_until(lambda: shadow.http, 10, "the shadow's copy")
    finally:
        running.stop()
    (copy,) = shadow.http
    assert copy["cookie"] == "session=secret"  # kept on purpose
    assert "x-tenant" not in copy and "x-tenant-key" not in copy and "authorization" not in copy
    assert copy["x-user-id"] == "u-7"
