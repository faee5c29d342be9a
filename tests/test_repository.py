"""Loading a repository: version policies, readiness while loading, device choice."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import tritonclient.http as httpclient

from serving.errors import ConfigError

from .conftest import RunningServer, Serve, write_model

CONSTANT = '''
import time
import torch
import serving


class Constant(serving.Model):
    def load(self):
        time.sleep(float(self.parameters.get("load_seconds", "0")))

    def predict(self, inputs):
        return {"Y": torch.full_like(inputs["X"], float(self.version))}
'''


def constant_model(repo: Path, name: str, versions: list[int], extra: str = "") -> None:
    write_model(repo, name, f"""
        backend: "python"
        max_batch_size: 2
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        {extra}
        """, {v: {"model.py": CONSTANT} for v in versions})


def version_answering(client: httpclient.InferenceServerClient, name: str, version: str = "") -> float:
    inp = httpclient.InferInput("X", [1, 1], "FP32")
    inp.set_data_from_numpy(torch.zeros(1, 1).numpy())
    return float(client.infer(name, [inp], model_version=version).as_numpy("Y")[0, 0])


def test_version_policies_choose_what_loads(tmp_path: Path) -> None:
    constant_model(tmp_path, "latest", [1, 2, 10])
    constant_model(tmp_path, "two", [1, 2, 3], "version_policy { latest { num_versions: 2 } }")
    constant_model(tmp_path, "pinned", [1, 2, 3], "version_policy { specific { versions: [ 1 ] } }")
    server = RunningServer(tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert client.get_model_metadata("latest")["versions"] == ["10"]  # numeric order, not text
        assert version_answering(client, "latest") == 10.0
        assert not client.is_model_ready("latest", "1")
        assert client.get_model_metadata("two")["versions"] == ["2", "3"]
        assert version_answering(client, "two", "2") == 2.0 and version_answering(client, "two") == 3.0
        assert version_answering(client, "pinned") == 1.0
        with pytest.raises(Exception, match="'pinned' version 3 is not found"):
            version_answering(client, "pinned", "3")
    finally:
        server.stop()


def test_not_ready_until_every_model_has_loaded(tmp_path: Path) -> None:
    constant_model(tmp_path, "slow_load", [1], 'parameters { key: "load_seconds" value { string_value: "1.5" } }')
    serve = Serve(tmp_path, wait_ready=False)  # returns after the "listening" line
    try:
        assert urllib.request.urlopen(serve.http + "/v2/health/live", timeout=5).status == 200
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(serve.http + "/v2/health/ready", timeout=5)
        assert not_ready.value.code == 503
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(serve.http + "/v2/health/ready", timeout=5).status == 200:
                    break
            except urllib.error.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("never became ready")
    finally:
        serve.process.terminate()
        assert serve.finish() == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="torch sees none"):
        RunningServer(tmp_path, device="cuda")


ASYNC_HANDLER = '''
import asyncio
import serving


class Doubler(serving.Model):
    async def predict(self, inputs):
        await asyncio.sleep(0.01)
        return {"Y": inputs["X"] * 2}

    def unload(self):
        with open(self.parameters["unloaded"], "w") as marker:
            marker.write(f"{self.name} {self.version}")
'''


def test_async_predict_and_unload_on_stop(tmp_path: Path) -> None:
    marker = tmp_path / "unloaded.txt"
    write_model(tmp_path / "repo", "doubler", f"""
        backend: "python"
        max_batch_size: 4
        input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        parameters {{ key: "unloaded" value {{ string_value: "{marker}" }} }}
        """, {1: {"model.py": ASYNC_HANDLER}})
    server = RunningServer(tmp_path / "repo")
    try:
        client = httpclient.InferenceServerClient(server.url)
        inp = httpclient.InferInput("X", [2, 1], "FP32")
        inp.set_data_from_numpy(torch.tensor([[1.5], [-2.0]]).numpy())
        assert client.infer("doubler", [inp]).as_numpy("Y").tolist() == [[3.0], [-4.0]]
        assert not marker.exists()
    finally:
        server.stop()
    assert marker.read_text() == "doubler 1"


def test_version_directories_and_model_names_as_triton_reads_them(tmp_path: Path) -> None:
    """Version directories are positive integers without a leading zero; other names are ignored.

    A model directory whose name cannot be a model name is listed with its reason, not loaded.
    """
    constant_model(tmp_path, "m", [1, 3])
    for other in ("0", "007", "٣", "2x"):  # zero, a leading zero, a non-ASCII digit, not a number
        (tmp_path / "m" / other).mkdir()
    constant_model(tmp_path, "tab\tname", [1])
    server = RunningServer(tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert client.get_model_metadata("m")["versions"] == ["3"]
        rows = {row["name"]: row for row in client.get_model_repository_index()}
        assert rows["tab\\tname"]["state"] == "UNAVAILABLE"
        assert "control character" in rows["tab\\tname"]["reason"]
        assert version_answering(client, "m") == 3.0
    finally:
        server.stop()
