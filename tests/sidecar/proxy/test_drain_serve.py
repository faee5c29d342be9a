"""SIGTERM to a pod: the sidecar (gRPC on) and a real ``serve`` drain together, and every request in flight is answered.

Requests to a slow model (1.5 s a batch, `tests/fixtures/sidecar_slow`) are in flight
through the sidecar over HTTP and gRPC when both processes get SIGTERM, as Kubernetes
sends it to every container of a pod at once. The sidecar turns not ready, keeps
proxying while ``serve`` finishes what it holds, then exits 0 once nothing is in flight
and the primary has gone not ready.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ..conftest import ModelServer
from ..support import SidecarProcess, wait_until

REPOSITORY = Path(__file__).resolve().parents[2] / "fixtures" / "sidecar_slow"
PER_PROTOCOL = 3


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_sigterm_with_requests_in_flight_over_http_and_grpc_answers_them_all_and_exits_0() -> None:
    serve = ModelServer(REPOSITORY)
    assert serve.grpc is not None
    sidecar = SidecarProcess("--primary", serve.http_url, "--primary-grpc", serve.grpc, "--listen", "127.0.0.1:0",
                             "--grpc-listen", "127.0.0.1:0", "--metrics-port", "0", "--drain-timeout-secs", "30")
    answers: list[tuple[str, float]] = []
    errors: list[str] = []

    def over(protocol: str, index: int) -> None:
        x = np.array([[float(index)]], dtype=np.float32)
        try:
            module = httpclient if protocol == "http" else grpcclient
            client = module.InferenceServerClient(sidecar.http if protocol == "http" else sidecar.grpc)
            tensor = module.InferInput("X", [1, 1], "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer("slow", [tensor], client_timeout=30) if protocol == "grpc" else client.infer(
                "slow", [tensor])
            answers.append((protocol, float(result.as_numpy("Y")[0, 0]) - index))
            client.close()
        except Exception as exc:  # noqa: BLE001 - every failure is reported by the assertion below
            errors.append(f"{protocol} {index}: {exc}")

    clients = [threading.Thread(target=over, args=(protocol, index))
               for protocol in ("http", "grpc") for index in range(PER_PROTOCOL)]
    try:
        assert status(f"{sidecar.metrics}/readyz") == 200
        for client in clients:
            client.start()
        time.sleep(0.5)  # every request sent, none answered yet: a batch takes 1.5 s
        assert not answers, "the model answered before SIGTERM: the requests were not in flight"
        sidecar.process.send_signal(signal.SIGTERM)
        serve.serve.process.send_signal(signal.SIGTERM)
        wait_until(lambda: status(f"{sidecar.metrics}/readyz") != 200, 10, "the sidecar to turn not ready")
        for client in clients:
            client.join(30)
        assert errors == [] and sorted(answers) == [("grpc", 1.0)] * PER_PROTOCOL + [("http", 1.0)] * PER_PROTOCOL
        assert sidecar.finish(30) == 0
        assert serve.serve.finish(30) == 0
    finally:
        sidecar.kill()
        serve.serve.kill()
    messages = [entry["message"] for entry in sidecar.lines]
    assert any(m.startswith("draining") for m in messages) and messages[-1] == "stopped"
    assert not any("stopping anyway" in m for m in messages)  # it followed the primary, not its own timeout
