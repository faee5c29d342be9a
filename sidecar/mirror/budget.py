"""The memory that shadow copies may hold at once, shared by every shadow of a sidecar.

A copy takes its request body's size when it is admitted and the bytes of its shadow's
response as they are read; it gives all of it back when it ends. What cannot be taken is
refused (a copy not sent, a response abandoned), so a shadow that answers with huge or
endless bodies, or many copies of large requests, cannot grow the sidecar past
``--shadow-memory-budget-bytes``::

    budget = MemoryBudget(128 * 1024 * 1024)
    if budget.take(len(body)):
        try: ...
        finally: budget.give(len(body))
"""

from __future__ import annotations

from collections.abc import Callable


class MemoryBudget:
    """A byte count with a ceiling; ``on_change`` sees the bytes in use after each change (a gauge)."""

    def __init__(self, limit: int, on_change: Callable[[int], object] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self._on_change = on_change

    def take(self, size: int) -> bool:
        """Hold ``size`` more bytes if the ceiling allows it; False (nothing held) otherwise."""
        if self.used + size > self.limit:
            return False
        self.used += size
        if self._on_change is not None:
            self._on_change(self.used)
        return True

    def give(self, size: int) -> None:
        """Release bytes held by `take`."""
        self.used = max(0, self.used - size)
        if self._on_change is not None:
            self._on_change(self.used)


class Held:
    """What one copy holds of a budget: `take` more as a response arrives, `release` it all at the end."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: MemoryBudget, size: int = 0) -> None:
        self.budget = budget
        self.size = size

    def take(self, size: int) -> bool:
        if not self.budget.take(size):
            return False
        self.size += size
        return True

    def release(self) -> None:
        if self.size:
            self.budget.give(self.size)
            self.size = 0
