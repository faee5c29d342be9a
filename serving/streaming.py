"""Requests answered with a stream of responses (Triton's decoupled models).

A decoupled model answers a request with any number of responses, from any thread,
before or after its ``execute`` returned, and ends the stream with a final flag. The
dataplane hands such a request to the batcher as a `StreamWork`, whose `ResponseStream`
carries the responses from the model's threads to the transport on the event loop.

The stream is bounded: a model thread that sends faster than the client reads waits for
room (backpressure), and stops waiting when the client has gone away; a sender on the
event loop itself never waits (it would wait for itself).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from inference_protocol.tensors import InferRequest, InferResponse, Tensor

from .config import ModelSpec
from .errors import ModelError, ServingError, Unsupported, failure_text
from .requests import Counted, check_inputs, model_parameters, selected_outputs, timeout_us

if TYPE_CHECKING:
    from .lifecycle import ModelVersion

__all__ = ["StreamWork", "ResponseStream", "StreamItem", "DecoupledOnly", "is_decoupled", "respond", "STREAM_BUFFER",
           "EMPTY_FINAL", "FINAL_FLAG"]

log = logging.getLogger(__name__)

STREAM_BUFFER = 256  # responses of one request held for a slow client before the model waits
SEND_WAIT_SECS = 60.0  # a model thread waits this long for room, then the response is refused
# Triton's request parameter asking for an empty response when the final flag comes alone, and the
# response parameter that then marks each response final or not
EMPTY_FINAL = "triton_enable_empty_final_response"
FINAL_FLAG = "triton_final_response"


def is_decoupled(spec: ModelSpec) -> bool:
    """Whether the model answers through response senders (``model_transaction_policy { decoupled }``)."""
    return bool(spec.proto.model_transaction_policy.decoupled)


class StreamItem(NamedTuple):
    """One message of a stream: outputs by name, an error, or None (the final flag alone)."""

    outputs: dict[str, np.ndarray] | ServingError | None
    final: bool


class StreamClosed(ServingError):
    """A response sent after the final flag, or after the client went away."""


class DecoupledOnly(Unsupported):
    """A decoupled model asked for one response (HTTP, gRPC ModelInfer): Triton answers 501 / UNIMPLEMENTED."""

    http_status = 501


class ResponseStream:
    """The responses of one request: sent from any thread, read once on the event loop."""

    def __init__(self, limit: int = STREAM_BUFFER) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._limit = limit
        self._items: collections.deque[StreamItem] = collections.deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._ready = asyncio.Event()
        self._final = False
        self._cancelled = False

    @property
    def finished(self) -> bool:
        """Whether the final flag was sent."""
        return self._final

    @property
    def cancelled(self) -> bool:
        """Whether the reader went away (the client cancelled or hung up)."""
        return self._cancelled

    def send(self, outputs: dict[str, np.ndarray] | ServingError | None, final: bool = False,
             wait: bool = True) -> None:
        """Queue one message; from any thread. Raises `StreamClosed` after the final flag.

        With ``wait`` (and off the event loop) a full stream waits for the client to read.
        """
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            if self._final:
                raise StreamClosed("this request's response sender is closed: the final flag was sent already")
            if wait and not on_loop:
                self._room.wait_for(lambda: len(self._items) < self._limit or self._cancelled, SEND_WAIT_SECS)
                if len(self._items) >= self._limit and not self._cancelled:
                    raise StreamClosed(f"the client did not read this request's responses for {SEND_WAIT_SECS:.0f} s "
                                       f"(the stream holds {self._limit}); the response is dropped")
            if self._cancelled:
                self._final = self._final or final
                return  # nobody reads any more: the model learns it from is_cancelled()
            self._items.append(StreamItem(outputs, final))
            self._final = final
        if on_loop:
            self._ready.set()
        else:
            self._loop.call_soon_threadsafe(self._ready.set)

    def fail(self, error: ServingError) -> None:
        """End the stream with ``error``, unless the final flag was sent already."""
        try:
            self.send(error, final=True, wait=False)
        except StreamClosed:
            pass

    def cancel(self) -> None:
        """The reader is gone: wake waiting senders, drop what is queued and what comes."""
        with self._lock:
            self._cancelled = True
            self._items.clear()
            self._room.notify_all()

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        """Every message until the final one, as they come; on the event loop."""
        try:
            while True:
                with self._lock:
                    taken = list(self._items)
                    self._items.clear()
                    self._room.notify_all()
                    if not taken:
                        self._ready.clear()  # under the lock: a send after this sets it again
                for item in taken:
                    yield item
                    if item.final:
                        return
                if not taken:
                    await self._ready.wait()
        finally:
            if not self._final:
                self.cancel()


class StreamWork(NamedTuple):
    """What a request answered through a stream hands the batcher (`serving.types.Work` and more)."""

    inputs: dict[str, np.ndarray]
    outputs: frozenset[str] | None
    id: str | None
    parameters: Mapping[str, Any]
    stream: ResponseStream
    span: Any = None  # the request's tracing span (`serving.spans`); None when tracing is off


async def respond(model: ModelVersion, request: InferRequest,
                  span: Any = None) -> AsyncGenerator[InferResponse | ServingError, None]:
    """A decoupled model's responses to one request, as they come, until the final flag.

    Validated as every request is (`serving.requests`), queued in the model's batcher, and
    counted once in its statistics when the stream ends. An error the model sends is one
    message of the stream; a failure of the whole request (its ``execute`` raised) is the
    last one.
    """
    spec = model.spec
    batcher, stats = model.batcher, model.stats
    assert batcher is not None and stats is not None
    submitted: asyncio.Future[Any] | None = None
    try:
        with Counted(stats) as counted:
            arrays, rows, key = check_inputs(spec, request)
            selected = selected_outputs(spec, request)
            wanted = None if request.outputs is None else frozenset(t.name for t in selected)
            stream = ResponseStream()
            work = StreamWork(arrays, wanted, request.id, model_parameters(request.parameters), stream, span)
            submitted = asyncio.ensure_future(batcher.submit(work, rows, key, timeout_us(spec, request)))
            submitted.add_done_callback(lambda done: _executed(done, stream, spec.name))
            empty_final = request.parameters.get(EMPTY_FINAL) is True
            async for item in stream:
                if isinstance(item.outputs, ServingError):
                    counted.fail(item.outputs.reason)  # the model's error: the request failed, the stream goes on
                    yield item.outputs
                elif item.outputs is not None:
                    tensors = [Tensor(t.name, t.datatype, item.outputs[t.name]) for t in selected
                               if t.name in item.outputs]
                    yield InferResponse(model_name=spec.name, model_version=str(model.version), outputs=tensors,
                                        id=request.id, parameters={FINAL_FLAG: item.final})
                elif empty_final:  # the final flag alone: an empty response only when asked, as Triton (no version)
                    yield InferResponse(model_name=spec.name, model_version="", outputs=[], id=request.id,
                                        parameters={FINAL_FLAG: True})
    finally:
        if submitted is not None and not submitted.done():
            submitted.cancel()  # still queued: it leaves the queue; running: its stream is cancelled already


def _executed(done: asyncio.Future[Any], stream: ResponseStream, model: str) -> None:
    """When ``execute`` is over: a failure ends the stream with it (unless the final flag came first)."""
    if done.cancelled():
        return
    error = done.exception()
    if error is None:
        result = done.result()
        if isinstance(result, ServingError):
            error = result
        elif result is not None:
            error = ModelError(f"model '{model}' is decoupled but answered with a result, not through its stream")
    if error is None:
        return
    if not isinstance(error, ServingError):
        log.error("model %s failed on a streamed request", model, exc_info=error)
        error = ModelError(f"model '{model}' failed: {failure_text(error)}")
    if stream.finished:
        log.warning("model %s failed after the final response of a request: %s", model, error)
    else:
        stream.fail(error)
