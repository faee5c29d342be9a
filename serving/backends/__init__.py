"""Which handler runs each kind of model, and what completes a config from the model's file.

Everything below the batcher calls a backend through `serving.Model` (``load``,
``predict``, ``unload``), so nothing above it knows which backend runs. A backend may also
complete a config that omits inputs or outputs, as Triton's auto-complete does, reading
them from the model itself.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from ..config import ONNX, PYTHON, TORCHSCRIPT, ModelSpec
from ..errors import ConfigError
from ..model import Model
from .onnx import OnnxModel
from .onnx_complete import complete_onnx
from .python import complete_python, python_handler
from .torchscript import TorchScriptModel


def handler_class(spec: ModelSpec, version: int, file: Path) -> type[Model]:
    """The handler class of a version whose model file is ``file``."""
    if spec.platform == TORCHSCRIPT:
        return TorchScriptModel
    if spec.platform == ONNX:
        return OnnxModel
    if spec.platform == PYTHON:
        return python_handler(file, spec.name, version, f"{spec.name}/{version}/{spec.filename}")
    raise ConfigError(f"model '{spec.name}': platform {spec.platform!r} is not served yet")


def complete(kind: str, config: pb.ModelConfig, model_dir: Path) -> None:
    """Fill what ``config`` omits (inputs, outputs, max_batch_size) from the model of kind ``kind``.

    Kinds that cannot say leave the config as it is; the config is then refused for what it lacks.
    """
    if kind == ONNX:
        complete_onnx(config, model_dir)
    if kind == PYTHON:
        complete_python(config, model_dir)
