"""The dynamic batcher: plain asyncio, testable without a server.

Requests wait in one FIFO queue per model version. Whenever a worker (a model
instance) is idle and the queue is not empty, the batcher forms a batch:

* it takes queued requests in order while their rows fit in ``max_batch_size`` and
  their batch key matches the first one's (requests whose non-batch shapes differ
  cannot be concatenated); a request is never split;
* it dispatches at once when the batch is full, when the next request would not fit,
  or when the rows so far make a preferred batch size (the largest one reachable);
* otherwise it waits for more requests until the oldest has waited
  ``max_queue_delay_us``, counted from that request's arrival, unless the queue is at its
  ``max_queue_size`` (no one more could join).

While a batch computes, new requests queue up, so the next batch forms during compute.
A worker that can hold a second batch (``depths``: a model instance with its own thread)
is handed the next one as soon as it is complete (full, a preferred size, or no one more
can join; the queue delay does not seal a batch for a busy worker, since it could not start
earlier anyway). That batch is *staged*: its requests keep their timeouts and may still be
cancelled, and the worker calls `begin` where it computes, which drops those that went away
and marks the rest running. The worker starts it the moment the batch before ends, without
waiting for the event loop. Until then its requests still count as pending, and hold their
places under ``max_queue_size``.

Admission: with ``max_queue_size`` set, a transport can `reserve` a place before it reads
and decodes a request's body, so a full queue is answered before any of that work, and
requests whose bodies are still arriving cannot push the queue past its size. A request
that finds no place may wait for one, briefly and in arrival order, holding nothing but
its connection; places are handed to waiters when requests leave the queue.
The loop never dies: each batch runs behind an exception boundary, results are set only
on futures that are not done, and cancelled or timed-out requests are dropped before
compute. Time is ``time.monotonic_ns``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

from .admission import Waiters
from .config import BatchPolicy
from .errors import ModelError, ServingError, Unavailable, failure_text

log = logging.getLogger(__name__)

QUEUED, STAGED, RUNNING, DROPPED = 0, 1, 2, 3


class Pending:
    """One request in the queue."""

    __slots__ = ("payload", "rows", "key", "future", "enqueued_ns", "dispatched_ns", "state", "timer")

    def __init__(self, payload: Any, rows: int, key: Hashable, future: asyncio.Future[Any]) -> None:
        self.payload = payload
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued_ns = time.monotonic_ns()
        self.dispatched_ns = 0
        self.state = QUEUED
        self.timer: asyncio.TimerHandle | None = None


# A worker computes one batch and returns one result per request, in order; a result
# that is an exception fails only its own request.
Worker = Callable[[list[Pending]], Awaitable[Sequence[Any]]]


def begin(batch: Sequence[Pending]) -> list[Pending]:
    """The requests of a batch still wanted as it starts computing, marked running.

    Called where the batch computes, on any thread: a staged request that was cancelled
    or timed out since it was handed over is left out (its future is done already). A
    request that goes away during the call is computed and its result discarded, as for
    any request that goes away while its batch runs.
    """
    live = []
    now = time.monotonic_ns()
    for item in batch:
        if item.state == STAGED:
            item.state = RUNNING
            item.dispatched_ns = now  # the time staged counts as queueing: it waited for the device
        if item.state == RUNNING and not item.future.done():
            live.append(item)
    return live


class Batcher:
    """One queue, several workers.

    ``groups`` names the device of each worker: a batch goes to an idle worker on the
    device with the fewest batches running, so instances on several GPUs share the load.
    ``depths`` says how many batches each worker holds at once (1, the default, or 2 for a
    worker that takes a staged batch while it computes one, and calls `begin`).
    """

    def __init__(self, policy: BatchPolicy, workers: Sequence[Worker], name: str = "",
                 groups: Sequence[Hashable] | None = None, depths: Sequence[int] | None = None) -> None:
        if not workers:
            raise ValueError("a batcher needs at least one worker")
        self.policy = policy
        self.name = name
        self._workers = list(workers)
        self._groups = list(groups) if groups is not None else [0] * len(workers)
        self._depths = list(depths) if depths is not None else [1] * len(workers)
        if len(self._depths) != len(workers) or min(self._depths) < 1:
            raise ValueError("depths needs one count of at least 1 per worker")
        self._active = [0] * len(workers)  # batches each worker holds (running or staged)
        # each worker's staged batch, until the batch before it ends; their requests count as queued
        self._staged_on: list[list[Pending] | None] = [None] * len(workers)
        self._staged = 0
        self._queue: collections.deque[Pending] = collections.deque()
        self._queued = 0  # live (QUEUED) entries; dropped ones leave the deque lazily
        self._reserved = 0  # places held by `reserve` for requests not yet submitted
        self._waiters = Waiters(self._grant, self.release, self._has_room, self._full)
        self._wakeup = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever a batch ends or a queued request leaves
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Requests waiting in the queue or staged (Triton's pending request count)."""
        return self._queued + self._staged

    @property
    def reserved(self) -> int:
        """Places held by `reserve` for requests whose bodies are still being read."""
        return self._reserved

    @property
    def busy(self) -> bool:
        return self._queued > 0 or bool(self._running)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self.name}")

    # -- admission -------------------------------------------------------------------------

    def _full(self) -> Unavailable:
        limit = self.policy.max_queue_size
        return Unavailable(f"model '{self.name}' is overloaded: its queue holds {limit} requests "
                           "(max_queue_size); retry later or add replicas")

    def _has_room(self) -> bool:
        limit = self.policy.max_queue_size
        return not limit or self._queued + self._staged + self._reserved < limit

    async def reserve(self, wait_s: float = 0.0) -> None:
        """Hold a place in the queue for a request that is about to be read and decoded.

        Raises `Unavailable` at once when the batcher is stopping, or when the queue is
        full and ``wait_s`` is 0; otherwise waits up to ``wait_s`` seconds for a place,
        after the requests that waited before it. Pair every successful call with one
        `release`, just before `submit` (nothing may be awaited in between, so that the
        place passes to this request's `submit`) or when the request fails before it.
        """
        if self._closed:
            raise Unavailable(f"model '{self.name}' is shutting down; retry on another replica")
        if self._has_room() and not self._waiters.waiting:
            self._reserved += 1
            return
        if wait_s <= 0:
            raise self._full()
        await self._waiters.wait(wait_s)

    def _grant(self) -> None:
        self._reserved += 1

    def release(self) -> None:
        """Give back a place taken by `reserve`."""
        self._reserved -= 1
        self._waiters.schedule_hand_off()

    async def submit(self, payload: Any, rows: int = 1, key: Hashable = None, timeout_us: int = 0) -> Any:
        """Queue one request and wait for its result.

        Raises `Unavailable` when the queue is full, when the request waited longer than
        ``timeout_us`` (0: no limit), or when the batcher is stopping.
        """
        if self._closed:
            raise Unavailable(f"model '{self.name}' is shutting down; retry on another replica")
        if rows > self.policy.max_batch_size > 0:
            raise ValueError(f"{rows} rows exceed max_batch_size {self.policy.max_batch_size}")
        if not self._has_room():  # places reserved for requests still being read count as taken
            raise self._full()
        loop = asyncio.get_running_loop()
        item = Pending(payload, rows, key, loop.create_future())
        if timeout_us > 0:
            item.timer = loop.call_later(timeout_us / 1e6, self._expire, item, timeout_us)
        self._queue.append(item)
        self._queued += 1
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            self._drop(item)
            raise

    def _drop(self, item: Pending) -> None:
        if item.state == QUEUED:
            item.state = DROPPED
            self._queued -= 1
            self._settled.set()
            self._waiters.schedule_hand_off()
        elif item.state == STAGED:
            item.state = DROPPED  # it left the queue's count when it was staged
        if item.timer is not None:
            item.timer.cancel()

    def _expire(self, item: Pending, timeout_us: int) -> None:
        if item.state in (QUEUED, STAGED) and not item.future.done():
            item.future.set_exception(Unavailable(
                f"request timed out after waiting {timeout_us} us in the queue of model '{self.name}'; "
                "retry, raise the timeout, or add replicas"))
        self._drop(item)

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                while not self._queued or (worker := self._least_busy()) is None:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                staging = self._active[worker] > 0
                batch = self._take_batch(staging)
                if batch is None:
                    if staging:  # a busy worker takes only a complete batch: wait for a request or an idle worker
                        self._wakeup.clear()
                        await self._wakeup.wait()
                    else:
                        await self._wait_for_more(loop)
                    continue
                self._active[worker] += 1
                if staging:
                    self._staged_on[worker] = batch
                    self._staged += len(batch)
                task = loop.create_task(self._run(worker, batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything
                log.exception("batcher %s: unexpected error while forming a batch; continuing", self.name)

    def _least_busy(self) -> int | None:
        """The worker for the next batch: an idle one whose device runs the fewest batches (the lowest
        index on a tie), else one with room for a staged batch; None when every worker is full."""
        busy: dict[Hashable, int] = {}
        free = []
        for index, group in enumerate(self._groups):
            busy[group] = busy.get(group, 0) + self._active[index]
            if self._active[index] < self._depths[index]:
                free.append(index)
        if not free:
            return None
        return min(free, key=lambda index: (self._active[index], busy[self._groups[index]], index))

    def _candidates(self) -> tuple[list[Pending], bool]:
        """Live requests that could join the next batch, and whether the batch is complete."""
        policy = self.policy
        chosen: list[Pending] = []
        rows = 0
        for item in self._queue:
            if item.state != QUEUED:
                continue
            if chosen and (not policy.dynamic or item.key != chosen[0].key
                           or rows + item.rows > policy.max_batch_size):
                return chosen, True  # the next request cannot join: dispatch now
            chosen.append(item)
            rows += item.rows
            if not policy.dynamic or rows >= policy.max_batch_size:
                return chosen, True
        return chosen, False

    def _take_batch(self, staging: bool = False) -> list[Pending] | None:
        """Pop the next batch off the queue, or None when it is worth waiting for more.

        ``staging``: the batch goes to a worker that is still busy, so only a complete batch
        is taken (the queue delay is no reason to seal it), and its requests are staged.
        """
        chosen, complete = self._candidates()
        if not chosen:
            return None
        policy = self.policy
        if not complete and policy.preferred_sizes:
            rows, best = 0, 0
            for index, item in enumerate(chosen):
                rows += item.rows
                if rows in policy.preferred_sizes:
                    best = index + 1
            if best:
                chosen, complete = chosen[:best], True
        if not complete and policy.max_queue_size and self._queued + self._staged >= policy.max_queue_size:
            complete = True  # a full queue takes no one more: waiting for company is waiting for nothing
        if not complete:
            if staging:
                return None
            waited_us = (time.monotonic_ns() - chosen[0].enqueued_ns) // 1000
            if waited_us < policy.max_queue_delay_us:
                return None
        taken = 0
        now = time.monotonic_ns()
        while taken < len(chosen):
            item = self._queue.popleft()
            if item.state != QUEUED:
                continue
            if staging:
                item.state = STAGED  # keeps its timer: it may still time out before it starts
            else:
                item.state = RUNNING
                item.dispatched_ns = now
                if item.timer is not None:
                    item.timer.cancel()
            taken += 1
        self._queued -= taken
        self._waiters.schedule_hand_off()
        return chosen

    async def _wait_for_more(self, loop: asyncio.AbstractEventLoop) -> None:
        oldest = next(item for item in self._queue if item.state == QUEUED)
        deadline_ns = oldest.enqueued_ns + self.policy.max_queue_delay_us * 1000
        delay = max(deadline_ns - time.monotonic_ns(), 0) / 1e9
        self._wakeup.clear()
        timer = loop.call_later(delay, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()

    async def _run(self, worker: int, batch: list[Pending]) -> None:
        try:
            live = [item for item in batch if not item.future.done()]  # cancelled since dispatch
            if not live:
                return
            try:
                results = await self._workers[worker](live)
            except ServingError as exc:
                results = [exc] * len(live)
            except Exception as exc:  # a worker must not kill the loop
                log.exception("batcher %s: worker failed on a batch of %d requests", self.name, len(live))
                results = [ModelError(f"model '{self.name}' failed: {failure_text(exc)}")] * len(live)
            if len(results) != len(live):
                results = [ModelError(f"model '{self.name}' returned {len(results)} results for "
                                      f"{len(live)} requests")] * len(live)
            for item, result in zip(live, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
        finally:
            for item in batch:
                if item.state == STAGED:  # never started (the worker failed first): it is over now
                    item.state = DROPPED
                if item.timer is not None:  # a staged request's; it has started or is answered
                    item.timer.cancel()
            self._running.discard(asyncio.current_task())
            self._active[worker] -= 1
            staged = self._staged_on[worker]
            if staged is not None:  # it starts now (or it was this batch, and is over): no longer queued
                self._staged_on[worker] = None
                self._staged -= len(staged)
                self._waiters.schedule_hand_off()
            self._wakeup.set()
            self._settled.set()

    async def drain(self) -> None:
        """Wait until nothing is queued or running (callers stop sending work first)."""
        while self.busy:
            self._settled.clear()
            await self._settled.wait()

    async def stop(self) -> None:
        """Refuse new work, fail what is still queued, and wait for running batches."""
        self._closed = True
        self._waiters.fail(Unavailable(f"model '{self.name}' was unloaded before this request ran"))
        for item in self._queue:
            if item.state == QUEUED and not item.future.done():
                item.future.set_exception(Unavailable(f"model '{self.name}' was unloaded before this request ran"))
            self._drop(item)
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
