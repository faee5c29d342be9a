"""Model control: explicit load/unload, reloads under traffic, polling, memory over cycles."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from .conftest import RunningServer, write_model

VERSIONED = '''
import time
import torch
import serving


class Versioned(serving.Model):
    """Answers its version number; loading takes `load_seconds`."""

    def load(self):
        time.sleep(float(self.parameters.get("load_seconds", "0")))

    def predict(self, inputs):
        return {"Y": torch.full_like(inputs["X"], float(self.version))}
'''


def versioned_model(repo: Path, name: str, versions: list[int], load_seconds: float = 0.0, extra: str = "") -> None:
    write_model(repo, name, f"""
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        dynamic_batching {{ }}
        parameters {{ key: "load_seconds" value {{ string_value: "{load_seconds}" }} }}
        {extra}
        """, {v: {"model.py": VERSIONED} for v in versions})


def answer(client: httpclient.InferenceServerClient, name: str, version: str = "") -> float:
    inp = httpclient.InferInput("X", [1, 1], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
    return float(client.infer(name, [inp], model_version=version).as_numpy("Y")[0, 0])


def index(client: httpclient.InferenceServerClient) -> dict[tuple[str, str], str]:
    return {(row["name"], row.get("version", "")): row["state"] for row in client.get_model_repository_index()}


def test_explicit_mode_loads_only_what_it_is_told(tmp_path: Path) -> None:
    versioned_model(tmp_path, "a", [1])
    versioned_model(tmp_path, "b", [1])
    server = RunningServer(tmp_path, model_control_mode="explicit", load_model=("a",))
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert client.is_server_ready() and client.is_model_ready("a") and not client.is_model_ready("b")
        assert index(client) == {("a", "1"): "READY", ("b", ""): "UNAVAILABLE"}
        client.load_model("b")
        assert answer(client, "b") == 1.0
        client.unload_model("a")
        assert not client.is_model_ready("a")
        assert index(client)[("a", "1")] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException, match="'a' has no available versions"):
            answer(client, "a")
        assert client.is_server_ready()  # unloading a model on purpose leaves the server ready
        with pytest.raises(InferenceServerException, match="failed to load 'nope', failed to poll"):
            client.load_model("nope")
        client.unload_model("nope")  # not loaded is unloaded already, as Triton answers it
        client.unload_model("b")
        client.unload_model("b")  # twice: the same
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
        grpc.unload_model("nope")
        grpc.close()
        assert index(client)[("b", "1")] == "UNAVAILABLE"
    finally:
        server.stop()


def test_load_with_a_config_override(tmp_path: Path) -> None:
    versioned_model(tmp_path, "m", [1, 2])
    server = RunningServer(tmp_path, model_control_mode="explicit", load_model=("*",))
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert client.get_model_metadata("m")["versions"] == ["2"]
        config = client.get_model_config("m")
        config["version_policy"] = {"all": {}}
        config["max_batch_size"] = 4
        client.load_model("m", config=json.dumps(config))
        assert client.get_model_metadata("m")["versions"] == ["1", "2"]
        assert client.get_model_config("m")["max_batch_size"] == 4
        assert answer(client, "m", "1") == 1.0
        with pytest.raises(InferenceServerException, match="not a valid ModelConfig"):
            client.load_model("m", config='{"max_batch_size": "many"}')
        assert answer(client, "m") == 2.0  # a failed reload leaves the model serving
    finally:
        server.stop()


def test_load_and_unload_are_refused_outside_explicit_mode(examples_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(examples_server.url)
    for call in (lambda: client.load_model("classifier"), lambda: client.unload_model("classifier")):
        with pytest.raises(InferenceServerException, match="--model-control-mode explicit"):
            call()
    assert client.is_model_ready("classifier")


def test_server_stays_ready_while_another_model_loads(tmp_path: Path) -> None:
    versioned_model(tmp_path, "fast", [1])
    versioned_model(tmp_path, "slow", [1], load_seconds=1.5)
    server = RunningServer(tmp_path, model_control_mode="explicit", load_model=("fast",))
    try:
        client = httpclient.InferenceServerClient(server.url)

        async def scenario() -> None:
            async with aiohttpclient.InferenceServerClient(server.url) as aclient:
                loading = asyncio.ensure_future(aclient.load_model("slow"))
                await asyncio.sleep(0.5)
                assert await aclient.is_server_ready()
                assert not await aclient.is_model_ready("slow")
                assert (await aclient.get_model_repository_index())[1]["state"] == "LOADING"
                await loading
                assert await aclient.is_model_ready("slow")

        asyncio.run(scenario())
        assert answer(client, "slow") == 1.0
    finally:
        server.stop()


def test_a_new_version_takes_over_under_traffic_without_dropping_a_request(tmp_path: Path) -> None:
    versioned_model(tmp_path, "m", [1], load_seconds=0.5)
    server = RunningServer(tmp_path, model_control_mode="explicit", load_model=("m",))
    try:
        async def scenario() -> tuple[list[tuple[float, float]], float, float]:
            answers: list[tuple[float, float]] = []  # (when the request was sent, the version that answered)
            loop = asyncio.get_running_loop()
            async with aiohttpclient.InferenceServerClient(server.url) as aclient:
                stop = asyncio.Event()

                async def traffic() -> None:
                    inp = aiohttpclient.InferInput("X", [1, 1], "FP32")
                    inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
                    while not stop.is_set():
                        sent = loop.time()
                        result = await aclient.infer("m", [inp])  # raises on any failed request
                        answers.append((sent, float(result.as_numpy("Y")[0, 0])))

                workers = [asyncio.ensure_future(traffic()) for _ in range(8)]
                await asyncio.sleep(0.3)
                shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "2")
                load_started = loop.time()
                await aclient.load_model("m")  # latest 1: version 2 loads (0.5 s), then 1 drains
                load_done = loop.time()
                await asyncio.sleep(0.3)
                stop.set()
                await asyncio.gather(*workers)
                index = {row.get("version"): row["state"] for row in await aclient.get_model_repository_index()}
                assert index == {"1": "UNAVAILABLE", "2": "READY"}
            return answers, load_started, load_done

        answers, load_started, load_done = asyncio.run(scenario())
        assert {v for sent, v in answers if sent < load_started} == {1.0}
        assert {v for sent, v in answers if sent > load_done} == {2.0}
        during = [v for sent, v in answers if load_started <= sent <= load_done]
        assert during.count(1.0) > 5  # the old version kept serving while the new one loaded
    finally:
        server.stop()


def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    versioned_model(tmp_path, "m", [1])
    server = RunningServer(tmp_path, model_control_mode="poll", repository_poll_secs=0.2)
    try:
        client = httpclient.InferenceServerClient(server.url)

        def wait_for(condition: Callable[[], object], what: str) -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if condition():
                    return
                time.sleep(0.05)
            pytest.fail(f"the poller never {what}")

        assert answer(client, "m") == 1.0
        shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "2")
        wait_for(lambda: client.get_model_metadata("m")["versions"] == ["2"], "loaded version 2")
        assert answer(client, "m") == 2.0
        versioned_model(tmp_path, "n", [3])
        wait_for(lambda: client.is_model_ready("n"), "loaded a new model")
        (tmp_path / "m" / "config.pbtxt").write_text("broken {")
        time.sleep(0.6)
        assert answer(client, "m") == 2.0  # a broken edit keeps the last good load serving
        serving_row = next(r for r in client.get_model_repository_index() if r["name"] == "m" and r["version"] == "2")
        assert serving_row["state"] == "READY" and "not a valid ModelConfig" in serving_row["reason"]
        assert client.is_server_ready()
        shutil.rmtree(tmp_path / "n")
        wait_for(lambda: not client.is_model_ready("n"), "unloaded a removed model")
        with pytest.raises(InferenceServerException, match="--model-control-mode explicit"):
            client.load_model("m")
    finally:
        server.stop()


HEAVY = '''
import torch
import serving


class Heavy(serving.Model):
    """Holds 48 MiB from load to unload (above glibc's mmap threshold: freed, it leaves the RSS)."""

    def load(self):
        self.weights = torch.ones(12 * 1024 * 1024)  # every page touched

    def predict(self, inputs):
        return {"Y": inputs["X"] + self.weights[0]}
'''
HEAVY_BYTES = 48 * 1024 * 1024


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to read the resident set size")
def test_unloaded_versions_are_freed_over_load_unload_cycles(tmp_path: Path) -> None:
    """Every unloaded model object is collected, and 20 cycles of a 48 MiB model leave the RSS flat.

    A single leaked handler, instance, batcher or weights tensor fails the weakref check; a
    leak of every load would add 20 x 48 MiB to the resident set. The first load is at
    start-up, whose objects the server freezes out of the collector's sight: it must go too.
    """
    write_model(tmp_path, "heavy", """
        backend: "python"
        max_batch_size: 8
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        dynamic_batching { }
        """, {1: {"model.py": HEAVY}})
    server = RunningServer(tmp_path, model_control_mode="explicit", load_model=("heavy",))
    try:
        client = httpclient.InferenceServerClient(server.url)

        def cycle(load: bool = True) -> list[weakref.ref[Any]]:
            if load:
                client.load_model("heavy")
            assert answer(client, "heavy") == 1.0
            assert server.server.repository is not None  # a started server has its repository
            loaded = server.server.repository.models["heavy"].versions[1]
            refs: list[weakref.ref[Any]] = [weakref.ref(loaded.batcher)]
            for instance in loaded.instances:
                weights = instance.handler.weights  # type: ignore[attr-defined]  # the test model Heavy's own attribute
                refs += [weakref.ref(instance), weakref.ref(instance.handler), weakref.ref(weights)]
            del loaded, instance, weights
            client.unload_model("heavy")
            return refs

        at_start_up = cycle(load=False)
        for _ in range(3):  # warm: allocator pools, imports, first-call caches
            cycle()
        gc.collect()
        baseline = _rss_bytes()
        refs = at_start_up + [ref for _ in range(20) for ref in cycle()]
        deadline = time.monotonic() + 10  # an instance's worker thread lets go as it exits
        while any(ref() is not None for ref in refs) and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        alive = sorted({type(ref()).__name__ for ref in refs if ref() is not None})
        assert not alive, f"unloaded versions are still referenced: {alive}"
        growth = _rss_bytes() - baseline
        assert growth < HEAVY_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB over 20 load/unload cycles"
    finally:
        server.stop()
