"""Protocol-neutral request and response objects shared by the transports and the dataplane."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

# v2 datatype -> numpy dtype. BF16 has no numpy dtype: its raw bits travel as uint16
# and become torch.bfloat16 only where tensors are handled. BYTES are object arrays of bytes.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(NUMPY_DTYPES)


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


@dataclasses.dataclass
class InferRequest:
    inputs: dict[str, Tensor]
    id: str | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output


@dataclasses.dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None


class Work(NamedTuple):
    """What a validated request hands the batcher."""

    inputs: dict[str, np.ndarray]
    outputs: frozenset[str] | None  # the outputs the request asked for; None: all of them
