"""The thread of one model instance: its calls run there in order, and each answer wakes the loop once.

`loop.run_in_executor` on a ThreadPoolExecutor costs, per call, a concurrent future, a
work item, a Python-level queue and semaphore, and a second (asyncio) future chained to
the first through callbacks on both sides: about 20 us of event-loop time per batch, timed
alone, where a C `SimpleQueue` and one ``call_soon_threadsafe`` that sets a loop future
take about 7. `InstanceThread.run` is that cheap hand-off; it is also a
`concurrent.futures.Executor`, so `run_in_executor` (warm-up) works on it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = None  # put on the queue: the thread ends after the calls before it


class InstanceThread(concurrent.futures.Executor):
    """One worker thread; ``initializer`` runs on it first (if it raises, every call fails with its error)."""

    def __init__(self, name: str, initializer: Callable[[], object] | None = None) -> None:
        calls: queue.SimpleQueue[tuple[Any, Any, Callable[[], Any]] | None] = queue.SimpleQueue()
        self._calls = calls
        self._stopped = False
        # the thread holds the queue, not this object: one dropped without shutdown ends its thread too
        self._ended = weakref.ref(self, lambda _: calls.put(_STOP))
        self._thread = threading.Thread(target=_work, args=(calls, initializer, name), name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on the thread; its result (or exception) on the returned future of the running loop."""
        if self._stopped:
            raise RuntimeError("cannot schedule new calls after shutdown")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, (lambda: fn(*args)) if args else fn))
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """The `Executor` form, for `run_in_executor` and callers off the loop."""
        if self._stopped:
            raise RuntimeError("cannot schedule new calls after shutdown")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((None, future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; the thread ends after those already queued (``cancel_futures``: drops them)."""
        if not self._stopped:
            self._stopped = True
            if cancel_futures:
                while True:
                    try:
                        item = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None and item[0] is None:
                        item[1].cancel()
            self._calls.put(_STOP)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()


def _work(calls: queue.SimpleQueue[tuple[Any, Any, Callable[[], Any]] | None],
          initializer: Callable[[], object] | None, name: str) -> None:
    failure: BaseException | None = None
    if initializer is not None:
        try:
            initializer()
        except BaseException as exc:  # every call reports it instead of hanging
            log.exception("instance thread %s failed to start", name)
            failure = exc
    while True:
        item = calls.get()
        if item is None:
            return
        loop, future, call = item
        if loop is None and not future.set_running_or_notify_cancel():
            continue  # a concurrent future cancelled while it waited
        ok = False
        try:
            if failure is not None:
                raise failure
            result, ok = call(), True
        except BaseException as exc:  # noqa: BLE001  # handed to the caller, as an executor does
            result = exc
        del call, item
        if loop is None:
            if ok:
                future.set_result(result)
            else:
                future.set_exception(result)
            continue
        try:
            loop.call_soon_threadsafe(_settle, future, ok, result)
        except RuntimeError:  # the loop closed meanwhile: nobody waits for it
            pass


def _settle(future: asyncio.Future[Any], ok: bool, result: Any) -> None:
    if future.done():  # its caller went away (cancelled)
        return
    if ok:
        future.set_result(result)
    else:
        future.set_exception(result)
