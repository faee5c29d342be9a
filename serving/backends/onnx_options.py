"""What an ONNX Runtime session is opened with: datatypes, session options and execution providers.

Triton's onnxruntime backend reads these from config.pbtxt, and so does this one:

* ``optimization { graph { level } }``: ``-1`` basic, ``1`` extended, ``2`` none, anything
  else (``0``, the default) every optimisation;
* ``parameters``: ``intra_op_thread_count`` and ``inter_op_thread_count`` (0: the default),
  ``execution_mode`` (``0`` sequential, ``1`` parallel), ``enable_mem_arena`` and
  ``enable_mem_pattern`` (``1``/``0``, ``true``/``false``, ``on``/``off``),
  ``memory.enable_memory_arena_shrinkage`` (a run option), and the session entries
  ``session.use_device_allocator_for_initializers``, ``session.intra_op.allow_spinning``,
  ``session.inter_op.allow_spinning``;
* on a GPU, the CUDA execution provider with the instance's ``device_id``, its options from
  ``optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda"
  parameters {...} } ] } }`` and Triton's older top-level names (``cudnn_conv_algo_search``,
  ``gpu_mem_limit``, ``arena_extend_strategy``, ``do_copy_in_default_stream``); ``tensorrt``
  is used when this ONNX Runtime has it. On the CPU, ``openvino`` likewise.

The intra-op thread count defaults to torch's (``--cpu-threads``), not to ONNX Runtime's one
thread per core: the server keeps a core for its event loop, and several instances each
taking every core would fight over them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
from tritonclient.grpc import model_config_pb2 as pb

from ..errors import ConfigError

log = logging.getLogger(__name__)

# ONNX Runtime's type names -> v2 datatypes (Triton's mapping; strings are BYTES)
ORT_DATATYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16", "tensor(string)": "BYTES",
}
# v2 datatype -> ONNX's TensorProto element type, for I/O binding by pointer
ONNX_ELEMENT_TYPES = {"FP32": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6, "INT64": 7,
                      "BYTES": 8, "BOOL": 9, "FP16": 10, "FP64": 11, "UINT32": 12, "UINT64": 13, "BF16": 16}
GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}
SESSION_ENTRIES = ("session.use_device_allocator_for_initializers", "session.intra_op.allow_spinning",
                   "session.inter_op.allow_spinning")
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
MAX_THREADS = 1024
# Triton's older top-level parameters for the CUDA provider, with the values it takes for them
CUDA_PARAMETERS: dict[str, dict[str, str] | None] = {
    "cudnn_conv_algo_search": {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"},
    "gpu_mem_limit": None,
    "arena_extend_strategy": {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"},
    "do_copy_in_default_stream": None,
}
ProviderList = list[tuple[str, dict[str, str]]]


def onnx_datatype(ort_type: str, tensor: str) -> str:
    """The v2 datatype of an ONNX Runtime tensor type (``tensor(float)`` -> ``FP32``)."""
    datatype = ORT_DATATYPES.get(ort_type)
    if datatype is None:
        raise ConfigError(f"{tensor} has type {ort_type}, which Triton's datatypes cannot carry; "
                          "export the model with tensors of numbers, booleans or strings")
    return datatype


def onnx_dims(shape: Any) -> tuple[int, ...]:
    """A shape from ONNX Runtime as config dims: symbolic and unknown sizes become -1."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (shape or ()))


