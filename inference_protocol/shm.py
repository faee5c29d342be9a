"""The shared-memory extension's tensor parameters: where a tensor's bytes are in a registered region.

An input or a requested output that carries ``shared_memory_region`` (a region the client
registered), ``shared_memory_byte_size`` and optionally ``shared_memory_offset`` has its
values in that region instead of in the message. This module only reads and checks the
parameters; opening regions, reading and writing them is the server's (`serving.shm`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInput, brief

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
PARAMETERS = (REGION, BYTE_SIZE, OFFSET)
MAX_OFFSET = 2**63 - 1  # the parameters are int64 on the wire


@dataclasses.dataclass(frozen=True)
class SharedMemoryRef:
    """``byte_size`` bytes at ``offset`` in the registered region named ``region``."""

    region: str
    byte_size: int
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class SharedInput:
    """An input whose values the server reads from shared memory before checking the request."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    where: SharedMemoryRef


def _size(value: Any, key: str, name: str, role: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_OFFSET:
        raise InvalidInput(f"invalid value type for '{key}' parameter for tensor '{name}': it must be a "
                           f"non-negative integer of bytes, got {brief(value)} ({role})")
    return value


def shared_memory_ref(name: str, parameters: Mapping[str, Any] | None, role: str = "input") -> SharedMemoryRef | None:
    """The region a tensor's parameters point at, or None when they name none.

    The offset is optional (0); the byte size is required with a region, and neither
    may come without one.
    """
    if not parameters or not any(key in parameters for key in PARAMETERS):
        return None
    region = parameters.get(REGION)
    if region is None:
        given = BYTE_SIZE if BYTE_SIZE in parameters else OFFSET
        raise InvalidInput(f"'{given}' can not be specified without '{REGION}' parameter for tensor '{name}' "
                           f"({role}); name the registered region it is in")
    if type(region) is not str or not region:
        raise InvalidInput(f"invalid value type for '{REGION}' parameter for tensor '{name}': it must be the "
                           f"name of a registered region, got {brief(region)} ({role})")
    if BYTE_SIZE not in parameters:
        raise InvalidInput(f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{name}' "
                           f"({role})")
    byte_size = _size(parameters[BYTE_SIZE], BYTE_SIZE, name, role)
    offset = _size(parameters.get(OFFSET, 0), OFFSET, name, role)
    return SharedMemoryRef(region, byte_size, offset)
