"""Protocol-neutral operations: health, metadata, config, statistics and inference.

The HTTP and gRPC transports are thin layers over one `DataPlane`; every check of a
request against the model's configuration happens here, so both transports give the
same answer with the same message.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np

from inference_protocol.tensors import InferRequest, InferResponse, Tensor

from .admission import Place
from .config import ModelSpec, TensorSpec
from .control import ModelControl
from .errors import InvalidInput, ServingError, Unavailable
from .repository import Repository
from .types import Work

SERVER_NAME = "shadowserve"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "statistics", "schedule_policy")


def _shape_matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def check_inputs(spec: ModelSpec, request: InferRequest) -> tuple[dict[str, np.ndarray], int, tuple[Any, ...]]:
    """Validate a request's inputs against the config.

    Returns the arrays by name, the number of rows (1 for models without a batch
    dimension), and the batch key: requests batch together only when it is equal.
    """
    given = request.inputs
    known = spec.input_names
    if not known.issuperset(given):
        unknown = [name for name in given if name not in known]
        raise InvalidInput(f"model '{spec.name}' has no input {', '.join(repr(n) for n in unknown)}; "
                           f"its inputs are {', '.join(sorted(known))}")
    batched = spec.max_batch_size > 0
    arrays: dict[str, np.ndarray] = {}
    key: list[Any] = []
    rows = -1
    for expected in spec.inputs:
        tensor = given.get(expected.name)
        if tensor is None:
            if expected.optional:
                key.append(None)
                continue
            raise InvalidInput(f"model '{spec.name}' needs input '{expected.name}' "
                               f"({expected.datatype}, shape {_full_dims(spec, expected)})")
        _check_tensor(spec, expected, tensor)
        shape = tensor.shape
        if batched:
            if rows not in (-1, shape[0]):
                raise InvalidInput(f"input '{expected.name}' has batch size {shape[0]} but other inputs have {rows}; "
                                   "every input needs the same first dimension")
            rows = shape[0]
            key.append(shape[1:])
        else:
            key.append(shape)
        arrays[expected.name] = tensor.array
    return arrays, rows if batched else 1, tuple(key)


def _full_dims(spec: ModelSpec, tensor: TensorSpec) -> list[int]:
    return ([-1] if spec.max_batch_size > 0 else []) + list(tensor.dims)


def _check_tensor(spec: ModelSpec, expected: TensorSpec, tensor: Tensor) -> None:
    if tensor.datatype != expected.datatype:
        raise InvalidInput(f"input '{expected.name}' must be {expected.datatype}, got {tensor.datatype}")
    shape = tensor.array.shape
    batched = spec.max_batch_size > 0
    inner = shape[1:] if batched else shape
    if (inner != expected.dims and not _shape_matches(inner, expected.dims)) or (batched and not shape):
        raise InvalidInput(f"input '{expected.name}' has shape {list(shape)} but model '{spec.name}' expects "
                           f"{_full_dims(spec, expected)}" + (" (the first dimension is the batch)" if batched else ""))
    if batched and not 1 <= shape[0] <= spec.max_batch_size:
        raise InvalidInput(f"input '{expected.name}' has batch size {shape[0]}; model '{spec.name}' accepts "
                           f"1..{spec.max_batch_size} (max_batch_size); split the request")
    if expected.reshape is not None and -1 in expected.dims and math.prod(inner) != math.prod(expected.reshape):
        raise InvalidInput(f"input '{expected.name}' with shape {list(shape)} cannot be reshaped to "
                           f"{list(expected.reshape)}")


class DataPlane:
    def __init__(self, repository: Repository, control: ModelControl, version: str,
                 strict_readiness: bool = True) -> None:
        self.repository = repository
        self.control = control
        self.version = version
        self.started = False  # every model that should load at start-up has been tried
        self.draining = False
        self.strict_readiness = strict_readiness
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- health and metadata ---------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self.started or self.draining:
            return False
        return self.control.startup_ready() if self.strict_readiness else True

    def metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model (version) serves; `NotFound` for one the server does not know."""
        try:
            self.repository.get(name, version)
        except Unavailable:
            return False
        return True

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.repository.get(name, version)
        spec = model.spec
        entry = self.repository.entry(name)
        return {
            "name": name,
            "versions": [str(v) for v in sorted(entry.versions) if entry.versions[v].state == "READY"],
            "platform": spec.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": _full_dims(spec, t)} for t in spec.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": _full_dims(spec, t)} for t in spec.outputs],
        }

    def model_spec(self, name: str, version: str | None = None) -> ModelSpec:
        return self.repository.get(name, version).spec

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.model_spec(name, version).to_json()

    def model_stats(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        if name is None:
            models = [v for e in self.repository.models.values() for v in e.versions.values() if v.stats]
        elif version:
            models = [self.repository.get(name, version)]
        else:
            models = [v for v in self.repository.entry(name).versions.values() if v.stats]
        return {"model_stats": [m.stats.to_triton() for m in models if m.stats is not None]}

    # -- model control ---------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        rows = self.repository.index(ready_only)
        if self.control.sources is not None:
            # a registry source that could not move its model (verification, loading) says so on
            # the rows that still serve, or carry no reason of their own
            reasons = self.control.sources.reasons()
            for row in rows:
                if row["name"] in reasons and (row["state"] == "READY" or not row.get("reason")):
                    row["reason"] = reasons[row["name"]]
        return rows

    async def load_model(self, name: str, config_json: str | None = None) -> None:
        """Load or reload a model (``--model-control-mode explicit`` only)."""
        if self.draining:
            raise Unavailable("the server is shutting down")
        await self.control.load(name, config_json)

    async def unload_model(self, name: str) -> None:
        """Drain and unload every version of a model (``--model-control-mode explicit`` only)."""
        await self.control.unload(name)

    # -- admission -------------------------------------------------------------------------

    def admission(self, name: str, version: str | None, wait_s: float = 0.0) -> Place:
        """A place in the queue of the version that will serve the request, from its path alone.

        For the transport to enter (``async with``) before it reads and decodes a request's
        body: a draining server and an unknown model or version raise at once, a full queue
        on entering (after waiting up to ``wait_s`` for a place), so a flood costs no
        decoding. The place is given back when the block ends; the transport then calls
        `infer` without awaiting anything first, so that the place passes to this request.
        """
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        model = self.repository.get(name, version)
        batcher, stats = model.batcher, model.stats
        assert batcher is not None and stats is not None
        # a rejection is counted as Triton counts one, with no time spent
        return Place(batcher, wait_s, lambda exc: stats.record_request(0, exc.reason))

    # -- inference -------------------------------------------------------------------------

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        model = self.repository.get(name, version)
        spec = model.spec
        assert model.batcher is not None and model.stats is not None
        start = time.monotonic_ns()
        reason: str | None = "OTHER"  # Triton's failure reason; None once the request succeeded
        self._in_flight += 1
        self._idle.clear()
        try:
            arrays, rows, key = check_inputs(spec, request)
            selected = self._selected_outputs(spec, request)
            work = Work(arrays, None if request.outputs is None else frozenset(t.name for t in selected))
            outputs = await model.batcher.submit(work, rows, key, self._timeout_us(spec, request))
            reason = None
        except ServingError as exc:
            reason = exc.reason
            raise
        except asyncio.CancelledError:
            reason = "CANCELED"
            raise
        finally:
            model.stats.record_request(time.monotonic_ns() - start, reason)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        tensors = [Tensor(out.name, out.datatype, outputs[out.name]) for out in selected]
        return InferResponse(model_name=name, model_version=str(model.version), outputs=tensors, id=request.id)

    @staticmethod
    def _selected_outputs(spec: ModelSpec, request: InferRequest) -> list[TensorSpec]:
        if request.outputs is None:
            return list(spec.outputs)
        by_name = {t.name: t for t in spec.outputs}
        selected = []
        for wanted in request.outputs:
            if wanted.name not in by_name:
                raise InvalidInput(f"model '{spec.name}' has no output '{wanted.name}'; its outputs are "
                                   f"{', '.join(by_name)}")
            selected.append(by_name[wanted.name])
        return selected

    @staticmethod
    def _timeout_us(spec: ModelSpec, request: InferRequest) -> int:
        policy = spec.batching
        override = request.parameters.get("timeout")
        if override is None or not policy.allow_timeout_override:
            return policy.default_timeout_us
        if not isinstance(override, int) or isinstance(override, bool) or override < 0:
            raise InvalidInput("parameter 'timeout' must be a non-negative integer of microseconds")
        return override

    # -- draining --------------------------------------------------------------------------

    def start_drain(self) -> None:
        """Readiness false at once; new requests get 503 from now on."""
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @property
    def in_flight(self) -> int:
        return self._in_flight
