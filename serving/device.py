"""Everything about devices: choosing one, and moving batches between host and device."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from inference_protocol.datatypes import NUMPY_DTYPES

from .config import ModelSpec
from .cpus import available_cpus
from .errors import ConfigError, ModelError

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


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where instances run: ``--device`` and each model's ``instance_group``, as Triton places them.

    ``KIND_CPU`` groups run on the CPU. ``KIND_GPU`` and ``KIND_AUTO`` groups run ``count``
    instances on each of their ``gpus`` (every visible GPU when the list is empty, or only
    N with ``--device cuda:N``). Without a GPU, or with ``--device cpu``, they run on the
    CPU; a ``KIND_GPU`` group says so in one warning.
    """

    setting: str = "auto"

    def default(self) -> torch.device:
        return resolve_device(self.setting)

    def devices(self, spec: ModelSpec) -> list[torch.device]:
        """One device per instance of the model."""
        default = self.default()
        cpu = torch.device("cpu")
        devices: list[torch.device] = []
        for group in spec.instance_groups:
            if group.kind == "KIND_CPU" or default.type == "cpu":
                if group.kind == "KIND_GPU":
                    log.warning("model %s asks for KIND_GPU instances but %s; running them on the CPU", spec.name,
                                "--device is cpu" if self.setting == "cpu" else "no GPU is visible")
                devices += [cpu] * group.count
                continue
            count = torch.cuda.device_count()
            gpus = group.gpus or ((default.index,) if self.setting.startswith("cuda") else tuple(range(count)))
            missing = [g for g in gpus if g >= count]
            if missing:
                raise ConfigError(f"instance_group asks for GPU(s) {missing} but only {count} are visible "
                                  "(CUDA_VISIBLE_DEVICES renumbers them from 0)")
            for gpu in gpus:
                devices += [torch.device("cuda", gpu)] * group.count
        return devices


class HostBuffers:
    """Staging buffers on the host, reused from batch to batch (page-locked when CUDA is present).

    `stage` concatenates a batch's arrays straight into the buffer of that name, growing it
    only when a batch needs more room, so a steady stream of batches allocates nothing and
    a copy to the GPU from it can run asynchronously.
    """

    def __init__(self, pin: bool | None = None) -> None:
        self.pin = torch.cuda.is_available() if pin is None else pin
        self._buffers: dict[str, torch.Tensor] = {}
        self.allocations = 0

    def buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A writable view of ``shape`` on the buffer ``name``."""
        needed = int(np.prod(shape)) * dtype.itemsize
        current = self._buffers.get(name)
        if current is None or current.numel() < needed:
            self._buffers[name] = torch.empty(max(needed, 1), dtype=torch.uint8, pin_memory=self.pin)
            self.allocations += 1
        raw = self._buffers[name].numpy()[:needed]
        return raw.view(dtype).reshape(shape)

    def stage(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        """The arrays concatenated along dim 0, in the buffer ``name``."""
        first = arrays[0]
        rows = sum(a.shape[0] for a in arrays) if first.ndim else 1
        out = self.buffer(name, (rows, *first.shape[1:]) if first.ndim else (), first.dtype)
        if len(arrays) == 1:
            np.copyto(out, first)
        else:
            np.concatenate(arrays, out=out)
        return out


def configure_threads(cpu_threads: int) -> int:
    """Set torch's intra-op thread count (process-wide) and return it.

    The default leaves one core to the event loop: torch's worker threads spin while
    they wait for work, and on a small machine they would take the core that parses
    requests.
    """
    if cpu_threads <= 0:
        cpu_threads = max(1, available_cpus() - 1)
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
