"""Everything about devices: choosing one, and moving batches between host and device."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .errors import ConfigError, ModelError
from .types import NUMPY_DTYPES

log = logging.getLogger(__name__)


def resolve_device(setting: str) -> torch.device:
    """``--device`` -> a torch.device. ``auto`` takes the first GPU when one is visible."""
    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {setting} asks for a GPU but torch sees none "
                          "(is this a CUDA build of torch, and is a GPU visible?); use --device auto or cpu")
    device = torch.device("cuda:0" if setting == "cuda" else setting)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {setting}: only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def configure_threads(cpu_threads: int) -> int:
    """Set torch's intra-op thread count (process-wide) and return it.

    The default leaves one core to the event loop: torch's worker threads spin while
    they wait for work, and on a small machine they would take the core that parses
    requests.
    """
    if cpu_threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cpu_threads = max(1, cores - 1)
    torch.set_num_threads(cpu_threads)
    return cpu_threads


def to_torch(array: np.ndarray, datatype: str, device: torch.device) -> torch.Tensor | np.ndarray:
    """A host array as a tensor on ``device``; BYTES stay numpy object arrays."""
    if datatype == "BYTES":
        return array
    if not array.flags.writeable:  # np.frombuffer over a request body
        array = array.copy()
    tensor = torch.from_numpy(array)
    if datatype == "BF16":
        tensor = tensor.view(torch.bfloat16)
    if device.type != "cpu":
        tensor = tensor.to(device, non_blocking=True)
    return tensor


def to_numpy(value: object, name: str, datatype: str) -> np.ndarray:
    """A handler's output on the host, as a numpy array of the declared datatype."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        if tensor.dtype == torch.bfloat16:
            if datatype != "BF16":
                raise ModelError(f"output '{name}' is bfloat16 but config.pbtxt declares {datatype}")
            return tensor.view(torch.int16).numpy().view(np.uint16)
        array = tensor.numpy()
    elif isinstance(value, np.ndarray):
        array = value
    else:
        raise ModelError(f"output '{name}' is a {type(value).__name__}; predict must return tensors or numpy arrays")
    if datatype == "BYTES":
        if array.dtype != object and array.dtype.kind not in "SU":
            raise ModelError(f"output '{name}' is {array.dtype} but config.pbtxt declares BYTES")
        return array.astype(object) if array.dtype != object else array
    expected = NUMPY_DTYPES[datatype]
    if array.dtype != expected:
        raise ModelError(f"output '{name}' is {array.dtype} but config.pbtxt declares {datatype}; "
                         "cast it in predict or fix data_type")
    return array
