"""Front-end workers under load when things stop: SIGTERM to `serve` drains every worker's
requests; a worker killed with SIGKILL is replaced while the other worker's clients see nothing."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, Serve
from .frontend_procs import (
    PLUS_ONE,
    Http,
    alive,
    children,
    grpc_channel,
    grpc_client,
    grpc_spread,
    http_spread,
    listeners,
    maps_torch,
    model,
    scrape,
    wait_for,
)

SLOW = '''
import pathlib
import time
import serving


class Slow(serving.Model):
    def predict(self, inputs):
        pathlib.Path(self.parameters["started"]).touch()
        time.sleep(float(self.parameters["seconds"]))
        return {"Y": inputs["X"] + 1}
'''


def _worker_pids(owner: int) -> list[int]:
    return [pid for pid in children(owner) if b"serving.frontend" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _refused_or(call: object) -> object:
    """``call()``'s result, or "refused" when the connection is refused or closed under it."""
    try:
        return call()  # type: ignore[operator]  # any callable
    except (ConnectionError, http.client.RemoteDisconnected):
        return "refused"


def _serving(channel: grpc.Channel) -> object:
    """The gRPC health service's overall status, or the error's code once the worker has gone."""
    check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]  # the stubs omit HealthStub's methods
    try:
        return check(health_pb2.HealthCheckRequest(), timeout=10).status
    except grpc.RpcError as error:
        return error.code()


def _ready(connection: Http | None, port: int = 0) -> object:
    """/v2/health/ready's status on ``connection`` (or a new one to ``port``), or "refused"."""
    return _refused_or(lambda: (connection or Http(port)).request("GET", "/v2/health/ready")[0])


