"""Running one batch on one instance's device: the part of an instance that knows about CUDA.

On a GPU every instance has its own CUDA stream. Inputs are concatenated straight into
page-locked host buffers that the instance reuses, copied to the device with
``non_blocking=True``; outputs come back the same way into page-locked buffers, with one
synchronisation per batch. A batch handed over while the one before computes is *staged*
(`stage`, on the event loop): concatenated into one of two further sets of buffers, used in
turn, and copied on a second stream, the copy stream, whose event the compute stream waits
for (`ready`), so the copy overlaps the compute before it. Optional, each off by default
(config.pbtxt ``parameters``):

* ``precision`` ``fp16``/``bf16``: autocast; for models that keep their accuracy in half
  precision and want tensor-core speed (bf16 also runs on CPUs).
* ``torch_compile`` (a mode) with ``torch_compile_backend``: compiles a Python handler's
  ``predict``; worth it for long-lived models with steady shapes, at the price of a slow
  first batch per shape (warm-up pays it before readiness).
* ``cuda_graphs``: one CUDA graph per batch-size bucket (1, the preferred sizes,
  max_batch_size), a batch padded up to the next captured size; for small models whose
  time goes to kernel launches. The handler must be capturable: no host synchronisation,
  no shape-dependent control flow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .backends.onnx import OnnxModel
from .backends.torchscript import TorchScriptModel
from .config import ModelSpec
from .device import HostBuffers, to_numpy, to_torch
from .errors import ConfigError, ModelError
from .model import Model

log = logging.getLogger(__name__)

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Staged:
    """A batch's inputs, staged on the loop: on the device (or being copied there), ready to compute."""

    __slots__ = ("inputs", "event", "ns")

    def __init__(self, inputs: dict[str, Any], event: torch.cuda.Event | None, ns: int) -> None:
        self.inputs = inputs
        self.event = event  # recorded on the copy stream after the copies; None on the CPU
        self.ns = ns  # the time staging took, counted as compute input


