"""Triton-style repositories with TorchScript models load and run without edits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from .conftest import RunningServer, write_model


class AddSub(torch.nn.Module):
    """Triton's "simple" model, as its PyTorch backend expects it: positional tensors."""

    def forward(self, input0: torch.Tensor, input1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return input0 + input1, input0 - input1


class Keyword(torch.nn.Module):
    """Inputs matched to forward's argument names; outputs returned as a dict."""

    def forward(self, scale: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scaled": values * scale, "total": (values * scale).sum(dim=1, keepdim=True)}


class Grid(torch.nn.Module):
    """Sees [batch, 2, 2] (the input's reshape) and returns [batch, 2, 2] for an output of dims [4]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 3
        return x.transpose(1, 2).contiguous()


class Lengths(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), x.shape[1], dtype=torch.int64)


def script(module: torch.nn.Module) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("triton_repo")
    # Triton's simple example with the PyTorch backend's naming; inputs deliberately listed out of order
    write_model(repo, "simple", """
        name: "simple"
        platform: "pytorch_libtorch"
        max_batch_size: 8
        input [
          { name: "INPUT__1" data_type: TYPE_INT32 dims: [ 16 ] },
          { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 16 ] }
        ]
        output [
          { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 16 ] },
          { name: "OUTPUT__1" data_type: TYPE_INT32 dims: [ 16 ] }
        ]
        dynamic_batching { }
        """, {1: {"model.pt": script(AddSub())}})
    write_model(repo, "keyword", """
        backend: "pytorch"
        max_batch_size: 4
        input [ { name: "values" data_type: TYPE_FP64 dims: [ 3 ] },
                { name: "scale" data_type: TYPE_FP64 dims: [ 1 ] } ]
        output [ { name: "total" data_type: TYPE_FP64 dims: [ 1 ] },
                 { name: "scaled" data_type: TYPE_FP64 dims: [ 3 ] } ]
        default_model_filename: "weights.ts"
        """, {3: {"weights.ts": script(Keyword())}})
    write_model(repo, "grid", """
        platform: "pytorch_libtorch"
        max_batch_size: 4
        input [ { name: "IN__0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "OUT__0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        """, {1: {"model.pt": script(Grid())}})
    write_model(repo, "lengths", """
        platform: "pytorch_libtorch"
        max_batch_size: 16
        input [ { name: "X__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "N__0" data_type: TYPE_INT64 dims: [ 1 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 20000 }
        """, {1: {"model.pt": script(Lengths())}})
    server = RunningServer(repo)
    yield server
    server.stop()


def test_simple_add_sub_by_position(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT__0", [2, 16], "INT32"), httpclient.InferInput("INPUT__1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), a - b)


def test_inputs_by_argument_name_and_dict_outputs(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    scale = np.array([[2.0], [0.5]])
    inputs = [httpclient.InferInput("values", [2, 3], "FP64"), httpclient.InferInput("scale", [2, 1], "FP64")]
    inputs[0].set_data_from_numpy(values, binary_data=False)
    inputs[1].set_data_from_numpy(scale, binary_data=False)
    result = client.infer("keyword", inputs, model_version="3")
    np.testing.assert_array_equal(result.as_numpy("scaled"), values * scale)
    np.testing.assert_array_equal(result.as_numpy("total"), (values * scale).sum(axis=1, keepdims=True))


def test_reshape_on_inputs_and_outputs(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("IN__0", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("grid", [inp]).as_numpy("OUT__0")
    assert got.shape == (2, 4)
    np.testing.assert_array_equal(got, x.reshape(2, 2, 2).transpose(0, 2, 1).reshape(2, 4))


def test_variable_dims_batch_only_with_equal_shapes(server: RunningServer) -> None:
    import asyncio

    import tritonclient.http.aio as aioclient

    async def scenario() -> list[int]:
        async with aioclient.InferenceServerClient(server.url) as client:
            async def one(length: int) -> int:
                inp = aioclient.InferInput("X__0", [1, length], "FP32")
                inp.set_data_from_numpy(np.zeros((1, length), dtype=np.float32))
                return int((await client.infer("lengths", [inp])).as_numpy("N__0")[0, 0])
            return await asyncio.gather(*(one(n) for n in [3, 5, 3, 7, 5, 3]))

    assert asyncio.run(scenario()) == [3, 5, 3, 7, 5, 3]


def test_config_endpoint_serves_the_filled_in_config(server: RunningServer) -> None:
    config = httpclient.InferenceServerClient(server.url).get_model_config("keyword", "3")
    assert config["platform"] == "pytorch_libtorch" and config["default_model_filename"] == "weights.ts"
    assert [i["name"] for i in config["input"]] == ["values", "scale"] and config["input"][0]["dims"] == [3]


def test_a_file_that_is_not_torchscript_is_reported(tmp_path: Path) -> None:
    write_model(tmp_path, "bogus", """
        platform: "pytorch_libtorch"
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
        """, {1: {"model.pt": b"PK\x03\x04 this is not an archive"}})
    server = RunningServer(tmp_path)
    try:
        assert server.server.repository is not None
        index = server.server.repository.index()
        assert index[0]["state"] == "UNAVAILABLE" and "not a TorchScript archive" in index[0]["reason"]
    finally:
        server.stop()
