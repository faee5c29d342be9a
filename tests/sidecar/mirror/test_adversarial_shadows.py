"""Whatever a shadow does, the primary's clients see nothing of it, and the sidecar's memory stays bounded.

One sidecar process (``python -m sidecar``) in front of a real ``serve``; each test points
its one shadow, by a configuration reload, at a misbehaving double (`tests.sidecar.doubles`:
raw socket servers that refuse, blackhole, reset, answer garbage or 500s, answer late,
stream an endless or huge body, drip bytes, stall under the size cap), sends 1.5 s of
closed-loop traffic, and checks that every request got the primary's exact answer, that
the sidecar's peak RSS stayed within 64 MiB of where it started, and that /metrics names
the reason for every copy that failed. The shadow timeout is 1 s; the memory budget
32 MiB, so that the ``stall`` double (3 MiB of each answer, then nothing, 64 copies in
flight: 192 MiB unbounded) runs into it. What this costs the primary's latency is
measured in ``benchmarks/sidecar_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.mirror.shadow import FAILURES_TO_REST

from ..conftest import ModelServer
from ..doubles import Doubles
from ..support import LoopThread, SidecarProcess, wait_until

TRAFFIC_SECS = 1.5  # past the shadow timeout (1 s): a blackholed shadow has rested by the end
CLIENTS = 8
RSS_GROWTH = 64 * 1024 * 1024
BODY = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                               "data": [0.25] * 64}]}).encode()
INFER = "/v2/models/classifier/infer"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


class Harness:
    """The sidecar process, its configuration file, and the doubles on a loop thread."""

    def __init__(self, primary: ModelServer, root: Path) -> None:
        self.loop = LoopThread("doubles")
        self.doubles = self.loop.call(Doubles().start())
        self.primary = primary
        self.config = root / "sidecar.yaml"
        self.write(None)
        self.process = SidecarProcess("--config", str(self.config), "--listen", "127.0.0.1:0", "--grpc-listen", "off",
                                      "--metrics-port", "0", "--config-poll-secs", "0.05", "--drain-timeout-secs", "0",
                                      "--shadow-drain-secs", "0.2", "--shadow-memory-budget-bytes", "32MiB")
        stderr = self.process.process.stderr
        assert stderr is not None
        # The sidecar logs while shadows fail: keep its pipe from filling up.
        threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
        self.expected = asyncio.run(self._direct())
        self.reloads = 0.0
        asyncio.run(load(self.process.http, 0.5, self.expected))  # warm: code paths loaded, pools open
        self.baseline = memory(self.process.process.pid)["VmRSS"]

    async def _direct(self) -> bytes:
        async with aiohttp.ClientSession() as session, session.post(f"{self.primary.http_url}{INFER}",
                                                                    data=BODY) as response:
            assert response.status == 200
            return await response.read()

    def write(self, kind: str | None) -> None:
        shadows = f"[{{name: {kind}, http: '{self.doubles.urls[kind]}', timeout: 1s}}]" if kind else "[]"
        # Atomically, as Kubernetes swaps a ConfigMap: a watcher that reads a half-written file would apply
        # an empty one (every default, another primary).
        staged = self.config.with_suffix(".tmp")
        staged.write_text(f"primary: {{http: '{self.primary.http_url}', grpc: null}}\nshadows: {shadows}\n")
        os.replace(staged, self.config)

    def shadow(self, kind: str) -> None:
        """Point the shadow at ``kind`` and wait until the sidecar has applied it."""
        applied = (("result", "applied"),)
        before = scrape(self.process.metrics).get(("sidecar_config_reloads_total", applied), 0.0)
        time.sleep(0.02)  # a new modification time for the watcher
        self.write(kind)
        wait_until(lambda: scrape(self.process.metrics).get(("sidecar_config_reloads_total", applied), 0.0) > before,
                   10, f"the shadow {kind} to be configured")

    def close(self) -> None:
        self.process.process.terminate()
        try:
            self.process.process.wait(15)
        finally:
            self.process.kill()
            self.loop.call(self.doubles.close())
            self.loop.close()


def same_answer(body: bytes, expected: bytes) -> bool:
    """The primary's answer: the same outputs, values equal up to float rounding (serve batches requests)."""
    got, want = json.loads(body), json.loads(expected)
    values = [np.asarray(o.pop("data"), dtype=np.float64) for o in (*got["outputs"], *want["outputs"])]
    half = len(values) // 2
    pairs = zip(values[:half], values[half:], strict=True)
    return got == want and all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in pairs)