class BatchExecutor:
    def __init__(self, handler: Model, spec: ModelSpec) -> None:
        self.handler = handler
        self.spec = spec
        self.device = handler.device
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.inputs = HostBuffers(pin=True) if self.cuda else None
        self.outputs = HostBuffers(pin=True) if self.cuda else None
        # staging: two sets of host buffers used in turn (one batch running, one staged), each
        # with the event of its last copy, and the copy stream
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.staging: list[tuple[HostBuffers, list[torch.cuda.Event | None]]] = [
            (HostBuffers(pin=True), [None]) for _ in range(2)] if self.cuda else []
        self._turn = 0
        options = spec.execution
        self.autocast = AUTOCAST.get(options.precision)
        self.predict: Callable[[dict[str, Any]], dict[str, Any]] = handler.predict
        if isinstance(handler, OnnxModel) and (options.torch_compile != "off" or options.cuda_graphs):
            raise ConfigError("torch_compile and cuda_graphs apply to Python handlers; ONNX Runtime optimises "
                              "and captures graphs itself (optimization { graph { level } }, and the CUDA "
                              "provider's enable_cuda_graph)")
        if isinstance(handler, OnnxModel) and self.autocast is not None:
            log.warning("model %s: precision %s has no effect on ONNX Runtime; export the model in that precision",
                        spec.name, options.precision)
            self.autocast = None
        if options.torch_compile != "off":
            if isinstance(handler, TorchScriptModel):
                raise ConfigError("torch_compile applies to Python handlers; a TorchScript model is already "
                                  "compiled (try cuda_graphs on a GPU instead)")
            self.predict = torch.compile(handler.predict, mode=options.torch_compile,
                                         backend=options.torch_compile_backend)
        self.graphs: dict[int, _Graph] = {}
        self.use_graphs = options.cuda_graphs and self.cuda
        if options.cuda_graphs and not self.cuda:
            log.warning("model %s: cuda_graphs needs a GPU instance; this one runs on %s without them",
                        spec.name, self.device)
        if self.use_graphs and (not spec.max_batch_size or any(t.datatype == "BYTES" for t in spec.inputs)):
            raise ConfigError("cuda_graphs needs max_batch_size > 0 and numeric inputs")

    def enter_thread(self) -> None:
        """Set the instance thread's torch state once: inference mode and the instance's stream.

        Both are thread-local in torch; setting them once for the thread that runs every
        batch of this instance saves entering them per batch.
        """
        torch.inference_mode().__enter__()  # never left: this thread only ever runs inference
        if self.stream is not None:
            torch.cuda.set_stream(self.stream)

    def to_device(self, arrays: dict[str, list[np.ndarray]], rows: int,
                  buffers: HostBuffers | None = None) -> dict[str, Any]:
        """Concatenate each input's arrays (in reused host buffers on a GPU) onto the device."""
        buffers = buffers or self.inputs
        inputs: dict[str, Any] = {}
        for tensor in self.spec.inputs:
            parts = arrays.get(tensor.name)
            if not parts:
                continue  # an optional input no request of this batch gave
            if buffers is not None and tensor.datatype != "BYTES":
                array = buffers.stage(tensor.name, parts)
            else:
                array = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if tensor.reshape is not None:
                array = array.reshape(((rows,) if self.spec.max_batch_size else ()) + tensor.reshape)
            inputs[tensor.name] = to_torch(array, tensor.datatype, self.device)
        return inputs

    def stage(self, arrays: dict[str, list[np.ndarray]], rows: int) -> Staged:
        """A batch's inputs staged ahead of its compute, on the event loop (see the module's docstring)."""
        start = time.monotonic_ns()
        if self.copy_stream is None:
            return Staged(self.to_device(arrays, rows), None, time.monotonic_ns() - start)
        assert self.stream is not None  # both streams exist on a GPU
        buffers, last = self.staging[self._turn]
        self._turn ^= 1
        if last[0] is not None:
            last[0].synchronize()  # done long ago, unless that batch never ran: its buffers are free
        with torch.cuda.stream(self.copy_stream):
            inputs = self.to_device(arrays, rows, buffers)
            for value in inputs.values():
                if isinstance(value, torch.Tensor):
                    value.record_stream(self.stream)  # allocated on the copy stream, used on the compute stream
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        last[0] = event
        return Staged(inputs, event, time.monotonic_ns() - start)

    def ready(self, staged: Staged) -> dict[str, Any]:
        """A staged batch's inputs, for compute on the instance thread (after their copy, on a GPU)."""
        if staged.event is not None:
            torch.cuda.current_stream(self.device).wait_event(staged.event)
        return staged.inputs

    def run(self, inputs: dict[str, Any], rows: int) -> Any:
        """Call predict (or replay its CUDA graph) on device inputs, on the instance thread."""
        if self.use_graphs:
            return self._graph(rows).replay(inputs, rows)
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self.predict(inputs)
        return self.predict(inputs)

    def to_host(self, outputs: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
        """The outputs on the host as numpy arrays of their declared datatypes, one sync per batch."""
        if not isinstance(outputs, dict):
            raise ModelError(f"model '{self.spec.name}': predict returned {type(outputs).__name__}; "
                             "it must return a dict of output name -> tensor")
        staged: dict[str, Any] = {}
        for tensor in self.spec.outputs:
            value = outputs.get(tensor.name)
            if value is None:
                if tensor.name in wanted:
                    raise ModelError(f"model '{self.spec.name}': predict returned no output '{tensor.name}' "
                                     f"(it returned {', '.join(map(str, outputs)) or 'nothing'})")
                continue
            if self.autocast is not None and isinstance(value, torch.Tensor) and value.dtype == self.autocast:
                value = _declared(value, tensor.datatype)  # autocast's precision inside, the declared type out
            if self.outputs is not None and isinstance(value, torch.Tensor) and value.device.type == "cuda":
                pinned = torch.empty(value.shape, dtype=value.dtype, pin_memory=True) if value.numel() == 0 else \
                    torch.from_numpy(self.outputs.buffer(tensor.name, tuple(value.shape), _np_dtype(value)))
                with torch.cuda.stream(self.stream):
                    pinned.copy_(value, non_blocking=True)
                value = pinned
            staged[tensor.name] = value
        if self.stream is not None:
            self.stream.synchronize()
        host = {}
        for tensor in self.spec.outputs:
            if tensor.name in staged:
                array = to_numpy(staged[tensor.name], tensor.name, tensor.datatype)
                if self.outputs is not None:
                    array = array.copy()  # the staging buffer is reused by the next batch
                host[tensor.name] = array
        return host

    def _graph(self, rows: int) -> _Graph:
        bucket = next((b for b in self.spec.batch_buckets() if b >= rows), self.spec.max_batch_size)
        if bucket not in self.graphs:
            self.graphs[bucket] = _Graph(self, bucket)
        return self.graphs[bucket]


def _declared(value: torch.Tensor, datatype: str) -> torch.Tensor:
    """An output that autocast left in half precision, as the wider float type config.pbtxt declares."""
    wider = {"FP32": torch.float32, "FP64": torch.float64}.get(datatype)
    return value.to(wider) if wider is not None else value


def _np_dtype(tensor: torch.Tensor) -> np.dtype:
    if tensor.dtype == torch.bfloat16:
        return np.dtype(np.uint16)
    return torch.empty(0, dtype=tensor.dtype).numpy().dtype


class _Graph:
    """predict captured for one batch size; smaller batches are padded up to it."""

    def __init__(self, executor: BatchExecutor, rows: int) -> None:
        spec, device = executor.spec, executor.device
        self.rows = rows
        self.static = {}
        for tensor in spec.inputs:
            dims = tensor.reshape if tensor.reshape is not None else tensor.dims
            if -1 in dims:
                raise ConfigError(f"cuda_graphs needs fixed input shapes; input '{tensor.name}' has dims "
                                  f"{list(dims)}")
            sample = to_torch(np.zeros((1,), dtype=np.float32), "FP32", torch.device("cpu"))
            dtype = _torch_dtype(tensor.datatype, sample)
            self.static[tensor.name] = torch.zeros((rows, *dims), dtype=dtype, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm the allocator and cuDNN autotuning before capture
                executor.predict(self.static)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=executor.stream):
            self.outputs = executor.predict(self.static)

    def replay(self, inputs: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
        for name, static in self.static.items():
            if name in inputs:
                static[:rows].copy_(inputs[name], non_blocking=True)
        self.graph.replay()
        return {name: value[:rows] for name, value in self.outputs.items()}


def _torch_dtype(datatype: str, sample: Any) -> torch.dtype:
    from inference_protocol.datatypes import NUMPY_DTYPES
    if datatype == "BF16":
        return torch.bfloat16
    return torch.from_numpy(np.zeros(1, dtype=NUMPY_DTYPES[datatype])).dtype
