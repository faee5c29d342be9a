"""Protocol-neutral tensors, requests and responses, and the checks on a declared shape.

The transports decode into these and encode from them; nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from .errors import InvalidInput, brief
from .shm import SharedInput, SharedMemoryRef

# What a message names its tensors: requests carry inputs, responses outputs.
Role = Literal["input", "output"]

# Bounds on what a message may declare. A shape is a claim, not a measurement: the
# element count it gives is checked against these and against the bytes (or values)
# actually received before anything is allocated for it.
MAX_DIMS = 32  # numpy 1.x's limit; no model input has more
MAX_ELEMENTS = 2**31 - 1  # per tensor; a larger product is an overflow, not a request


class Tensor:
    """A named tensor on the host: ``array`` holds the values in ``array.shape``."""

    __slots__ = ("name", "datatype", "array")

    def __init__(self, name: str, datatype: str, array: np.ndarray) -> None:
        self.name = name
        self.datatype = datatype
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.datatype}, shape={list(self.shape)})"


@dataclasses.dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's binary_data_output default applies
    shared_memory: SharedMemoryRef | None = None  # written into this region instead of the response


@dataclasses.dataclass
class InferRequest:
    inputs: dict[str, Tensor]
    id: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output
    # inputs whose values are in shared memory: the server reads them into `inputs` first
    shared_inputs: dict[str, SharedInput] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    # outputs written into a shared-memory region: their shape and datatype travel, not their values
    in_shared_memory: frozenset[str] = frozenset()


def element_count(name: str, shape: list[int], role: Role = "input") -> int:
    """The number of elements of ``shape`` (non-negative ints), refusing overflowing products."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{role} '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    count = span = 1  # span: the product of the dims other than 0, which numpy also refuses to overflow
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise InvalidInput(f"{role} '{name}': 'shape' must be a list of non-negative integers, got {brief(shape)}")
        count *= dim
        span *= dim or 1
    if span > MAX_ELEMENTS:
        raise InvalidInput(f"{role} '{name}': shape {brief(shape)} declares more than {MAX_ELEMENTS} elements; "
                           "split the request")
    return count
