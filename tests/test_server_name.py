"""--server-name and --allow-client-shm: parsed once, answered by both transports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.settings import parse

from .conftest import RunningServer
from .shm_regions import TRITON


def test_flags_and_their_variables() -> None:
    assert parse(["--model-repository", "r"], {}).server_name == "shadowserve"
    assert not parse(["--model-repository", "r"], {}).allow_client_shm
    settings = parse(["--model-repository", "r"], {"SERVING_SERVER_NAME": "triton", "SERVING_ALLOW_CLIENT_SHM": "true"})
    assert (settings.server_name, settings.allow_client_shm) == ("triton", True)
    settings = parse(["--model-repository", "r", "--server-name", "mine", "--allow-client-shm", "false"],
                     {"SERVING_SERVER_NAME": "triton", "SERVING_ALLOW_CLIENT_SHM": "true"})
    assert (settings.server_name, settings.allow_client_shm) == ("mine", False)  # flags win


@pytest.mark.parametrize("argv, message", [
    (["--server-name", ""], "is not a server name"),
    (["--server-name", "a\nb"], "is not a server name"),
    (["--server-name", "x" * 65], "1 to 64 printable characters"),
    (["--allow-client-shm", "maybe"], "is not a boolean"),
])
def test_bad_values_exit_with_a_usage_message(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--model-repository", "r", *argv], {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RunningServer, RunningServer]]:
    plain = RunningServer(TRITON, model_control_mode="explicit")
    named = RunningServer(TRITON, model_control_mode="explicit", server_name="triton", allow_client_shm=True)
    yield plain, named
    plain.stop()
    named.stop()


def test_both_transports_answer_with_the_name(servers: tuple[RunningServer, RunningServer]) -> None:
    for server, name, shm in zip(servers, ("shadowserve", "triton"), (False, True), strict=True):
        with httpclient.InferenceServerClient(server.url) as client:
            http = client.get_server_metadata()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as other:
            grpc = other.get_server_metadata()
        assert http["name"] == grpc.name == name
        assert http["extensions"] == list(grpc.extensions)
        assert ("system_shared_memory" in http["extensions"]) == shm
        assert http["version"] == grpc.version and http["version"] != "2.51.0"  # serve's own version

