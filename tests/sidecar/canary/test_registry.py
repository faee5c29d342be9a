"""Canary decisions in a real registry (embedded SQLite, the real MLflow client), the verdict over HTTP,
and registries that hang or answer garbage while requests and the analysis go on."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from model_registry.errors import EvidenceRefused
from model_registry.evidence import judge
from model_registry.store import Registry
from model_registry.uris import ModelUri
from sidecar.app import bound_registry_calls
from sidecar.canary.analysis import Decision
from sidecar.canary.metrics import RegistryMetrics
from sidecar.canary.registry import TAG_DECISION, TAG_PHASE, TAG_UPDATED, RegistryLink, worth_writing
from sidecar.config.canary import AnalysisConfig, CanaryConfig
from sidecar.config.file import Config, PrimaryConfig

from ...conftest import EXAMPLES
from ..doubles import Doubles
from ..support import LoopThread, RunningSidecar, SidecarProcess, Stub, wait_until

CHALLENGER = ModelUri("classifier", alias="challenger")
ANALYSIS = AnalysisConfig(interval_secs=0.2, step_weight=25, max_weight=75, min_requests=1, max_p99_ratio=None)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Versions 1 and 2 of the classifier; @champion is 1, @challenger is 2."""
    root = tmp_path_factory.mktemp("registry")
    opened = Registry.open(f"sqlite:///{root}/r.db")
    for version in ("1", "2"):
        opened.register(EXAMPLES / "classifier", "classifier", version_dir=version, actor="ci")
    opened.set_alias("classifier", "champion", 1, actor="ci")
    opened.set_alias("classifier", "challenger", 2, actor="ci")
    return opened


class Models:
    """A primary (version 1) and a canary (version 2) answering tiny v2 responses."""

    def __init__(self) -> None:
        self.loop = LoopThread("models")
        self.primary = Stub(self._model("1"), self.loop)
        self.canary = Stub(self._model("2"), self.loop)

    @staticmethod
    def _model(version: str) -> Any:
        async def infer(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"model_name": "classifier", "model_version": version, "outputs": []})

        def routes(app: web.Application) -> None:
            app.router.add_post("/v2/models/classifier/infer", infer)
        return routes

    def config(self, weight: float = 50.0, analysis: AnalysisConfig | None = ANALYSIS) -> Config:
        return Config(primary=PrimaryConfig(http=self.primary.url, grpc=None),
                      canary=CanaryConfig(http=self.canary.url, weight=weight, sticky_header="x-user-id",
                                          copy_fraction=0.0, analysis=analysis, model=CHALLENGER))

    def close(self) -> None:
        self.primary.stop()
        self.canary.stop()
        self.loop.close()


@pytest.fixture(scope="module")
def models() -> Iterator[Models]:
    servers = Models()
    yield servers
    servers.close()


