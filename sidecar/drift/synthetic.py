"""Synthetic records in the recorder's exact schema, for tests, benchmarks and demos.

Example::

    import numpy as np
    from sidecar.drift.synthetic import write_records

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=1000)
    write_records("records/", {"probs": probs}, shadows={"v2": {"probs": probs}})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidecar.records.schema import RESPONSE, SCHEMA, TENSOR

START = datetime(2025, 1, 1, tzinfo=timezone.utc)
_DATATYPES = {"f": "FP32", "i": "INT64", "u": "UINT64", "b": "BOOL", "S": "BYTES", "U": "BYTES", "O": "BYTES"}


def _offsets(n: int, step: int) -> pa.Array:
    return pa.array(np.arange(n + 1, dtype=np.int64) * step, pa.int64())


def _list(offsets: pa.Array, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(offsets, values).cast(pa.list_(values.type))


def tensors(name: str, array: np.ndarray) -> pa.StructArray:
    """One TENSOR per row of ``array`` (batch dimension 1: one prediction per request)."""
    n = len(array)
    rest = array.shape[1:]
    width = int(np.prod(rest)) if rest else 1
    datatype = _DATATYPES[array.dtype.kind]
    shape = _list(_offsets(n, 1 + len(rest)), pa.array(np.tile([1, *rest], n).astype(np.int64)))
    if datatype == "BYTES":
        strings = _list(_offsets(n, width), pa.array([str(v).encode() for v in array.reshape(-1)], pa.binary()))
        values = pa.nulls(n, pa.list_(pa.float64()))
    else:
        values = _list(_offsets(n, width), pa.array(array.reshape(-1).astype(np.float64)))
        strings = pa.nulls(n, pa.list_(pa.binary()))
    return pa.StructArray.from_arrays(
        [pa.array([name] * n, pa.string()), pa.array([datatype] * n, pa.string()), shape, values, strings],
        fields=list(TENSOR))


def tensor_lists(arrays: Mapping[str, np.ndarray], n: int) -> pa.Array:
    """list<TENSOR> per row, holding one tensor per entry of ``arrays``."""
    if not arrays:
        return _list(_offsets(n, 0), pa.array([], TENSOR))
    parts = [tensors(name, np.asarray(array)) for name, array in arrays.items()]
    k = len(parts)
    order = (np.arange(n)[:, None] + np.arange(k)[None, :] * n).reshape(-1)  # row-major: row i's tensors together
    return _list(_offsets(n, k), pa.concat_arrays(parts).take(pa.array(order)))


def responses(upstream: str, arrays: Mapping[str, np.ndarray], n: int,
              errors: np.ndarray | None = None) -> pa.StructArray:
    outputs = tensor_lists(arrays, n)
    error = pa.nulls(n, pa.string())
    if errors is not None and errors.any():
        error = pa.array(["timeout" if failed else None for failed in errors.tolist()], pa.string())
        outputs = pa.ListArray.from_arrays(outputs.offsets, outputs.values,
                                           mask=pa.array(errors))  # a failed response has no outputs
    return pa.StructArray.from_arrays(
        [pa.array([upstream] * n, pa.string()), pa.array(["1"] * n, pa.string()),
         pa.array(np.where(errors, 504, 200) if errors is not None else np.full(n, 200), pa.int32()),
         pa.array(np.full(n, 1.0)), error, outputs], fields=list(RESPONSE))


def records_table(primary: Mapping[str, np.ndarray], *, shadows: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                  inputs: Mapping[str, np.ndarray] | None = None, model: str = "classifier",
                  start: datetime = START, step: timedelta = timedelta(seconds=1), first_id: int = 0,
                  shadow_errors: Mapping[str, np.ndarray] | None = None,
                  trace_ids: Sequence[str | None] | None = None) -> pa.Table:
    """A table of records, one per row of the arrays (all arrays have the same length)."""
    n = len(next(iter(primary.values())))
    micros = int(start.timestamp() * 1e6) + np.arange(n, dtype=np.int64) * int(step.total_seconds() * 1e6)
    shadow_columns = [responses(name, arrays, n, (shadow_errors or {}).get(name))
                      for name, arrays in (shadows or {}).items()]
    if shadow_columns:
        k = len(shadow_columns)
        order = (np.arange(n)[:, None] + np.arange(k)[None, :] * n).reshape(-1)
        shadow_list = _list(_offsets(n, k), pa.concat_arrays(shadow_columns).take(pa.array(order)))
    else:
        shadow_list = _list(_offsets(n, 0), pa.array([], RESPONSE))
    columns = [
        pa.array([f"req-{i}" for i in range(first_id, first_id + n)], pa.string()),
        pa.array(micros, pa.timestamp("us", tz="UTC")),
        pa.array([model] * n, pa.string()), pa.array(["http"] * n, pa.string()),
        tensor_lists(inputs, n) if inputs else pa.nulls(n, pa.list_(TENSOR)),
        responses("primary", primary, n), shadow_list,
    ]
    if trace_ids is not None:
        columns.append(pa.array(list(trace_ids), pa.string()))
    # columns the schema gained since (trace_id, ...) are null where not given
    columns += [pa.nulls(n, field.type) for field in list(SCHEMA)[len(columns):]]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _part(arrays: Mapping[str, np.ndarray] | None, rows: slice) -> dict[str, np.ndarray] | None:
    """The ``rows`` of every array (one segment's share), or None for no arrays."""
    return None if arrays is None else {k: np.asarray(v)[rows] for k, v in arrays.items()}


def write_records(directory: str | Path, primary: Mapping[str, np.ndarray], *,
                  shadows: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                  inputs: Mapping[str, np.ndarray] | None = None, model: str = "classifier",
                  start: datetime = START, step: timedelta = timedelta(seconds=1),
                  segment_rows: int = 100_000, prefix: str = "segment",
                  shadow_errors: Mapping[str, np.ndarray] | None = None,
                  trace_ids: Sequence[str | None] | None = None) -> list[Path]:
    """Write records as Parquet segments in ``directory``; return the files written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(primary.values())))
    files = []
    for number, begin in enumerate(range(0, max(n, 1), segment_rows)):
        end = min(n, begin + segment_rows)
        rows = slice(begin, end)
        table = records_table(
            _part(primary, rows) or {}, model=model, start=start + step * begin, step=step, first_id=begin,
            shadows={name: _part(arrays, rows) or {} for name, arrays in (shadows or {}).items()},
            inputs=_part(inputs, rows), shadow_errors={k: v[begin:end] for k, v in (shadow_errors or {}).items()},
            trace_ids=None if trace_ids is None else list(trace_ids)[begin:end])
        path = directory / f"{prefix}-{number:05d}.parquet"
        pq.write_table(table, path)
        files.append(path)
    return files
