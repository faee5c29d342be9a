"""The device path on a real GPU (marked `gpu`; skipped where torch sees no CUDA device).

benchmarks/gpu_check.sh runs these on a GPU host."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from .conftest import EXAMPLES, RunningServer, write_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SQUARE = '''
import torch
import serving


class Square(serving.Model):
    """Y = X @ W with a weight matrix on the device; sleeps on the GPU when asked to."""

    def load(self):
        size = int(self.parameters.get("size", "256"))
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(size, size, generator=generator).to(self.device)
        self.sleep_cycles = int(self.parameters.get("sleep_cycles", "0"))
        self.grab = float(self.parameters.get("grab_fraction_per_row", "0"))

    def predict(self, inputs):
        x = inputs["X"]
        assert x.device == self.device
        if self.grab:
            total = torch.cuda.get_device_properties(self.device).total_memory
            held = torch.empty(int(total * self.grab * x.shape[0]), dtype=torch.uint8, device=self.device)
            del held
        if self.sleep_cycles:
            torch.cuda._sleep(self.sleep_cycles)
        return {"Y": x @ self.weight}
'''


def square(repo: Path, name: str, extra: str = "", size: int = 256) -> None:
    write_model(repo, name, f"""
        backend: "python"
        max_batch_size: 16
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ {size} ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ {size} ] }} ]
        dynamic_batching {{ }}
        parameters {{ key: "size" value {{ string_value: "{size}" }} }}
        {extra}
        """, {1: {"model.py": SQUARE}})


def infer(server: RunningServer, name: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.url)
    inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(name, [inp]).as_numpy("Y")


def reference(x: np.ndarray, size: int = 256) -> np.ndarray:
    weight = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    return (torch.from_numpy(x).double() @ weight.double()).float().numpy()


def test_classifier_on_the_gpu_matches_the_cpu() -> None:
    x = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    gpu = RunningServer(EXAMPLES, device="cuda")
    try:
        on_gpu = infer_classifier(gpu, x)
        assert gpu.server.repository is not None  # a started server has its repository
        instance = gpu.server.repository.get("classifier").instances[0]
        assert instance.device.type == "cuda"
        assert instance.executor.inputs is not None
        staged = instance.executor.inputs._buffers["INPUT__0"]  # the pool is private: the test looks inside
        assert staged.is_pinned()
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


def test_options_keep_the_answers(tmp_path: Path) -> None:
    square(tmp_path, "plain")
    square(tmp_path, "graphs", 'parameters { key: "cuda_graphs" value { string_value: "true" } }')
    square(tmp_path, "half", 'parameters { key: "precision" value { string_value: "fp16" } }')
    server = RunningServer(tmp_path, device="cuda")
    try:
        for rows in (1, 3, 16):  # 3 pads up to the next captured bucket
            x = np.random.default_rng(rows).normal(size=(rows, 256)).astype(np.float32)
            expected = reference(x)
            np.testing.assert_allclose(infer(server, "plain", x), expected, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(infer(server, "graphs", x), expected, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(infer(server, "half", x), expected, rtol=2e-2, atol=0.5)
        assert server.server.repository is not None  # a started server has its repository
        graphs = server.server.repository.get("graphs").instances[0].executor.graphs
        assert set(graphs) >= {1, 16}
    finally:
        server.stop()


def test_instances_on_one_gpu_overlap_on_their_own_streams(tmp_path: Path) -> None:
    cycles = 200_000_000  # about 0.1-0.2 s of GPU time per batch
    square(tmp_path, "one", f'parameters {{ key: "sleep_cycles" value {{ string_value: "{cycles}" }} }}'
                             ' parameters { key: "warmup" value { string_value: "false" } }')
    square(tmp_path, "two", f'parameters {{ key: "sleep_cycles" value {{ string_value: "{cycles}" }} }}'
                             ' parameters { key: "warmup" value { string_value: "false" } }'
                             ' instance_group [ { count: 2 kind: KIND_GPU } ]')
    server = RunningServer(tmp_path, device="cuda")
    try:
        def elapsed(name: str) -> float:
            async def scenario() -> float:
                async with aiohttp.ClientSession() as session:
                    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 256], "data": [0.0] * 256}]}
                    started = time.monotonic()
                    await asyncio.gather(*(session.post(f"http://{server.url}/v2/models/{name}/infer", json=body)
                                           for _ in range(2)))
                    return time.monotonic() - started
            return asyncio.run(scenario())
        elapsed("one"), elapsed("two")  # first calls pay one-time costs
        assert elapsed("two") < 0.75 * elapsed("one")  # two streams run side by side; one instance runs them in turn
    finally:
        server.stop()


def test_unload_returns_the_gpu_memory(tmp_path: Path) -> None:
    square(tmp_path, "big", size=8192)  # a 256 MiB weight
    server = RunningServer(tmp_path, device="cuda", model_control_mode="explicit")
    try:
        client = httpclient.InferenceServerClient(server.url)
        baseline = torch.cuda.memory_allocated()
        client.load_model("big")
        assert torch.cuda.memory_allocated() - baseline >= 256 * 2**20
        client.unload_model("big")
        assert torch.cuda.memory_allocated() - baseline < 16 * 2**20
    finally:
        server.stop()


def test_real_out_of_memory_is_split(tmp_path: Path) -> None:
    square(tmp_path, "hungry", 'parameters { key: "grab_fraction_per_row" value { string_value: "0.3" } }'
                                ' parameters { key: "warmup" value { string_value: "false" } }')
    server = RunningServer(tmp_path, device="cuda")
    try:
        async def scenario() -> list[int]:
            async with aiohttp.ClientSession() as session:
                async def one(rows: int) -> int:
                    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [rows, 256],
                                        "data": [0.0] * 256 * rows}]}
                    async with session.post(f"http://{server.url}/v2/models/hungry/infer", json=body) as response:
                        return response.status
                return await asyncio.gather(*(one(rows) for rows in (1, 1, 4, 1)))
        statuses = asyncio.run(scenario())
        assert statuses.count(200) == 3 and statuses[2] == 503  # 4 rows need 120% of the GPU: only it fails
    finally:
        server.stop()


def test_gpu_metrics_are_exported(tmp_path: Path) -> None:
    pytest.importorskip("pynvml")
    server = RunningServer(EXAMPLES, device="cuda")
    try:
        async def text() -> str:
            async with aiohttp.ClientSession() as session:
                async with session.get(server.metrics_url) as response:
                    return await response.text()
        metrics = asyncio.run(text())
        for name in ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                     "nv_gpu_power_usage"):
            assert re.search(rf'^{name}{{gpu_uuid="GPU-[^"]+"}} ', metrics, re.M), name
        assert re.search(r'^serving_gpu_torch_allocated_bytes\{device="cuda:0"\} ', metrics, re.M)
    finally:
        server.stop()
