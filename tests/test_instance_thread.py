"""An instance's thread: calls run there in order, answers come back to the loop, failures to their caller."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

from serving.instance_thread import InstanceThread


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 20))


def test_calls_run_on_the_thread_in_order_and_answer_on_the_loop() -> None:
    run(_calls_run_on_the_thread_in_order_and_answer_on_the_loop())


async def _calls_run_on_the_thread_in_order_and_answer_on_the_loop() -> None:
    thread = InstanceThread("test-instance")
    seen: list[tuple[int, str]] = []

    def call(index: int) -> int:
        seen.append((index, threading.current_thread().name))
        return index * 2

    try:
        results = await asyncio.gather(*(thread.run(call, i) for i in range(50)))
        assert results == [i * 2 for i in range(50)]
        assert seen == [(i, "test-instance") for i in range(50)]
        assert await thread.run(lambda: "no arguments") == "no arguments"
        # the Executor form, as warm-up uses it
        assert await asyncio.get_running_loop().run_in_executor(thread, call, 7) == 14
    finally:
        thread.shutdown()


def test_an_exception_goes_to_its_own_caller_and_the_thread_goes_on() -> None:
    run(_an_exception_goes_to_its_own_caller_and_the_thread_goes_on())


async def _an_exception_goes_to_its_own_caller_and_the_thread_goes_on() -> None:
    thread = InstanceThread("test-instance")

    def fail() -> None:
        raise ValueError("this batch failed")

    try:
        with pytest.raises(ValueError, match="this batch failed"):
            await thread.run(fail)
        assert await thread.run(int, "3") == 3
    finally:
        thread.shutdown()


def test_a_failed_initializer_fails_every_call_instead_of_hanging() -> None:
    run(_a_failed_initializer_fails_every_call_instead_of_hanging())


async def _a_failed_initializer_fails_every_call_instead_of_hanging() -> None:
    def broken() -> None:
        raise RuntimeError("no device")

    thread = InstanceThread("test-instance", broken)
    try:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="no device"):
                await asyncio.wait_for(thread.run(int, "1"), 10)
    finally:
        thread.shutdown()


def test_a_caller_that_went_away_does_not_break_the_next_call() -> None:
    run(_a_caller_that_went_away_does_not_break_the_next_call())


async def _a_caller_that_went_away_does_not_break_the_next_call() -> None:
    thread = InstanceThread("test-instance")
    started, release = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(10)
        return 1

    try:
        first = thread.run(slow)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        first.cancel()
        release.set()
        assert await thread.run(int, "2") == 2  # the cancelled call's answer was dropped on the way
    finally:
        thread.shutdown()


def test_shutdown_runs_what_was_queued_and_refuses_more() -> None:
    thread = InstanceThread("test-instance")
    gate = threading.Event()
    first = thread.submit(gate.wait, 10)
    queued = thread.submit(int, "5")
    dropped_thread = InstanceThread("test-instance-2")
    dropped_gate = threading.Event()
    dropped_thread.submit(dropped_gate.wait, 10)
    dropped = dropped_thread.submit(int, "6")
    gate.set()
    thread.shutdown(wait=True)
    assert first.result(10) and queued.result(10) == 5
    with pytest.raises(RuntimeError, match="after shutdown"):
        thread.submit(int, "1")
    dropped_thread.shutdown(wait=False, cancel_futures=True)
    dropped_gate.set()
    dropped_thread.shutdown(wait=True)
    assert dropped.cancelled()


def test_a_thread_dropped_without_shutdown_ends() -> None:
    thread = InstanceThread("test-instance-dropped")
    assert thread.submit(int, "4").result(10) == 4
    worker = thread._thread
    del thread
    gc.collect()
    worker.join(10)
    assert not worker.is_alive()
