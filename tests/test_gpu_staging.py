"""Staged batches on a real GPU (marked `gpu`; skipped where torch sees no CUDA device).

A batch handed to an instance while it computes another is staged: its inputs copied on
the instance's copy stream into a second set of pinned buffers, the compute stream waiting
for that copy. These tests check the answers where a missing wait or a buffer reused too
early would corrupt them, and that a request that times out while staged is left out.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch

from .conftest import RunningServer, write_model
from .gpu_handlers import MEAN, NO_WARMUP, calls, parameter, reference, scrape, square

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_staged_batches_are_copied_before_they_compute(tmp_path: Path) -> None:
    write_model(tmp_path, "mean", """
        backend: "python"
        max_batch_size: 8
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 524288 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 256 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 20000 }
        """, {1: {"model.py": MEAN}})  # 2 MiB per row: a batch's copy outlasts its compute many times
    server = RunningServer(tmp_path, device="cuda")
    rng = np.random.default_rng(7)
    requests = [rng.standard_normal((int(rng.integers(1, 5)), 524288), dtype=np.float32) for _ in range(64)]
    try:
        import tritonclient.http.aio as aioclient

        async def scenario() -> list[np.ndarray]:
            client = aioclient.InferenceServerClient(server.url, conn_limit=16)
            gate = asyncio.Semaphore(16)

            async def one(x: np.ndarray) -> np.ndarray:
                inp = aioclient.InferInput("X", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                async with gate:
                    result = await client.infer("mean", [inp],
                                                outputs=[aioclient.InferRequestedOutput("Y", binary_data=True)])
                return result.as_numpy("Y")
            try:
                return await asyncio.gather(*(one(x) for x in requests))
            finally:
                await client.close()
        batches = scrape(server, "serving_batch_size_count", model="mean")
        answers = asyncio.run(scenario())
        for x, served in zip(requests, answers, strict=True):
            np.testing.assert_allclose(served, x.reshape(-1, 2048, 256).mean(axis=1, dtype=np.float64),
                                       rtol=1e-4, atol=1e-5)
        rows = sum(x.shape[0] for x in requests)
        executed = scrape(server, "serving_batch_size_count", model="mean") - batches
        assert executed < len(requests), executed  # requests shared batches: they queued behind running ones
        assert scrape(server, "serving_batch_size_sum", model="mean") >= rows
        assert server.server.repository is not None  # a started server has its repository
        device = str(server.server.repository.get("mean").instances[0].device)
        assert scrape(server, "serving_instance_busy_seconds_total", model="mean", instance="0", device=device) > 0
    finally:
        server.stop()


def test_a_staged_request_that_times_out_is_left_out_and_the_next_batch_stages_behind(tmp_path: Path) -> None:
    square(tmp_path, "slow", f"{parameter('sleep_cycles', 600_000_000)} {NO_WARMUP}",  # about 0.3 s a batch
           batching="default_queue_policy { allow_timeout_override: true }")
    server = RunningServer(tmp_path, device="cuda")
    assert server.server.repository is not None  # a started server has its repository
    batcher = server.server.repository.get("slow").batcher
    assert batcher is not None
    data = {name: np.random.default_rng(i).normal(size=(rows, 256)).astype(np.float32)
            for i, (name, rows) in enumerate((("running", 16), ("kept", 8), ("late", 8), ("next", 16)))}
    try:
        async def scenario() -> dict[str, tuple[int, Any]]:
            async with aiohttp.ClientSession() as session:
                async def one(name: str, **parameters: int) -> tuple[int, Any]:
                    x = data[name]
                    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                                        "data": x.reshape(-1).tolist()}], "parameters": parameters}
                    async with session.post(f"http://{server.url}/v2/models/slow/infer", json=body) as response:
                        return response.status, await response.json()

                async def until(condition: Any) -> None:
                    deadline = time.monotonic() + 10
                    while not condition():
                        assert time.monotonic() < deadline, "the scenario did not reach its next step"
                        await asyncio.sleep(0.002)
                running = asyncio.create_task(one("running"))  # a full batch: it computes at once
                await until(lambda: len(calls(server, "slow")) == 1)
                kept = asyncio.create_task(one("kept"))  # half a batch: it waits, the instance is busy
                await until(lambda: batcher.pending == 1)
                # the other half completes the batch, which is staged behind the running one; this
                # request's 50 ms run out while it is staged, long before the running batch ends
                late = await one("late", timeout=50_000)
                assert not running.done(), "the running batch ended before the staged request timed out"
                # a full batch: it waits for room (one running, one staged), then is staged and copied
                # while "kept" computes, and computes from its staged inputs once that ends
                following = asyncio.create_task(one("next"))
                answers = await asyncio.gather(running, kept, following)
                return {"late": late, **dict(zip(("running", "kept", "next"), answers, strict=True))}
        answers = asyncio.run(scenario())
        assert answers["late"][0] == 503 and "timed out" in answers["late"][1]["error"], answers["late"]
        for name in ("running", "kept", "next"):
            status, body = answers[name]
            assert status == 200, body
            served = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(data[name].shape)
            np.testing.assert_allclose(served, reference(data[name]), rtol=1e-3, atol=1e-3)
        assert [c["rows"] for c in calls(server, "slow")] == [16, 8, 16]  # the staged batch ran without it
    finally:
        server.stop()


def test_a_batch_that_fails_leaves_the_one_staged_behind_it_whole(tmp_path: Path) -> None:
    square(tmp_path, "fragile", f"{parameter('sleep_cycles', 600_000_000)} {parameter('fail_marker', 12345)} "
                                f"{NO_WARMUP}")  # about 0.3 s a batch, then the marked one fails
    server = RunningServer(tmp_path, device="cuda")
    failing = np.random.default_rng(1).normal(size=(16, 256)).astype(np.float32)
    failing[0, 0] = 12345
    staged = np.random.default_rng(2).normal(size=(16, 256)).astype(np.float32)
    try:
        async def scenario() -> list[tuple[int, Any]]:
            async with aiohttp.ClientSession() as session:
                async def one(x: np.ndarray) -> tuple[int, Any]:
                    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                                        "data": x.reshape(-1).tolist()}]}
                    async with session.post(f"http://{server.url}/v2/models/fragile/infer", json=body) as response:
                        return response.status, await response.json()
                first = asyncio.create_task(one(failing))
                deadline = time.monotonic() + 10
                while not calls(server, "fragile"):  # the failing batch is computing
                    assert time.monotonic() < deadline, "the first batch never started"
                    await asyncio.sleep(0.002)
                second = asyncio.create_task(one(staged))  # staged while the first one computes
                return list(await asyncio.gather(first, second))
        (status, body), (staged_status, staged_body) = asyncio.run(scenario())
        assert status == 500 and "marker row" in body["error"], body
        assert staged_status == 200, staged_body
        served = np.asarray(staged_body["outputs"][0]["data"], dtype=np.float32).reshape(staged.shape)
        np.testing.assert_allclose(served, reference(staged), rtol=1e-3, atol=1e-3)
        assert [c["rows"] for c in calls(server, "fragile")] == [16, 16]
    finally:
        server.stop()