def parse_bool(value: str, key: str) -> bool:
    """A boolean parameter as Triton reads one."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"parameter {key} is {value[:40]!r}; use 1 or 0 (true or false)")


def parse_count(value: str, key: str, limit: int = MAX_THREADS) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > limit:
        raise ConfigError(f"parameter {key} is {value[:40]!r}; give a whole number from 0 to {limit}")
    return int(text)


@dataclasses.dataclass(frozen=True)
class SessionPlan:
    """Everything a session is opened and run with, from one model config (no ONNX Runtime objects)."""

    graph_level: str = "ORT_ENABLE_ALL"
    intra_op_threads: int = 0  # 0: torch's thread count
    inter_op_threads: int = 0  # 0: ONNX Runtime's default
    parallel: bool = False
    mem_arena: bool | None = None  # None: ONNX Runtime's default
    mem_pattern: bool | None = None
    entries: tuple[tuple[str, str], ...] = ()  # session config entries
    run_entries: tuple[tuple[str, str], ...] = ()  # run option config entries
    cuda_options: tuple[tuple[str, str], ...] = ()
    gpu_accelerators: tuple[str, ...] = ()  # besides cuda: tensorrt
    trt_options: tuple[tuple[str, str], ...] = ()
    cpu_accelerators: tuple[str, ...] = ()  # openvino


def session_plan(config: pb.ModelConfig, parameters: Mapping[str, str]) -> SessionPlan:
    """Read the session options a config asks for; a value that cannot be used is a ConfigError."""
    level = int(config.optimization.graph.level) if config.optimization.HasField("graph") else 0
    mode = parameters.get("execution_mode", "0").strip()
    if mode not in ("0", "1"):
        raise ConfigError(f"parameter execution_mode is {mode[:40]!r}; use 0 (sequential) or 1 (parallel)")
    arena, pattern = parameters.get("enable_mem_arena"), parameters.get("enable_mem_pattern")
    entries = tuple((key, parameters[key].strip()) for key in SESSION_ENTRIES if key in parameters)
    run_entries = ((ARENA_SHRINKAGE, parameters[ARENA_SHRINKAGE].strip()),) if ARENA_SHRINKAGE in parameters else ()
    cuda: dict[str, str] = {}
    for key, values in CUDA_PARAMETERS.items():
        if key in parameters:
            value = parameters[key].strip()
            if values is not None and value not in values:
                raise ConfigError(f"parameter {key} is {value[:40]!r}; use one of {', '.join(values)}")
            cuda[key] = values[value] if values is not None else str(parse_count(value, key, 2**64 - 1))
    gpu, trt = [], {}
    accelerators = config.optimization.execution_accelerators
    for accelerator in accelerators.gpu_execution_accelerator:
        name = accelerator.name.strip().lower()
        if name == "cuda":
            cuda.update(accelerator.parameters)
        elif name == "tensorrt":
            gpu.append(name)
            trt.update(accelerator.parameters)
        else:
            raise ConfigError(f"gpu_execution_accelerator {accelerator.name[:40]!r} is not one ONNX Runtime offers "
                              "here; use \"cuda\" or \"tensorrt\"")
    cpu = []
    for accelerator in accelerators.cpu_execution_accelerator:
        name = accelerator.name.strip().lower()
        if name != "openvino":
            raise ConfigError(f"cpu_execution_accelerator {accelerator.name[:40]!r} is not one ONNX Runtime offers "
                              "here; use \"openvino\" or leave it out")
        cpu.append(name)
    return SessionPlan(
        graph_level=GRAPH_LEVELS.get(level, "ORT_ENABLE_ALL"),
        intra_op_threads=parse_count(parameters.get("intra_op_thread_count", "0"), "intra_op_thread_count"),
        inter_op_threads=parse_count(parameters.get("inter_op_thread_count", "0"), "inter_op_thread_count"),
        parallel=mode == "1",
        mem_arena=None if arena is None else parse_bool(arena, "enable_mem_arena"),
        mem_pattern=None if pattern is None else parse_bool(pattern, "enable_mem_pattern"),
        entries=entries, run_entries=run_entries, cuda_options=tuple(sorted(cuda.items())),
        gpu_accelerators=tuple(gpu), trt_options=tuple(sorted(trt.items())), cpu_accelerators=tuple(cpu))


def session_options(ort: Any, plan: SessionPlan) -> Any:
    """An ``onnxruntime.SessionOptions`` for the plan."""
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, plan.graph_level)
    options.intra_op_num_threads = plan.intra_op_threads or torch.get_num_threads()
    if plan.inter_op_threads:
        options.inter_op_num_threads = plan.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if plan.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    if plan.mem_arena is not None:
        options.enable_cpu_mem_arena = plan.mem_arena
    if plan.mem_pattern is not None:
        options.enable_mem_pattern = plan.mem_pattern
    for key, value in plan.entries:
        options.add_session_config_entry(key, value)
    options.log_severity_level = 4  # fatal only: it writes to stderr, outside the JSON log; errors come as exceptions
    return options


def run_options(ort: Any, plan: SessionPlan) -> Any:
    options = ort.RunOptions()
    for key, value in plan.run_entries:
        options.add_run_config_entry(key, value)
    return options


def providers(device: torch.device, plan: SessionPlan, available: list[str], label: str,
              gpu_asked: bool = True) -> ProviderList:
    """The execution providers, best first, for an instance on ``device``; CPU always comes last.

    A GPU instance needs the CUDA provider (the onnxruntime-gpu build). Without it, an instance
    the config puts on a GPU (``gpu_asked``: a ``KIND_GPU`` group) is a ConfigError, as the model
    would run on the CPU while its instance claims a GPU; one placed there by default
    (``KIND_AUTO``) runs on the CPU, with a warning. An accelerator this build lacks is skipped
    with a warning, as the model still runs.
    """
    chosen: ProviderList = []
    if device.type == "cuda" and "CUDAExecutionProvider" not in available:
        if gpu_asked:
            raise ConfigError(f"{label}: the instance is on {device} but this ONNX Runtime has no CUDA execution "
                              "provider; install onnxruntime-gpu in place of onnxruntime, or set "
                              "instance_group [ { kind: KIND_CPU } ]")
        log.warning("%s runs on the CPU: this ONNX Runtime has no CUDA execution provider (install "
                    "onnxruntime-gpu in place of onnxruntime to run it on %s)", label, device)
    elif device.type == "cuda":
        index = str(device.index or 0)
        if "tensorrt" in plan.gpu_accelerators:
            if "TensorrtExecutionProvider" in available:
                chosen.append(("TensorrtExecutionProvider", {**dict(plan.trt_options), "device_id": index}))
            else:
                log.warning("%s asks for the tensorrt accelerator, which this ONNX Runtime lacks; running on CUDA",
                            label)
        chosen.append(("CUDAExecutionProvider", {**dict(plan.cuda_options), "device_id": index}))
    if device.type != "cuda" and "openvino" in plan.cpu_accelerators:
        if "OpenVINOExecutionProvider" in available:
            chosen.append(("OpenVINOExecutionProvider", {}))
        else:
            log.warning("%s asks for the openvino accelerator, which this ONNX Runtime lacks; running on the CPU",
                        label)
    chosen.append(("CPUExecutionProvider", {}))
    return chosen
