"""Admission to a batcher's queue: places reserved before a body is read, and requests waiting for one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.batching import Batcher
from serving.errors import Unavailable

from .test_batching import Recorder, policy, run


async def computing(queue_size: int) -> tuple[Recorder, Batcher, asyncio.Future[Any]]:
    """A batcher of one-row batches whose worker holds the first request until released."""
    worker = Recorder()
    worker.release.clear()
    batcher = Batcher(policy(max_batch_size=1, max_queue_size=queue_size), [worker])
    batcher.start()
    running = asyncio.ensure_future(batcher.submit("running"))
    await asyncio.sleep(0.01)  # the worker has it: the queue is empty
    return worker, batcher, running


def test_places_reserved_before_the_body_is_read_count_against_the_queue() -> None:
    async def scenario() -> None:
        worker, batcher, running = await computing(2)
        await batcher.reserve()
        await batcher.reserve()  # two bodies on their way: the queue is empty, but full
        assert batcher.pending == 0
        with pytest.raises(Unavailable, match="max_queue_size"):
            await batcher.reserve()
        with pytest.raises(Unavailable, match="max_queue_size"):
            await batcher.submit("not reserved")
        batcher.release()  # the body arrived: its place passes to its own submit
        queued = asyncio.ensure_future(batcher.submit("reserved"))
        await asyncio.sleep(0.01)
        assert batcher.pending == 1
        with pytest.raises(Unavailable):
            await batcher.reserve()
        batcher.release()  # the other request failed before it was submitted: its place is free
        await batcher.reserve()
        batcher.release()
        worker.release.set()
        # gather gives a list (typeshed types it as a tuple of the two results)
        assert list(await asyncio.gather(running, queued)) == [("done", "running"), ("done", "reserved")]
        await batcher.stop()
    run(scenario())


def test_waiters_get_places_in_arrival_order_or_give_up_after_their_wait() -> None:
    async def scenario() -> None:
        worker, batcher, running = await computing(1)
        queued = asyncio.ensure_future(batcher.submit("queued"))
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable, match="max_queue_size"):
            await batcher.reserve(0.05)  # nothing leaves the queue within 0.05 s
        assert loop.time() - started >= 0.05
        order: list[str] = []

        async def wait_then_submit(name: str) -> Any:
            await batcher.reserve(5.0)
            order.append(name)
            batcher.release()
            return await batcher.submit(name)

        waiters = [asyncio.ensure_future(wait_then_submit(name)) for name in ("first", "second", "third")]
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.reserve(5.0))
        await asyncio.sleep(0.01)
        gone.cancel()  # a waiter whose client hung up takes no place with it
        worker.release.set()
        results = await asyncio.gather(running, queued, *waiters)
        assert order == ["first", "second", "third"]
        assert results[2:] == [("done", "first"), ("done", "second"), ("done", "third")]
        await batcher.reserve()  # every place came back
        batcher.release()
        await batcher.stop()
    run(scenario())


def test_stopping_fails_the_waiters() -> None:
    async def scenario() -> None:
        worker, batcher, running = await computing(1)
        await batcher.reserve()
        waiter = asyncio.ensure_future(batcher.reserve(5.0))
        await asyncio.sleep(0.01)
        worker.release.set()
        await batcher.stop()
        with pytest.raises(Unavailable, match="unloaded"):
            await waiter
        await running
        with pytest.raises(Unavailable, match="shutting down"):
            await batcher.reserve()
    run(scenario())
