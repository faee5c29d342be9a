"""The built-in handler for ``platform: "pytorch_libtorch"``: a TorchScript ``model.pt``.

Inputs and outputs follow Triton's PyTorch backend conventions:

* inputs go to ``forward`` by argument name when every input is named after an
  argument; otherwise by position, ordered by the ``__<index>`` suffix
  (``INPUT__0``, ``INPUT__1``) when every name has one, else in config order;
* a returned tensor is the single output; a tuple or list maps to the outputs by the
  same positional rule; a dict maps by key.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import ConfigError, ModelError
from ..model import Model
from ..paths import confined

_INDEXED = re.compile(r".*__(\d+)$")


def positional_order(names: list[str]) -> list[str]:
    """Names ordered by their ``__<index>`` suffix when all have one, else as given."""
    matches = [_INDEXED.match(n) for n in names]
    if all(matches):
        return [n for _, n in sorted(zip((int(m.group(1)) for m in matches if m), names, strict=True))]
    return list(names)


class TorchScriptModel(Model):
    """Runs ``<version>/model.pt`` (or ``default_model_filename``) with ``torch.jit.load``."""

    def load(self) -> None:
        label = f"{self.name}/{self.version}/{self.config.filename}"
        file = confined(self.path, self.config.filename, "default_model_filename", label)
        if not file.is_file():
            raise ConfigError(f"{label} is missing: a pytorch_libtorch version directory needs its TorchScript file")
        try:
            self.module = torch.jit.load(str(file), map_location=self.device)
        except (RuntimeError, ValueError, OSError):
            # torch's message names the host path; the file's name relative to the repository is enough
            raise ConfigError(f"{label} is not a TorchScript archive (torch.jit.load failed); "
                              "export it with torch.jit.script or torch.jit.trace and torch.jit.save") from None
        self.module.eval()
        self.forward = self.module.forward  # skips nn.Module.__call__'s hook handling on every batch
        input_names = [i.name for i in self.config.inputs]
        arguments = [a.name for a in self.module.forward.schema.arguments[1:]]  # [0] is self
        self.by_keyword = bool(arguments) and set(input_names) <= set(arguments)
        self.input_order = input_names if self.by_keyword else positional_order(input_names)
        if not self.by_keyword and len(arguments) < len(input_names):
            raise ConfigError(f"config.pbtxt declares {len(input_names)} inputs but forward takes "
                              f"{len(arguments)} arguments ({', '.join(arguments)})")
        self.output_order = positional_order([o.name for o in self.config.outputs])

    def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.by_keyword:
            result = self.forward(**{name: inputs[name] for name in self.input_order if name in inputs})
        else:
            result = self.forward(*(inputs[name] for name in self.input_order))
        if isinstance(result, torch.Tensor):
            if len(self.output_order) != 1:
                raise ModelError(f"forward returned one tensor but config.pbtxt declares "
                                 f"{len(self.output_order)} outputs")
            return {self.output_order[0]: result}
        if isinstance(result, dict):
            return result
        if isinstance(result, (tuple, list)):
            if len(result) < len(self.output_order):
                raise ModelError(f"forward returned {len(result)} tensors but config.pbtxt declares "
                                 f"{len(self.output_order)} outputs")
            return dict(zip(self.output_order, result, strict=False))  # extra tensors are dropped
        raise ModelError(f"forward returned {type(result).__name__}; expected a tensor, tuple, list or dict")

    def unload(self) -> None:
        del self.module, self.forward
