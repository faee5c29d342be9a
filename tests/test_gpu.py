"""The device path on a real GPU (marked `gpu`; skipped where torch sees no CUDA device).

benchmarks/gpu_check.sh runs these on a GPU host. Each test checks what its name says
directly: the handlers of tests/gpu_handlers.py record, per predict call, what they saw on
the device, and the tests read those records, serve's /metrics and torch's memory counters.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import EXAMPLES, RunningServer
from .gpu_handlers import NO_WARMUP, MiB, calls, host_buffers, infer, parameter, reference, scrape, square, weight

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_classifier_on_the_gpu_matches_the_cpu_through_pinned_buffers() -> None:
    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    gpu = RunningServer(EXAMPLES, device="cuda")
    try:
        on_gpu = infer_classifier(gpu, x)
        assert gpu.server.repository is not None  # a started server has its repository
        instance = gpu.server.repository.get("classifier").instances[0]
        assert instance.device.type == "cuda"
        pools = host_buffers(instance.executor)
        staged = {name: tensor for pool in pools for name, tensor in pool._buffers.items()}  # private: looked inside
        assert {"INPUT__0", "OUTPUT__0"} <= set(staged), staged.keys()  # inputs and outputs both went through them
        assert all(tensor.is_pinned() for tensor in staged.values()), {n: t.is_pinned() for n, t in staged.items()}
    finally:
        gpu.stop()
    cpu = RunningServer(EXAMPLES, device="cpu")
    try:
        on_cpu = infer_classifier(cpu, x)
    finally:
        cpu.stop()
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)


def infer_classifier(server: RunningServer, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.url)
    inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("classifier", [inp]).as_numpy("OUTPUT__0")


def test_cuda_graphs_keep_the_answers(tmp_path: Path) -> None:
    square(tmp_path, "plain")
    square(tmp_path, "graphs", parameter("cuda_graphs", "true"))
    server = RunningServer(tmp_path, device="cuda")
    try:
        for rows in (1, 3, 16):  # 3 pads up to the next captured bucket
            x = np.random.default_rng(rows).normal(size=(rows, 256)).astype(np.float32)
            expected = reference(x)
            np.testing.assert_allclose(infer(server, "plain", x), expected, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(infer(server, "graphs", x), expected, rtol=1e-3, atol=1e-3)
        assert server.server.repository is not None  # a started server has its repository
        graphs = server.server.repository.get("graphs").instances[0].executor.graphs
        assert set(graphs) >= {1, 16}
    finally:
        server.stop()


def test_fp16_autocast_runs_predict_in_half_precision(tmp_path: Path) -> None:
    # Output declared FP16: without autocast the product is float32 and serve refuses it (a 500).
    square(tmp_path, "half", parameter("precision", "fp16") + " " + NO_WARMUP, output="TYPE_FP16")
    server = RunningServer(tmp_path, device="cuda")
    try:
        for rows in (1, 3, 16):
            x = np.random.default_rng(rows).normal(size=(rows, 256)).astype(np.float32)
            served = infer(server, "half", x)
            assert served.dtype == np.float16
            # what fp16 gives: inputs and weight rounded to half, the product rounded to half
            halved = torch.from_numpy(x).half().double() @ weight().half().double()
            np.testing.assert_allclose(served.astype(np.float64), halved.half().double().numpy(), rtol=5e-3, atol=5e-2)
        seen = calls(server, "half")
        assert [c["rows"] for c in seen] == [1, 3, 16]
        assert all(c["dtype"] == torch.float16 for c in seen), [c["dtype"] for c in seen]
    finally:
        server.stop()


def test_instances_on_one_gpu_run_on_their_own_streams_and_overlap(tmp_path: Path) -> None:
    cycles = 200_000_000  # about 0.1-0.2 s of GPU time per batch
    square(tmp_path, "two", f"{parameter('sleep_cycles', cycles)} {parameter('timed', 'true')} {NO_WARMUP}"
                            " instance_group [ { count: 2 kind: KIND_GPU } ]")
    server = RunningServer(tmp_path, device="cuda")
    try:
        async def scenario() -> list[int]:
            async with aiohttp.ClientSession() as session:
                async def one() -> int:  # 16 rows: a full batch each, so the two cannot share one
                    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [16, 256], "data": [0.5] * 4096}]}
                    async with session.post(f"http://{server.url}/v2/models/two/infer", json=body) as response:
                        return response.status
                return list(await asyncio.gather(one(), one()))
        origin = torch.cuda.Event(enable_timing=True)
        origin.record()
        assert asyncio.run(scenario()) == [200, 200]
        torch.cuda.synchronize()
        first, second = calls(server, "two", 0), calls(server, "two", 1)
        assert len(first) == 1 and len(second) == 1, (len(first), len(second))  # each instance took one batch
        assert server.server.repository is not None  # a started server has its repository
        instances = server.server.repository.get("two").instances
        default = torch.cuda.default_stream(instances[0].device)
        streams = [first[0]["stream"], second[0]["stream"]]
        assert streams[0] != streams[1]
        assert all(s != default and s.cuda_stream != 0 for s in streams), streams
        spans = [(origin.elapsed_time(c["start"]), origin.elapsed_time(c["end"])) for c in (first[0], second[0])]
        overlap = min(end for _, end in spans) - max(start for start, _ in spans)
        shorter = min(end - start for start, end in spans)
        assert overlap > 0.5 * shorter, spans  # on the GPU's own clock the two sleeps ran side by side
    finally:
        server.stop()


def test_unload_returns_the_gpu_memory_to_the_device(tmp_path: Path) -> None:
    square(tmp_path, "big", size=16384)  # a 1 GiB weight, used by warm-up on the instance's stream
    server = RunningServer(tmp_path, device="cuda", model_control_mode="explicit")
    try:
        client = httpclient.InferenceServerClient(server.url, network_timeout=120)
        torch.cuda.empty_cache()  # what earlier tests' servers left cached is not this model's
        allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        client.load_model("big")
        assert torch.cuda.memory_allocated() - allocated >= 1024 * MiB
        assert torch.cuda.memory_reserved() - reserved >= 1024 * MiB
        client.unload_model("big")
        # serve itself must give the cache back (nvidia-smi and other processes see reserved memory);
        # the slack covers the cuBLAS workspaces torch keeps per stream (32 MiB on Hopper)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = (torch.cuda.memory_allocated() - allocated, torch.cuda.memory_reserved() - reserved)
            if max(left) < 128 * MiB:
                break
            time.sleep(0.05)
        assert max(left) < 128 * MiB, f"still held after unload: allocated +{left[0]}, reserved +{left[1]} bytes"
    finally:
        server.stop()


def test_real_out_of_memory_splits_the_shared_batch(tmp_path: Path) -> None:
    # 7 rows are a preferred size: the four requests (1 + 1 + 4 + 1 rows) wait up to 5 s for each other
    square(tmp_path, "hungry", f"{parameter('grab_fraction_per_row', 0.3)} {NO_WARMUP}",
           batching="preferred_batch_size: [ 7 ] max_queue_delay_microseconds: 5000000")
    server = RunningServer(tmp_path, device="cuda")
    sizes = (1, 1, 4, 1)
    inputs = [np.random.default_rng(i).normal(size=(rows, 256)).astype(np.float32) for i, rows in enumerate(sizes)]
    try:
        async def scenario() -> list[tuple[int, Any]]:
            async with aiohttp.ClientSession() as session:
                async def one(x: np.ndarray) -> tuple[int, Any]:
                    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": list(x.shape),
                                        "data": x.reshape(-1).tolist()}]}
                    async with session.post(f"http://{server.url}/v2/models/hungry/infer", json=body) as response:
                        return response.status, await response.json()
                return await asyncio.gather(*(one(x) for x in inputs))
        answers = asyncio.run(scenario())
        assert [status for status, _ in answers] == [200, 200, 503, 200], answers[2]  # 4 rows need 120%: only it fails
        for (_, body), x in zip(answers, inputs, strict=True):
            if x.shape[0] == 1:
                served = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(x.shape)
                np.testing.assert_allclose(served, reference(x), rtol=1e-3, atol=1e-3)
        rows = [c["rows"] for c in calls(server, "hungry")]
        assert rows[0] == 7 and all(r < 7 for r in rows[1:]), rows  # one shared batch first, then its parts
        assert scrape(server, "serving_out_of_memory_total", model="hungry", outcome="split") >= 1
        assert scrape(server, "serving_out_of_memory_total", model="hungry", outcome="failed") == 1
    finally:
        server.stop()
        torch.cuda.empty_cache()  # leave no 40 GB blocks cached for the tests after this one


def test_gpu_metrics_are_exported(tmp_path: Path) -> None:
    pytest.importorskip("pynvml")
    server = RunningServer(EXAMPLES, device="cuda")
    try:
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read(16 * MiB).decode())}
        for name in ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                     "nv_gpu_power_usage"):
            samples = families[name].samples
            assert samples and all(s.labels["gpu_uuid"].startswith("GPU-") for s in samples), name
        device_total = torch.cuda.get_device_properties(0).total_memory
        totals = [s.value for s in families["nv_gpu_memory_total_bytes"].samples]
        assert any(abs(total - device_total) < 0.05 * device_total for total in totals), (totals, device_total)
        allocated = families["serving_gpu_torch_allocated_bytes"].samples
        assert any(s.labels["device"] == "cuda:0" and s.value > 0 for s in allocated)  # the classifier's weights
    finally:
        server.stop()
