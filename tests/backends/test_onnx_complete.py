"""Triton's auto-complete for ONNX models: what a config.pbtxt omits is read from the model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from serving.backends import complete
from serving.backends.onnx_complete import signature
from serving.config import ONNX, parse_config
from serving.errors import ConfigError

from ..conftest import RunningServer, write_model
from . import onnx_models


def completed(tmp_path: Path, model: bytes, text: str = "", filename: str = "model.onnx") -> pb.ModelConfig:
    """The proto of ``text`` after ONNX auto-complete on a model directory holding ``model`` in version 1."""
    model_dir = write_model(tmp_path, "m", text, {1: {filename: model}})
    config = text_format.Parse(text, pb.ModelConfig())
    complete(ONNX, config, model_dir)
    return config


def tensors(items: Any) -> list[tuple[str, str, list[int], bool]]:
    """A repeated ModelInput or ModelOutput field as (name, data type, dims, has a reshape)."""
    return [(t.name, pb.DataType.Name(t.data_type), list(t.dims), t.HasField("reshape")) for t in items]


def test_a_model_that_batches_gets_max_batch_size_4_and_dynamic_batching(tmp_path: Path) -> None:
    config = completed(tmp_path, onnx_models.classifier())
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert tensors(config.input) == [("INPUT", "TYPE_FP32", [4], False)]
    assert tensors(config.output) == [("PROBS", "TYPE_FP32", [3], False), ("LABEL", "TYPE_INT64", [1], False)]


def test_the_file_is_read_once_while_it_does_not_change(tmp_path: Path) -> None:
    """Poll mode parses every config at each poll: an unchanged file is not opened again."""
    completed(tmp_path, onnx_models.classifier())
    before = signature.cache_info()
    again = text_format.Parse("", pb.ModelConfig())
    complete(ONNX, again, tmp_path / "m")
    assert signature.cache_info().hits == before.hits + 1 and [t.name for t in again.output] == ["PROBS", "LABEL"]
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(onnx_models.add_sub())  # changed: read again
    changed = text_format.Parse("", pb.ModelConfig())
    complete(ONNX, changed, tmp_path / "m")
    assert [t.name for t in changed.input] == ["INPUT0", "INPUT1"]


def test_what_the_config_says_stays(tmp_path: Path) -> None:
    config = completed(tmp_path, onnx_models.classifier(), """
        max_batch_size: 32
        input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
        sequence_batching { }
        """)
    assert config.max_batch_size == 32
    assert not config.HasField("dynamic_batching")  # a scheduler is already named
    assert tensors(config.input) == [("INPUT", "TYPE_FP32", [4], False)]
    assert [t.name for t in config.output] == ["PROBS", "LABEL"]


def test_a_model_without_a_batch_dimension_keeps_max_batch_size_0(tmp_path: Path) -> None:
    config = completed(tmp_path, onnx_models.fixed())
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert tensors(config.input) == [("X", "TYPE_FP32", [2, 3], False)]
    # a scalar: one element in the config, none in the model
    assert tensors(config.output) == [("Y", "TYPE_FP32", [2, 3], False), ("SUM", "TYPE_FP32", [1], True)]
    assert list(config.output[1].reshape.shape) == []


def test_a_model_that_cannot_batch_refuses_a_max_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not batch .*\['SUM', 'X', 'Y'\].*max_batch_size 0"):
        completed(tmp_path, onnx_models.fixed(), "max_batch_size: 8")


def test_one_number_a_row_becomes_dims_1_with_an_empty_reshape(tmp_path: Path) -> None:
    config = completed(tmp_path, onnx_models.per_row_scalar())
    assert config.max_batch_size == 4
    assert tensors(config.input) == [("X", "TYPE_FP32", [1], True)]
    assert tensors(config.output) == [("DOUBLED", "TYPE_FP32", [1], True)]


def test_strings_become_type_string(tmp_path: Path) -> None:
    config = completed(tmp_path, onnx_models.strings_identity())
    assert tensors(config.input) == [("TEXT", "TYPE_STRING", [1], False)]


def test_default_model_filename_names_the_file_read(tmp_path: Path) -> None:
    config = completed(tmp_path, onnx_models.add_sub(), 'default_model_filename: "simple.onnx"', "simple.onnx")
    assert [t.name for t in config.input] == ["INPUT0", "INPUT1"]


def test_a_corrupt_or_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ONNX Runtime cannot load m/1/model\.onnx"):
        completed(tmp_path / "a", b"not protobuf at all \xff")
    with pytest.raises(ConfigError, match=r"m/1/model\.onnx is missing"):
        completed(tmp_path / "b", b"", filename="other.onnx")


def test_no_version_directory_leaves_the_config_to_be_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="at least one input"):
        parse_config('platform: "onnxruntime_onnx"', tmp_path / "m", complete)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("onnx_complete")
    write_model(repo, "platform_only", 'platform: "onnxruntime_onnx"', {1: {"model.onnx": onnx_models.classifier()}})
    # no platform either: the file decides
    write_model(repo, "empty", "", {1: {"model.onnx": onnx_models.add_sub()}})
    write_model(repo, "renamed", 'default_model_filename: "net.onnx"', {1: {"net.onnx": onnx_models.classifier()}})
    write_model(repo, "per_row", "max_batch_size: 16", {1: {"model.onnx": onnx_models.per_row_scalar()}})
    running = RunningServer(repo)
    yield running
    running.stop()


@pytest.mark.parametrize("name", ["platform_only", "renamed"])
def test_a_completed_model_serves_and_shows_its_completed_config(server: RunningServer, name: str) -> None:
    x = np.ones((3, 4), dtype=np.float32)
    with httpclient.InferenceServerClient(server.url) as client:
        config = client.get_model_config(name)
        assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
        assert config["max_batch_size"] == 4
        assert [i["name"] for i in config["input"]] == ["INPUT"] and "dynamic_batching" in config
        inp = httpclient.InferInput("INPUT", [3, 4], "FP32")
        inp.set_data_from_numpy(x)
        probs = client.infer(name, [inp]).as_numpy("PROBS")
        np.testing.assert_allclose(probs.sum(axis=1), np.ones(3), rtol=1e-5)


def test_an_empty_config_gets_platform_and_tensors_from_the_file(server: RunningServer) -> None:
    a, b = np.arange(16, dtype=np.int32).reshape(1, 16), np.ones((1, 16), dtype=np.int32)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as client:
        config = client.get_model_config("empty", as_json=True)["config"]
        assert config["platform"] == "onnxruntime_onnx"
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == \
            [("INPUT0", "TYPE_INT32", ["16"]), ("INPUT1", "TYPE_INT32", ["16"])]
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("empty", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_one_number_a_row_serves_as_dims_1(server: RunningServer) -> None:
    x = np.array([[1.5], [2.0], [-3.0]], dtype=np.float32)
    with httpclient.InferenceServerClient(server.url) as client:
        assert client.get_model_config("per_row")["max_batch_size"] == 16  # the config's, not the default
        inp = httpclient.InferInput("X", [3, 1], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("per_row", [inp]).as_numpy("DOUBLED"), x * 2)


def test_a_load_override_without_platform_is_completed_from_the_file(tmp_path: Path) -> None:
    """The config on disk names the wrong platform; a load override without one lets the file decide."""
    write_model(tmp_path, "by_override", 'platform: "pytorch_libtorch"', {1: {"model.onnx": onnx_models.classifier()}})
    running = RunningServer(tmp_path, model_control_mode="explicit", load_model=())
    try:
        with httpclient.InferenceServerClient(running.url) as client:
            client.load_model("by_override", config=json.dumps({"max_batch_size": 2}))
            assert client.is_model_ready("by_override")
            config = client.get_model_config("by_override")
            assert (config["platform"], config["max_batch_size"]) == ("onnxruntime_onnx", 2)
            assert [o["name"] for o in config["output"]] == ["PROBS", "LABEL"]
    finally:
        running.stop()


def test_an_onnx_model_without_config_pbtxt_serves_as_triton_completes_it(tmp_path: Path) -> None:
    """Triton needs no config.pbtxt for an ONNX model: the file says the platform, inputs and outputs."""
    (tmp_path / "bare" / "1").mkdir(parents=True)
    (tmp_path / "bare" / "1" / "model.onnx").write_bytes(onnx_models.classifier())
    (tmp_path / "scripted" / "1").mkdir(parents=True)
    (tmp_path / "scripted" / "1" / "model.pt").write_bytes(b"")  # TorchScript cannot say its tensors
    (tmp_path / "notes").mkdir()  # neither a config nor a model file: not a model
    running = RunningServer(tmp_path)
    try:
        with httpclient.InferenceServerClient(running.url) as client:
            rows = {row["name"]: row for row in client.get_model_repository_index()}
            assert set(rows) == {"bare", "scripted"}
            assert rows["bare"]["state"] == "READY", rows
            assert rows["scripted"]["state"] == "UNAVAILABLE" and "at least one input" in rows["scripted"]["reason"]
            config = client.get_model_config("bare")
            assert config["platform"] == "onnxruntime_onnx" and config["input"][0]["name"] == "INPUT"
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            given = httpclient.InferInput("INPUT", [2, 4], "FP32")
            given.set_data_from_numpy(x)
            got = client.infer("bare", [given]).as_numpy("PROBS")
        session = onnxruntime.InferenceSession(onnx_models.classifier(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(got, session.run(["PROBS"], {"INPUT": x})[0], rtol=1e-6)
    finally:
        running.stop()
