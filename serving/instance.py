"""A model instance: one handler object with its own worker thread, computing whole batches.

An instance is the batcher's worker: it concatenates the batch's inputs, moves them to
the device, calls ``predict``, brings the outputs back to the host and splits them per
request. A plain ``predict`` runs on the instance's own thread (torch releases the GIL
while it computes, so the event loop keeps serving); an ``async def predict`` runs on
the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .batching import Pending
from .config import ModelSpec
from .device import to_numpy, to_torch
from .errors import ModelError, ServingError
from .metrics import ModelStats
from .model import Model

log = logging.getLogger(__name__)

Timings = tuple[int, int, int]  # input, infer, output (ns)


class ModelInstance:
    def __init__(self, handler: Model, spec: ModelSpec, stats: ModelStats, index: int = 0) -> None:
        self.handler = handler
        self.spec = spec
        self.stats = stats
        self.device = handler.device
        self.label = f"{spec.name} v{handler.version} #{index}"
        self.is_async = inspect.iscoroutinefunction(handler.predict)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{spec.name}-{index}")

    async def __call__(self, batch: list[Pending]) -> list[Any]:
        if self.is_async:
            results, timings = await self._compute_async(batch)
        else:
            loop = asyncio.get_running_loop()
            results, timings = await loop.run_in_executor(self.executor, self._compute, batch)
        self.stats.record_batch([item.dispatched_ns - item.enqueued_ns for item in batch],
                                sum(item.rows for item in batch), *timings)
        return results

    # -- on the instance thread ----------------------------------------------------------

    def _compute(self, batch: list[Pending]) -> tuple[list[Any], Timings]:
        start = time.monotonic_ns()
        inputs = self._assemble(batch)
        assembled = time.monotonic_ns()
        try:
            with torch.inference_mode():
                outputs = self.handler.predict(inputs)
        except ServingError:
            raise
        except Exception as exc:
            raise self._failure(exc, len(batch)) from exc
        computed = time.monotonic_ns()
        results = self._split(outputs, batch)
        return results, (assembled - start, computed - assembled, time.monotonic_ns() - computed)

    async def _compute_async(self, batch: list[Pending]) -> tuple[list[Any], Timings]:
        start = time.monotonic_ns()
        inputs = self._assemble(batch)
        assembled = time.monotonic_ns()
        try:
            outputs = await self.handler.predict(inputs)  # type: ignore[misc]
        except ServingError:
            raise
        except Exception as exc:
            raise self._failure(exc, len(batch)) from exc
        computed = time.monotonic_ns()
        results = self._split(outputs, batch)
        return results, (assembled - start, computed - assembled, time.monotonic_ns() - computed)

    def _failure(self, exc: Exception, requests: int) -> ModelError:
        log.error("model %s failed on a batch of %d requests", self.label, requests, exc_info=exc)
        return ModelError(f"model '{self.spec.name}' version {self.handler.version} failed: "
                          f"{type(exc).__name__}: {exc}")

    def _assemble(self, batch: list[Pending]) -> dict[str, Any]:
        spec = self.spec
        rows = sum(item.rows for item in batch)
        inputs: dict[str, Any] = {}
        for tensor in spec.inputs:
            arrays = [item.payload.inputs[tensor.name] for item in batch if tensor.name in item.payload.inputs]
            if not arrays:
                continue  # an optional input no request of this batch gave
            array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            if tensor.reshape is not None:
                array = array.reshape(((rows,) if spec.max_batch_size else ()) + tensor.reshape)
            inputs[tensor.name] = to_torch(array, tensor.datatype, self.device)
        return inputs

    def _split(self, outputs: Any, batch: list[Pending]) -> list[dict[str, np.ndarray]]:
        spec = self.spec
        if not isinstance(outputs, dict):
            raise ModelError(f"model '{spec.name}': predict returned {type(outputs).__name__}; "
                             "it must return a dict of output name -> tensor")
        rows = sum(item.rows for item in batch)
        host: dict[str, np.ndarray] = {}
        for tensor in spec.outputs:
            if tensor.name not in outputs:
                if any(item.payload.outputs is None or tensor.name in item.payload.outputs for item in batch):
                    raise ModelError(f"model '{spec.name}': predict returned no output '{tensor.name}' "
                                     f"(it returned {', '.join(map(str, outputs)) or 'nothing'})")
                continue  # no request of this batch asked for it
            array = to_numpy(outputs[tensor.name], tensor.name, tensor.datatype)
            if spec.max_batch_size:
                if array.ndim == 0 or array.shape[0] != rows:
                    raise ModelError(f"model '{spec.name}': output '{tensor.name}' has shape {list(array.shape)} "
                                     f"but the batch has {rows} rows; the first dimension must be the batch")
                if tensor.reshape is not None:
                    array = array.reshape((rows,) + tensor.dims)
            elif tensor.reshape is not None:
                array = array.reshape(tensor.dims)
            host[tensor.name] = array
        self.stats.predictions.observe(host)
        if not spec.max_batch_size:
            return [host]
        results = []
        offset = 0
        for item in batch:
            end = offset + item.rows
            results.append({name: array[offset:end] for name, array in host.items()})
            offset = end
        return results

    def unload(self) -> None:
        try:
            self.handler.unload()
        finally:
            self.executor.shutdown(wait=False)
