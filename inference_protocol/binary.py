"""The binary tensor data extension: tensors as raw bytes after a message's JSON header.

The same layout carries gRPC's ``raw_input_contents`` and ``raw_output_contents``:
fixed-size types as their little-endian values, BYTES as each element's 4-byte
little-endian length followed by its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidInput, brief
from .tensors import Role, Tensor

_LENGTH = struct.Struct("<I")


def serialize_bytes(array: np.ndarray) -> bytes:
    """The v2 binary form of a BYTES tensor: each element as a 4-byte LE length and its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: memoryview | bytes, count: int, name: str, role: Role = "input") -> np.ndarray:
    """``count`` BYTES elements from their binary form, as a flat object array of bytes."""
    view = memoryview(buffer)
    if count > len(view) // _LENGTH.size:  # each element takes at least its 4-byte length
        raise InvalidInput(f"{role} '{name}': the shape declares {count} BYTES elements but {len(view)} bytes of data "
                           f"hold at most {len(view) // _LENGTH.size} (each element starts with a 4-byte length)")
    out = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"{role} '{name}': binary BYTES data ends after {index} of {count} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"{role} '{name}': element {index} claims {length} bytes but the data ends first")
        out[index] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"{role} '{name}': {len(view) - offset} bytes left over after {count} BYTES elements")
    return out


def binary_data(tensor: Tensor) -> bytes | memoryview:
    """A tensor in the binary form, without a copy where its array is contiguous."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.array)
    array = np.ascontiguousarray(tensor.array)
    return array.data.cast("B") if array.size else b""


def binary_size(entry: dict[str, Any], role: Role = "input") -> int | None:
    """An entry's ``binary_data_size`` parameter; None when its values are in JSON."""
    params = entry.get("parameters")
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{role} {brief(entry.get('name'))}: binary_data_size must be a non-negative integer")
    return size


def split_binary(entries: Sequence[Any], binary: memoryview,
                 role: Role = "input") -> tuple[list[memoryview | None], int]:
    """Each entry's slice of the binary section, in order, by its ``binary_data_size``.

    Returns the slices (None for an entry whose values are in JSON) and the number of
    bytes no entry claimed. A size is checked against what is left before it is used.
    """
    chunks: list[memoryview | None] = []
    offset = 0
    for entry in entries:
        size = binary_size(entry, role) if isinstance(entry, dict) else None
        if size is None:
            chunks.append(None)
            continue
        if offset + size > len(binary):
            raise InvalidInput(f"{role} {brief(entry.get('name'))}: binary_data_size {size} runs past the end of the "
                               f"body ({len(binary) - offset} bytes left); check Inference-Header-Content-Length")
        chunks.append(binary[offset:offset + size])
        offset += size
    return chunks, len(binary) - offset
