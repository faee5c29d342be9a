"""Session options, execution providers and the two ways of running a session (feeds, I/O binding).

The GPU path cannot run without a GPU and onnxruntime-gpu; what decides it (the providers
for a device, the binding of tensors by pointer) is tested here on the CPU, where ONNX
Runtime binds host memory the same way. The tests marked `gpu` run it on a real GPU.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as pb

from serving.backends.onnx import BoundRunner, FeedRunner, OnnxModel, binds
from serving.backends.onnx_options import providers, session_options, session_plan
from serving.config import ModelSpec, parse_config
from serving.errors import ConfigError

from ..conftest import write_model
from . import onnx_models

CLASSIFIER_CONFIG = """
    platform: "onnxruntime_onnx"
    max_batch_size: 8
    input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "PROBS" data_type: TYPE_FP32 dims: [ 3 ] },
             { name: "LABEL" data_type: TYPE_INT64 dims: [ 1 ] } ]
    """
HAS_CUDA = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def plan_of(text: str) -> tuple[pb.ModelConfig, dict[str, str]]:
    config = text_format.Parse(text, pb.ModelConfig())
    return config, {k: v.string_value for k, v in config.parameters.items()}


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'


def loaded(tmp_path: Path, text: str, model: bytes, device: str = "cpu") -> OnnxModel:
    model_dir = write_model(tmp_path, "m", text, {1: {"model.onnx": model}})
    spec = parse_config((model_dir / "config.pbtxt").read_text(), model_dir)
    handler = OnnxModel(name="m", version=1, config=spec, path=model_dir / "1", device=torch.device(device))
    handler.load()
    return handler


@pytest.mark.parametrize(("level", "expected"), [
    (None, "ORT_ENABLE_ALL"), (0, "ORT_ENABLE_ALL"), (-1, "ORT_ENABLE_BASIC"), (1, "ORT_ENABLE_EXTENDED"),
    (2, "ORT_DISABLE_ALL")])
def test_the_graph_level_as_triton_numbers_it(level: int | None, expected: str) -> None:
    text = "" if level is None else f"optimization {{ graph {{ level: {level} }} }}"
    assert session_plan(*plan_of(text)).graph_level == expected


def test_parameters_reach_the_session(tmp_path: Path) -> None:
    text = (CLASSIFIER_CONFIG + "optimization { graph { level: 2 } }\n" + param("intra_op_thread_count", "2")
            + param("inter_op_thread_count", "3") + param("execution_mode", "1") + param("enable_mem_arena", "0")
            + param("enable_mem_pattern", "false") + param("session.intra_op.allow_spinning", "0"))
    handler = loaded(tmp_path, text, onnx_models.classifier())
    options = handler.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert handler.predict({"INPUT": torch.ones(2, 4)})["PROBS"].shape == (2, 3)


def test_arena_shrinkage_is_a_run_option(tmp_path: Path) -> None:
    handler = loaded(tmp_path, CLASSIFIER_CONFIG + param("memory.enable_memory_arena_shrinkage", "cpu:0"),
                     onnx_models.classifier())
    assert handler.predict({"INPUT": torch.ones(2, 4)})["PROBS"].shape == (2, 3)


def test_the_thread_count_defaults_to_torchs(tmp_path: Path) -> None:
    handler = loaded(tmp_path, CLASSIFIER_CONFIG, onnx_models.classifier())
    assert handler.session.get_session_options().intra_op_num_threads == torch.get_num_threads()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("execution_mode", "2", "execution_mode"), ("intra_op_thread_count", "-1", "whole number"),
    ("inter_op_thread_count", "99999", "0 to 1024"), ("enable_mem_arena", "maybe", "1 or 0"),
    ("cudnn_conv_algo_search", "7", "0, 1, 2"), ("gpu_mem_limit", "lots", "whole number"),
])
def test_a_parameter_that_cannot_be_used_is_a_config_error(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        session_plan(*plan_of(param(key, value)))


def test_unknown_accelerators_are_refused() -> None:
    for kind in ("gpu_execution_accelerator", "cpu_execution_accelerator"):
        with pytest.raises(ConfigError, match="not one ONNX Runtime offers"):
            session_plan(*plan_of(f'optimization {{ execution_accelerators {{ {kind} [ {{ name: "magic" }} ] }} }}'))


def test_a_gpu_instance_gets_cuda_with_its_device_and_options() -> None:
    text = (param("cudnn_conv_algo_search", "1") + param("gpu_mem_limit", "1073741824")
            + 'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" '
              'parameters { key: "use_ep_level_unified_stream" value: "1" } } ] } }')
    plan = session_plan(*plan_of(text))
    chosen = providers(torch.device("cuda", 1), plan, ["CUDAExecutionProvider", "CPUExecutionProvider"], "m/1")
    assert chosen == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "device_id": "1",
                                                 "gpu_mem_limit": "1073741824", "use_ep_level_unified_stream": "1"}),
                      ("CPUExecutionProvider", {})]
    assert providers(torch.device("cpu"), plan, ["CUDAExecutionProvider", "CPUExecutionProvider"], "m/1") == \
        [("CPUExecutionProvider", {})]


def test_tensorrt_comes_first_when_present_and_is_skipped_when_not(caplog: pytest.LogCaptureFixture) -> None:
    plan = session_plan(*plan_of('optimization { execution_accelerators { gpu_execution_accelerator [ { name: '
                                 '"tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }'))
    gpu = torch.device("cuda", 0)
    with_trt = providers(gpu, plan, ["TensorrtExecutionProvider", "CUDAExecutionProvider"], "m/1")
    assert [name for name, _ in with_trt] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                              "CPUExecutionProvider"]
    assert with_trt[0][1] == {"precision_mode": "FP16", "device_id": "0"}
    assert [name for name, _ in providers(gpu, plan, ["CUDAExecutionProvider"], "m/1")] == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "tensorrt" in caplog.text


def test_a_gpu_instance_without_the_cuda_provider_says_how_to_fix_it(caplog: pytest.LogCaptureFixture) -> None:
    plan, gpu = session_plan(*plan_of("")), torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"onnxruntime-gpu.*KIND_CPU"):  # a KIND_GPU group
        providers(gpu, plan, ["CPUExecutionProvider"], "m/1")
    # placed on the GPU by default (KIND_AUTO): it runs on the CPU, and says so
    assert providers(gpu, plan, ["CPUExecutionProvider"], "m/1", gpu_asked=False) == [("CPUExecutionProvider", {})]
    assert "runs on the CPU" in caplog.text and "onnxruntime-gpu" in caplog.text


def test_session_options_are_plain_options() -> None:
    options = session_options(ort, session_plan(*plan_of(param("intra_op_thread_count", "1"))))
    assert options.intra_op_num_threads == 1 and options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_the_binding_path_computes_what_the_feed_path_does(tmp_path: Path) -> None:
    """I/O binding by pointer, as on a GPU, here over host memory; outputs come back as torch tensors."""
    handler = loaded(tmp_path, CLASSIFIER_CONFIG, onnx_models.classifier())
    assert isinstance(handler.runner, FeedRunner)
    bound = BoundRunner(handler.session, handler.config, None, torch.device("cpu"))
    answers = []
    for count in (1, 5, 2, 0):  # the binding is reused from batch to batch, at any size
        x = torch.randn(count, 4)
        by_feed = handler.predict({"INPUT": x})
        by_binding = bound({"INPUT": x})
        assert isinstance(by_binding["PROBS"], torch.Tensor) and by_binding["PROBS"].shape == (count, 3)
        np.testing.assert_allclose(by_binding["PROBS"].numpy(), by_feed["PROBS"], rtol=1e-6)
        np.testing.assert_array_equal(by_binding["LABEL"].numpy(), by_feed["LABEL"])
        answers.append((by_binding["PROBS"], by_binding["PROBS"].clone()))
    # a batch's outputs are split and sent after the next batch ran: their memory must still be theirs
    gc.collect()
    for kept, copy in answers:
        assert torch.equal(kept, copy)


def test_which_models_run_by_binding() -> None:
    def spec(*datatypes: str) -> ModelSpec:
        lines = ", ".join(f'{{ name: "T{i}" data_type: TYPE_{d} dims: [ 1 ] }}' for i, d in enumerate(datatypes))
        return parse_config(f"platform: \"onnxruntime_onnx\" input [ {lines} ] output [ {lines} ]", Path("m"))
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert binds(gpu, spec("FP32", "INT64")) and not binds(cpu, spec("FP32", "INT64"))
    assert binds(cpu, spec("BF16")) and binds(gpu, spec("BF16", "FP16"))
    # ONNX Runtime binds no strings: such models run by feeds, on a GPU too
    assert not binds(gpu, spec("STRING", "FP32")) and not binds(cpu, spec("STRING"))
    with pytest.raises(ConfigError, match="both BF16 and BYTES"):
        binds(cpu, spec("STRING", "BF16"))


def test_bf16_runs_by_binding_even_on_the_cpu(tmp_path: Path) -> None:
    handler = loaded(tmp_path, """
        platform: "onnxruntime_onnx"
        max_batch_size: 4
        input [ { name: "X" data_type: TYPE_BF16 dims: [ 2 ] } ]
        output [ { name: "Y" data_type: TYPE_BF16 dims: [ 2 ] } ]
        """, onnx_models.identity(TensorProto.BFLOAT16, ["batch", 2]))
    assert isinstance(handler.runner, BoundRunner)
    x = torch.tensor([[1.5, -2.25], [3.0, 0.5]], dtype=torch.bfloat16)
    y = handler.predict({"X": x})["Y"]
    assert y.dtype == torch.bfloat16 and torch.equal(y, x)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_on_a_gpu_inputs_are_bound_on_the_device_and_outputs_stay_there(tmp_path: Path) -> None:
    handler = loaded(tmp_path, CLASSIFIER_CONFIG, onnx_models.classifier(), device="cuda:0")
    assert isinstance(handler.runner, BoundRunner)
    assert handler.session.get_providers()[0] == "CUDAExecutionProvider"
    x = torch.randn(3, 4)
    out = handler.predict({"INPUT": x.to("cuda:0")})
    assert out["PROBS"].device.type == "cuda"
    expected = ort.InferenceSession(onnx_models.classifier(), providers=["CPUExecutionProvider"]).run(
        ["PROBS"], {"INPUT": x.numpy()})[0]
    np.testing.assert_allclose(out["PROBS"].cpu().numpy(), expected, rtol=1e-4, atol=1e-6)
