"""pb_utils.ModelConfig: what a model's ``auto_complete_config`` may fill into its config.

Triton calls ``TritonPythonModel.auto_complete_config(auto_complete_model_config)`` (a
static method) before loading, with the config as far as ``config.pbtxt`` gives it; the
model may add inputs and outputs, set max_batch_size, dynamic batching and the
transaction policy, and returns the object. What it sets must agree with what the config
already says.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as pb

from ...config import config_to_json
from ...errors import ConfigError
from ...model import sibling_imports

__all__ = ["ModelConfig", "auto_complete"]

_INPUT_KEYS = ("name", "data_type", "dims", "optional")
_OUTPUT_KEYS = ("name", "data_type", "dims")


class ModelConfig:
    """The config handed to ``auto_complete_config``; read it with `as_dict`."""

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        self._config: dict[str, Any] = json.loads(model_config) if isinstance(model_config, str) \
            else dict(model_config)
        self._config.setdefault("input", [])
        self._config.setdefault("output", [])
        self._config.setdefault("max_batch_size", 0)

    def as_dict(self) -> dict[str, Any]:
        """The config as a dict (read it; change it through the setters)."""
        return self._config

    @property
    def _name(self) -> str:
        return str(self._config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Set max_batch_size; a config that gives a larger one keeps it and this raises ValueError."""
        current = int(self._config.get("max_batch_size") or 0)
        if current > max_batch_size:
            raise ValueError(f"configuration specified max_batch_size {current}, but in auto-complete-config "
                             f"function for model '{self._name}' specified max_batch_size {max_batch_size}")
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        """Make dynamic batching the scheduler (nothing changes when the config has it already)."""
        for other in ("sequence_batching", "ensemble_scheduling"):
            if self._config.get(other):
                raise ValueError(f"Configuration specified scheduling_choice as '{other}', but auto-complete-config "
                                 f"function for model '{self._name}' tries to set scheduling_choice as "
                                 "'dynamic_batching'")
        if not self._config.get("dynamic_batching"):
            self._config["dynamic_batching"] = {}

    def add_input(self, input: dict[str, Any]) -> None:  # Triton's parameter name
        """Add an input (``name``, ``data_type``, ``dims``, optionally ``optional``), or complete one."""
        self._add("input", input, _INPUT_KEYS)

    def add_output(self, output: dict[str, Any]) -> None:
        """Add an output (``name``, ``data_type``, ``dims``), or complete one the config names."""
        self._add("output", output, _OUTPUT_KEYS)

    def _add(self, kind: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        if not isinstance(tensor, dict):
            raise ValueError(f"{kind} in auto-complete-config function for model '{self._name}' must be a dict")
        extra = [key for key in tensor if key not in allowed]
        if extra:
            raise ValueError(f"{kind} '{tensor.get('name')}' in auto-complete-config function for model "
                             f"'{self._name}' contains property other than {', '.join(map(repr, allowed))}.")
        for key in allowed[:3]:
            if key not in tensor:
                raise ValueError(f"{kind} '{tensor.get('name', '')}' in auto-complete-config function for model "
                                 f"'{self._name}' is missing '{key}' property.")
        for current in self._config[kind]:
            if current.get("name") != tensor["name"]:
                continue
            given_type = current.get("data_type", "TYPE_INVALID")
            if given_type not in ("TYPE_INVALID", tensor["data_type"]):
                raise ValueError(f"unable to load model '{self._name}', configuration expects datatype {given_type} "
                                 f"for {kind} '{tensor['name']}', model provides {tensor['data_type']}")
            if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
                raise ValueError(f"model '{self._name}', tensor '{tensor['name']}': the model expects dims "
                                 f"{list(tensor['dims'])} but the model configuration specifies dims "
                                 f"{list(current['dims'])}")
            current.update(tensor)
            return
        self._config[kind].append(dict(tensor))

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        """Set ``model_transaction_policy`` (its one property: ``decoupled``)."""
        extra = [key for key in transaction_policy_dict if key != "decoupled"]
        if extra:
            raise ValueError(f"model transaction property in auto-complete-config function for model "
                             f"'{self._name}' contains property other than 'decoupled'.")
        policy = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(f"trying to change decoupled property in auto-complete-config for model "
                                 f"'{self._name}', which is already set to '{policy['decoupled']}'.")
            policy["decoupled"] = wanted


def auto_complete(config: pb.ModelConfig, model_file: Path) -> None:
    """Run the model's ``auto_complete_config`` (when it defines one) on ``config``, in place."""
    if not model_file.is_file():
        return
    module_name = f"serving_autocomplete.{config.name}"
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        with sibling_imports(model_file.parent):
            spec.loader.exec_module(module)
        model_class = getattr(module, "TritonPythonModel", None)
        hook = getattr(model_class, "auto_complete_config", None) if inspect.isclass(model_class) else None
        if hook is None:
            return
        completed = hook(ModelConfig(config_to_json(config)))
    except Exception as exc:
        raise ConfigError(f"auto_complete_config of model '{config.name}' failed: "
                          f"{exc or 'it raised an error without a message'}") from exc
    finally:
        sys.modules.pop(module_name, None)
    if not isinstance(completed, ModelConfig):
        raise ConfigError(f"auto_complete_config of model '{config.name}' must return the "
                          "pb_utils.ModelConfig it was given")
    merged = pb.ModelConfig()
    try:
        json_format.ParseDict(completed.as_dict(), merged)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise ConfigError(f"auto_complete_config of model '{config.name}' made a config that is not a valid "
                          f"ModelConfig: {exc}") from None
    # what says which model this is stays the config's: only its contents are the model's to complete
    merged.name, merged.platform, merged.backend = config.name, config.platform, config.backend
    config.CopyFrom(merged)
