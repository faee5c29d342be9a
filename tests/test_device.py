"""The device path on a machine without a GPU: placement, staging buffers, OOM splitting,
warm-up, precision, compile and CUDA-graph options. (tests/test_gpu.py runs on GPUs.)"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest
import torch
import tritonclient.http as httpclient

from serving.config import ModelSpec, parse_config
from serving.device import HostBuffers, Placement
from serving.errors import ConfigError

from .conftest import RunningServer, write_model


def spec_with(groups: str) -> ModelSpec:
    return parse_config(f"""
        backend: "python"
        max_batch_size: 4
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        {groups}
        """, Path("m"))


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Placement only asks torch how many GPUs it sees; pretend it sees two."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def names(devices: list[torch.device]) -> list[str]:
    return [str(d) for d in devices]


def test_placement_follows_instance_groups_as_triton(two_gpus: None) -> None:
    auto = Placement("auto")
    assert names(auto.devices(spec_with(""))) == ["cuda:0", "cuda:1"]  # KIND_AUTO: one per GPU
    assert names(auto.devices(spec_with("instance_group [ { count: 2 kind: KIND_GPU } ]"))) == \
        ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert names(auto.devices(spec_with("instance_group [ { count: 1 kind: KIND_GPU gpus: [ 1 ] }, "
                                        "{ count: 2 kind: KIND_CPU } ]"))) == ["cuda:1", "cpu", "cpu"]
    assert names(Placement("cuda:1").devices(spec_with(""))) == ["cuda:1"]
    assert names(Placement("cpu").devices(spec_with("instance_group [ { kind: KIND_AUTO } ]"))) == ["cpu"]
    with pytest.raises(ConfigError, match=r"GPU\(s\) \[3\] but only 2 are visible"):
        auto.devices(spec_with("instance_group [ { kind: KIND_GPU gpus: [ 3 ] } ]"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_gpu_instances_fall_back_to_the_cpu_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        devices = Placement("auto").devices(spec_with("instance_group [ { count: 2 kind: KIND_GPU } ]"))
    assert names(devices) == ["cpu", "cpu"]
    warnings = [r for r in caplog.records if "KIND_GPU" in r.getMessage()]
    assert len(warnings) == 1 and "no GPU is visible" in warnings[0].getMessage()


def test_staging_buffers_are_reused_and_pinned_only_with_cuda() -> None:
    buffers = HostBuffers()
    assert buffers.pin == torch.cuda.is_available()
    first = buffers.stage("x", [np.ones((2, 3), np.float32), np.zeros((1, 3), np.float32)])
    assert first.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    second = buffers.stage("x", [np.full((2, 3), 7, np.float32)])
    assert np.shares_memory(first, second) and buffers.allocations == 1  # same memory, nothing allocated
    bigger = buffers.stage("x", [np.ones((10, 3), np.float32)])
    assert buffers.allocations == 2 and bigger.shape == (10, 3)
    buffers.stage("x", [np.ones((4, 3), np.float32)])
    assert buffers.allocations == 2


def post(url: str, rows: int, value: float = 1.0) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        body = orjson.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [rows, 1],
                                         "data": [value] * rows}]})
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body) as response:
                return response.status, orjson.loads(await response.read())
    return asyncio.run(go())


OOM = '''
import threading
import torch
import serving


class Hungry(serving.Model):
    """Runs out of 'GPU memory' on batches of more than 2 rows; waits for a gate first."""

    def load(self):
        self.gate = threading.Event()

    def predict(self, inputs):
        x = inputs["X"]
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"Y": x + 1}
'''


def test_out_of_memory_splits_the_batch_and_fails_only_a_request_too_big_alone(tmp_path: Path) -> None:
    write_model(tmp_path, "hungry", """
        backend: "python"
        max_batch_size: 8
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 200000 }
        parameters { key: "warmup" value { string_value: "false" } }
        """, {1: {"model.py": OOM}})
    server = RunningServer(tmp_path)
    try:
        url = f"http://{server.url}/v2/models/hungry/infer"

        async def scenario() -> list[tuple[int, dict]]:
            loop = asyncio.get_running_loop()
            # four 1-row requests and one 3-row request land in one batch of 7 rows
            return await asyncio.gather(*(loop.run_in_executor(None, post, url, rows, float(i))
                                          for i, rows in enumerate([1, 1, 3, 1, 1])))

        results = asyncio.run(scenario())
        statuses = [status for status, _ in results]
        assert statuses == [200, 200, 503, 200, 200]
        assert "out of GPU memory on this request alone (3 rows)" in results[2][1]["error"]
        assert [body["outputs"][0]["data"] for status, body in results if status == 200] == \
            [[1.0], [2.0], [4.0], [5.0]]
        metrics = asyncio.run(_text(server.metrics_url))
        assert re.search(r'serving_out_of_memory_total\{model="hungry",outcome="failed",version="1"\} 1\.0', metrics)
        split = re.search(r'serving_out_of_memory_total\{model="hungry",outcome="split",version="1"\} (\S+)', metrics)
        assert split and float(split.group(1)) >= 1
        assert post(url, 2)[0] == 200  # still serving
    finally:
        server.stop()


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            return await response.text()


RECORDER = '''
import torch
import serving


class Recorder(serving.Model):
    """Logs every batch it sees: shape, values, autocast state; fails on request."""

    def predict(self, inputs):
        x = inputs["X"]
        if (x == -1).any():
            raise ValueError("this warm-up sample is not acceptable")
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        with open(self.parameters["log"], "a") as log:
            log.write(f"{list(x.shape)} {x.reshape(-1)[:2].tolist()} bf16={autocast}\\n")
        y = (x @ torch.ones(x.shape[1], 1)).float()
        return {"Y": y}
'''


def recorder(repo: Path, name: str, log: Path, extra: str, source: str = RECORDER) -> None:
    write_model(repo, name, f"""
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "log" value {{ string_value: "{log}" }} }}
        {extra}
        """, {1: {"model.py": source}})


def test_warm_up_runs_before_readiness(tmp_path: Path) -> None:
    repo, logs = tmp_path / "repo", tmp_path / "logs"
    logs.mkdir()
    recorder(repo, "auto", logs / "auto.log", "dynamic_batching { preferred_batch_size: [ 4 ] }")
    recorder(repo, "explicit", logs / "explicit.log", """
        model_warmup [
          { name: "zeros" batch_size: 3
            inputs { key: "X" value { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } },
          { name: "file" batch_size: 1 count: 2
            inputs { key: "X" value { data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "x.bin" } } }
        ]""")
    (repo / "explicit" / "warmup").mkdir()
    (repo / "explicit" / "warmup" / "x.bin").write_bytes(np.array([5.0, 6.0], np.float32).tobytes())
    recorder(repo, "bad_sample", logs / "bad.log", """
        model_warmup [ { name: "bad" batch_size: 1
          inputs { key: "X" value { data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "missing.bin" } } } ]""")
    recorder(repo, "off", logs / "off.log", 'parameters { key: "warmup" value { string_value: "false" } }')
    server = RunningServer(repo)
    try:
        assert (logs / "auto.log").read_text().splitlines() == \
            ["[1, 2] [0.0, 0.0] bf16=False", "[4, 2] [0.0, 0.0] bf16=False", "[8, 2] [0.0, 0.0] bf16=False"]
        assert (logs / "explicit.log").read_text().splitlines() == \
            ["[3, 2] [0.0, 0.0] bf16=False", "[1, 2] [5.0, 6.0] bf16=False", "[1, 2] [5.0, 6.0] bf16=False"]
        assert not (logs / "off.log").exists()
        assert server.server.repository is not None  # a started server has its repository
        index = {row["name"]: row for row in server.server.repository.index()}
        assert index["bad_sample"]["state"] == "UNAVAILABLE" and "missing.bin" in index["bad_sample"]["reason"]
        assert index["auto"]["state"] == index["explicit"]["state"] == "READY"
    finally:
        server.stop()


def test_a_failing_automatic_warm_up_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fails = RECORDER.replace('(x == -1).any()', '(x == 0).all()')
    write_model(tmp_path, "picky", f"""
        backend: "python"
        max_batch_size: 2
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "log" value {{ string_value: "{tmp_path / 'picky.log'}" }} }}
        """, {1: {"model.py": fails}})
    with caplog.at_level(logging.WARNING):
        server = RunningServer(tmp_path)
    try:
        assert httpclient.InferenceServerClient(server.url).is_model_ready("picky")
        assert any("warm-up of picky" in r.getMessage() and "serves anyway" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


def test_bf16_autocast_torch_compile_and_cuda_graphs_options_on_cpu(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    off = 'parameters { key: "warmup" value { string_value: "false" } }'
    recorder(tmp_path / "repo", "bf16", logs / "bf16.log",
             off + ' parameters { key: "precision" value { string_value: "bf16" } }')
    # its predict returns autocast's bfloat16 as it is: served as the FP32 the config declares
    recorder(tmp_path / "repo", "bf16_raw", logs / "bf16_raw.log",
             off + ' parameters { key: "precision" value { string_value: "bf16" } }',
             RECORDER.replace("(x @ torch.ones(x.shape[1], 1)).float()", "x @ torch.ones(x.shape[1], 1)"))
    recorder(tmp_path / "repo", "compiled", logs / "compiled.log", off + """
        parameters { key: "torch_compile" value { string_value: "default" } }
        parameters { key: "torch_compile_backend" value { string_value: "eager" } }""")
    recorder(tmp_path / "repo", "graphs", logs / "graphs.log",
             off + ' parameters { key: "cuda_graphs" value { string_value: "true" } }')
    with caplog.at_level(logging.WARNING):
        server = RunningServer(tmp_path / "repo")
    try:
        client = httpclient.InferenceServerClient(server.url)
        x = np.array([[1.0, 2.0]], np.float32)
        for name in ("bf16", "bf16_raw", "compiled", "graphs"):
            inp = httpclient.InferInput("X", [1, 2], "FP32")
            inp.set_data_from_numpy(x)
            y = client.infer(name, [inp]).as_numpy("Y")
            assert y.dtype == np.float32 and y.tolist() == [[3.0]], name
        assert (logs / "bf16.log").read_text().strip().endswith("bf16=True")
        assert (logs / "bf16_raw.log").read_text().strip().endswith("bf16=True")
        assert (logs / "graphs.log").read_text().strip().endswith("bf16=False")
        assert server.server.repository is not None  # a started server has its repository
        compiled = server.server.repository.get("compiled").instances[0]
        assert compiled.executor.predict is not compiled.handler.predict
        assert any("cuda_graphs needs a GPU instance" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


def test_invalid_execution_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="precision is 'fp8'"):
        spec_with('parameters { key: "precision" value { string_value: "fp8" } }')
    with pytest.raises(ConfigError, match="torch_compile is 'fast'"):
        spec_with('parameters { key: "torch_compile" value { string_value: "fast" } }')


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_metrics_are_absent_without_a_gpu(examples_server: RunningServer) -> None:
    text = asyncio.run(_text(examples_server.metrics_url))
    assert "nv_inference_count" in text and "nv_gpu_" not in text and "serving_gpu_torch" not in text
