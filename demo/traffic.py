"""The demo's clients: classifier requests over HTTP (aiohttp) and gRPC (tritonclient), with a shift.

Each request carries one point drawn by `examples/make_models.sample`: before the shift the
ten classes are equally likely, after it three of them make up most of the traffic, so the
prediction distribution really moves. Every request has an ``id`` and a user key
(``x-user-id``) that pins the user to the primary or the canary.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import tritonclient.grpc.aio as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import make_models  # the example model's own data generator, from examples/ (on sys.path above)

SHIFTED = np.array([0.3, 0.3, 0.25] + [0.15 / 7] * 7)  # after the shift: classes 0-2 dominate


@dataclasses.dataclass
class Tally:
    """What the clients saw; latencies in seconds since the last `take`."""

    sent: dict[str, int] = dataclasses.field(default_factory=lambda: {"http": 0, "grpc": 0})
    ok: dict[str, int] = dataclasses.field(default_factory=lambda: {"http": 0, "grpc": 0})
    failures: list[str] = dataclasses.field(default_factory=list)
    recent: list[float] = dataclasses.field(default_factory=list)
    shifted_at: float | None = None  # wall-clock time of the shift

    def take(self) -> list[float]:
        taken, self.recent = self.recent, []
        return taken

    @property
    def total_ok(self) -> int:
        return sum(self.ok.values())


class Traffic:
    def __init__(self, http_url: str, grpc_url: str, duration: float, concurrency: int = 8,
                 grpc_share: float = 0.25, shift_at: float = 0.5, seed: int = 7) -> None:
        self.http_url = http_url
        self.grpc_url = grpc_url
        self.duration = duration
        self.concurrency = concurrency
        self.grpc_share = grpc_share
        self.shift_at = shift_at
        self.rng = np.random.default_rng(seed)
        self.tally = Tally()
        self._next_id = 0

    def _point(self, shifted: bool) -> np.ndarray:
        points, _ = make_models.sample(1, self.rng, weights=SHIFTED if shifted else None)
        return points

    async def run(self, stop: asyncio.Event, on_shift: Callable[[], None] | None = None) -> Tally:
        """Send requests until ``duration`` has passed or ``stop`` is set; the shift comes at ``shift_at``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        shift = start + self.duration * self.shift_at
        end = start + self.duration
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency)) as session:
            grpc = grpcclient.InferenceServerClient(self.grpc_url)
            try:
                async def worker(index: int) -> None:
                    while not stop.is_set() and loop.time() < end:
                        shifted = loop.time() >= shift
                        if shifted and self.tally.shifted_at is None:
                            self.tally.shifted_at = time.time()
                            if on_shift is not None:
                                on_shift()
                        use_grpc = self.rng.random() < self.grpc_share
                        await self._one(session, grpc, self._point(shifted), use_grpc, f"user-{index}")

                await asyncio.gather(*(worker(i) for i in range(self.concurrency)))
            finally:
                await grpc.close()
        return self.tally

    async def _one(self, session: aiohttp.ClientSession, grpc: grpcclient.InferenceServerClient, point: np.ndarray,
                   use_grpc: bool, user: str) -> None:
        self._next_id += 1
        request_id = f"demo-{self._next_id}"
        protocol = "grpc" if use_grpc else "http"
        self.tally.sent[protocol] += 1
        started = time.perf_counter()
        try:
            if use_grpc:
                inp = grpcclient.InferInput("INPUT__0", [1, 64], "FP32")
                inp.set_data_from_numpy(point)
                result = await grpc.infer("classifier", [inp], request_id=request_id, headers={"x-user-id": user})
                scores = result.as_numpy("OUTPUT__0")
            else:
                body = orjson.dumps({"id": request_id, "inputs": [{"name": "INPUT__0", "datatype": "FP32",
                                                                   "shape": [1, 64], "data": point.reshape(-1)}]},
                                    option=orjson.OPT_SERIALIZE_NUMPY)
                async with session.post(f"{self.http_url}/v2/models/classifier/infer", data=body,
                                        headers={"x-user-id": user, "content-type": "application/json"}) as response:
                    payload = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
                    scores = np.asarray(orjson.loads(payload)["outputs"][0]["data"])
            if scores.size != 10:
                raise RuntimeError(f"expected 10 class scores, got {scores.size}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported at the end
            self.tally.failures.append(f"{protocol} {request_id}: {type(exc).__name__}: {exc}")
            return
        self.tally.ok[protocol] += 1
        self.tally.recent.append(time.perf_counter() - started)