def test_sigterm_drains_the_requests_of_every_worker_then_exits_zero_leaving_no_worker(tmp_path: Path) -> None:
    started = tmp_path / "started"
    model(tmp_path / "repo", "slow", SLOW, 4, delay_us=3_000_000, seconds="0.5", started=str(started))
    serve = Serve(tmp_path / "repo", "--frontend-workers", "2", "--exit-timeout-secs", "30")
    pids: list[int] = []
    try:
        ports = next(line for line in serve.lines if line["message"].startswith("listening "))
        http_port, grpc_port = ports["http_port"], ports["grpc_port"]
        metrics = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
        wait_for(lambda: len(_worker_pids(serve.process.pid)) == 2, "serve had started 2 workers")
        pids = _worker_pids(serve.process.pid)
        wait_for(lambda: listeners(http_port, pids) == set(pids), "both workers listened")
        wait_for(lambda: _ready(None, http_port) == 200, "serve was ready")
        flights = [c for held in http_spread(http_port, pids, 4).values() for c in held]
        probes = [c for [c] in http_spread(http_port, pids, 1).values()]
        health = [c for [c] in grpc_spread(grpc_port, pids, 1, grpc_channel).values()]
        with ThreadPoolExecutor(len(flights)) as pool:
            sent = [pool.submit(c.infer, "slow", float(i)) for i, c in enumerate(flights)]
            # one batch of 4 computing and 4 queued: all 8 requests are the owner's now
            wait_for(lambda: started.exists() and scrape(metrics, "nv_inference_pending_request_count",
                                                         model="slow") == 4, "8 requests were in flight")
            serve.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            for probe in probes:
                wait_for(lambda p=probe: _ready(p) in (503, "refused"), "readiness had turned false", timeout=10)
                assert _refused_or(lambda p=probe: p.infer("slow", 100.0)[0]) in (503, "refused")
            for channel in health:  # each worker's health service follows the owner's drain
                wait_for(lambda c=channel: _serving(c) != health_pb2.HealthCheckResponse.SERVING,
                         "gRPC health had turned NOT_SERVING", timeout=10)
                channel.close()
            late = grpc_client(grpc_port)
            with pytest.raises(InferenceServerException) as refused:
                tensor = grpcclient.InferInput("X", [1, 1], "FP32")
                tensor.set_data_from_numpy(np.zeros((1, 1), np.float32))
                late.infer("slow", [tensor], client_timeout=10)
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            results = [future.result(timeout=30) for future in sent]
        assert [status for status, _ in results] == [200] * 8
        assert [body["outputs"][0]["data"] for _, body in results] == [[i + 1.0] for i in range(8)]
        assert serve.process.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 30  # drained, not cut off by --exit-timeout-secs
        # before reading the log to its end: a worker left behind would hold its pipe open
        wait_for(lambda: not any(alive(pid) for pid in pids), "no worker was left behind", timeout=10)
        assert serve.finish(timeout=10) == 0
        assert not any("still in flight" in line["message"] for line in serve.lines)
    finally:
        serve.kill()
        for pid in pids:  # only on a failure above: the workers this test's serve started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_the_other_worker_clients_never_fail(tmp_path: Path) -> None:
    model(tmp_path, "inc", PLUS_ONE, 8)
    server = RunningServer(tmp_path, frontend_workers=2)
    try:
        victim, survivor = server.server.worker_pids()
        connections = http_spread(server.server.http_port, [victim, survivor], 2)
        clients = grpc_spread(server.server.grpc_port, [victim, survivor], 1, grpc_client)
        restarts = scrape(server.metrics_url, "serving_frontend_worker_restarts_total")
        answered: dict[int, int] = {}  # by id of the connection or client
        failures: dict[int, str] = {}
        stop = threading.Event()

        def over_http(connection: Http) -> None:
            while not stop.is_set():
                try:
                    status, body = connection.infer("inc", 1.0)
                except OSError as error:
                    failures[id(connection)] = repr(error)
                    return
                if status != 200 or body["outputs"][0]["data"] != [2.0]:
                    failures[id(connection)] = f"HTTP {status}: {body}"
                    return
                answered[id(connection)] = answered.get(id(connection), 0) + 1

        def over_grpc(client: grpcclient.InferenceServerClient) -> None:
            tensor = grpcclient.InferInput("X", [1, 1], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
            while not stop.is_set():
                try:
                    assert client.infer("inc", [tensor], client_timeout=20).as_numpy("Y").tolist() == [[2.0]]
                except InferenceServerException as error:
                    failures[id(client)] = f"gRPC {error.status()}: {error.message()}"
                    return
                answered[id(client)] = answered.get(id(client), 0) + 1

        others = [*connections[survivor], *clients[survivor]]
        every = [*connections[victim], *clients[victim], *others]
        with ThreadPoolExecutor(len(every)) as pool:
            running = [pool.submit(over_http if isinstance(c, Http) else over_grpc, c) for c in every]
            wait_for(lambda: all(answered.get(id(c), 0) >= 3 for c in every), "every client had answers")
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: victim not in server.server.worker_pids() and len(server.server.worker_pids()) == 2,
                     "a new worker had replaced the killed one")
            [new] = set(server.server.worker_pids()) - {survivor}
            wait_for(lambda: listeners(server.server.http_port, [new]) == {new}, "the new worker listened")
            since = {id(c): answered[id(c)] for c in others}
            wait_for(lambda: all(answered[id(c)] >= since[id(c)] + 3 for c in others) or bool(failures.keys() &
                     {id(c) for c in others}), "the other worker's clients went on being answered")
            stop.set()
            for future in running:
                future.result(timeout=30)
        assert not {id(c) for c in others} & failures.keys(), failures
        assert {id(c) for c in connections[victim]} <= failures.keys()  # its connections did go with it
        assert scrape(server.metrics_url, "serving_frontend_worker_restarts_total") == restarts + 1
        assert alive(survivor) and new in children(os.getpid()) and not maps_torch(new)
        for [connection] in http_spread(server.server.http_port, [survivor, new], 1).values():
            assert connection.infer("inc", 1.0)[0] == 200
        for [client] in grpc_spread(server.server.grpc_port, [survivor, new], 1, grpc_client).values():
            assert client.is_model_ready("inc")
            client.close()
        for held in clients.values():
            held[0].close()
    finally:
        server.stop()
