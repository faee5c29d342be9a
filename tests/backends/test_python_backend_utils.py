"""pb_utils' helpers as Triton documents them: tensors, types, config lookups, ModelConfig for auto-complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

import triton_python_backend_utils as pb_utils
from tests.conftest import RunningServer, write_model


def test_tensor_keeps_the_array_and_refuses_unicode() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("X", array)
    assert tensor.name() == "X" and tensor.as_numpy() is array and tensor.is_cpu()
    assert tensor.triton_dtype() == 11 and tensor.shape() == [2, 3]
    with pytest.raises(pb_utils.TritonModelException, match=r"Please use np\.object_ instead"):
        pb_utils.Tensor("S", np.array(["text"]))
    raw = pb_utils.Tensor("R", np.zeros(4, np.uint8), triton_dtype=8)  # four bytes seen as one INT32
    assert raw.as_numpy().dtype == np.int32 and raw.as_numpy().shape == (1,)


def test_dlpack_round_trips_with_torch() -> None:
    values = torch.arange(5, dtype=torch.int64)
    tensor = pb_utils.Tensor.from_dlpack("T", values)
    assert tensor.as_numpy().tolist() == [0, 1, 2, 3, 4]
    assert torch.from_dlpack(tensor.to_dlpack()).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(pb_utils.TritonModelException, match="BYTES"):
        pb_utils.Tensor("B", np.array([b"x"], dtype=object)).to_dlpack()


def test_type_helpers() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP16") is np.float16
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.numpy_to_triton_type(np.int32) == 8
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.triton_to_numpy_type(1) is np.bool_
    assert pb_utils.triton_to_numpy_type(99) is None


def test_config_lookups_and_errors() -> None:
    config = {"input": [{"name": "A", "data_type": "TYPE_FP32"}], "output": [{"name": "B", "data_type": "TYPE_INT8"}]}
    assert pb_utils.get_input_config_by_name(config, "A") == {"name": "A", "data_type": "TYPE_FP32"}
    assert pb_utils.get_output_config_by_name(config, "B")["data_type"] == "TYPE_INT8"  # type: ignore[index]
    assert pb_utils.get_input_config_by_name(config, "B") is None
    error = pb_utils.TritonError("bad", pb_utils.TritonError.NOT_FOUND)
    assert error.message() == "bad" and error.code() == pb_utils.TritonError.NOT_FOUND
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.output_tensors() == []
    with pytest.raises(pb_utils.TritonModelException, match="must be a list"):
        pb_utils.InferenceResponse("not a list")  # type: ignore[arg-type]  # what a model might pass


def test_model_config_setters_check_what_the_config_says() -> None:
    config = pb_utils.ModelConfig(json.dumps({"name": "m", "max_batch_size": 8,
                                              "input": [{"name": "A", "data_type": "TYPE_FP32", "dims": [2]}]}))
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8"):
        config.set_max_batch_size(4)
    config.set_max_batch_size(16)
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32"):
        config.add_input({"name": "A", "data_type": "TYPE_INT32", "dims": [2]})
    with pytest.raises(ValueError, match="the model expects dims"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [3]})
    with pytest.raises(ValueError, match="is missing 'dims' property"):
        config.add_output({"name": "B", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="contains property other than"):
        config.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [1], "shape": [1]})
    config.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [1]})
    config.set_model_transaction_policy({"decoupled": True})
    with pytest.raises(ValueError, match="trying to change decoupled"):
        config.set_model_transaction_policy({"decoupled": False})
    config.set_dynamic_batching()
    assert config.as_dict()["max_batch_size"] == 16 and config.as_dict()["dynamic_batching"] == {}
    assert [o["name"] for o in config.as_dict()["output"]] == ["B"]


def test_a_failing_auto_complete_is_the_models_reason(tmp_path: Path) -> None:
    write_model(tmp_path, "half", 'backend: "python"\n', {1: {"model.py": """
        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(config):
                config.add_input({"name": "X", "data_type": "TYPE_FP32"})
                return config

            def execute(self, requests):
                return []
        """}})
    write_model(tmp_path, "fine", """
        backend: "python"
        input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]
        """, {1: {"model.py": """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(
                    r, "X").as_numpy())]) for r in requests]
        """}})
    server = RunningServer(tmp_path, strict_readiness=False)
    try:
        client = httpclient.InferenceServerClient(server.url)
        rows = {row["name"]: row for row in client.get_model_repository_index()}
        assert rows["half"]["state"] == "UNAVAILABLE"
        assert "auto_complete_config of model 'half' failed" in rows["half"]["reason"]
        assert "is missing 'dims' property" in rows["half"]["reason"]
        x = httpclient.InferInput("X", [1], "INT32")
        x.set_data_from_numpy(np.array([5], np.int32))
        assert client.infer("fine", [x]).as_numpy("Y").tolist() == [5]
        client.close()
    finally:
        server.stop()


def test_auto_complete_fills_only_the_contents(tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    from serving.backends.python.autocomplete import auto_complete

    model = tmp_path / "model.py"
    model.write_text(
        "class TritonPythonModel:\n"
        "    @staticmethod\n"
        "    def auto_complete_config(config):\n"
        "        config.as_dict()['name'] = 'renamed'\n"
        "        config.as_dict()['backend'] = 'onnxruntime'\n"
        "        config.set_model_transaction_policy({'decoupled': True})\n"
        "        config.add_output({'name': 'OUT', 'data_type': 'TYPE_INT32', 'dims': [2]})\n"
        "        return config\n")
    config = pb.ModelConfig(name="mine", backend="python")
    auto_complete(config, model)
    assert (config.name, config.backend) == ("mine", "python")
    assert config.model_transaction_policy.decoupled
    assert [(o.name, list(o.dims)) for o in config.output] == [("OUT", [2])]
