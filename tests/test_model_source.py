"""`serve --model-source`: models straight from a real MLflow registry (SQLite, local artifacts).

The registry is shared by the module (MLflow's import and schema cost seconds); each test uses
aliases of its own and registers the versions it changes, so the tests do not see each other.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from prometheus_client.parser import text_string_to_metric_families

from model_registry.store import Registry, Version
from serving.app import start
from serving.errors import ConfigError
from serving.settings import Settings
from serving.sources import RETRY_FIRST_SECS, ModelSources

from .conftest import EXAMPLES, RunningServer, frontend_workers

CLASSIFIER = EXAMPLES / "classifier"


def local(**overrides: object) -> Settings:
    """Settings of a server on free localhost ports, as `RunningServer` makes them."""
    overrides.setdefault("frontend_workers", frontend_workers())
    return Settings(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0, cpu_threads=1,
                    **overrides)  # type: ignore[arg-type]  # fields of each type


def start_error(**overrides: object) -> str:
    """The error with which a server refuses to start: one line."""
    with pytest.raises(ConfigError) as refused:
        asyncio.run(start(local(**overrides)))
    message = str(refused.value)
    assert "\n" not in message
    return message


class SourceServer(RunningServer):
    """`RunningServer`, with the models from ``--model-source`` instead of a repository."""

    def __init__(self, **overrides: object) -> None:
        settings = local(**overrides)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.thread.start()
        self.server = self.call(start(settings))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """classifier version 1 and 2, from the example's version directories."""
    found = Registry.open(f"sqlite:///{tmp_path_factory.mktemp('registry')}/r.db")
    for version_dir in ("1", "2"):
        found.register(CLASSIFIER, "classifier", version_dir=version_dir)
    return found


def settings_for(registry: Registry, cache: Path, *uris: str, **overrides: object) -> dict[str, object]:
    return {"model_source": uris, "registry_uri": registry.uri, "model_cache_dir": cache, **overrides}


def artifact(version: Version, rel: str) -> Path:
    """A file of a version in the local artifact store, as the registry keeps it."""
    return Path(unquote(urlparse(version.source).path)) / rel


