"""The built-in handler for ``platform: "onnxruntime_onnx"`` (``backend: "onnxruntime"``): a ``model.onnx``.

One ``onnxruntime.InferenceSession`` per instance, opened on the version's model file
(``default_model_filename``; a directory stands for its ``model.onnx``, as in Triton) with
the session options and execution providers of `serving.backends.onnx_options`. At load the
model is checked against config.pbtxt, tensor by tensor (names, datatypes, ranks and fixed
sizes), so a config that does not describe its model fails there, naming the tensor, and not
at the first request.

Inputs and outputs go by name. BYTES travel as ONNX Runtime's string tensors: text, so each
element must be UTF-8, and output strings come back as their UTF-8 bytes.

On a GPU, inputs are bound to the session by the device pointers of the tensors the batch
executor already copied there (I/O binding), and outputs stay on the device as torch tensors
until the executor copies them back with the rest of the batch: nothing passes through the
host twice. On the CPU, ``session.run`` reads the numpy views of the batch's tensors.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelSpec, TensorSpec
from ..errors import ConfigError, InvalidInput
from ..model import Model
from ..paths import confined
from .onnx_options import (
    ONNX_ELEMENT_TYPES,
    onnx_datatype,
    onnx_dims,
    providers,
    run_options,
    session_options,
    session_plan,
)

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def import_ort() -> Any:
    """``onnxruntime``, or a ConfigError saying how to install it (it is an optional extra)."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("platform onnxruntime_onnx needs ONNX Runtime: pip install 'shadowserve[onnx]' "
                          "(onnxruntime-gpu on GPU hosts)") from None
    return onnxruntime


@dataclasses.dataclass(frozen=True)
class OnnxTensor:
    """A model input or output as ONNX Runtime declares it."""

    name: str
    datatype: str  # v2 datatype
    dims: tuple[int, ...]  # -1 where the size is symbolic or unknown


def model_file(directory: Path, filename: str, label: str) -> Path:
    """The ONNX file of a version directory; ``label`` names it in messages."""
    file = confined(directory, filename, "default_model_filename", label)
    if file.is_dir():  # Triton: a directory holds its model.onnx (beside the model's external data)
        file = confined(file, "model.onnx", "default_model_filename", f"{label}/model.onnx")
    if not file.is_file():
        raise ConfigError(f"{label} is missing: an onnxruntime_onnx version directory needs its ONNX file "
                          "(model.onnx, or the default_model_filename the config names)")
    return file


def open_session(file: Path, label: str, options: Any, chosen: list[tuple[str, dict[str, str]]]) -> Any:
    """An InferenceSession on ``file``; a file ONNX Runtime cannot load is a ConfigError naming it by ``label``."""
    ort = import_ort()
    try:
        return ort.InferenceSession(str(file), sess_options=options, providers=[name for name, _ in chosen],
                                    provider_options=[opts for _, opts in chosen])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own error classes (InvalidProtobuf, Fail, ...) derive from Exception alone
        # its message names the host path; the name relative to the repository is enough
        detail = _ORT_PREFIX.sub("", str(exc)).replace(str(file), label).replace(str(file.parent), "")
        detail = detail.splitlines()[0][:300] if detail else "no reason given"
        raise ConfigError(f"ONNX Runtime cannot load {label} ({detail}); export the model again (torch.onnx.export, "
                          "tf2onnx) or check it with onnx.checker.check_model") from None


def session_tensors(session: Any) -> tuple[dict[str, OnnxTensor], dict[str, OnnxTensor], dict[str, OnnxTensor]]:
    """The session's inputs, its overridable initializers (inputs a request may give) and its outputs."""
    def infos(args: Any, kind: str) -> dict[str, OnnxTensor]:
        try:
            return {a.name: OnnxTensor(a.name, onnx_datatype(a.type, f"the model's {kind} '{a.name}'"),
                                       onnx_dims(a.shape)) for a in args}
        except UnicodeDecodeError:  # a damaged file's names need not be text: ONNX Runtime fails decoding them
            raise ConfigError(f"the model names an {kind} in bytes that are not UTF-8 (a damaged or truncated "
                              "file?); export the model again or check it with onnx.checker.check_model") from None
    return (infos(session.get_inputs(), "input"), infos(session.get_overridable_initializers(), "input"),
            infos(session.get_outputs(), "output"))


def triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _check_tensor(kind: str, declared: TensorSpec, found: OnnxTensor, max_batch_size: int) -> None:
    where = f"config.pbtxt's {kind} '{declared.name}'"
    if declared.datatype != found.datatype:
        raise ConfigError(f"{where} is {triton_type(declared.datatype)} but the model's is "
                          f"{triton_type(found.datatype)}; set data_type: {triton_type(found.datatype)}")
    dims = declared.reshape if declared.reshape is not None else declared.dims
    if not found.dims:  # a scalar (or, for an output, a shape ONNX Runtime could not infer)
        if kind == "input" and (max_batch_size or any(d != 1 for d in dims)):
            raise ConfigError(f"{where}: the model's is a scalar, which has no batch dimension; declare dims [ 1 ] "
                              "with max_batch_size 0")
        return
    expected = ((-1,) if max_batch_size else ()) + tuple(dims)
    if max_batch_size and found.dims[0] != -1:
        raise ConfigError(f"{where}: the model's first dimension is fixed at {found.dims[0]}, but with "
                          f"max_batch_size {max_batch_size} it must be the batch (dynamic); set max_batch_size 0 "
                          f"and dims {list(found.dims)}, or export the model with a dynamic first axis")
    matches = len(found.dims) == len(expected) and all(
        m == -1 or m == e for m, e in zip(found.dims, expected, strict=True))
    if not matches:
        batch = " (the batch dimension first, as max_batch_size > 0)" if max_batch_size else ""
        raise ConfigError(f"{where} has shape {list(expected)}{batch} but the model's is {list(found.dims)} "
                          "(-1: any size); make dims (or reshape) match the model")


def check_matches(spec: ModelSpec, session: Any) -> tuple[set[str], dict[str, tuple[int, ...]]]:
    """The config describes the model: every model input declared, every declared tensor in the model, alike.

    Returns the scalars the config declares as ``dims: [ 1 ]`` without a reshape (as Triton lets it):
    the inputs to give the model as scalars, and the outputs to give back with the config's dims.
    """
    inputs, initializers, outputs = session_tensors(session)
    for tensor in spec.inputs:
        found = inputs.get(tensor.name) or initializers.get(tensor.name)
        if found is None:
            raise ConfigError(f"config.pbtxt declares input '{tensor.name}' but the model has no such input "
                              f"(it takes {sorted(inputs)})")
        _check_tensor("input", tensor, found, spec.max_batch_size)
    undeclared = [name for name in inputs if name not in spec.input_names]
    if undeclared:
        raise ConfigError(f"the model takes input(s) {undeclared} that config.pbtxt does not declare; declare every "
                          f"model input (the model takes {sorted(inputs)})")
    for tensor in spec.outputs:
        found = outputs.get(tensor.name)
        if found is None:
            raise ConfigError(f"config.pbtxt declares output '{tensor.name}' but the model has no such output "
                              f"(it gives {sorted(outputs)})")
        _check_tensor("output", tensor, found, spec.max_batch_size)
    scalar_inputs = {t.name for t in spec.inputs if t.reshape is None and t.name in inputs and not inputs[t.name].dims}
    scalar_outputs = {t.name: t.dims for t in spec.outputs if t.reshape is None and not outputs[t.name].dims}
    return scalar_inputs, scalar_outputs


def strings_in(array: np.ndarray, name: str) -> np.ndarray:
    """A BYTES input as the str elements ONNX Runtime's string tensors take."""
    flat = array.reshape(-1)
    try:
        text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}' holds bytes that are not UTF-8 text; this ONNX model's string "
                           "tensors carry text only") from None
    return np.array(text, dtype=object).reshape(array.shape)


def strings_out(array: np.ndarray) -> np.ndarray:
    """A string output as BYTES (UTF-8)."""
    flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape)


class FeedRunner:
    """Runs the session on host arrays (``session.run``): the CPU path, and that of models with strings."""

    def __init__(self, session: Any, spec: ModelSpec, options: Any) -> None:
        self.session = session
        self.options = options
        self.outputs = [t.name for t in spec.outputs]
        self.bytes = {t.name for t in (*spec.inputs, *spec.outputs) if t.datatype == "BYTES"}

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        feeds = {}
        for name, value in inputs.items():
            if name in self.bytes:
                feeds[name] = strings_in(value, name)
            else:
                feeds[name] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        results = self.session.run(self.outputs, feeds, self.options)
        return {name: strings_out(array) if name in self.bytes else array
                for name, array in zip(self.outputs, results, strict=True)}


