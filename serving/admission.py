"""A place in a scheduler's queue (a batcher's, an ensemble's), held while a request's body is read.

See `serving.batching.Batcher.reserve` for the rules. `Place` is the ``async with`` form
that the transports use, so that a place is given back however the block ends; `Waiters`
holds the requests that wait for a place, briefly and in arrival order.
"""

from __future__ import annotations

import asyncio
import collections
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


class Waiters:
    """Requests waiting for a place in a queue, oldest first, each until its deadline.

    ``grant`` takes a place for a waiter and ``revoke`` gives it back (when the waiter went
    away just as it got one); ``has_room`` says whether a place is free, and ``full`` is the
    error of a waiter whose wait ran out. Places are handed over on the loop's next turn
    after one frees (`schedule_hand_off`), so that a request that releases its place just
    before it submits takes that place itself.
    """

    def __init__(self, grant: Callable[[], None], revoke: Callable[[], None], has_room: Callable[[], bool],
                 full: Callable[[], Unavailable]) -> None:
        self._grant, self._revoke, self._has_room, self._full = grant, revoke, has_room, full
        # the waiters with their deadlines; done ones leave lazily
        self._queue: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self.waiting = 0  # waiters not yet done
        self._expiry: asyncio.TimerHandle | None = None  # one timer, for the oldest waiter's deadline
        self._scheduled = False

    async def wait(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` seconds for a place (granted on return), after those that waited before."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        deadline = loop.time() + wait_s
        self._queue.append((deadline, future))
        self.waiting += 1
        if self._expiry is None:
            self._expiry = loop.call_at(deadline, self._give_up)
        try:
            await future  # resolved by `_hand_off`, which granted the place
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._revoke()  # a place was handed over, but the request went away
            raise
        finally:
            self.waiting -= 1
            if len(self._queue) > 2 * self.waiting + 64:  # bound the waiters that went away
                self._queue = collections.deque(w for w in self._queue if not w[1].done())

    def _give_up(self) -> None:
        """Reject the waiters whose deadline has passed, oldest first; re-arm for the next one.

        One timer serves them all: deadlines grow in arrival order when every caller waits
        as long (the transports pass one setting), so the oldest waiter expires first.
        """
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._queue:
            deadline, future = self._queue[0]
            if future.done():
                self._queue.popleft()
            elif deadline <= now:
                self._queue.popleft()
                future.set_exception(self._full())
            else:
                self._expiry = loop.call_at(deadline, self._give_up)
                break

    def schedule_hand_off(self) -> None:
        """A place may have freed: hand free places to waiters on the loop's next turn."""
        if self.waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._hand_off)

    def _hand_off(self) -> None:
        self._scheduled = False
        while self._queue and self._has_room():
            _, future = self._queue.popleft()
            if not future.done():
                self._grant()
                future.set_result(None)

    def fail(self, error: Unavailable) -> None:
        """Fail every waiter (the queue is stopping)."""
        if self._expiry is not None:
            self._expiry.cancel()
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(error)