async def load(address: str, seconds: float, expected: bytes) -> tuple[int, list[str]]:
    """Closed-loop traffic from ``CLIENTS`` clients: the answers that were right, and what went wrong."""
    ok, wrong = 0, []
    until = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=10)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        while time.monotonic() < until:
            try:
                async with session.post(f"http://{address}{INFER}", data=BODY) as response:
                    body = await response.read()
                    if response.status == 200 and same_answer(body, expected):
                        ok += 1
                    else:
                        wrong.append(f"{response.status}: {body[:200]!r}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                wrong.append(repr(exc))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    return ok, wrong


@pytest.fixture(scope="module")
def harness(serve_v1: ModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    running = Harness(serve_v1, tmp_path_factory.mktemp("adversarial"))
    yield running
    running.close()


# kind: the counters (name, reason label or None) that must have grown, and whether the shadow must have rested.
EXPECTED: dict[str, tuple[list[tuple[str, str | None]], bool]] = {
    "refuse": ([("sidecar_shadow_errors_total", "connection")], True),
    "blackhole": ([("sidecar_shadow_timeouts_total", None)], True),
    "reset": ([("sidecar_shadow_errors_total", "connection")], True),
    "reset_mid_body": ([("sidecar_shadow_errors_total", "connection")], True),
    "garbage": ([("sidecar_shadow_errors_total", "connection")], True),
    "error500": ([("sidecar_shadow_errors_total", "status")], False),
    "late": ([("sidecar_shadow_timeouts_total", None)], False),
    "endless": ([("sidecar_shadow_errors_total", "too_large")], True),
    "huge": ([("sidecar_shadow_errors_total", "too_large")], True),
    "drip": ([("sidecar_shadow_timeouts_total", None)], False),
    "stall": ([("sidecar_shadow_errors_total", "memory_budget")], False),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_misbehaving_shadow_leaves_the_primary_untouched_and_memory_bounded(harness: Harness, kind: str) -> None:
    harness.shadow(kind)
    ok, wrong = asyncio.run(load(harness.process.http, TRAFFIC_SECS, harness.expected))
    assert wrong == [], f"the primary's clients saw {len(wrong)} failures with the {kind} shadow: {wrong[:3]}"
    assert ok >= 20, f"only {ok} requests answered in {TRAFFIC_SECS}s"
    counters, rests = EXPECTED[kind]

    def value(metrics: dict, name: str, reason: str | None) -> float:
        labels = {"shadow": kind, **({"reason": reason} if reason else {})}
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    for name, reason in counters:  # timeouts come a second after the copies that cause them
        def counted(name: str = name, reason: str | None = reason) -> bool:
            return value(scrape(harness.process.metrics), name, reason) > 0
        wait_until(counted, 5, f"{name}{{reason={reason}}} for the {kind} shadow")
    metrics = scrape(harness.process.metrics)
    sent = value(metrics, "sidecar_shadow_requests_total", None) or sum(
        v for (n, labels), v in metrics.items() if n == "sidecar_shadow_requests_total" and ("shadow", kind) in labels)
    assert sent > 0
    skipped = value(metrics, "sidecar_shadow_skipped_total", "unreachable")
    if rests:  # the back-off engaged: copies stopped once it kept failing, under load
        assert skipped > 0, f"the {kind} shadow was never rested after {FAILURES_TO_REST} failures in a row"
        assert sent < ok, f"{sent} copies sent to a failing shadow for {ok} requests: no back-off"
        if kind in ("refuse", "reset"):  # failing at once: once it rests, one probe per rest and no more
            # The copies in flight when the rest began depend on the machine's pace (they outlive
            # the primary's answers); what is sent after it does not. It is resting now: another
            # second of traffic may see at most one rest end (rests are >= 1 s past the 6th
            # failure), so one probe, and one more for a rest that was about to end.
            more, wrong = asyncio.run(load(harness.process.http, 1.0, harness.expected))
            assert wrong == [] and more >= 10
            now = scrape(harness.process.metrics)
            again = value(now, "sidecar_shadow_requests_total", None) or sum(
                v for (n, labels), v in now.items()
                if n == "sidecar_shadow_requests_total" and ("shadow", kind) in labels)
            assert again - sent <= 2, f"{again - sent} copies sent in 1 s to a resting shadow: more than a probe a rest"
    elif kind == "error500":
        assert skipped == 0, "a shadow that answers (even 500) must not be rested"
    held = metrics[("sidecar_shadow_memory_bytes", ())]
    assert held <= 32 * 1024 * 1024
    # Every copy gives back what it held once it ends (within the 1 s timeout): nothing leaks from the budget.
    wait_until(lambda: scrape(harness.process.metrics)[("sidecar_shadow_memory_bytes", ())] == 0, 5,
               "the copies' memory to be given back")
    peak = memory(harness.process.process.pid)["VmHWM"]
    assert peak - harness.baseline < RSS_GROWTH, (
        f"the sidecar's peak RSS grew {(peak - harness.baseline) / 2**20:.0f} MiB with the {kind} shadow")
