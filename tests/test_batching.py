"""The dynamic batcher on its own: batch formation, backpressure, timeouts, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from serving.batching import Batcher, Pending
from serving.config import BatchPolicy
from serving.errors import ModelError, Unavailable


class Recorder:
    """A worker that records each batch it gets and echoes the payloads."""

    def __init__(self, delay: float = 0.0, fail_on: set[Any] | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.fail_on = fail_on or set()
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, batch: list[Pending]) -> Sequence[Any]:
        payloads = [item.payload for item in batch]
        self.batches.append(payloads)
        await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_on & set(payloads):
            raise RuntimeError("injected failure")
        return [("done", p) for p in payloads]


def policy(**kwargs: Any) -> BatchPolicy:
    kwargs.setdefault("max_batch_size", 8)
    kwargs.setdefault("dynamic", True)
    return BatchPolicy(**kwargs)


async def submit_all(batcher: Batcher, items: list[tuple[Any, int]], key: Any = None) -> list[Any]:
    tasks = [asyncio.ensure_future(batcher.submit(p, rows, key)) for p, rows in items]
    return await asyncio.gather(*tasks, return_exceptions=True)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 10))


def test_requests_queued_together_form_one_batch_up_to_max_rows() -> None:
    async def scenario() -> None:
        worker = Recorder()
        batcher = Batcher(policy(max_batch_size=8, max_queue_delay_us=50_000), [worker])
        batcher.start()
        results = await submit_all(batcher, [(i, 2) for i in range(6)])  # 12 rows
        await batcher.stop()
        assert results == [("done", i) for i in range(6)]
        assert worker.batches == [[0, 1, 2, 3], [4, 5]]  # 8 rows, then the rest
    run(scenario())


def test_a_request_is_never_split_and_rows_never_exceed_max() -> None:
    async def scenario() -> None:
        worker = Recorder()
        batcher = Batcher(policy(max_batch_size=8, max_queue_delay_us=20_000), [worker])
        batcher.start()
        rows = {"a": 5, "b": 4, "c": 3, "d": 1}
        await submit_all(batcher, list(rows.items()))
        await batcher.stop()
        sizes = [sum(rows[p] for p in batch) for batch in worker.batches]
        assert all(size <= 8 for size in sizes)
        assert sorted(p for batch in worker.batches for p in batch) == sorted(rows)
        assert worker.batches[0] == ["a"]  # "b" would overflow: a batch of 5 goes first, order kept
    run(scenario())


def test_delay_waits_for_more_requests_counted_from_the_first() -> None:
    async def scenario() -> None:
        worker = Recorder()
        batcher = Batcher(policy(max_batch_size=8, max_queue_delay_us=200_000), [worker])
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit("second"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(first, second)
        waited = loop.time() - started
        await batcher.stop()
        assert worker.batches == [["first", "second"]]
        assert waited < 0.19  # the deadline ran from the first request, not the second
    run(scenario())


def test_without_delay_queued_requests_still_batch_while_the_worker_is_busy() -> None:
    async def scenario() -> None:
        worker = Recorder()
        worker.release.clear()
        batcher = Batcher(policy(max_batch_size=8, max_queue_delay_us=0), [worker])
        batcher.start()
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.01)  # "first" is computing (blocked)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        worker.release.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()
        assert worker.batches == [["first"], [0, 1, 2, 3, 4]]
    run(scenario())


def test_preferred_batch_size_dispatches_without_waiting_for_the_delay() -> None:
    async def scenario() -> None:
        worker = Recorder()
        batcher = Batcher(policy(max_batch_size=8, preferred_sizes=(4,), max_queue_delay_us=5_000_000), [worker])
        batcher.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await submit_all(batcher, [(i, 1) for i in range(5)][:4])
        assert loop.time() - started < 1.0
        assert results == [("done", i) for i in range(4)]
        # 6 queued rows with preferred size 4: the largest preferred prefix goes first
        worker.release.clear()
        blocker = asyncio.ensure_future(batcher.submit("blocker", 4))
        await asyncio.sleep(0.01)
        tasks = [asyncio.ensure_future(batcher.submit(i, 2)) for i in range(3)]
        await asyncio.sleep(0.01)
        worker.release.set()
        await asyncio.wait_for(blocker, 1)
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), 1)
        await batcher.stop()
        assert worker.batches[2] == [0, 1]
    run(scenario())


def test_requests_with_different_keys_are_not_batched_together() -> None:
    async def scenario() -> None:
        worker = Recorder()
        worker.release.clear()
        batcher = Batcher(policy(max_batch_size=8), [worker])
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit("blocker"))
        await asyncio.sleep(0.01)
        tasks = [asyncio.ensure_future(batcher.submit(name, 1, key)) for name, key in
                 (("a1", (3,)), ("a2", (3,)), ("b1", (5,)), ("a3", (3,)))]
        await asyncio.sleep(0.01)
        worker.release.set()
        await asyncio.gather(blocker, *tasks)
        await batcher.stop()
        assert worker.batches[1:] == [["a1", "a2"], ["b1"], ["a3"]]  # FIFO, never mixed
    run(scenario())


def test_models_without_dynamic_batching_run_one_request_per_batch() -> None:
    async def scenario() -> None:
        worker = Recorder()
        batcher = Batcher(BatchPolicy(max_batch_size=8, dynamic=False), [worker])
        batcher.start()
        await submit_all(batcher, [(i, 2) for i in range(3)])
        await batcher.stop()
        assert worker.batches == [[0], [1], [2]]
    run(scenario())


def test_full_queue_rejects_at_once_with_unavailable() -> None:
    async def scenario() -> None:
        worker = Recorder()
        worker.release.clear()
        batcher = Batcher(policy(max_batch_size=1, max_queue_size=2), [worker])
        batcher.start()
        running = asyncio.ensure_future(batcher.submit("running"))
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        assert batcher.pending == 2
        with pytest.raises(Unavailable, match="max_queue_size"):
            await batcher.submit("one too many")
        worker.release.set()
        assert await asyncio.gather(running, *queued) == [("done", "running"), ("done", 0), ("done", 1)]
        await batcher.stop()
    run(scenario())


def test_a_request_that_waits_past_its_timeout_is_rejected_and_never_computed() -> None:
    async def scenario() -> None:
        worker = Recorder()
        worker.release.clear()
        batcher = Batcher(policy(max_batch_size=1), [worker])
        batcher.start()
        running = asyncio.ensure_future(batcher.submit("running"))
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match="timed out"):
            await batcher.submit("late", timeout_us=20_000)
        assert batcher.pending == 0
        worker.release.set()
        await running
        assert await batcher.submit("next") == ("done", "next")
        await batcher.stop()
        assert "late" not in [p for batch in worker.batches for p in batch]
    run(scenario())


def test_a_cancelled_request_is_dropped_before_compute() -> None:
    async def scenario() -> None:
        worker = Recorder()
        worker.release.clear()
        batcher = Batcher(policy(max_batch_size=8), [worker])
        batcher.start()
        running = asyncio.ensure_future(batcher.submit("running"))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert batcher.pending == 1
        worker.release.set()
        assert await kept == ("done", "kept")
        await running
        await batcher.stop()
        assert worker.batches == [["running"], ["kept"]]
    run(scenario())


def test_a_failing_batch_fails_only_its_requests_and_the_loop_keeps_running() -> None:
    async def scenario() -> None:
        worker = Recorder(fail_on={"bad"})
        batcher = Batcher(BatchPolicy(max_batch_size=4, dynamic=False), [worker])
        batcher.start()
        results = await submit_all(batcher, [("ok1", 1), ("bad", 1), ("ok2", 1)])
        assert results[0] == ("done", "ok1") and results[2] == ("done", "ok2")
        assert isinstance(results[1], ModelError) and "injected failure" in str(results[1])
        assert await batcher.submit("after") == ("done", "after")
        await batcher.stop()
    run(scenario())


def test_a_worker_returning_per_request_errors_fails_only_those_requests() -> None:
    async def worker(batch: list[Pending]) -> list[Any]:
        return [ValueError(f"row {p.payload}") if p.payload == 1 else p.payload for p in batch]

    async def scenario() -> None:
        batcher = Batcher(policy(max_batch_size=4, max_queue_delay_us=10_000), [worker])
        batcher.start()
        results = await submit_all(batcher, [(i, 1) for i in range(3)])
        await batcher.stop()
        assert results[0] == 0 and results[2] == 2 and isinstance(results[1], ValueError)
    run(scenario())


def test_several_workers_compute_batches_concurrently() -> None:
    async def scenario() -> None:
        active, peak = 0, 0

        async def worker(batch: list[Pending]) -> list[Any]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
            return [p.payload for p in batch]

        batcher = Batcher(BatchPolicy(max_batch_size=1, dynamic=False), [worker, worker, worker])
        batcher.start()
        assert await submit_all(batcher, [(i, 1) for i in range(6)]) == list(range(6))
        await batcher.stop()
        assert peak == 3
    run(scenario())


def test_stop_fails_queued_requests_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        worker = Recorder()
        worker.release.clear()
        batcher = Batcher(policy(max_batch_size=1), [worker], name="m")
        batcher.start()
        running = asyncio.ensure_future(batcher.submit("running"))
        await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.submit("queued"))
        await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        worker.release.set()
        await stopping
        assert await running == ("done", "running")  # a running batch finishes
        with pytest.raises(Unavailable):
            await queued
        with pytest.raises(Unavailable, match="shutting down"):
            await batcher.submit("late")
    run(scenario())


def test_drain_waits_for_queued_and_running_batches() -> None:
    async def scenario() -> None:
        worker = Recorder()
        worker.release.clear()
        batcher = Batcher(policy(max_batch_size=1), [worker])
        batcher.start()
        requests = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        draining = asyncio.ensure_future(batcher.drain())
        await asyncio.sleep(0.01)
        assert not draining.done()
        worker.release.set()
        await asyncio.wait_for(draining, 1)
        assert all(r.done() for r in requests) and not batcher.busy
        await batcher.drain()  # idle: returns at once
        await batcher.stop()
    run(scenario())


def test_batches_go_to_the_least_busy_device() -> None:
    async def scenario() -> list[str]:
        started: list[str] = []
        release = asyncio.Event()

        def worker(name: str) -> Callable[[list[Pending]], Awaitable[list[Any]]]:
            async def run(batch: list[Pending]) -> list[Any]:
                started.append(name)
                await release.wait()
                return [p.payload for p in batch]
            return run

        # two instances on gpu0, two on gpu1: four concurrent batches spread two and two
        names = ["gpu0-a", "gpu0-b", "gpu1-a", "gpu1-b"]
        batcher = Batcher(BatchPolicy(max_batch_size=1, dynamic=False), [worker(n) for n in names],
                          groups=["gpu0", "gpu0", "gpu1", "gpu1"])
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        first_two = list(started)
        tasks += [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 4)]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)
        await batcher.stop()
        return first_two

    first_two = run(scenario())
    assert sorted(name[:4] for name in first_two) == ["gpu0", "gpu1"]


def test_a_full_queue_dispatches_without_waiting_for_the_queue_delay() -> None:
    async def scenario() -> None:
        worker = Recorder()
        batcher = Batcher(policy(max_batch_size=8, max_queue_size=3, max_queue_delay_us=5_000_000), [worker])
        batcher.start()
        results = await asyncio.wait_for(submit_all(batcher, [(i, 1) for i in range(3)]), 2)
        assert worker.batches == [[0, 1, 2]]  # no one more could join: no 5 s wait for company
        assert results == [("done", 0), ("done", 1), ("done", 2)]
        await batcher.stop()
    run(scenario())