def answer(client: httpclient.InferenceServerClient) -> str:
    """The version that answered an inference of the classifier."""
    inp = httpclient.InferInput("INPUT__0", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    return str(client.infer("classifier", [inp]).get_response()["model_version"])


def samples(server: RunningServer, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def checks(server: RunningServer, outcome: str) -> float:
    return sum(value for labels, value in samples(server, "serving_model_source_updates_total").items()
               if ("outcome", outcome) in labels)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"never {what}")


def reason(client: httpclient.InferenceServerClient) -> str:
    return " ".join(row.get("reason", "") for row in client.get_model_repository_index() if row["state"] == "READY")


@pytest.fixture
def serving(registry: Registry, tmp_path: Path) -> Iterator[Callable[..., SourceServer]]:
    servers: list[SourceServer] = []

    def started(*uris: str, **overrides: object) -> SourceServer:
        servers.append(SourceServer(**settings_for(registry, tmp_path / "cache", *uris, **overrides)))
        return servers[-1]

    yield started
    for server in servers:
        server.stop()


def test_serves_the_version_an_alias_names_under_its_registry_number(
        registry: Registry, serving: Callable[..., SourceServer], tmp_path: Path) -> None:
    registry.set_alias("classifier", "champion", 2)
    server = serving("models:/classifier@champion")
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_ready() and client.is_model_ready("classifier")
    assert answer(client) == "2"
    assert client.get_model_metadata("classifier")["versions"] == ["2"]
    installed = tmp_path / "cache" / "repository" / "classifier"
    assert sorted(p.name for p in installed.iterdir() if p.is_dir()) == ["2"]
    assert "specific" in (installed / "config.pbtxt").read_text()
    assert samples(server, "serving_model_source_version") == {
        (("model", "classifier"), ("source", "models:/classifier@champion")): 2.0}
    second = start_error(**settings_for(registry, tmp_path / "cache", "models:/classifier/1"))
    assert "in use by another serve process" in second  # one server per cache: each lays it out as its own


def test_an_alias_move_under_load_drops_no_request(registry: Registry, serving: Callable[..., SourceServer]) -> None:
    registry.set_alias("classifier", "live", 1)
    server = serving("models:/classifier@live", model_control_mode="poll", repository_poll_secs=0.2)

    async def scenario() -> list[tuple[float, str]]:
        answers: list[tuple[float, str]] = []  # (when the request was sent, the version that answered)
        loop = asyncio.get_running_loop()
        async with aiohttpclient.InferenceServerClient(server.url) as client:
            stop, switched = asyncio.Event(), asyncio.Event()

            async def traffic() -> None:
                inp = aiohttpclient.InferInput("INPUT__0", [1, 64], "FP32")
                inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
                while not stop.is_set():
                    sent = loop.time()
                    result = await client.infer("classifier", [inp])  # raises on any failed request
                    answers.append((sent, str(result.get_response()["model_version"])))
                    if answers[-1][1] == "2":
                        switched.set()

            workers = [asyncio.ensure_future(traffic()) for _ in range(8)]
            await asyncio.sleep(0.3)
            moved = loop.time()
            await asyncio.to_thread(registry.set_alias, "classifier", "live", 2)
            await asyncio.wait_for(switched.wait(), 30)
            await asyncio.sleep(0.3)  # traffic goes on after the takeover too
            stop.set()
            await asyncio.gather(*workers)
            assert {version for sent, version in answers if sent < moved} == {"1"}
            index = {row.get("version"): row["state"] for row in await client.get_model_repository_index()}
            assert index == {"1": "UNAVAILABLE", "2": "READY"}
        return answers

    answers = asyncio.run(scenario())
    assert answers[-1][1] == "2" and len(answers) > 50
    client = httpclient.InferenceServerClient(server.url)
    assert answer(client) == "2" and checks(server, "updated") == 1 and checks(server, "unchanged") >= 1


def _register_copy(registry: Registry, tmp_path: Path, version_dir: str, change: Callable[[Path], object]) -> Version:
    """A new classifier version from a copy of the example, changed before it is registered."""
    copy = tmp_path / f"copy-{version_dir}"
    shutil.copytree(CLASSIFIER, copy)
    change(copy / version_dir / "model.pt")
    return registry.register(copy, "classifier", version_dir=version_dir)


def test_a_tampered_or_broken_version_leaves_the_previous_one_serving(
        registry: Registry, serving: Callable[..., SourceServer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="serving.sources")
    registry.set_alias("classifier", "guarded", 1)
    tampered = registry.register(CLASSIFIER, "classifier", version_dir="2")
    stored = artifact(tampered, "2/model.pt")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, changed in the artifact store after registration
    stored.write_bytes(bytes(data))
    broken = _register_copy(registry, tmp_path, "1", lambda path: path.write_bytes(b"not TorchScript"))
    server = serving("models:/classifier@guarded", model_control_mode="poll", repository_poll_secs=0.2)
    client = httpclient.InferenceServerClient(server.url)

    registry.set_alias("classifier", "guarded", tampered.version)
    wait_for(lambda: "failed verification" in reason(client), "said why the tampered version is not served")
    text = reason(client)
    assert f"models:/classifier@guarded moved to version {tampered.version}" in text
    assert "2/model.pt does not match its digest" in text and text.endswith("version 1 keeps serving")
    assert answer(client) == "1" and client.is_server_ready()
    wait_for(lambda: checks(server, "verification_failed") >= 3, "counted the failing checks")

    def tries() -> int:  # each try logs the move, then the failure
        return sum(f"moved to version {tampered.version}" in r.getMessage() for r in caplog.records) // 2

    assert tries() == 1  # not downloaded again at every poll, but after a back-off:
    sources = server.server.sources
    assert isinstance(sources, ModelSources)
    sources.clock = lambda: time.monotonic() + RETRY_FIRST_SECS  # a minute later
    wait_for(lambda: tries() == 2, "tried the failed version again after the back-off")
    counted = checks(server, "verification_failed")
    wait_for(lambda: checks(server, "verification_failed") >= counted + 2, "checked twice more")
    assert tries() == 2  # the next try waits twice as long

    registry.set_alias("classifier", "guarded", broken.version)
    wait_for(lambda: "failed to load" in reason(client), "said why the broken version is not served")
    assert answer(client) == "1" and checks(server, "load_failed") >= 1
    assert reason(client).endswith("version 1 keeps serving")

    registry.set_alias("classifier", "guarded", 2)
    wait_for(lambda: answer(client) == "2", "served the good version the alias moved to")
    wait_for(lambda: not reason(client), "cleared the reason")

    # at start-up, a tampered version is nothing to serve
    message = start_error(**settings_for(registry, tmp_path / "other", f"models:/classifier/{tampered.version}"))
    assert "failed verification" in message and "2/model.pt does not match its digest" in message


@pytest.mark.parametrize("uri, overrides, expected", [
    ("models:/nope@champion", {}, "models:/nope@champion does not exist"),
    ("models:/classifier@nobody", {}, "model 'classifier' has no alias 'nobody'"),
    ("models:/classifier/99", {}, "no version 99 of model 'classifier'"),
    ("classifier@champion", {}, "is not a model URI"),
    ("models:/classifier/1", {"model_repository": EXAMPLES}, "--model-repository and --model-source both"),
])
def test_a_source_that_cannot_be_served_fails_the_start_in_one_line(
        registry: Registry, tmp_path: Path, uri: str, overrides: dict[str, object], expected: str) -> None:
    assert expected in start_error(**settings_for(registry, tmp_path, uri, **overrides))


def test_one_source_per_model(registry: Registry, tmp_path: Path) -> None:
    message = start_error(**settings_for(registry, tmp_path, "models:/classifier/1", "models:/classifier@live"))
    assert "names model classifier more than once" in message
