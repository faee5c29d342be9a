"""Canary routing through real ``serve`` processes: sticky by header or request id over HTTP and gRPC, streams
pinned to one upstream, and failed canary requests answered by the primary."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from sidecar.config.canary import CanaryConfig
from sidecar.config.file import Config, PrimaryConfig
from sidecar.routing import split

from ..conftest import Candidate, ModelServer
from ..support import RunningSidecar, free_port

WEIGHT = 50.0
USERS = [f"user-{i}" for i in range(16)]


def expected(key: str) -> str:
    """The version that answers a key: the canary (v2) or the primary (v1)."""
    return "2" if split(key, WEIGHT) == "canary" else "1"


@pytest.fixture(scope="module")
def sidecar(serve_v1: ModelServer, serve_v2: ModelServer) -> Iterator[RunningSidecar]:
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                    canary=CanaryConfig(http=serve_v2.http_url, grpc=serve_v2.grpc, weight=WEIGHT,
                                        sticky_header="x-user-id"))
    running = RunningSidecar(config)
    yield running
    running.stop()


def http_version(url: str, rows: np.ndarray, **options: object) -> str:
    client = httpclient.InferenceServerClient(url)
    try:
        inputs = [httpclient.InferInput("INPUT__0", list(rows.shape), "FP32")]
        inputs[0].set_data_from_numpy(rows)
        answer = client.infer("classifier", inputs, **options)
        return str(answer.get_response()["model_version"])
    finally:
        client.close()


def grpc_version(url: str, rows: np.ndarray, **options: object) -> str:
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = [grpcclient.InferInput("INPUT__0", list(rows.shape), "FP32")]
        inputs[0].set_data_from_numpy(rows)
        return str(client.infer("classifier", inputs, **options).get_response().model_version)
    finally:
        client.close()


def test_the_same_user_always_reaches_the_same_version(sidecar: RunningSidecar, points: np.ndarray) -> None:
    versions = [expected(user) for user in USERS]
    assert {"1", "2"} <= set(versions)
    for _ in range(2):
        assert [http_version(sidecar.http, points[:2], headers={"x-user-id": u}) for u in USERS] == versions
        assert [grpc_version(sidecar.grpc, points[:2], headers={"x-user-id": u}) for u in USERS] == versions


def test_without_the_header_the_request_id_is_the_key(sidecar: RunningSidecar, points: np.ndarray) -> None:
    ids = [f"request-{i}" for i in range(16)]
    versions = [expected(key) for key in ids]
    assert {"1", "2"} <= set(versions)
    assert [http_version(sidecar.http, points[:1], request_id=key) for key in ids] == versions  # the v2 body id
    assert [http_version(sidecar.http, points[:1], headers={"x-request-id": key}) for key in ids] == versions
    assert [grpc_version(sidecar.grpc, points[:1], request_id=key) for key in ids] == versions


def test_a_stream_is_pinned_to_one_upstream(sidecar: RunningSidecar, points: np.ndarray) -> None:
    for user in (next(u for u in USERS if expected(u) == "2"), next(u for u in USERS if expected(u) == "1")):
        results: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(sidecar.grpc)
        client.start_stream(callback=lambda result, error, out=results: out.put((result, error)),
                            headers={"x-user-id": user})
        for index in range(6):
            inputs = [grpcclient.InferInput("INPUT__0", [1, 64], "FP32")]
            inputs[0].set_data_from_numpy(points[index:index + 1])
            client.async_stream_infer("classifier", inputs, request_id=f"stream-{index}")
        versions = set()
        for _ in range(6):
            result, error = results.get(timeout=30)
            assert error is None, error
            versions.add(result.get_response().model_version)
        client.stop_stream()
        client.close()
        assert versions == {expected(user)}
    assert sidecar.metric("sidecar_requests_total", upstream="canary", protocol="grpc", code="OK") >= 1


@pytest.mark.parametrize("broken", ["failing", "unreachable"])
def test_a_failed_canary_request_is_answered_by_the_primary(broken: str, serve_v1: ModelServer,
                                                            serve_candidate: Candidate, points: np.ndarray) -> None:
    if broken == "failing":
        serve_candidate.mode("fail")
        http, grpc = serve_candidate.http_url, serve_candidate.grpc
    else:
        http, grpc = f"http://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                    canary=CanaryConfig(http=http, grpc=grpc, weight=100.0))
    sidecar = RunningSidecar(config)
    try:
        for index in range(3):
            assert http_version(sidecar.http, points[index:index + 2]) == "1"
            assert grpc_version(sidecar.grpc, points[index:index + 2]) == "1"
        assert sidecar.metric("sidecar_canary_retries_total", protocol="http") == 3
        assert sidecar.metric("sidecar_canary_retries_total", protocol="grpc") == 3
        assert sidecar.metric("sidecar_requests_total", upstream="primary", protocol="http", code="200") == 3
        assert sidecar.metric("sidecar_requests_total", upstream="primary", protocol="grpc", code="OK") == 3
        current = sidecar.sidecar.rollout.window.metrics(0.0, 100.0)
        assert (current.canary_requests, current.canary_errors) == (6, 6)  # every failure counts for the analysis
    finally:
        sidecar.stop()
        serve_candidate.mode("ok")


def test_weight_zero_sends_nothing_to_the_canary(serve_v1: ModelServer, serve_v2: ModelServer,
                                                 points: np.ndarray) -> None:
    config = Config(primary=PrimaryConfig(http=serve_v1.http_url, grpc=serve_v1.grpc),
                    canary=CanaryConfig(http=serve_v2.http_url, grpc=serve_v2.grpc, weight=0.0))
    sidecar = RunningSidecar(config)
    try:
        assert {http_version(sidecar.http, points[:1], headers={"x-request-id": u}) for u in USERS} == {"1"}
        assert {grpc_version(sidecar.grpc, points[:1], request_id=u) for u in USERS} == {"1"}
        assert sidecar.metric("sidecar_requests_total", upstream="canary", protocol="http", code="200") == 0
    finally:
        sidecar.stop()
