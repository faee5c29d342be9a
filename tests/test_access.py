"""Restricted API groups, as Triton's --http-restricted-api and --grpc-restricted-protocol.

A real server in explicit mode with the repository API (and a few other groups) restricted
to a header key and value: without them 403 / PERMISSION_DENIED, with a message that names
the header and never its value; with them, and for the open groups, service as usual.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.access import GRPC_METHOD_GROUPS, AccessPolicy, http_group, parse_restrictions

from .conftest import RunningServer
from .test_confinement import ADMIN, SECRET, Layout, infer, request


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return Layout(tmp_path_factory.mktemp("access"))


@pytest.fixture(scope="module")
def restricted(layout: Layout) -> Iterator[RunningServer]:
    http_policy = AccessPolicy.of(parse_restrictions(f"model-repository:{ADMIN}={SECRET};statistics:stats-key=v"))
    grpc_policy = AccessPolicy.of(parse_restrictions(f"model-repository,model-config:{ADMIN}={SECRET};health:probe=p"))
    running = RunningServer(layout.repo, model_control_mode="explicit", load_model=("doubler",),
                            http_restricted_api=http_policy, grpc_restricted_protocol=grpc_policy)
    yield running
    running.stop()


@pytest.mark.parametrize("path, group", [
    ("/v2", "metadata"), ("/v2/", "metadata"), ("/v2/health/live", "health"), ("/v2/health/ready", "health"),
    ("/v2/models/m", "metadata"), ("/v2/models/m/versions/2", "metadata"), ("/v2/models/m/ready", "health"),
    ("/v2/models/m/versions/2/ready", "health"), ("/v2/models/m/infer", "inference"),
    ("/v2/models/m/versions/2/infer", "inference"), ("/v2/models/m/config", "model-config"),
    ("/v2/models/m/versions/2/config", "model-config"), ("/v2/models/m/stats", "statistics"),
    ("/v2/models/stats", "statistics"), ("/v2/repository/index", "model-repository"),
    ("/v2/repository/models/m/load", "model-repository"), ("/v2/repository/models/m/unload", "model-repository"),
    ("/v2/models/infer", "metadata"),  # a model named "infer"
])
def test_every_endpoint_has_tritons_group(path: str, group: str) -> None:
    assert http_group(path) == group


def test_every_grpc_method_has_a_group() -> None:
    methods = {f"/inference.GRPCInferenceService/{m.name}" for m in pb.DESCRIPTOR.services_by_name[
        "GRPCInferenceService"].methods}
    assert methods <= set(GRPC_METHOD_GROUPS), sorted(methods - set(GRPC_METHOD_GROUPS))


def test_http_restricted_api_needs_its_header(restricted: RunningServer, layout: Layout) -> None:
    for headers in ({}, {ADMIN: "wrong"}, {ADMIN: SECRET[:-1]}, {"stats-key": "v"}):
        for method, path in (("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/target/load"),
                             ("POST", "/v2/repository/models/doubler/unload")):
            status, body = request(restricted, method, path, {}, headers)
            assert status == 403, (path, headers, body)
            assert f"expecting header '{ADMIN}'" in body["error"] and SECRET not in body["error"]
    status, body = request(restricted, "GET", "/v2/models/stats")
    assert status == 403 and "'stats-key'" in body["error"]
    assert request(restricted, "GET", "/v2/models/stats", headers={"Stats-Key": "v"})[0] == 200
    status, rows = request(restricted, "POST", "/v2/repository/index", {}, {ADMIN.upper(): SECRET})
    assert status == 200 and {"name": "doubler", "version": "1", "state": "READY", "reason": ""} in rows
    assert request(restricted, "POST", "/v2/repository/models/target/load", {}, {ADMIN: SECRET}) == (200, {})
    # the other groups stay open
    assert infer(restricted, "target") == [3.0]
    for path in ("/v2/health/ready", "/v2/health/live", "/v2", "/v2/models/doubler", "/v2/models/doubler/ready",
                 "/v2/models/doubler/config"):
        assert request(restricted, "GET", path)[0] == 200, path


def test_grpc_restricted_protocol_needs_its_metadata(restricted: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{restricted.server.grpc_port}")
    header = {f"triton-grpc-protocol-{ADMIN}": SECRET}
    channel = grpc.insecure_channel(f"127.0.0.1:{restricted.server.grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        for call in (lambda md: stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=md, timeout=30),
                     lambda md: stub.ModelConfig(pb.ModelConfigRequest(name="doubler"), metadata=md, timeout=30),
                     lambda md: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nope"),
                                                           metadata=md, timeout=30)):
            for metadata in ((), ((ADMIN, SECRET),), ((f"triton-grpc-protocol-{ADMIN}", "wrong"),)):
                with pytest.raises(grpc.RpcError) as info:
                    call(metadata)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                details = info.value.details()
                assert details is not None and f"triton-grpc-protocol-{ADMIN}" in details
                assert SECRET not in details
        assert any(m.name == "doubler" for m in client.get_model_repository_index(headers=header).models)
        assert client.get_model_config("doubler", headers=header).config.name == "doubler"
        # health, with its own key, covers the standard health service too (as in Triton)
        probe = {"triton-grpc-protocol-probe": "p"}
        with pytest.raises(InferenceServerException, match="expecting header 'triton-grpc-protocol-probe'"):
            client.is_server_ready()
        assert client.is_server_ready(headers=probe) and client.is_model_ready("doubler", headers=probe)
        check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # the stubs omit HealthStub's methods
        with pytest.raises(grpc.RpcError) as info:
            check(health_pb2.HealthCheckRequest(), timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        serving = check(health_pb2.HealthCheckRequest(), metadata=tuple(probe.items()), timeout=30)
        assert serving.status == health_pb2.HealthCheckResponse.SERVING
        # open groups: metadata, statistics (restricted over HTTP only), inference
        assert client.get_model_metadata("doubler").name == "doubler"
        assert client.get_inference_statistics("doubler").model_stats
        x = grpcclient.InferInput("X", [1, 1], "FP32")
        x.set_data_from_numpy(np.full((1, 1), 2.0, np.float32))
        assert client.infer("doubler", [x]).as_numpy("Y").tolist() == [[4.0]]
    finally:
        channel.close()
        client.close()