def call(url: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Traffic:
    """Inference requests through the sidecar from a thread, each user its own sticky key, until stopped."""

    def __init__(self, sidecar: RunningSidecar) -> None:
        self.url = f"http://{sidecar.http}/v2/models/classifier/infer"
        self.statuses: list[int] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        user = 0
        while not self._stop.is_set():
            user += 1
            request = urllib.request.Request(self.url, data=b'{"inputs": []}', method="POST",
                                             headers={"x-user-id": f"user-{user}"})
            began = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                    self.statuses.append(response.status)
            except urllib.error.HTTPError as error:
                self.statuses.append(error.code)
            self.slowest = max(self.slowest, time.monotonic() - began)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def _sidecar_entries(registry: Registry) -> list[Any]:
    return [entry for entry in registry.history("classifier") if entry.actor.startswith("sidecar@")]


def test_decisions_land_in_the_audit_log_and_on_the_judged_version(registry: Registry, models: Models) -> None:
    sidecar = RunningSidecar(models.config(), grpc_listen=None, registry_uri=registry.uri)
    traffic = Traffic(sidecar)
    try:
        wait_until(lambda: sidecar.sidecar.rollout.phase == "ready", 30, "the analysis to reach ready")
        status, verdict = call(f"{sidecar.admin_url}/sidecar/canary/verdict")
        assert status == 200 and verdict["format"] == "shadowserve.canary.verdict/1"
        assert (verdict["model"], verdict["version"], verdict["registry"]) == ("classifier", "2", str(CHALLENGER))
        assert verdict["phase"] == "ready" and verdict["passed"] is True and verdict["weight"] == 75
        assert verdict["decision"]["action"] == "ready" and verdict["decision"]["metrics"]["canary_requests"] >= 1
        datetime.fromisoformat(verdict["created"])
        assert "models:/classifier/2" in judge(verdict, "classifier", 2)  # what `promote --evidence` accepts
        with pytest.raises(EvidenceRefused, match="not version 1"):
            judge(verdict, "classifier", 1)

        status, _ = call(f"{sidecar.admin_url}/sidecar/rollback", {"reason": "pager at 3am"})
        assert status == 200
        status, verdict = call(f"{sidecar.admin_url}/sidecar/canary/verdict")
        assert (verdict["phase"], verdict["passed"]) == ("rolled_back", False)
        with pytest.raises(EvidenceRefused, match="did not pass"):
            judge(verdict, "classifier", 2)
        wait_until(lambda: sidecar.metric("sidecar_registry_writes_total", outcome="written") >= 3, 30,
                   "three decisions written")
        status, body = call(f"{sidecar.admin_url}/sidecar/status")
        assert body["registry"]["models"] == {str(CHALLENGER): 2} and body["registry"]["healthy"] is True
        assert body["canary"]["model"] == str(CHALLENGER)
    finally:
        traffic.stop()
        sidecar.stop()
    assert set(traffic.statuses) == {200}

    entries = _sidecar_entries(registry)
    # the config's start-up weight, holds, waits and repeated ready intervals change nothing: not written
    assert [entry.action for entry in entries] == ["ramp", "ready", "rollback"]
    assert {(entry.version, entry.alias) for entry in entries} == {(2, "challenger")}
    ramp, ready, rollback = entries
    assert (ramp.details["source"], ramp.details["weight_from"], ramp.details["weight_to"]) == ("analysis", 50, 75)
    assert ramp.details["metrics"]["canary_requests"] >= 1 and ramp.details["verdict"] == "pass"
    assert ready.reason.startswith("ready to promote at 75%")
    assert rollback.details["source"] == "admin" and rollback.reason == "admin API: rollback: pager at 3am"
    tags = registry.resolve(ModelUri("classifier", version=2)).tags
    assert tags[TAG_PHASE] == "rolled_back"
    decision = json.loads(tags[TAG_DECISION])
    assert (decision["action"], decision["weight_from"], decision["weight_to"]) == ("rollback", 75, 0)
    assert datetime.fromisoformat(tags[TAG_UPDATED]).timestamp() == pytest.approx(rollback.time, abs=1)
    assert TAG_PHASE not in registry.resolve(ModelUri("classifier", version=1)).tags  # only the judged version


@pytest.mark.parametrize("kind", ["blackhole", "garbage"])
def test_a_registry_that_hangs_or_lies_delays_nothing(kind: str, models: Models,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # what the entry point bounds; here, shorter
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    loop = LoopThread("doubles")
    doubles = loop.call(Doubles().start((kind,)))
    sidecar = RunningSidecar(models.config(), grpc_listen=None, registry_uri=doubles.urls[kind],
                             registry_flush_secs=0.5)
    traffic = Traffic(sidecar)
    try:
        rollout = sidecar.sidecar.rollout
        wait_until(lambda: rollout.phase == "ready", 30, "the analysis to go on to ready")
        began = time.monotonic()
        for weight in (10, 20, 30):  # operators' changes, each queued for the registry
            status, _ = call(f"{sidecar.admin_url}/sidecar/canary", {"weight": weight})
            assert status == 200
        assert time.monotonic() - began < 1.0
        wait_until(lambda: sidecar.metric("sidecar_registry_writes_total", outcome="failed") >= 1, 30,
                   "a failed write")
        intervals = rollout.intervals
        wait_until(lambda: rollout.intervals >= intervals + 2, 10, "more analysis intervals")
        assert sidecar.metric("sidecar_registry_resolutions_total", outcome="failed") >= 1
        status, verdict = call(f"{sidecar.admin_url}/sidecar/canary/verdict")
        assert status == 200 and verdict["model"] == "classifier" and verdict["version"] is None
        status, body = call(f"{sidecar.admin_url}/sidecar/status")
        assert body["registry"]["models"] == {str(CHALLENGER): None} and body["registry"]["healthy"] is False
    finally:
        traffic.stop()
        began = time.monotonic()
        sidecar.stop()
        stopping = time.monotonic() - began
        loop.call(doubles.close())
        loop.close()
    assert stopping < 5.0  # the flush has its deadline, whatever the registry does
    assert set(traffic.statuses) == {200} and len(traffic.statuses) > 20
    assert traffic.slowest < 2.0
    assert sidecar.metric("sidecar_registry_writes_total", outcome="written") == 0


def _decision(n: int) -> Decision:
    return Decision(time.time(), "admin", "set", 0.0, float(n), "manual", f"admin API: weight {n}%")


def test_a_full_queue_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    loop = LoopThread("doubles")
    doubles = loop.call(Doubles().start(("blackhole",)))
    metrics = RegistryMetrics(CollectorRegistry())
    link = RegistryLink(doubles.urls["blackhole"], metrics, queue_size=2, actor="sidecar@test")

    def count(name: str, outcome: str) -> float:
        return metrics.registry.get_sample_value(name, {"outcome": outcome}) or 0.0

    try:
        link.configure(Config(canary=CanaryConfig(http="http://canary:8000", model=CHALLENGER)))
        wait_until(lambda: link.status()["queued"] == 0, 10, "the worker to take the resolution")
        for n in range(10):  # the worker hangs on the resolution: two wait, eight are dropped at once
            link.decision(_decision(n), True)
        assert count("sidecar_registry_writes_total", "dropped") == 8
        assert metrics.registry.get_sample_value("sidecar_registry_queued") == 2
        began = time.monotonic()
        assert link.stop(0.3) is False  # still hanging: the two waiting are dropped too
        assert time.monotonic() - began < 1.5
        assert count("sidecar_registry_writes_total", "dropped") == 10
        link.decision(_decision(11), True)  # after the stop: dropped, never queued
        assert count("sidecar_registry_writes_total", "dropped") == 11
        assert count("sidecar_registry_writes_total", "written") == 0
    finally:
        loop.call(doubles.close())
        loop.close()


@pytest.mark.parametrize(("source", "action", "changed", "written"), [
    ("analysis", "ramp", True, True), ("analysis", "ready", True, True), ("analysis", "ready", False, False),
    ("analysis", "rollback", True, True), ("analysis", "hold", False, False), ("analysis", "wait", False, False),
    ("admin", "set", False, True), ("admin", "rollback", True, True), ("admin", "promote", True, True),
    ("config", "set", True, False),
])
def test_what_is_worth_writing(source: str, action: str, changed: bool, written: bool) -> None:
    decision = Decision(0.0, source, action, 10.0, 20.0, "progressing", "why")
    assert worth_writing(decision, changed) is written


def test_the_entry_point_bounds_mlflow_calls_unless_the_user_did() -> None:
    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    bound_registry_calls(environ)
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60" and environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    environ = {}
    bound_registry_calls(environ)
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5" and environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"


def test_nothing_opens_the_registry_without_a_model(models: Models, tmp_path: Path) -> None:
    config = models.config()
    assert config.canary is not None
    config = Config(primary=config.primary, canary=CanaryConfig(http=config.canary.http, weight=10))
    sidecar = RunningSidecar(config, grpc_listen=None, registry_uri=f"sqlite:///{tmp_path}/never.db")
    try:
        status, _ = call(f"{sidecar.admin_url}/sidecar/canary", {"weight": 20})
        status, verdict = call(f"{sidecar.admin_url}/sidecar/canary/verdict")
        assert status == 200 and (verdict["model"], verdict["version"], verdict["registry"]) == (None, None, None)
        assert verdict["passed"] is False and verdict["phase"] == "manual"
        assert sidecar.sidecar.registry_link.status()["started"] is False
    finally:
        sidecar.stop()
    assert not (tmp_path / "never.db").exists()


def test_sigterm_flushes_the_queue_before_the_exit(registry: Registry, models: Models, tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(json.dumps({"primary": {"http": models.primary.url, "grpc": None},
                                "canary": {"http": models.canary.url, "weight": 10, "model": str(CHALLENGER)}}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    process = SidecarProcess("--config", str(path), "--listen", "127.0.0.1:0", "--grpc-listen", "off",
                             "--metrics-port", "0", "--drain-timeout-secs", "0", "--registry-uri", registry.uri,
                             "--registry-flush-secs", "30", "--log-level", "debug", env=env)
    try:
        resolved = process.wait_log(f"{CHALLENGER} is version 2", 60)
        assert resolved["version"] == 2
        status, _ = call(f"{process.admin}/sidecar/rollback", {"reason": "right before the signal"})
        assert status == 200
        process.process.send_signal(signal.SIGTERM)  # the write is still queued, or being written
        assert process.finish(60) == 0
    finally:
        process.kill()
    last = _sidecar_entries(registry)[-1]
    assert (last.action, last.reason, last.version) == ("rollback", "admin API: rollback: right before the signal",
                                                        2)
