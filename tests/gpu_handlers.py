"""The GPU tests' handlers and helpers (tests/test_gpu.py, tests/test_gpu_staging.py).

The handlers record, per predict call, what they saw on the device (rows, the stream they
ran on, the dtype of their product, CUDA events around their work); the helpers read those
records, serve's /metrics and the executor's staging buffers. Without a GPU the handlers run
on the CPU too (sleeps become host sleeps, ``oom_above_rows`` raises torch's out-of-memory
error), which is how their flows are checked on a machine without one.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from serving.device import HostBuffers

from .conftest import RunningServer, write_model

MiB = 2**20

SQUARE = '''
import time

import torch
import serving


class Square(serving.Model):
    """Y = X @ W with a weight matrix on the device; records what each call saw, for the tests."""

    def load(self):
        size = int(self.parameters.get("size", "256"))
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.randn(size, size, generator=generator).to(self.device)
        self.sleep_cycles = int(self.parameters.get("sleep_cycles", "0"))
        self.grab = float(self.parameters.get("grab_fraction_per_row", "0"))
        self.timed = self.parameters.get("timed", "false") == "true"
        self.oom_above = int(self.parameters.get("oom_above_rows", "0"))  # the same split without a GPU
        marker = self.parameters.get("fail_marker")  # X[0, 0] that makes predict fail
        self.fail_marker = None if marker is None else float(marker)
        self.cuda = self.device.type == "cuda"
        self.calls = []  # one dict per predict call, appended on the instance thread

    def predict(self, inputs):
        x = inputs["X"]
        assert x.device == self.device
        call = {"rows": x.shape[0], "stream": torch.cuda.current_stream(self.device) if self.cuda else None}
        self.calls.append(call)  # before anything can fail: an out-of-memory call is recorded too
        if self.timed:
            call["start"] = torch.cuda.Event(enable_timing=True)
            call["start"].record()
        if self.grab and self.cuda:  # a real allocation: 4 rows at 0.3 ask for 120% of the GPU
            total = torch.cuda.get_device_properties(self.device).total_memory
            held = torch.empty(int(total * self.grab * x.shape[0]), dtype=torch.uint8, device=self.device)
            del held
        if self.oom_above and x.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError(f"{x.shape[0]} rows are more than {self.oom_above}")
        if self.sleep_cycles:
            torch.cuda._sleep(self.sleep_cycles) if self.cuda else time.sleep(self.sleep_cycles / 2e9)
        if self.fail_marker is not None and float(x[0, 0]) == self.fail_marker:  # a sync: after the sleep ran
            raise RuntimeError("the batch holds the test's marker row")
        y = x @ self.weight
        call["dtype"] = y.dtype  # float16 only when autocast ran around predict
        if self.timed:
            call["end"] = torch.cuda.Event(enable_timing=True)
            call["end"].record()
        return {"Y": y}
'''

MEAN = '''
import torch
import serving


class Mean(serving.Model):
    """Y = the mean of X's 2048 blocks of 256: a large input, a tiny compute, so a copy that compute
    does not wait for (or a staging buffer overwritten too early) shows as a wrong answer."""

    def predict(self, inputs):
        x = inputs["X"]
        return {"Y": x.view(x.shape[0], 2048, 256).mean(dim=1)}
'''


def square(repo: Path, name: str, extra: str = "", size: int = 256, output: str = "TYPE_FP32",
           batching: str = "") -> None:
    write_model(repo, name, f"""
        backend: "python"
        max_batch_size: 16
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ {size} ] }} ]
        output [ {{ name: "Y" data_type: {output} dims: [ {size} ] }} ]
        dynamic_batching {{ {batching} }}
        parameters {{ key: "size" value {{ string_value: "{size}" }} }}
        {extra}
        """, {1: {"model.py": SQUARE}})


def parameter(key: str, value: object) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'


NO_WARMUP = parameter("warmup", "false")


def infer(server: RunningServer, name: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.url)
    inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(name, [inp]).as_numpy("Y")


def weight(size: int = 256) -> torch.Tensor:
    return torch.randn(size, size, generator=torch.Generator().manual_seed(0))


def reference(x: np.ndarray, size: int = 256) -> np.ndarray:
    return (torch.from_numpy(x).double() @ weight(size).double()).float().numpy()


def calls(server: RunningServer, name: str, instance: int = 0) -> list[dict[str, Any]]:
    """What the handler of one instance recorded, one entry per predict call."""
    assert server.server.repository is not None  # a started server has its repository
    handler = server.server.repository.get(name).instances[instance].handler
    recorded: list[dict[str, Any]] = handler.calls  # type: ignore[attr-defined]  # the test handler's own record
    return recorded


def scrape(server: RunningServer, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` in serve's /metrics whose labels include ``labels``."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read(16 * MiB).decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def host_buffers(root: object, depth: int = 4) -> list[HostBuffers]:
    """Every HostBuffers an executor holds, directly or in the serving objects it holds (its staging slots)."""
    found: list[HostBuffers] = []
    seen: set[int] = set()

    def walk(value: object, depth: int) -> None:
        if id(value) in seen or depth < 0:
            return
        seen.add(id(value))
        if isinstance(value, HostBuffers):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item, depth - 1)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, depth - 1)
        elif type(value).__module__.startswith("serving") and hasattr(value, "__dict__"):
            for item in vars(value).values():
                walk(item, depth - 1)

    walk(root, depth)
    return found
