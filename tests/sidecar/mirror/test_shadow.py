"""Shadows that are down, hang, fail, answer garbage or crawl never delay, fail or alter the primary's answer.

The primary is a real ``serve`` (classifier version 1); each faulty shadow is a real
server on its own port. Every answer the client gets is compared with what the primary
answers directly; the records are read back from Parquet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
from aiohttp import web

from sidecar.config.file import Config, PrimaryConfig, RecordingConfig, ShadowConfig

from ..conftest import ModelServer
from ..support import LoopThread, RunningSidecar, Stub, free_port, output_array, read_records, wait_until

REQUESTS = 4
SLOW_SECS = 2.0  # the slow shadow: hundreds of times the primary's few milliseconds
HANG_TIMEOUT_SECS = 3.0


class Faults:
    """One server per kind of fault, all on one loop thread."""

    def __init__(self, v2: ModelServer) -> None:
        self.loop = LoopThread("faults")
        self.release = asyncio.Event()
        self.received: dict[str, list[str]] = {}
        self.v2 = v2
        self.stubs = {name: Stub(self._routes(name), self.loop) for name in ("hang", "error", "invalid", "slow")}
        self.garbage_server = self.loop.call(asyncio.start_server(self._garbage, "127.0.0.1", 0))
        self.urls = {name: stub.url for name, stub in self.stubs.items()}
        self.urls["down"] = f"http://127.0.0.1:{free_port()}"
        self.urls["garbage"] = f"http://127.0.0.1:{self.garbage_server.sockets[0].getsockname()[1]}"

    def _routes(self, name: str) -> Callable[[web.Application], None]:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.received.setdefault(name, []).append(request.headers.get("x-request-id", ""))
            if name == "hang":
                await self.release.wait()
                return web.Response(status=204)
            if name == "error":
                return web.json_response({"error": "shadow broke"}, status=500)
            if name == "invalid":
                return web.Response(body=b"\x89PNG not a v2 response", content_type="application/json")
            await asyncio.sleep(SLOW_SECS)  # slow: then the real answer of model version 2
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "inference-header-content-length")}
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{self.v2.http_url}{request.path}", data=body, headers=headers) as answer:
                    return web.Response(status=answer.status, body=await answer.read(), headers={
                        k: v for k, v in answer.headers.items()
                        if k.lower() in ("content-type", "inference-header-content-length")})

        def routes(app: web.Application) -> None:
            app.router.add_post("/v2/models/{model}/infer", handler)
        return routes

    async def _garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"\x00\xffthis is not HTTP at all\r\n\r\n")
        await writer.drain()
        writer.close()

    def close(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.release.set)
        for stub in self.stubs.values():
            stub.stop()
        self.garbage_server.close()
        self.loop.close()


@pytest.fixture(scope="module")
def faults(serve_v2: ModelServer) -> Iterator[Faults]:
    servers = Faults(serve_v2)
    yield servers
    servers.close()


def infer(url: str, rows: np.ndarray, request_id: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        inputs = [httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")]
        inputs[0].set_data_from_numpy(rows)
        result = client.infer("classifier", inputs, request_id=request_id, headers={"x-request-id": request_id})
        return result.as_numpy("OUTPUT__0")
    finally:
        client.close()


def batches(points: np.ndarray) -> list[np.ndarray]:
    return [points[i * 4:(i + 1) * 4] for i in range(REQUESTS)]


@pytest.fixture(scope="module")
def direct(serve_v1: ModelServer, serve_v2: ModelServer, points: np.ndarray) -> dict[str, list[np.ndarray]]:
    """What each model version answers for the test batches, asked directly."""
    return {"v1": [infer(serve_v1.http, rows, "direct") for rows in batches(points)],
            "v2": [infer(serve_v2.http, rows, "direct") for rows in batches(points)]}


# kind -> (metric that counts the fault, its labels, recorded status, recorded error)
EXPECTED = {
    "down": ("sidecar_shadow_errors_total", {"reason": "connection"}, None, "connection"),
    "garbage": ("sidecar_shadow_errors_total", {"reason": "connection"}, None, "connection"),
    "error": ("sidecar_shadow_errors_total", {"reason": "status"}, 500, "shadow broke"),
    "invalid": ("sidecar_shadow_errors_total", {"reason": "invalid_response"}, 200, "invalid response: not JSON"),
    "hang": ("sidecar_shadow_timeouts_total", {}, None, "timeout"),
    "slow": ("sidecar_shadow_successes_total", {}, 200, None),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_faulty_shadow_never_touches_the_primary_answer(kind: str, faults: Faults, serve_v1: ModelServer,
                                                          direct: dict[str, list[np.ndarray]], points: np.ndarray,
                                                          tmp_path: Path) -> None:
    timeout = HANG_TIMEOUT_SECS if kind == "hang" else 30.0
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=None),
                    shadows=(ShadowConfig(kind, http=faults.urls[kind], timeout_secs=timeout),),
                    recording=RecordingConfig(dir=tmp_path))
    sidecar = RunningSidecar(config, grpc_listen=None, shadow_drain_secs=10.0)
    metric, labels, status, error = EXPECTED[kind]
    try:
        for index, rows in enumerate(batches(points)):
            answer = infer(sidecar.http, rows, f"{kind}-{index}")
            np.testing.assert_array_equal(answer, direct["v1"][index])
            if kind in ("hang", "slow"):
                # The client has its answer while this request's copy is still pending at the shadow.
                assert sidecar.metric("sidecar_shadow_in_flight", shadow=kind) >= 1
                copy = f"{kind}-{index}"

                def arrived(copy: str = copy) -> bool:
                    return copy in faults.received.get(kind, [])
                wait_until(arrived, 10, "the copy to arrive")
        wait_until(lambda: sidecar.metric(metric, shadow=kind, **labels) == REQUESTS, 30, f"{metric} to count")
        assert sidecar.metric("sidecar_requests_total", upstream="primary", protocol="http", code="200") == REQUESTS
    finally:
        sidecar.stop()
    records = read_records(tmp_path)
    assert sorted(records) == [f"{kind}-{i}" for i in range(REQUESTS)]
    for index in range(REQUESTS):
        record = records[f"{kind}-{index}"]
        np.testing.assert_array_equal(output_array(record["primary"], "OUTPUT__0"), direct["v1"][index])
        (shadow,) = record["shadows"]
        assert shadow["upstream"] == kind and shadow["status"] == status
        assert (shadow["error"] or "").startswith(error or "") and (shadow["error"] is None) == (error is None)
        if kind == "slow":
            assert shadow["model_version"] == "2" and shadow["latency_ms"] >= SLOW_SECS * 1000
            np.testing.assert_array_equal(output_array(shadow, "OUTPUT__0"), direct["v2"][index])


def test_a_shadow_with_max_in_flight_pending_drops_further_copies(faults: Faults, serve_v1: ModelServer,
                                                                  direct: dict[str, list[np.ndarray]],
                                                                  points: np.ndarray) -> None:
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=None),
                    shadows=(ShadowConfig("hang", http=faults.urls["hang"], timeout_secs=HANG_TIMEOUT_SECS,
                                          max_in_flight=2),))
    sidecar = RunningSidecar(config, grpc_listen=None, shadow_drain_secs=0.0)
    try:
        for index, rows in enumerate(batches(points)):
            np.testing.assert_array_equal(infer(sidecar.http, rows, f"drop-{index}"), direct["v1"][index])
        assert sidecar.metric("sidecar_shadow_requests_total", shadow="hang", protocol="http") == 2
        assert sidecar.metric("sidecar_shadow_dropped_total", shadow="hang") == REQUESTS - 2
    finally:
        sidecar.stop()
    assert sidecar.metric("sidecar_shadow_cancelled_total", shadow="hang") == 2  # pending copies, at shutdown


def test_a_shadow_that_stays_down_rests_instead_of_being_retried_on_every_request(
        serve_v1: ModelServer, direct: dict[str, list[np.ndarray]], points: np.ndarray) -> None:
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=None),
                    shadows=(ShadowConfig("down", http=f"http://127.0.0.1:{free_port()}"),))
    sidecar = RunningSidecar(config, grpc_listen=None)
    requests = 12
    try:
        for index in range(requests):
            rows = batches(points)[index % REQUESTS]
            np.testing.assert_array_equal(infer(sidecar.http, rows, f"rest-{index}"), direct["v1"][index % REQUESTS])

        def tried() -> float:
            return (sidecar.metric("sidecar_shadow_errors_total", shadow="down", reason="connection")
                    + sidecar.metric("sidecar_shadow_skipped_total", shadow="down", reason="unreachable"))

        wait_until(lambda: tried() == requests, 10, "every copy to fail or be skipped")
        assert sidecar.metric("sidecar_shadow_errors_total", shadow="down", reason="connection") >= 5
        assert sidecar.metric("sidecar_shadow_skipped_total", shadow="down", reason="unreachable") >= 1
    finally:
        sidecar.stop()
