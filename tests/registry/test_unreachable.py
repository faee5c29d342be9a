"""A registry that is down, hangs or answers garbage: one line, a non-zero exit, bounded in time."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_registry.cli import main
from model_registry.store import bound_calls

from .conftest import free_port, model_dir

BODIES = {"html": b"<html>a proxy's login page, not MLflow</html>", "garbage": b'{"weird": [1'}


class Double:
    """An HTTP listener that answers every request 200 with ``body``, or never answers when it is None."""

    def __init__(self, body: bytes | None) -> None:
        self.body = body
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.body is None:
                self.held.append(conn)  # read nothing, answer nothing, keep it open
                continue
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(self.body)).encode() + b"\r\nConnection: close\r\n\r\n" + self.body)
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(params=["hang", "html", "garbage"])
def double(request: pytest.FixtureRequest) -> Iterator[Double]:
    server = Double(BODIES.get(request.param))
    yield server
    server.close()


@pytest.fixture(autouse=True)
def quick_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.mark.parametrize("args", [["resolve", "models:/m@champion"], ["history", "m"],
                                  ["pull", "models:/m/1", "--dest", "{tmp}/r"], ["alias", "m", "champion", "1"]])
def test_a_misbehaving_registry_is_one_line_and_exit_2(double: Double, args: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    status = main(["--registry-uri", f"http://127.0.0.1:{double.port}",
                   *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    assert status == 2 and time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert err.startswith("shadowserve-registry: error: cannot ") and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "m").exists()


def test_register_to_a_registry_that_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    status = main(["--registry-uri", f"http://127.0.0.1:{port}", "register", str(model_dir(tmp_path, "m")),
                   "--name", "m"])
    err = capsys.readouterr().err
    assert status == 2 and "unreachable" in err and err.count("\n") == 1, err


def test_the_default_bounds_leave_the_users_own() -> None:
    environ = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5"}
    bound_calls(environ)
    assert environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5" and environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"


@pytest.mark.parametrize(("answer", "message"), [
    ({"name": "../../etc", "version": "1"}, "answered '../../etc'"),  # a name that would leave the repository
    ({"name": "m", "version": "-3"}, "answered 'm' version '-3'"),
    ({"name": "m", "version": "1", "tags": [{"key": "shadowserve.manifest_sha256", "value": "../../../../x"}]},
     "has no manifest digest"),  # a digest that would leave the cache
])
def test_a_registry_that_lies_about_the_version_is_not_trusted(answer: dict[str, object], message: str,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # well-formed MLflow JSON, about something else
    liar = Double(json.dumps({"model_version": {"source": "mlflow-artifacts:/1/x/artifacts/model",
                                                "status": "READY", **answer}}).encode())
    try:
        status = main(["--registry-uri", f"http://127.0.0.1:{liar.port}", "pull", "models:/m@champion",
                       "--dest", str(tmp_path / "repo")])
    finally:
        liar.close()
    err = capsys.readouterr().err
    assert status in (1, 2) and message in err and err.count("\n") == 1, err
    assert not list((tmp_path / "repo").glob("*/*")) and not (tmp_path / "etc").exists()
