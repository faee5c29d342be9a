"""The canary with real ``serve`` processes: a good canary ramps to max; a failing, a slow and a different
canary are each rolled back within ``failure_limit`` intervals, and no client request fails meanwhile.

Clients send classifier requests through the sidecar with a random ``x-user-id`` each, so
the canary serves its weight's share; the analysis judges one-second intervals.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest

from sidecar.canary.analysis import IntervalMetrics, State, replay
from sidecar.canary.controller import Controller
from sidecar.config.canary import AnalysisConfig, CanaryConfig
from sidecar.config.file import Config, PrimaryConfig, RecordingConfig
from sidecar.drift import Window
from sidecar.drift.reader import read_chunks

from ..conftest import Candidate, ModelServer
from ..support import LoopThread, RunningSidecar, read_records, wait_until

ANALYSIS = AnalysisConfig(interval_secs=1.0, step_weight=20, max_weight=60, min_requests=5, failure_limit=2,
                          max_error_rate=0.05, max_p99_ratio=2.0, p99_slack_secs=0.2, max_disagreement=0.1)


class Load:
    """Concurrent HTTP clients through the sidecar until stopped; every answer's status is counted."""

    def __init__(self, url: str, points: np.ndarray, rows: int = 1, concurrency: int = 8) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._loop = LoopThread("load")
        self._bodies = [orjson.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [rows, 64],
                                                  "data": points[i:i + rows].reshape(-1).tolist()}]})
                        for i in range(0, len(points) - rows + 1, rows)]
        self._url = f"http://{url}/v2/models/classifier/infer"
        self._done = asyncio.run_coroutine_threadsafe(self._run(concurrency), self._loop.loop)

    async def _run(self, concurrency: int) -> None:
        async with aiohttp.ClientSession() as session:
            async def client(index: int) -> None:
                n = index
                while not self._stop.is_set():
                    n += concurrency
                    try:
                        async with session.post(self._url, data=self._bodies[n % len(self._bodies)],
                                                headers={"x-user-id": uuid.uuid4().hex}) as response:
                            await response.read()
                            self.statuses[response.status] += 1
                    except aiohttp.ClientError as exc:
                        self.errors.append(repr(exc))
            await asyncio.gather(*(client(i) for i in range(concurrency)))

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._done.result(30)
            self._loop.close()


def run(primary: ModelServer, canary: ModelServer, points: np.ndarray, until: tuple[str, ...],
        analysis: AnalysisConfig = ANALYSIS, rows: int = 1, records: Path | None = None,
        timeout: float = 40) -> tuple[RunningSidecar, Load]:
    """A sidecar with a 20% canary under load until the canary's phase is one of ``until``; still running."""
    config = Config(primary=PrimaryConfig(http=primary.http_url, grpc=primary.grpc),
                    canary=CanaryConfig(http=canary.http_url, grpc=canary.grpc, weight=20, sticky_header="x-user-id",
                                        analysis=analysis),
                    recording=RecordingConfig(dir=records))
    sidecar = RunningSidecar(config)
    load = Load(sidecar.http, points, rows)
    try:
        wait_until(lambda: sidecar.sidecar.rollout.phase in until, timeout, f"the canary to reach {until}")
    except BaseException:
        load.stop()
        sidecar.stop()
        raise
    return sidecar, load


def analysed(controller: Controller) -> list[tuple[str, float, IntervalMetrics]]:
    return [(d.action, d.weight_to, d.metrics) for d in controller.decisions if d.source == "analysis"
            and d.metrics is not None]


@pytest.fixture
def candidate(serve_candidate: Candidate) -> Iterator[Candidate]:
    yield serve_candidate
    serve_candidate.mode("ok")


def assert_rolled_back(sidecar: RunningSidecar, load: Load, check: str) -> None:
    """Rolled back after failure_limit failed intervals in a row, never ramped; then no canary traffic."""
    controller = sidecar.sidecar.rollout
    decisions = analysed(controller)
    actions = [action for action, _, _ in decisions]
    assert actions[-1] == "rollback" and "ramp" not in actions, actions
    conclusive = [action for action in actions if action != "wait"]
    assert conclusive == ["hold"] * (ANALYSIS.failure_limit - 1) + ["rollback"], actions
    assert actions.count("wait") <= 1, f"inconclusive intervals under load: {actions}"
    assert controller.decisions[-1].reason.startswith("rollback after 2 failed interval(s) in a row: ")
    assert check in controller.decisions[-1].reason, controller.decisions[-1].reason
    assert (controller.weight, controller.phase) == (0.0, "rolled_back")
    canary = sidecar.sidecar.upstreams.canary
    upstream = canary.http if canary is not None else None
    assert upstream is not None
    wait_until(lambda: upstream.in_flight == 0, 20, "the canary's requests in flight to finish")
    served = sidecar.metric("sidecar_requests_total", upstream="canary", protocol="http", code="200")
    answered = sum(load.statuses.values())
    wait_until(lambda: sum(load.statuses.values()) > answered + 50, 20, "requests after the rollback")
    load.stop()
    assert sidecar.metric("sidecar_requests_total", upstream="canary", protocol="http", code="200") == served
    assert set(load.statuses) == {200} and not load.errors, (load.statuses, load.errors)
    assert sidecar.metric("sidecar_canary_rollbacks_total", source="analysis") == 1
    assert sidecar.metric("sidecar_canary_weight") == 0


