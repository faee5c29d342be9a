"""Running an ensemble request: each step through its model's own batcher, as soon as it can.

The scheduler has no queue of its own. A request's tensors start as the ensemble's
inputs; every step whose inputs are all there is sent to its model at once (through
`serving.inprocess.InProcess`, so it batches with that model's other requests and counts in
its statistics); when a step answers, its outputs join the tensors and the steps that were
waiting for them start. Branches of a DAG therefore run at the same time. Tensors pass
from step to step by reference, never copied here.

A step that fails fails only its own request, with Triton's message (``in ensemble 'E',
...``) naming the step too; the steps of the same request still running are cancelled.
With ``max_inflight_requests``, each step runs at most that many requests at once (all the
ensemble's requests together); the others wait for a place before their step is sent. The
ensemble's statistics are counted as Triton counts them: each request that succeeds is
one execution of its rows, whose compute time is the whole pipeline's; its steps count on
their own models as any request does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Any

import numpy as np

from ..config import ModelSpec
from ..errors import ConfigError, NotFound, ServingError, Unavailable
from ..inprocess import InProcess
from ..metrics import ModelStats
from ..types import Work
from .plan import Plan, Step, plan_of

__all__ = ["EnsembleScheduler", "StepFailed", "ensemble_scheduler"]

class StepFailed(ServingError):
    """A step's error as the ensemble's client sees it: the step's status, Triton's message naming the ensemble."""

    reason = "OTHER"  # the ensemble's failure reason, as Triton labels it; the step model counts its own

    def __init__(self, plan: Plan, step: Step, exc: ServingError) -> None:
        super().__init__(f"in ensemble '{plan.name}', {step.label}: {exc}")
        self.http_status, self.grpc_code = exc.http_status, exc.grpc_code


class EnsembleScheduler:
    """The ensemble's scheduler: `submit` runs one request through the steps (see the module docstring)."""

    def __init__(self, spec: ModelSpec, plan: Plan, models: InProcess, stats: ModelStats) -> None:
        self.plan = plan
        self._outputs = tuple(t.name for t in spec.outputs)
        self.models = models
        self.stats = stats
        self._closed = False
        self._running = 0
        self._reserved = 0
        self._settled = asyncio.Event()
        # max_inflight_requests: a bound per step on the step requests running at once (Triton's backpressure)
        self._limits = [asyncio.Semaphore(plan.max_inflight) for _ in plan.steps] if plan.max_inflight else None

    @property
    def pending(self) -> int:
        """An ensemble queues nothing itself: its steps wait in their models' queues."""
        return 0

    @property
    def busy(self) -> bool:
        return self._running > 0

    def start(self) -> None:
        """Nothing to start: requests run as they come."""

    async def reserve(self, wait_s: float = 0.0) -> None:
        """A place for a request being read: refused only once the ensemble is stopping."""
        if self._closed:
            raise Unavailable(f"model '{self.plan.name}' is shutting down; retry on another replica")
        self._reserved += 1

    def release(self) -> None:
        self._reserved -= 1

    async def submit(self, payload: Any, rows: int = 1, key: Hashable = None, timeout_us: int = 0) -> Any:
        """Run one request through the steps; the ensemble's outputs (the requested ones) by name."""
        if self._closed:
            raise Unavailable(f"model '{self.plan.name}' is shutting down; retry on another replica")
        self._running += 1
        start = time.monotonic_ns()
        try:
            outputs = await self._run(payload, timeout_us)
        finally:
            self._running -= 1
            if not self._running:
                self._settled.set()
        # one execution of the request's rows, computing for the whole pipeline (Triton's figures)
        self.stats.record_batch([0], rows, 0, time.monotonic_ns() - start, 0)
        self.stats.predictions.submit(outputs)
        return outputs

    async def _run(self, work: Work, timeout_us: int) -> dict[str, np.ndarray]:
        plan = self.plan
        tensors: dict[str, np.ndarray] = dict(work.inputs)
        # an optional ensemble input the request left out is known to be absent: its readers go without it
        resolved = set(plan.inputs)
        waiting = {step.index: set(step.inputs.values()) for step in plan.steps}
        running: dict[asyncio.Task[dict[str, np.ndarray]], Step] = {}

        def launch_ready() -> None:
            for index in [i for i, needs in waiting.items() if needs <= resolved]:
                del waiting[index]
                step = plan.steps[index]
                task = asyncio.ensure_future(self._step(step, tensors, work, timeout_us))
                running[task] = step

        launch_ready()
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                failure: BaseException | None = None
                for task in done:
                    step = running.pop(task)
                    error = task.exception()
                    if error is not None:
                        failure = failure or error  # a step's failure ends the request
                        continue
                    produced = task.result()
                    for key, tensor in step.outputs.items():
                        if key in produced:
                            tensors[tensor] = produced[key]
                        resolved.add(tensor)
                if failure is not None:
                    raise failure
                launch_ready()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return {name: tensors[name] for name in (self._outputs if work.outputs is None else work.outputs)}

    async def _step(self, step: Step, tensors: dict[str, np.ndarray], work: Work,
                    timeout_us: int) -> dict[str, np.ndarray]:
        inputs = {key: tensors[tensor] for key, tensor in step.inputs.items() if tensor in tensors}
        try:
            if self._limits is None:
                return await self._send(step, inputs, work, timeout_us)
            async with self._limits[step.index]:
                return await self._send(step, inputs, work, timeout_us)
        except ServingError as exc:
            raise StepFailed(self.plan, step, exc) from None

    async def _send(self, step: Step, inputs: dict[str, np.ndarray], work: Work,
                    timeout_us: int) -> dict[str, np.ndarray]:
        try:
            self.models.lookup(step.model, step.version)
        except NotFound as exc:  # the ensemble exists: a step model that left is the server's trouble
            raise Unavailable(f"{exc}; load the step model again") from None
        # each step sees the client's request id and parameters, as Triton passes them on
        return await self.models.infer(step.model, step.version, inputs, list(step.outputs), timeout_us=timeout_us,
                                       parameters=work.parameters, request_id=work.id)

    async def drain(self) -> None:
        """Wait until no request of this ensemble runs."""
        while self._running:
            self._settled.clear()
            await self._settled.wait()

    async def stop(self) -> None:
        """Refuse new requests; those running finish (their steps' models drain on their own)."""
        self._closed = True
        await self.drain()


def ensemble_scheduler(spec: ModelSpec, models: InProcess, stats: ModelStats) -> EnsembleScheduler:
    """The scheduler of an ensemble whose step models are loaded; `ConfigError` when a step does not fit."""
    plan = plan_of(spec)

    def step_spec(step: Step) -> ModelSpec:
        try:
            return models.lookup(step.model, step.version).spec
        except ServingError as exc:
            raise ConfigError(f"ensemble '{spec.name}' {step.label} cannot run: {exc}") from None

    plan.check_models(spec, step_spec)
    return EnsembleScheduler(spec, plan, models, stats)
