"""System shared-memory objects made as a client makes them (tritonclient.utils.shared_memory)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import tritonclient.utils.shared_memory as shm

TRITON = Path(__file__).parent / "fixtures" / "triton"  # Triton's example models, on its Python backend


class Regions:
    """Objects under unique keys in /dev/shm; `destroy` unlinks them at the end of a test."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def make(self, name: str, size: int) -> tuple[Any, str]:
        key = f"/shadowserve_test_{name}_{self.tag}"
        self.handles.append(shm.create_shared_memory_region(name, key, size))
        return self.handles[-1], key

    def destroy(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)
