"""A place in a scheduler's queue (a batcher's, an ensemble's), held while a request's body is read.

See `serving.batching.Batcher.reserve` for the rules; this is the ``async with`` form that
the transports use, so that a place is given back however the block ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import Unavailable

if TYPE_CHECKING:
    from .scheduling import Scheduler


class Place:
    """`Batcher.reserve` on entering, `Batcher.release` on leaving; ``rejected`` sees a refusal."""

    __slots__ = ("_batcher", "_wait_s", "_rejected")

    def __init__(self, batcher: Scheduler, wait_s: float, rejected: Callable[[Unavailable], None] | None) -> None:
        self._batcher = batcher
        self._wait_s = wait_s
        self._rejected = rejected

    async def __aenter__(self) -> None:
        try:
            await self._batcher.reserve(self._wait_s)
        except Unavailable as exc:
            if self._rejected is not None:
                self._rejected(exc)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._batcher.release()
