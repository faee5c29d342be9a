"""Triton's Python backend API: ``model.py`` files with ``class TritonPythonModel`` served unchanged.

`triton_python_backend_utils` (pb_utils) re-exports the types a model uses: `Tensor`,
`InferenceRequest` (received by ``execute``, or built for BLS calls to other models),
`InferenceResponse`, `TritonError`, `TritonModelException`, response senders for
decoupled models, `ModelConfig` for ``auto_complete_config``, and the helpers.
`python_handler` picks the handler of a python-backend version: the adapter that runs a
``TritonPythonModel`` (`adapter`), or the `serving.Model` subclass the file defines.

Example ``model.py``::

    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)]))
            return responses
"""

from __future__ import annotations

import inspect
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from ...model import Model, forget_handler_module, handler_in_module, import_model_module
from ...paths import confined
from .adapter import TritonPythonHandler, adapter_for
from .autocomplete import auto_complete

__all__ = ["python_handler", "complete_python", "TritonPythonHandler"]


def python_handler(file: Path, model_name: str, version: int, label: str) -> type[Model]:
    """The handler class of a python-backend version: its ``TritonPythonModel`` or its `serving.Model`."""
    module = import_model_module(file, model_name, version, label)
    model_class = getattr(module, "TritonPythonModel", None)
    if inspect.isclass(model_class):
        try:
            return adapter_for(model_class)
        except Exception:
            forget_handler_module(model_name, version)
            raise
    return handler_in_module(module, label)


def complete_python(config: pb.ModelConfig, model_dir: Path) -> None:
    """Triton's auto-complete for a python model: its ``auto_complete_config``, on the newest version's file."""
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    if versions:
        filename = config.default_model_filename or "model.py"
        # the file is imported: it must be the model's own, whatever the config names
        label = f"{model_dir.name}/{versions[0]}/{filename}"
        auto_complete(config, confined(model_dir / str(versions[0]), filename, "default_model_filename", label))
