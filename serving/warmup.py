"""Warm-up batches, run once per instance at load so the first real request is not slow.

Triton's ``model_warmup`` in config.pbtxt is honoured when present (``zero_data``,
``random_data``, or ``input_data_file`` read from ``<model>/warmup/``). Otherwise every
batch-size bucket (1, the preferred sizes, max_batch_size) runs once with zeros, unless
the ``warmup`` parameter is ``false``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from inference_protocol.binary import deserialize_bytes
from inference_protocol.datatypes import NUMPY_DTYPES

from .config import ModelSpec, WarmupInput
from .errors import ConfigError
from .paths import confined

Batch = dict[str, np.ndarray]
MAX_WARMUP_BYTES = 256 * 1024 * 1024  # every warm-up input together; a BYTES element counts as 64 bytes


def _size(item: WarmupInput, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * (64 if item.datatype == "BYTES" else NUMPY_DTYPES[item.datatype].itemsize)


def _array(name: str, item: WarmupInput, shape: tuple[int, ...], model_dir: Path, rng: np.random.Generator,
           spent: int = 0) -> np.ndarray:
    """One warm-up input; ``spent`` is what the batches before it hold, counted against the limit."""
    dtype = NUMPY_DTYPES[item.datatype]
    count = math.prod(shape)
    if spent + _size(item, shape) > MAX_WARMUP_BYTES:  # checked before anything is allocated or read
        raise ConfigError(f"warm-up input '{name}': shape {list(shape)} of {item.datatype} takes the warm-up "
                          f"data past {MAX_WARMUP_BYTES} bytes; warm up with fewer samples, smaller batches or dims")
    if item.source == "input_data_file":
        label = f"{model_dir.name}/warmup/{item.data_file}"
        path = confined(model_dir / "warmup", item.data_file, f"warm-up input '{name}': input_data_file", label)
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_WARMUP_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"warm-up input '{name}': cannot read {label} ({exc.strerror or 'unreadable'})") from None
        if item.datatype == "BYTES":
            return deserialize_bytes(raw, count, name).reshape(shape)
        if len(raw) != count * dtype.itemsize:
            raise ConfigError(f"warm-up input '{name}': {label} has {len(raw)} bytes, shape {list(shape)} of "
                              f"{item.datatype} needs {count * dtype.itemsize}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if item.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = [b"" if item.source == "zero_data" else rng.bytes(8) for _ in range(count)]
        return array.reshape(shape)
    if item.source == "zero_data":
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if item.datatype == "BF16":
        return np.full(shape, 0x3F80, dtype=np.uint16)  # 1.0
    return rng.integers(0, 2, size=shape).astype(dtype)


def warmup_batches(spec: ModelSpec, model_dir: Path) -> tuple[list[Batch], bool]:
    """The batches to warm up with, and whether config.pbtxt asked for them explicitly."""
    rng = np.random.default_rng(0)
    if spec.warmup:
        batches = []
        spent = 0
        for sample in spec.warmup:
            batch = {}
            for name, item in sample.inputs.items():
                shape = ((sample.batch_size,) if spec.max_batch_size else ()) + item.dims
                batch[name] = _array(name, item, shape, model_dir, rng, spent)
                spent += _size(item, shape)
            batches += [batch] * sample.count  # repeats share their arrays
        return batches, True
    if not spec.execution.warmup:
        return [], False
    batches = []
    spent = 0
    for rows in spec.batch_buckets():
        batch, size = {}, 0
        try:
            for tensor in spec.inputs:
                dims = tuple(1 if d == -1 else d for d in tensor.dims)
                shape = ((rows,) if spec.max_batch_size else ()) + dims
                item = WarmupInput(tensor.datatype, dims, "zero_data")
                batch[tensor.name] = _array(tensor.name, item, shape, model_dir, rng, spent + size)
                size += _size(item, shape)
        except ConfigError:
            break  # past the limit (buckets only grow): the rest are prepared by their first requests
        spent += size
        batches.append(batch)
    return batches, False
