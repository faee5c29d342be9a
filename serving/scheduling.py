"""What the dataplane, admission and the lifecycle ask of a model version's scheduler.

A model's `serving.batching.Batcher` is one; an ensemble's
`serving.ensemble.EnsembleScheduler` (no queue of its own: its steps queue in their
models' batchers) is the other.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol


class Scheduler(Protocol):
    """Takes a version's requests, holds places for those still being read, drains and stops."""

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (Triton's pending request count)."""

    @property
    def busy(self) -> bool:
        """Whether anything is queued or running."""

    def start(self) -> None:
        """Begin taking requests (on the running loop)."""

    async def reserve(self, wait_s: float = 0.0) -> None:
        """Hold a place for a request about to be read; `Unavailable` when there is none."""

    def release(self) -> None:
        """Give back a place taken by `reserve`."""

    async def submit(self, payload: Any, rows: int = 1, key: Hashable = None, timeout_us: int = 0) -> Any:
        """Run one request; its outputs by name."""

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""

    async def stop(self) -> None:
        """Refuse new work and wait for what runs."""
