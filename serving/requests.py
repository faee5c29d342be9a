"""A request checked against its model's config: inputs, requested outputs, timeout.

Shared by every way into a model (the transports through the dataplane, ensemble steps
and BLS calls through `serving.inprocess`), so each gives the same answer with the same
message.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from inference_protocol.tensors import InferRequest, Tensor

from .config import ModelSpec, TensorSpec
from .errors import InvalidInput, ServingError

__all__ = ["check_inputs", "selected_outputs", "timeout_us", "full_dims"]


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
    max_batch_size = spec.max_batch_size
    batched = max_batch_size > 0
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
                               f"({expected.datatype}, shape {full_dims(spec, expected)})")
        shape = tensor.array.shape
        # the common case at a glance (its dims exactly, so no reshape to check); anything else in full
        if tensor.datatype != expected.datatype or not (
                (shape[1:] == expected.dims and 1 <= shape[0] <= max_batch_size) if batched and shape
                else not batched and shape == expected.dims):
            _check_tensor(spec, expected, tensor)
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


def full_dims(spec: ModelSpec, tensor: TensorSpec) -> list[int]:
    """A tensor's shape as clients see it: with the batch dimension (-1) first when the model batches."""
    return ([-1] if spec.max_batch_size > 0 else []) + list(tensor.dims)


def _check_tensor(spec: ModelSpec, expected: TensorSpec, tensor: Tensor) -> None:
    if tensor.datatype != expected.datatype:
        raise InvalidInput(f"input '{expected.name}' must be {expected.datatype}, got {tensor.datatype}")
    shape = tensor.array.shape
    batched = spec.max_batch_size > 0
    inner = shape[1:] if batched else shape
    if (inner != expected.dims and not _shape_matches(inner, expected.dims)) or (batched and not shape):
        raise InvalidInput(f"input '{expected.name}' has shape {list(shape)} but model '{spec.name}' expects "
                           f"{full_dims(spec, expected)}" + (" (the first dimension is the batch)" if batched else ""))
    if batched and not 1 <= shape[0] <= spec.max_batch_size:
        raise InvalidInput(f"input '{expected.name}' has batch size {shape[0]}; model '{spec.name}' accepts "
                           f"1..{spec.max_batch_size} (max_batch_size); split the request")
    if expected.reshape is not None and -1 in expected.dims and math.prod(inner) != math.prod(expected.reshape):
        raise InvalidInput(f"input '{expected.name}' with shape {list(shape)} cannot be reshaped to "
                           f"{list(expected.reshape)}")


def selected_outputs(spec: ModelSpec, request: InferRequest) -> list[TensorSpec]:
    """The outputs a request asked for (every output when it named none), in the order it named them."""
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


def timeout_us(spec: ModelSpec, request: InferRequest) -> int:
    """The request's queue timeout: its ``timeout`` parameter where the config allows an override."""
    policy = spec.batching
    override = request.parameters.get("timeout") if request.parameters else None
    if override is None or not policy.allow_timeout_override:
        return policy.default_timeout_us
    if not isinstance(override, int) or isinstance(override, bool) or override < 0:
        raise InvalidInput("parameter 'timeout' must be a non-negative integer of microseconds")
    return override


# what the server itself reads of a request's parameters: Triton's reserved names, which its
# frontends consume and do not pass on to the model (extension_parameters.md)
RESERVED_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                                 "headers", "binary_data_output", "binary_data_size", "shared_memory_region",
                                 "shared_memory_byte_size", "shared_memory_offset"})


def model_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a request that its model sees: all but the reserved ones and ``triton_*``."""
    if not parameters:
        return {}
    return {key: value for key, value in parameters.items()
            if key not in RESERVED_PARAMETERS and not key.startswith("triton_")}


class Counted:
    """One request counted in its model's statistics when the block ends, however it ends.

    Its time from entering, and Triton's failure reason: none when the block ends normally
    (unless `fail` named one: a stream whose model sent an error), the error's own for a
    `ServingError`, CANCELED for a request cancelled (or a stream closed) on its way, OTHER
    for anything else. The exception goes on.
    """

    __slots__ = ("_stats", "_start", "_reason")

    def __init__(self, stats: RequestStats) -> None:
        self._stats = stats
        self._start = time.monotonic_ns()
        self._reason: str | None = None

    def fail(self, reason: str) -> None:
        """Count the request as failed for ``reason`` though the block ends normally."""
        self._reason = reason

    def __enter__(self) -> Counted:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        if isinstance(error, ServingError):
            self._reason = error.reason
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            self._reason = "CANCELED"
        elif error is not None:
            self._reason = "OTHER"
        self._stats.record_request(time.monotonic_ns() - self._start, self._reason)


class RequestStats(Protocol):
    """What `Counted` records into: a model's statistics (`serving.metrics.ModelStats`)."""

    def record_request(self, duration_ns: int, reason: str | None) -> None: ...
