"""v2 datatypes: their numpy dtypes, and BF16 as the raw bits it travels as."""

from __future__ import annotations

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
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})


def bf16_bits_from_float(values: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest, ties to even) and return the raw bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def float_from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """The float32 values of raw bfloat16 bits (exact: bfloat16 is float32's upper half)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
