"""Staging: a busy worker is handed its next complete batch, which starts on the worker's thread.

The worker here is built like a model instance: one thread of its own that computes the
batches handed to it in order, calling `begin` as each starts. Its batches can be held at
gates, so that each test decides when a batch ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from serving.batching import Batcher, Pending, begin
from serving.config import BatchPolicy
from serving.errors import ModelError, Unavailable

GONE = object()


class Threaded:
    """A worker holding two batches, computing them in turn on its own thread."""

    def __init__(self, fail_on: set[Any] | None = None) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="staging-test")
        self.gates: list[threading.Event] = []  # the next batches wait at these, in turn; later ones run free
        self.fail_on = fail_on or set()
        self.handed: list[list[Any]] = []  # payloads of each batch handed over, on the loop
        self.computed: list[list[Any]] = []  # payloads each batch computed, after begin
        self.began_at: list[float] = []
        self.started: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    async def __call__(self, batch: list[Pending]) -> list[Any]:
        self.handed.append([item.payload for item in batch])
        return await self.loop.run_in_executor(self.pool, self._compute, batch)

    def _compute(self, batch: list[Pending]) -> list[Any]:
        live = begin(batch)
        self.began_at.append(time.monotonic())
        payloads = [item.payload for item in live]
        self.computed.append(payloads)
        self.loop.call_soon_threadsafe(self.started.put_nowait, payloads)
        if self.gates:
            assert self.gates.pop(0).wait(5), "the test never opened the gate"
        if self.fail_on & set(payloads):
            raise RuntimeError("injected failure")
        answered = {id(item): ("done", item.payload) for item in live}
        return [answered.get(id(item), GONE) for item in batch]

    def hold(self, batches: int = 1) -> list[threading.Event]:
        """Hold the next ``batches`` batches, each until its gate (returned) is set."""
        gates = [threading.Event() for _ in range(batches)]
        self.gates += gates
        return gates

    def close(self) -> None:
        for gate in self.gates:
            gate.set()
        self.pool.shutdown(wait=True)


def staged_batcher(worker: Threaded, **policy: Any) -> Batcher:
    policy.setdefault("dynamic", True)
    batcher = Batcher(BatchPolicy(**policy), [worker], depths=[2])
    batcher.start()
    return batcher


async def running(worker: Threaded, payloads: Sequence[Any], **policy: Any) -> tuple[
        threading.Event, Batcher, list[asyncio.Task[Any]]]:
    """A staged batcher whose first batch, of ``payloads`` (submitted now), has started and is held at the gate."""
    gate, = worker.hold()
    batcher = staged_batcher(worker, **policy)
    first = [asyncio.ensure_future(batcher.submit(payload)) for payload in payloads]
    assert await worker.started.get() == list(payloads)
    return gate, batcher, first


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), 10)
    return asyncio.run(bounded())


async def until(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


def test_the_next_complete_batch_is_handed_over_and_starts_without_the_event_loop() -> None:
    async def scenario() -> None:
        worker = Threaded()
        gate, batcher, first = await running(worker, (0, 1), max_batch_size=2, max_queue_delay_us=5_000_000)
        second = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
        await until(lambda: len(worker.handed) == 2)  # handed over while the first computes
        assert worker.computed == [[0, 1]] and batcher.pending == 2
        gate.set()
        blocked_until = time.monotonic() + 0.3
        time.sleep(0.3)  # noqa: ASYNC251  # the loop blocked on purpose: only the worker's thread can start the batch
        assert len(worker.began_at) == 2 and worker.began_at[1] < blocked_until
        assert await asyncio.gather(*first, *second) == [("done", i) for i in range(4)]
        assert worker.computed == [[0, 1], [2, 3]] and batcher.pending == 0
        await batcher.stop()
        worker.close()
    run(scenario)


def test_a_busy_worker_gets_no_incomplete_batch_at_the_queue_delay_and_the_batch_grows_meanwhile() -> None:
    async def scenario() -> None:
        worker = Threaded()
        gate, batcher, tasks = await running(worker, range(4), max_batch_size=4, max_queue_delay_us=10_000)
        tasks.append(asyncio.ensure_future(batcher.submit(4)))
        await asyncio.sleep(0.06)  # six times the queue delay: still not sealed for a busy worker
        tasks += [asyncio.ensure_future(batcher.submit(i)) for i in (5, 6)]
        await asyncio.sleep(0.02)
        assert worker.handed == [[0, 1, 2, 3]] and batcher.pending == 3
        gate.set()
        assert await asyncio.gather(*tasks) == [("done", i) for i in range(7)]
        assert worker.handed == [[0, 1, 2, 3], [4, 5, 6]]  # one batch, dispatched once the worker was idle
        await batcher.stop()
        worker.close()
    run(scenario)


def test_a_request_cancelled_while_staged_is_dropped_before_compute() -> None:
    async def scenario() -> None:
        worker = Threaded()
        gate, batcher, first = await running(worker, (0, 1), max_batch_size=2, max_queue_delay_us=5_000_000)
        cancelled, kept = asyncio.ensure_future(batcher.submit(2)), asyncio.ensure_future(batcher.submit(3))
        await until(lambda: len(worker.handed) == 2)
        cancelled.cancel()
        await asyncio.sleep(0)
        gate.set()
        assert await kept == ("done", 3)
        assert await asyncio.gather(*first) == [("done", 0), ("done", 1)]
        assert cancelled.cancelled()
        assert worker.computed == [[0, 1], [3]]  # 2 never reached compute
        await batcher.stop()
        worker.close()
    run(scenario)


def test_a_request_that_times_out_while_staged_fails_and_one_that_started_in_time_does_not() -> None:
    async def scenario() -> None:
        worker = Threaded()
        gate, batcher, first = await running(worker, (0, 1), max_batch_size=2, max_queue_delay_us=5_000_000)
        late = asyncio.ensure_future(batcher.submit(2, timeout_us=50_000))
        patient = asyncio.ensure_future(batcher.submit(3))
        await until(lambda: len(worker.handed) == 2)
        with pytest.raises(Unavailable, match="timed out after waiting 50000 us"):
            await late  # staged, still waiting for the device: its timeout holds
        gate.set()
        assert await patient == ("done", 3)
        assert await asyncio.gather(*first) == [("done", 0), ("done", 1)]
        assert worker.computed[1] == [3] and await worker.started.get() == [3]
        # a request whose timeout passes after its staged batch began is answered, not timed out
        ahead, behind = worker.hold(2)
        held = [asyncio.ensure_future(batcher.submit(i)) for i in (4, 5)]
        await worker.started.get()
        quick = [asyncio.ensure_future(batcher.submit(6, timeout_us=150_000)), asyncio.ensure_future(batcher.submit(7))]
        await until(lambda: len(worker.handed) == 4)
        ahead.set()  # the staged batch begins well inside 6's 150 ms ...
        assert await worker.started.get() == [6, 7]
        await asyncio.sleep(0.25)  # ... and computes past them
        behind.set()
        assert await asyncio.gather(*held, *quick) == [("done", i) for i in (4, 5, 6, 7)]
        await batcher.stop()
        worker.close()
    run(scenario)


def test_a_failing_batch_fails_only_its_own_requests_and_the_staged_batch_still_runs() -> None:
    async def scenario() -> None:
        worker = Threaded(fail_on={0, 4})
        gate, batcher, tasks = await running(worker, (0, 1), max_batch_size=2, max_queue_delay_us=5_000_000)
        tasks += [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 6)]
        await until(lambda: len(worker.handed) == 2)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r) for r in results[:2]] == [ModelError, ModelError]
        assert results[2:4] == [("done", 2), ("done", 3)]  # the staged batch, after the failure
        assert [type(r) for r in results[4:]] == [ModelError, ModelError]  # a staged batch that failed itself
        assert "injected failure" in str(results[0])
        # the loop lives on
        assert list(await asyncio.gather(batcher.submit(8), batcher.submit(9))) == [("done", 8), ("done", 9)]
        assert batcher.pending == 0 and not batcher.busy
        await batcher.stop()
        worker.close()
    run(scenario)


def test_a_worker_failing_as_a_batch_is_handed_over_releases_the_staged_places() -> None:
    async def scenario() -> None:
        worker = Threaded()
        gate, = worker.hold()
        calls = 0

        async def failing_at_second(batch: list[Pending]) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls == 2:  # on the loop, before its thread gets it (as staging inputs can fail)
                raise RuntimeError("staging failed")
            return await worker(batch)

        batcher = Batcher(BatchPolicy(max_batch_size=1, max_queue_size=1), [failing_at_second], depths=[2])
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(0))
        await worker.started.get()
        with pytest.raises(ModelError, match="staging failed"):
            await batcher.submit(1)  # staged at once (the queue is full), and failed
        assert batcher.pending == 0
        queued = asyncio.ensure_future(batcher.submit(2))  # its place is free again
        await until(lambda: calls == 3)
        gate.set()
        assert list(await asyncio.gather(running, queued)) == [("done", 0), ("done", 2)]
        await batcher.stop()
        worker.close()
    run(scenario)


def test_staged_requests_are_pending_and_hold_their_places_under_max_queue_size() -> None:
    async def scenario() -> None:
        worker = Threaded()
        gate, batcher, (first,) = await running(worker, (0,), max_batch_size=1, max_queue_size=1,
                                                max_queue_delay_us=5_000_000)
        staged = asyncio.ensure_future(batcher.submit(1))
        await until(lambda: len(worker.handed) == 2)
        assert batcher.pending == 1
        with pytest.raises(Unavailable, match="max_queue_size"):
            await batcher.submit(2)
        gate.set()
        assert list(await asyncio.gather(first, staged)) == [("done", 0), ("done", 1)]
        assert batcher.pending == 0
        assert await batcher.submit(3) == ("done", 3)
        await batcher.stop()
        worker.close()
    run(scenario)


def test_stop_lets_running_and_staged_batches_finish() -> None:
    async def scenario() -> None:
        worker = Threaded()
        gate, batcher, tasks = await running(worker, (0,), max_batch_size=1, max_queue_delay_us=5_000_000)
        tasks += [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await until(lambda: len(worker.handed) == 2)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        gate.set()
        await stopping
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[:2] == [("done", 0), ("done", 1)]
        assert isinstance(results[2], Unavailable)  # still queued: failed, as before staging
        worker.close()
    run(scenario)


def test_depths_must_match_the_workers() -> None:
    async def worker(batch: list[Pending]) -> list[Any]:
        return [item.payload for item in batch]

    with pytest.raises(ValueError, match="depths"):
        Batcher(BatchPolicy(max_batch_size=1), [worker], depths=[2, 2])
    with pytest.raises(ValueError, match="depths"):
        Batcher(BatchPolicy(max_batch_size=1), [worker], depths=[0])