def settled_agreement(sidecar: RunningSidecar) -> tuple[float, float]:
    """The canary's compared and agreeing rows, read once the comparisons of the last answers are counted
    (the load has stopped, but the comparisons run beside the responses): two reads 0.2 s apart alike."""
    def read() -> tuple[float, float]:
        return (sidecar.metric("sidecar_canary_compared_rows_total", model="classifier", output="OUTPUT__0"),
                sidecar.metric("sidecar_canary_top1_agree_rows_total", model="classifier", output="OUTPUT__0"))
    deadline = time.monotonic() + 10
    last = read()
    while True:
        time.sleep(0.2)
        now = read()
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def test_a_good_canary_ramps_to_max_and_is_ready_to_promote(serve_v1: ModelServer, candidate: Candidate,
                                                            points: np.ndarray) -> None:
    sidecar, load = run(serve_v1, candidate, points, ("ready", "rolled_back"))
    try:
        load.stop()
        controller = sidecar.sidecar.rollout
        decisions = analysed(controller)
        assert controller.phase == "ready", [d.reason for d in controller.decisions]
        assert [(a, w) for a, w, _ in decisions if a != "wait"] == [("ramp", 40), ("ramp", 60), ("ready", 60)]
        assert set(load.statuses) == {200} and not load.errors
        # the decisions follow from the metrics they recorded
        again = replay(ANALYSIS, State(20.0), [metrics for _, _, metrics in decisions])
        assert [(o.action, o.weight) for o in again] == [(a, w) for a, w, _ in decisions]
        assert all(m.disagreement == 0.0 for a, _, m in decisions if a != "wait")  # the copies answered alike
        assert sidecar.metric("sidecar_canary_weight") == 60
        assert sidecar.metric("sidecar_canary_phase", phase="ready") == 1
        assert sidecar.metric("sidecar_canary_analysis_intervals_total", verdict="pass") == 3
        compared, agreed = settled_agreement(sidecar)
        assert compared > 0 and agreed == compared
    finally:
        sidecar.stop()


def test_a_canary_answering_500_is_rolled_back_and_clients_never_see_it(serve_v1: ModelServer, candidate: Candidate,
                                                                      points: np.ndarray) -> None:
    candidate.mode("fail")
    sidecar, load = run(serve_v1, candidate, points, ("rolled_back", "ready"))
    try:
        assert sidecar.metric("sidecar_canary_retries_total", protocol="http") > 0  # answered by the primary
        assert_rolled_back(sidecar, load, "error rate 1 ")
    finally:
        load.stop()
        sidecar.stop()


def test_a_slow_canary_is_rolled_back(serve_v1: ModelServer, candidate: Candidate, points: np.ndarray) -> None:
    candidate.mode("slow:0.5")
    sidecar, load = run(serve_v1, candidate, points, ("rolled_back", "ready"))
    try:
        assert_rolled_back(sidecar, load, "s, limit 2 x primary")
        metrics = sidecar.sidecar.rollout.decisions[-1].metrics
        assert metrics is not None and (metrics.canary_p99 or 0) >= 0.5
    finally:
        load.stop()
        sidecar.stop()


def test_a_canary_that_answers_differently_is_rolled_back(serve_v1: ModelServer, serve_v2: ModelServer,
                                                          points: np.ndarray, tmp_path: Path) -> None:
    sidecar, load = run(serve_v1, serve_v2, points, ("rolled_back", "ready"), rows=4, records=tmp_path)
    try:
        assert_rolled_back(sidecar, load, "top-1 disagreement")
    finally:
        load.stop()
        sidecar.stop()
    # canary-served requests are recorded with the canary's answer and the primary's answer to the copy
    records = read_records(tmp_path).values()
    canary_served = [r for r in records if r["primary"]["upstream"] == "canary"]
    assert canary_served
    for record in canary_served[:20]:
        assert record["primary"]["model_version"] == "2"
        (copy,) = record["shadows"]
        assert (copy["upstream"], copy["model_version"], copy["status"]) == ("primary", "1", 200)
    # the drift tool's "primary" is the primary's answers: the canary's are left out of it
    chunks = list(read_chunks(Window(tmp_path)))
    assert sum(chunk.responses["primary"] for chunk in chunks) == len(records) - len(canary_served)
