"""The admin API and the controller: status, weight, rollback, promote, tokens, reloads and webhooks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from sidecar.app import start
from sidecar.canary.controller import Controller
from sidecar.canary.metrics import CanaryMetrics as Metrics
from sidecar.config.canary import AnalysisConfig, CanaryConfig
from sidecar.config.file import Config, PrimaryConfig
from sidecar.config.overrides import load
from sidecar.config.settings import Address
from sidecar.routing import split

from ..support import LoopThread, RunningSidecar, Stub, settings, wait_until


class Upstreams:
    """A primary and a canary answering tiny v2 responses (their version says who answered), and a webhook."""

    def __init__(self) -> None:
        self.loop = LoopThread("upstreams")
        self.hooks: list[dict[str, Any]] = []
        self.hook_status = 200
        self.primary = Stub(self._model("1"), self.loop)
        self.canary = Stub(self._model("2"), self.loop)
        self.webhook = Stub(self._webhook, self.loop)

    def _model(self, version: str) -> Callable[[web.Application], None]:
        async def infer(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"model_name": "m", "model_version": version, "outputs": []})
        def routes(app: web.Application) -> None:
            app.router.add_post("/v2/models/m/infer", infer)
        return routes

    def _webhook(self, app: web.Application) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.hooks.append(await request.json())
            return web.Response(status=self.hook_status)
        app.router.add_post("/hook", hook)

    def close(self) -> None:
        for stub in (self.primary, self.canary, self.webhook):
            stub.stop()
        self.loop.close()


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    servers = Upstreams()
    yield servers
    servers.close()


def call(url: str, body: object = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def version(sidecar: RunningSidecar, user: str) -> str:
    request = urllib.request.Request(f"http://{sidecar.http}/v2/models/m/infer", data=b'{"inputs": []}',
                                     headers={"x-user-id": user}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["model_version"]


def canary_sidecar(upstreams: Upstreams, weight: float = 0.0, **overrides: Any) -> RunningSidecar:
    config = Config(primary=PrimaryConfig(http=upstreams.primary.url, grpc=None),
                    canary=CanaryConfig(http=upstreams.canary.url, weight=weight, sticky_header="x-user-id",
                                        copy_fraction=0.0))
    return RunningSidecar(config, grpc_listen=None, **overrides)


def test_status_weight_rollback_and_promote(upstreams: Upstreams) -> None:
    sidecar = canary_sidecar(upstreams)
    users = [f"user-{i}" for i in range(40)]
    try:
        status, body = call(f"{sidecar.admin_url}/sidecar/status")
        assert status == 200 and body["canary"]["phase"] == "idle" and body["canary"]["weight"] == 0
        assert body["primary"]["http"] == upstreams.primary.url and body["drift"] is None
        assert {version(sidecar, user) for user in users} == {"1"}

        status, body = call(f"{sidecar.admin_url}/sidecar/canary", {"weight": 50, "reason": "first users"})
        assert status == 200 and (body["canary"]["weight"], body["canary"]["phase"]) == (50, "manual")
        assert sidecar.metric("sidecar_canary_weight") == 50
        expected = ["2" if split(user, 50.0) == "canary" else "1" for user in users]
        assert [version(sidecar, user) for user in users] == expected and "1" in expected and "2" in expected
        decision = body["canary"]["decisions"][-1]
        assert (decision["source"], decision["action"], decision["weight_from"], decision["weight_to"]) == (
            "admin", "set", 0, 50)
        assert decision["reason"] == "admin API: weight 50%: first users"

        status, body = call(f"{sidecar.admin_url}/sidecar/rollback", {"reason": "pager"})
        assert (body["canary"]["weight"], body["canary"]["phase"]) == (0, "rolled_back")
        assert {version(sidecar, user) for user in users} == {"1"}
        assert sidecar.metric("sidecar_canary_rollbacks_total", source="admin") == 1

        status, body = call(f"{sidecar.admin_url}/sidecar/promote", b"")
        assert (body["canary"]["weight"], body["canary"]["phase"]) == (100, "promoted")
        assert {version(sidecar, user) for user in users} == {"2"}
        assert sidecar.metric("sidecar_canary_promotions_total") == 1
        assert sidecar.metric("sidecar_canary_phase", phase="promoted") == 1
        assert sidecar.metric("sidecar_canary_phase", phase="rolled_back") == 0
        assert sidecar.metric("sidecar_requests_total", upstream="canary", protocol="http", code="200") > 0
        assert sidecar.metric("sidecar_canary_changes_total", source="admin", action="set") == 1

        for body_sent, message in (({"weight": 101}, "PERCENT from 0 to 100"), ({"weight": "10"}, "PERCENT"),
                                   (b"{nope", "not valid JSON"), (b"[1]", "JSON object")):
            status, body = call(f"{sidecar.admin_url}/sidecar/canary", body_sent)
            assert status == 400 and message in body["error"]
    finally:
        sidecar.stop()


def test_without_a_canary_changes_are_refused(upstreams: Upstreams) -> None:
    sidecar = RunningSidecar(Config(primary=PrimaryConfig(http=upstreams.primary.url, grpc=None)), grpc_listen=None)
    try:
        status, body = call(f"{sidecar.admin_url}/sidecar/status")
        assert status == 200 and body["canary"]["phase"] == "off" and body["canary"]["configured"] is False
        for path, sent in (("canary", {"weight": 5}), ("rollback", {}), ("promote", {})):
            status, body = call(f"{sidecar.admin_url}/sidecar/{path}", sent)
            assert status == 409 and "no canary is configured" in body["error"]
    finally:
        sidecar.stop()


def test_a_token_guards_every_endpoint(upstreams: Upstreams) -> None:
    sidecar = canary_sidecar(upstreams, admin_token="s3cret")
    try:
        for token in (None, "wrong"):
            assert call(f"{sidecar.admin_url}/sidecar/status", token=token)[0] == 401
            assert call(f"{sidecar.admin_url}/sidecar/rollback", {}, token=token)[0] == 401
        assert sidecar.sidecar.rollout.phase == "idle"
        assert call(f"{sidecar.admin_url}/sidecar/status", token="s3cret")[0] == 200
        assert call(f"{sidecar.admin_url}/sidecar/canary", {"weight": 5}, token="s3cret")[0] == 200
    finally:
        sidecar.stop()


def write(path: Path, data: dict[str, Any]) -> None:
    path.with_suffix(".new").write_text(yaml.safe_dump(data))
    path.with_suffix(".new").replace(path)


def test_the_configuration_file_sets_the_weight_without_a_restart(upstreams: Upstreams, tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    data: dict[str, Any] = {"primary": {"http": upstreams.primary.url, "grpc": None},
            "canary": {"http": upstreams.canary.url, "weight": 10, "sticky_header": "x-user-id"}}
    write(path, data)
    options = {"config_file": path, "grpc_listen": None}
    sidecar = RunningSidecar(load(settings(**options)), **options)
    controller = sidecar.sidecar.rollout
    try:
        assert (controller.weight, controller.phase) == (10, "manual")
        call(f"{sidecar.admin_url}/sidecar/canary", {"weight": 30})
        data["recording"] = {"inputs": "all"}  # another section changes: the operator's 30% stays
        write(path, data)
        wait_until(lambda: sidecar.metric("sidecar_config_reloads_total", result="applied") == 1, 10, "a reload")
        assert controller.weight == 30
        data["canary"]["weight"] = 0  # the file's weight changes: it applies
        write(path, data)
        wait_until(lambda: sidecar.metric("sidecar_config_reloads_total", result="applied") == 2, 10, "a reload")
        assert (controller.weight, controller.phase) == (0, "idle")
        assert version(sidecar, "anyone") == "1"
        sources = [(d.source, d.weight_to) for d in controller.decisions]
        assert sources == [("config", 10), ("admin", 30), ("config", 0)]
        del data["canary"]
        write(path, data)
        wait_until(lambda: sidecar.metric("sidecar_config_reloads_total", result="applied") == 3, 10, "a reload")
        assert controller.phase == "off" and sidecar.sidecar.upstreams.canary is None
    finally:
        sidecar.stop()


def test_webhooks_gate_the_ramp_and_hear_of_rollbacks(upstreams: Upstreams) -> None:
    hook = f"{upstreams.webhook.url}/hook"
    analysis = AnalysisConfig(interval_secs=3600, step_weight=10, max_weight=50, min_requests=5, failure_limit=1,
                              max_p99_ratio=None, pre_ramp_webhooks=(hook,), rollback_webhooks=(hook,))
    loop = LoopThread("controller")
    metrics = Metrics()
    controller = Controller(metrics)

    async def interval(failed: bool) -> str:
        for _ in range(10):
            controller.observe("canary", 0.01, failed)
            controller.observe("primary", 0.01, False)
        return (await controller.conclude(analysis)).action

    async def scenario() -> list[str]:
        controller.configure(CanaryConfig(http="http://candidate", weight=10, analysis=analysis))
        actions = [await interval(False)]
        upstreams.hook_status = 409  # CI says no: the canary holds
        actions.append(await interval(False))
        upstreams.hook_status = 200
        actions.append(await interval(True))
        await controller.close()
        return actions

    try:
        assert loop.call(scenario()) == ["ramp", "hold", "rollback"]
    finally:
        loop.close()
    assert [(h["event"], h["weight_from"], h["weight_to"]) for h in upstreams.hooks] == [
        ("pre_ramp", 10, 20), ("pre_ramp", 20, 30), ("rollback", 20, 0)]
    assert upstreams.hooks[-1]["metrics"]["canary_errors"] == 10 and "error rate 1" in upstreams.hooks[-1]["reason"]
    held = controller.decisions[-2]
    assert held.action == "hold" and held.ramp_refused is not None and "answered 409" in held.ramp_refused
    assert metrics.registry.get_sample_value("sidecar_canary_webhook_calls_total",
                                             {"hook": "pre_ramp", "result": "refused"}) == 1
    assert metrics.registry.get_sample_value("sidecar_canary_rollbacks_total", {"source": "analysis"}) == 1


def test_the_analysis_loop_runs_each_interval_and_restarts_on_a_change() -> None:
    analysis = AnalysisConfig(interval_secs=0.2, min_requests=1000, max_p99_ratio=None)
    loop = LoopThread("controller")
    controller = Controller(Metrics())

    async def scenario() -> tuple[list[str], float]:
        controller.configure(CanaryConfig(http="http://candidate", weight=10, analysis=analysis))
        task = asyncio.ensure_future(controller.run())
        # inconclusive intervals (too few requests); the controller has no event to wait on, so poll its count
        while controller.intervals < 2:  # noqa: ASYNC110 - polls the controller's public counter
            await asyncio.sleep(0.02)
        controller.rollback("test")
        intervals = controller.intervals
        await asyncio.sleep(0.5)  # rolled back: no interval is judged any more
        task.cancel()
        return [d.action for d in controller.decisions], controller.intervals - intervals

    try:
        actions, later = loop.call(scenario())
    finally:
        loop.close()
    assert actions == ["set", "wait", "rollback"] and later == 0  # inconclusive intervals in a row: one entry


def test_a_reloaded_file_resets_the_canary_only_when_its_weight_or_upstream_changes() -> None:
    controller = Controller(Metrics())
    base = CanaryConfig(http="http://candidate", weight=10)

    def state() -> tuple[float, str]:
        return controller.weight, controller.phase

    controller.configure(base)
    assert state() == (10, "manual")
    controller.set_weight(30, "by hand")
    controller.configure(dataclasses.replace(base, timeout_secs=5))  # an option: the operator's weight stays
    assert state() == (30, "manual")
    with_analysis = dataclasses.replace(base, timeout_secs=5, analysis=AnalysisConfig())
    controller.configure(with_analysis)  # the analysis is switched on: it starts from the weight in force
    assert state() == (30, "progressing")
    controller.rollback("pager")
    controller.configure(dataclasses.replace(with_analysis, analysis=AnalysisConfig(max_error_rate=0.02)))
    assert state() == (0, "rolled_back")  # a threshold changed: the rollback stands
    controller.configure(dataclasses.replace(with_analysis, weight=20))
    assert state() == (20, "progressing")  # the file's weight changed: it applies
    controller.set_weight(40, "by hand")
    controller.configure(dataclasses.replace(with_analysis, weight=20, http="http://other"))
    assert state() == (20, "progressing")  # another canary: the file's weight
    controller.configure(None)
    assert state() == (0, "off")
    assert [d.source for d in controller.decisions] == ["config", "admin", "config", "admin", "config", "admin",
                                                        "config", "config"]


def test_a_busy_admin_port_stops_the_start_only_when_it_was_asked_for(upstreams: Upstreams,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    config = Config(primary=PrimaryConfig(http=upstreams.primary.url, grpc=None))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = Address("127.0.0.1", busy.getsockname()[1])
        sidecar = RunningSidecar(config, grpc_listen=None, admin_listen=taken)  # the default address, say
        try:
            assert sidecar.sidecar.admin_port == 0 and "admin API off: cannot listen" in caplog.text
            assert version(sidecar, "anyone") == "1"
        finally:
            sidecar.stop()
        loop = LoopThread("refused")
        try:
            with pytest.raises(OSError):
                loop.call(start(settings(grpc_listen=None, admin_listen=taken, admin_required=True), config))
        finally:
            loop.close()