class BoundRunner:
    """Runs the session with I/O binding on ``device``: inputs by pointer, outputs left where ONNX Runtime puts them.

    Numeric outputs come back as torch tensors on the device through DLPack (no copy); the
    batch executor copies them to the host with the rest. ONNX Runtime binds no string
    tensors, so models with BYTES tensors run through `FeedRunner` (see `binds`).
    """

    def __init__(self, session: Any, spec: ModelSpec, options: Any, device: torch.device) -> None:
        self.session = session
        self.options = options
        self.device = device
        self.device_type = "cuda" if device.type == "cuda" else "cpu"
        self.device_id = device.index or 0
        self.element_types = {t.name: ONNX_ELEMENT_TYPES[t.datatype] for t in (*spec.inputs, *spec.outputs)}
        self.outputs = [t.name for t in spec.outputs]
        self.binding = session.io_binding()  # one per instance: an instance runs one batch at a time

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        held = []  # the tensors whose memory is bound, alive until the run is over
        for name, value in inputs.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            tensor = tensor.to(self.device).contiguous()
            held.append(tensor)
            binding.bind_input(name, self.device_type, self.device_id, self.element_types[name], tuple(tensor.shape),
                               tensor.data_ptr())
        for name in self.outputs:
            binding.bind_output(name, self.device_type, self.device_id)
        if self.device_type == "cuda":
            # the executor copied the inputs on the instance's stream; ONNX Runtime computes on its own
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding, self.options)
        values = binding.get_outputs()
        del held
        return {name: _from_ort(value) for name, value in zip(self.outputs, values, strict=True)}


def _from_ort(value: Any) -> Any:
    try:
        return torch.from_dlpack(value)
    except (AttributeError, BufferError, RuntimeError, TypeError):  # a build without DLPack: via the host
        return value.numpy()


def binds(device: torch.device, spec: ModelSpec) -> bool:
    """Whether a model runs by I/O binding (`BoundRunner`) on ``device`` rather than by feeds (`FeedRunner`).

    On a GPU it does, so that inputs and outputs stay on the device; on the CPU only for BF16,
    which numpy cannot hold. String tensors cannot be bound: a model with BYTES runs by feeds
    everywhere (its numeric inputs then pass through the host).
    """
    datatypes = {t.datatype for t in (*spec.inputs, *spec.outputs)}
    if "BYTES" in datatypes:
        if "BF16" in datatypes:
            raise ConfigError("ONNX Runtime's Python API cannot run a model with both BF16 and BYTES tensors; "
                              "cast the BF16 tensors to FP16 or FP32 in the model")
        return False
    return device.type == "cuda" or "BF16" in datatypes


class OnnxModel(Model):
    """Runs ``<version>/model.onnx`` (or ``default_model_filename``) with ONNX Runtime."""

    def load(self) -> None:
        ort = import_ort()
        label = f"{self.name}/{self.version}/{self.config.filename}"
        file = model_file(self.path, self.config.filename, label)
        plan = session_plan(self.config.proto, self.parameters)
        gpu_asked = any(group.kind == "KIND_GPU" for group in self.config.instance_groups)
        chosen = providers(self.device, plan, ort.get_available_providers(), label, gpu_asked)
        self.session = open_session(file, label, session_options(ort, plan), chosen)
        self.scalar_inputs, self.scalar_outputs = check_matches(self.config, self.session)
        options = run_options(ort, plan)
        # where the session computes: the instance's GPU, or the CPU when this ONNX Runtime has no CUDA
        runs_on = self.device if any(name in GPU_PROVIDERS for name, _ in chosen) else torch.device("cpu")
        self.runner: FeedRunner | BoundRunner = (
            BoundRunner(self.session, self.config, options, runs_on) if binds(runs_on, self.config)
            else FeedRunner(self.session, self.config, options))

    def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        for name in self.scalar_inputs:
            if name in inputs:
                inputs[name] = inputs[name].reshape(())
        outputs = self.runner(inputs)
        for name, dims in self.scalar_outputs.items():
            if outputs[name].ndim == 0:  # not an output whose shape ONNX Runtime could not tell
                outputs[name] = outputs[name].reshape(dims)
        return outputs

    def unload(self) -> None:
        del self.runner, self.session
