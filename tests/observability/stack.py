"""What Prometheus scrapes in these tests: the demo's layout, serve x3 and the sidecar, as processes.

The primary serves version 1 of the example classifier with the sidecar in front of it
(one pod: the same pod name on both targets), and two candidate pods serve version 2: one
is the sidecar's shadow (every request mirrored), the other its canary (30% of requests).
The sidecar records the pairs and keeps live drift gauges against a reference profile of
the primary's answers (`demo.reports.reference_profile`, what the demo configures).
Traffic is the demo's own clients (`demo.traffic.Traffic`), over HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from demo.processes import Child, Children
from demo.reports import reference_profile
from demo.run import endpoints
from demo.traffic import Tally, Traffic
from tests.conftest import EXAMPLES

from .prometheus import Target

SERVE_FLAGS = ["--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
               "--log-format", "json", "--cpu-threads", "1", "--exit-timeout-secs", "2"]
SHADOW = "v2"
CANARY_WEIGHT = 30
PRIMARY_POD = "shadowserve-model-6d5f8b7c9-x2k4q"
CANDIDATE_PODS = {"shadow": "shadowserve-model-candidate-7b9c6d5f4-shd01",
                  "canary": "shadowserve-model-candidate-7b9c6d5f4-can01"}


def repository(root: Path, version: int) -> Path:
    """A model repository holding one version of the example classifier."""
    model = root / f"classifier-v{version}" / "classifier"
    (model / str(version)).mkdir(parents=True)
    shutil.copy(EXAMPLES / "classifier" / "config.pbtxt", model)
    shutil.copy(EXAMPLES / "classifier" / "labels.txt", model)
    shutil.copy(EXAMPLES / "classifier" / str(version) / "model.pt", model / str(version))
    return model.parent


class Stack:
    """serve x3 and the sidecar, launched side by side; `wait_ready` waits for them, `stop` ends them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "logs").mkdir(parents=True)
        self.children = Children()
        try:
            self._launch()
        except BaseException:
            self.children.stop_all()
            raise

    def _serve(self, role: str, version: int) -> Child:
        argv = [sys.executable, "-m", "serving", "--model-repository", str(repository(self.root / role, version)),
                *SERVE_FLAGS]
        return self.children.start(f"serve {role}", argv, self.root / "logs" / f"serve-{role}.log")

    def _launch(self) -> None:
        # The sidecar starts beside the three serves (each start is mostly imports), on a
        # placeholder primary, and gets the real configuration by a reload once they are up.
        self.config = self.root / "sidecar.json"
        self.recording = {"inputs": "none", "segment_seconds": "2s"}  # restart-only: the same in both
        self.config.write_text(json.dumps({"primary": {"http": "http://127.0.0.1:9", "grpc": None},
                                           "recording": self.recording}))
        self.sidecar_child = self.children.start("sidecar", [
            sys.executable, "-m", "sidecar", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
            "--metrics-port", "0", "--admin-listen", "off",
            "--record-dir", str(self.root / "records"), "--config", str(self.config), "--config-poll-secs", "0.1",
            "--log-format", "json", "--drain-timeout-secs", "1"], self.root / "logs" / "sidecar.log")
        self.serves = [self._serve("primary", 1), self._serve("shadow", 2), self._serve("canary", 2)]

    def wait_ready(self) -> None:
        """Every serve ready, and the sidecar in front of them with shadow, canary and live drift."""
        try:
            self.primary, self.shadow, self.canary = (endpoints(child) for child in self.serves)
            profile = reference_profile(self.root / "reference.json", self.primary["http"], points=256)
            ports = self.sidecar_child.wait_for("listening ")
            self.sidecar = {"http": f"http://127.0.0.1:{ports['http_port']}",
                            "grpc": f"127.0.0.1:{ports['grpc_port']}",
                            "metrics": f"http://127.0.0.1:{ports['metrics_port']}/metrics"}
            config = {
                "primary": {"http": self.primary["http"], "grpc": self.primary["grpc"]},
                "shadows": [{"name": SHADOW, "http": self.shadow["http"], "grpc": self.shadow["grpc"],
                             "fraction": 1.0}],
                "canary": {"http": self.canary["http"], "grpc": self.canary["grpc"], "weight": CANARY_WEIGHT},
                "recording": self.recording,
                "drift": {"profile": str(profile), "window": 500},
            }
            self.config.write_text(json.dumps(config))
            self.sidecar_child.wait_for("configuration reloaded", timeout=20)
        except BaseException:
            self.children.stop_all()
            raise

    def targets(self) -> list[Target]:
        """Every /metrics endpoint, with the Kubernetes objects it would belong to."""
        ends = {"primary": self.primary, "sidecar": self.sidecar, "shadow": self.shadow, "canary": self.canary}
        port = {role: str(e["metrics"]).removeprefix("http://").removesuffix("/metrics") for role, e in ends.items()}
        return [
            Target(port["primary"], "shadowserve-model", PRIMARY_POD, "model", "metrics", "primary"),
            Target(port["sidecar"], "shadowserve-model", PRIMARY_POD, "shadowserve-sidecar", "sidecar-metrics",
                   "primary"),
            *(Target(port[role], "shadowserve-model-candidate", CANDIDATE_PODS[role], "model", "metrics", "candidate")
              for role in ("shadow", "canary")),
        ]

    def traffic(self, seconds: float, concurrency: int = 4) -> Tally:
        """The demo's clients through the sidecar for ``seconds`` (unshifted: live drift stays low)."""
        clients = Traffic(self.sidecar["http"], self.sidecar["grpc"], seconds, concurrency, shift_at=2.0)
        return asyncio.run(clients.run(asyncio.Event()))

    def stop(self) -> dict[str, int | None]:
        return self.children.stop_all()
