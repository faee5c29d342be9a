"""A model instance: one handler object with its own worker thread, computing whole batches.

An instance is the batcher's worker. It takes a second batch while it computes one: as
the batch is handed over, on the event loop, its inputs are gathered and staged by its
`BatchExecutor` (concatenated into the instance's next set of host buffers and, on a GPU,
copied on a second stream), and its thread starts that batch the moment the one before
ends, without waiting for the loop. On the thread it runs them through the executor
(autocast, CUDA graphs) and splits the outputs back per request; the loop sends those
responses while the next batch computes. torch releases the GIL while it computes, so the
event loop keeps serving meanwhile; an ``async def predict`` runs on the event loop
instead, one batch at a time. Each instance counts its busy time (from the start of a
batch to its split outputs) in ``serving_instance_busy_seconds_total``.

Out of GPU memory, a batch is split in half and each half retried, down to single
requests; only a request that fails alone gets the error.

A `RequestHandler` (Triton's Python backend models) takes the batch as the list of its
requests instead: nothing is concatenated or split, and each request gets the result the
handler gives it (outputs, its own error, or None when its stream answers it).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from typing import Any

import numpy as np
import torch

from . import tracing
from .batching import Pending, begin
from .config import ModelSpec
from .errors import ModelError, ServingError, Unavailable, failure_text
from .execution import BatchExecutor, Staged
from .instance_thread import InstanceThread
from .metrics import ModelStats
from .model import Model, RequestHandler

log = logging.getLogger(__name__)

Timings = tuple[int, int, int]  # input, infer, output (ns)
Execution = tuple[list[Pending], Timings]  # one executed (sub-)batch
# The result of a request that went away while its batch was staged; never delivered, since
# the batcher sets results only on futures that are not done.
GONE = Unavailable("the request went away before its batch started")


class ModelInstance:
    def __init__(self, handler: Model, spec: ModelSpec, stats: ModelStats, index: int = 0) -> None:
        self.handler = handler
        self.spec = spec
        self.stats = stats
        self.device = handler.device
        self.label = f"{spec.name} v{handler.version} #{index} on {self.device}"
        self.takes_requests = isinstance(handler, RequestHandler)
        compute = handler.execute_requests if isinstance(handler, RequestHandler) else handler.predict
        self.is_async = inspect.iscoroutinefunction(compute)
        self.executor = BatchExecutor(handler, spec)
        self.thread = InstanceThread(f"model-{spec.name}-{index}", self.executor.enter_thread)
        # Batches it holds at once: a thread of its own takes the next while it computes one.
        self.depth = 1 if self.is_async else 2
        self.busy = stats.busy_counter(index, str(self.device))

    async def __call__(self, batch: list[Pending]) -> list[Any]:
        traced = tracing.current()
        if traced is None:  # all tracing costs a batch when it is off
            results, executions = await self._execute(batch, None)
        else:
            from . import spans

            results, executions = await spans.batch(traced, self, batch, self._execute)
        for items, timings in executions:
            queue_ns = [item.dispatched_ns - item.enqueued_ns for item in items]
            self.stats.record_batch(queue_ns, sum(item.rows for item in items), *timings)
        return results

    async def _execute(self, batch: list[Pending], context: contextvars.Context | None) -> tuple[list[Any],
                                                                                               list[Execution]]:
        """Computes a batch; ``context`` (tracing's, with the batch's span) is the one its thread runs in."""
        if self.takes_requests:
            return await self._execute_requests(batch, context)
        if self.is_async:
            return await self._compute_async(batch)
        compute = functools.partial(self._compute, batch, self._stage(batch))
        if context is None:
            return await self.thread.run(compute)
        return await self.thread.run(context.run, compute)

    def _stage(self, batch: list[Pending]) -> Staged | None:
        """On the loop, as the batch is handed over: its inputs, ready for the thread to start it at once."""
        try:
            return self.executor.stage(self._gather(batch), sum(item.rows for item in batch))
        except torch.OutOfMemoryError:  # the thread gathers it again, and splits it if memory stays short
            self._release_memory()
            return None

    async def _execute_requests(self, batch: list[Pending],
                                context: contextvars.Context | None) -> tuple[list[Any], list[Execution]]:
        handler = self.handler
        assert isinstance(handler, RequestHandler)
        start = time.monotonic_ns()
        try:
            if self.is_async:
                live = batch  # one batch at a time, on this loop: nothing was staged
                results = await handler.execute_requests([item.payload for item in batch])  # type: ignore[misc]
            else:
                if context is None:
                    live, results = await self.thread.run(self._requests, batch)
                else:
                    live, results = await self.thread.run(context.run, self._requests, batch)
        except ServingError:
            raise
        except Exception as exc:
            raise self._failure(exc, len(batch)) from exc
        computed = time.monotonic_ns()
        if self.is_async:
            self.busy[0] += computed - start
        for result in results:  # the prediction distribution, as for batches the instance splits itself
            if isinstance(result, dict):
                self.stats.predictions.submit(result)
        executions: list[Execution] = [(live, (0, computed - start, 0))] if live else []
        return _in_order(batch, live, results), executions

    # -- on the instance thread ----------------------------------------------------------

    def _requests(self, batch: list[Pending]) -> tuple[list[Pending], list[Any]]:
        handler = self.handler
        assert isinstance(handler, RequestHandler)
        start = time.monotonic_ns()
        try:
            live = begin(batch)
            return live, list(handler.execute_requests([item.payload for item in live])) if live else []
        finally:
            self.busy[0] += time.monotonic_ns() - start

    def _compute(self, batch: list[Pending], staged: Staged | None) -> tuple[list[Any], list[Execution]]:
        start = time.monotonic_ns()
        executions: list[Execution] = []
        live = begin(batch)
        try:
            if not live:
                return [GONE] * len(batch), executions
            if len(live) != len(batch):
                staged = None  # staged with requests that went away: gather the others again
            try:
                results = self._compute_once(live, executions, staged)
            except torch.OutOfMemoryError:
                self.stats.out_of_memory["split"] += 1
                log.warning("model %s ran out of GPU memory on a batch of %d requests (%d rows); splitting it",
                            self.label, len(live), sum(item.rows for item in live))
                self._release_memory()
                results = self._split(live, executions)
            return _in_order(batch, live, results), executions
        finally:
            self.busy[0] += time.monotonic_ns() - start

    def _split(self, batch: list[Pending], executions: list[Execution]) -> list[Any]:
        if len(batch) == 1:
            self.stats.out_of_memory["failed"] += 1
            rows = batch[0].rows
            return [Unavailable(f"model '{self.spec.name}' ran out of GPU memory on this request alone "
                                f"({rows} rows); send fewer rows per request or retry later")]
        half = len(batch) // 2
        results: list[Any] = []
        for part in (batch[:half], batch[half:]):
            try:
                results += self._compute_once(part, executions)
            except torch.OutOfMemoryError:
                self._release_memory()
                results += self._split(part, executions)
        return results

    def _release_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _compute_once(self, batch: list[Pending], executions: list[Execution],
                      staged: Staged | None = None) -> list[Any]:
        start = time.monotonic_ns()
        rows = sum(item.rows for item in batch)
        if staged is None:
            inputs = self.executor.to_device(self._gather(batch), rows)
        else:
            inputs = self.executor.ready(staged)
            start -= staged.ns  # its input time includes the staging, done on the loop
        assembled = time.monotonic_ns()
        try:
            outputs = self.executor.run(inputs, rows)
        except (ServingError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            raise self._failure(exc, len(batch)) from exc
        computed = time.monotonic_ns()
        results = self._split_outputs(self.executor.to_host(outputs, self._wanted(batch)), batch, rows)
        executions.append((batch, (assembled - start, computed - assembled, time.monotonic_ns() - computed)))
        return results

    async def _compute_async(self, batch: list[Pending]) -> tuple[list[Any], list[Execution]]:
        start = time.monotonic_ns()
        rows = sum(item.rows for item in batch)
        inputs = self.executor.to_device(self._gather(batch), rows)
        assembled = time.monotonic_ns()
        try:
            outputs = await self.handler.predict(inputs)  # type: ignore[misc]  # an async override of the sync base
        except ServingError:
            raise
        except Exception as exc:
            raise self._failure(exc, len(batch)) from exc
        computed = time.monotonic_ns()
        results = self._split_outputs(self.executor.to_host(outputs, self._wanted(batch)), batch, rows)
        end = time.monotonic_ns()
        self.busy[0] += end - start
        return results, [(batch, (assembled - start, computed - assembled, end - computed))]

    def _failure(self, exc: Exception, requests: int) -> ModelError:
        log.error("model %s failed on a batch of %d requests", self.label, requests, exc_info=exc)
        return ModelError(f"model '{self.spec.name}' version {self.handler.version} failed: "
                          f"{failure_text(exc)}")

    def _gather(self, batch: list[Pending]) -> dict[str, list[np.ndarray]]:
        gathered: dict[str, list[np.ndarray]] = {}
        for item in batch:
            for name, array in item.payload.inputs.items():
                gathered.setdefault(name, []).append(array)
        return gathered

    def _wanted(self, batch: list[Pending]) -> set[str]:
        wanted: set[str] = set()
        for item in batch:
            if item.payload.outputs is None:
                return {t.name for t in self.spec.outputs}
            wanted |= item.payload.outputs
        return wanted

    def _split_outputs(self, host: dict[str, np.ndarray], batch: list[Pending], rows: int) -> list[Any]:
        spec = self.spec
        for tensor in spec.outputs:
            array = host.get(tensor.name)
            if array is None:
                continue
            if spec.max_batch_size:
                if array.ndim == 0 or array.shape[0] != rows:
                    raise ModelError(f"model '{spec.name}': output '{tensor.name}' has shape {list(array.shape)} "
                                     f"but the batch has {rows} rows; the first dimension must be the batch")
                if tensor.reshape is not None:
                    host[tensor.name] = array.reshape((rows, *tensor.dims))
            elif tensor.reshape is not None:
                host[tensor.name] = array.reshape(tensor.dims)
        self.stats.predictions.submit(host)
        if not spec.max_batch_size:
            return [host]
        results = []
        offset = 0
        for item in batch:
            end = offset + item.rows
            results.append({name: array[offset:end] for name, array in host.items()})
            offset = end
        return results

    def warm_up(self, batches: list[dict[str, np.ndarray]]) -> None:
        """Run batches through the device path once each, on the instance thread, uncounted."""
        if self.takes_requests:
            return  # its requests are the handler's own business; nothing of ours to prepare
        for arrays in batches:
            rows = next(iter(arrays.values())).shape[0] if self.spec.max_batch_size else 1
            outputs = self.executor.run(self.executor.to_device({k: [v] for k, v in arrays.items()}, rows), rows)
            self.executor.to_host(outputs, set())

    def unload(self) -> None:
        try:
            self.handler.unload()
        finally:
            self.thread.shutdown(wait=False)


def _in_order(batch: list[Pending], live: list[Pending], results: list[Any]) -> list[Any]:
    """One result per request of ``batch``: those of ``live`` (a subsequence of it), GONE for the others."""
    if len(live) == len(batch):
        return results
    if len(results) != len(live):
        return results  # the batcher reports the mismatch
    by_item = {id(item): result for item, result in zip(live, results, strict=True)}
    return [by_item.get(id(item), GONE) for item in batch]
