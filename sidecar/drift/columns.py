"""Tensors to columns: the unit of drift is one prediction row (one batch element).

A tensor of shape ``[batch, ...]`` becomes, per prediction row:

- numeric data (FP16/FP32/FP64/BF16): one column per element, named ``probs[3]``, and for
  two elements or more also ``probs.top1``, the index of the largest element (the predicted
  class of a classifier, a categorical column; -1 for a row holding NaN, as
  `inference_protocol.predictions.top1` says); a single element is named ``score``;
- integers, BOOL and BYTES: categorical columns (class labels), named the same way;
- tensors with more than ``max_elements`` elements per row (embeddings, images), or whose
  rows vary in size: one pooled column of all their values, ``embedding[*]``.

Inputs get the prefix ``input:``; outputs have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from inference_protocol.datatypes import FLOAT_DATATYPES
from inference_protocol.predictions import top1

Kind = Literal["numeric", "categorical"]
Columns = dict[str, tuple[Kind, np.ndarray]]
MAX_ELEMENTS = 64
INPUT_PREFIX = "input:"


def kind_of(datatype: str) -> Kind:
    """The column kind of a v2 datatype."""
    return "numeric" if datatype.upper() in FLOAT_DATATYPES else "categorical"


def as_labels(values: np.ndarray) -> np.ndarray:
    """Categorical values as they are counted: int64 for numbers, str for bytes/strings."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if finite.all():
            return values.astype(np.int64)
        # NaN and inf stay classes of their own
        return np.where(finite, np.nan_to_num(values).astype(np.int64).astype(str), values.astype(str))
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", errors="backslashreplace")
    if values.dtype.kind == "U":
        return values
    return np.array([v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
                     for v in values], dtype=str)


def tensor_columns(name: str, datatype: str, matrix: np.ndarray, *, prefix: str = "",
                   max_elements: int = MAX_ELEMENTS) -> Columns:
    """Columns of one tensor given as ``(rows, elements)`` (or 1-D pooled values: width -1)."""
    kind = kind_of(datatype)
    base = f"{prefix}{name}"
    if matrix.ndim == 1:
        return {f"{base}[*]": (kind, matrix if kind == "numeric" else as_labels(matrix))}
    width = matrix.shape[1]
    if width > max_elements:
        flat = matrix.reshape(-1)
        return {f"{base}[*]": (kind, flat if kind == "numeric" else as_labels(flat))}
    if width == 1:
        column = matrix[:, 0]
        return {base: (kind, column if kind == "numeric" else as_labels(column))}
    result: Columns = {}
    for j in range(width):
        column = matrix[:, j]
        result[f"{base}[{j}]"] = (kind, column if kind == "numeric" else as_labels(column))
    if kind == "numeric":
        result[f"{base}.top1"] = ("categorical", top1(matrix))
    return result


def array_columns(arrays: Mapping[str, np.ndarray], *, prefix: str = "",
                  max_elements: int = MAX_ELEMENTS) -> Columns:
    """Columns of numpy arrays whose first axis is the batch: float arrays are numeric,
    integer, bool and string arrays categorical."""
    result: Columns = {}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.ndim == 0:
            array = array.reshape(1)
        datatype = "FP64" if array.dtype.kind == "f" else "INT64"
        matrix = array.reshape(len(array), -1) if array.ndim != 1 else array.reshape(-1, 1)
        if array.dtype.kind == "f":
            matrix = matrix.astype(np.float64, copy=False)
        result.update(tensor_columns(name, datatype, matrix, prefix=prefix, max_elements=max_elements))
    return result
