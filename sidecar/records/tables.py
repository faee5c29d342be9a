"""Records in memory, and Arrow tables in the record schema (`sidecar.records.schema.SCHEMA`) built from them.

Tables are built column by column from numpy arrays (no per-value Python objects), so
large tensors cost a concatenation, not a loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .decode import TensorValue
from .schema import RESPONSE, SCHEMA, TENSOR


@dataclasses.dataclass
class ResponseRecord:
    """One upstream's answer: the RESPONSE struct of the schema."""

    upstream: str
    model_version: str | None
    status: int | None
    latency_ms: float | None
    error: str | None
    outputs: list[TensorValue] | None


@dataclasses.dataclass
class Record:
    """One mirrored request: a row of the schema."""

    request_id: str
    timestamp: float  # seconds since the epoch
    model: str
    protocol: str
    inputs: list[TensorValue] | None
    primary: ResponseRecord
    shadows: list[ResponseRecord]
    trace_id: str | None = None  # the client's trace, 32 lowercase hex


def _offsets(lengths: Sequence[int]) -> pa.Array:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    if out[-1] > np.iinfo(np.int32).max:
        raise OverflowError("too many values for one batch of records; write smaller batches")
    return pa.array(out.astype(np.int32), pa.int32())


def _mask(nulls: Sequence[bool]) -> pa.Array | None:
    return pa.array(nulls, pa.bool_()) if any(nulls) else None


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)


def _tensors(flat: Sequence[TensorValue]) -> pa.StructArray:
    shapes = [t.shape for t in flat]
    numeric = [t.values for t in flat if t.values is not None]
    strings = [item for t in flat if t.strings is not None for item in t.strings]
    shape_array = pa.ListArray.from_arrays(
        _offsets([len(s) for s in shapes]), pa.array(_concat([np.asarray(s, dtype=np.int64) for s in shapes],
                                                             np.int64), pa.int64()))
    values = pa.ListArray.from_arrays(
        _offsets([0 if t.values is None else len(t.values) for t in flat]),
        pa.array(_concat(numeric, np.float64), pa.float64()), mask=_mask([t.values is None for t in flat]))
    string_array = pa.ListArray.from_arrays(
        _offsets([0 if t.strings is None else len(t.strings) for t in flat]), pa.array(strings, pa.binary()),
        mask=_mask([t.strings is None for t in flat]))
    return pa.StructArray.from_arrays(
        [pa.array([t.name for t in flat], pa.string()), pa.array([t.datatype for t in flat], pa.string()),
         shape_array, values, string_array], fields=list(TENSOR))


def _tensor_lists(groups: Sequence[list[TensorValue] | None]) -> pa.Array:
    flat = [tensor for group in groups if group is not None for tensor in group]
    return pa.ListArray.from_arrays(_offsets([0 if g is None else len(g) for g in groups]), _tensors(flat),
                                    type=pa.list_(TENSOR), mask=_mask([g is None for g in groups]))


def _responses(responses: Sequence[ResponseRecord]) -> pa.StructArray:
    return pa.StructArray.from_arrays([
        pa.array([r.upstream for r in responses], pa.string()),
        pa.array([r.model_version for r in responses], pa.string()),
        pa.array([r.status for r in responses], pa.int32()),
        pa.array([r.latency_ms for r in responses], pa.float64()),
        pa.array([r.error for r in responses], pa.string()),
        _tensor_lists([r.outputs for r in responses]),
    ], fields=list(RESPONSE))


def to_table(records: Sequence[Record]) -> pa.Table:
    """An Arrow table in exactly the record schema, one row per record."""
    shadows = [shadow for record in records for shadow in record.shadows]
    micros = [round(record.timestamp * 1_000_000) for record in records]
    columns = [
        pa.array([r.request_id for r in records], pa.string()),
        pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array([r.model for r in records], pa.string()),
        pa.array([r.protocol for r in records], pa.string()),
        _tensor_lists([r.inputs for r in records]),
        _responses([r.primary for r in records]),
        pa.ListArray.from_arrays(_offsets([len(r.shadows) for r in records]), _responses(shadows),
                                 type=pa.list_(RESPONSE)),
        pa.array([r.trace_id for r in records], pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)
