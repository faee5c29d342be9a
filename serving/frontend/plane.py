"""The worker's dataplane: what the HTTP and gRPC infer paths call, over the hand-off channel.

`HttpTransport` and the gRPC `InferenceServicer` run unchanged in the worker over a
`WorkerPlane`: they decode the wire request into an `InferRequest` as in one process, and
`infer` sends its tensors to the owner (through the request arena) and waits for the
owner's `DataPlane.infer` to answer, so that the owner's checks, errors, statistics and
metrics are the ones of one process. Admission happens in the owner, in the same order
around the same decoding; a request the fast path cannot carry (its tensors in a client's
shared memory) or that failed to decode here raises `ForwardRaw`, and the transport passes
it on whole to the owner's own transport, whose answer is then the client's.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
from typing import Any

from inference_protocol.tensors import InferRequest, InferResponse

from ..connections import RequestTimeout
from ..errors import ServingError, Unavailable
from ..shm import SharedMemory
from .arena import Arena
from .channel import Channel
from .ipc import ChannelError, pack_tensors, remote_error, unpack_tensors

log = logging.getLogger(__name__)

DRAINING = "the server is shutting down; retry on another replica"  # the owner's DataPlane says the same
SWEEP_SECS = 1.0
# set in a request's task once its tensors went to the owner: an error after that is the owner's answer
SENT: contextvars.ContextVar[bool] = contextvars.ContextVar("sent", default=False)


class ForwardRaw(BaseException):
    """This request goes to the owner whole, as it came.

    A BaseException, like CancelledError, so that it passes the transports' handlers of
    ``Exception`` (which would answer 500) on its way to the worker's own handler.
    """


# set by the HTTP transport for a request whose body is still arriving: its place is reserved in the
# owner's queue first, as one process does before it reads a body (a full queue answers 503 at once,
# and a slow body holds its place); a body that came with its header needs no round trip for that
RESERVE: contextvars.ContextVar[bool] = contextvars.ContextVar("reserve", default=False)
HELD: contextvars.ContextVar[int | None] = contextvars.ContextVar("held", default=None)  # that place's key


class _Admission:
    """A place reserved in the owner's queue when `RESERVE` says so (else the owner takes one with the
    infer frame); a decoding error in the block forwards the request."""

    __slots__ = ("plane", "name", "version", "wait_s")

    def __init__(self, plane: WorkerPlane, name: str, version: str | None, wait_s: float) -> None:
        self.plane, self.name, self.version, self.wait_s = plane, name, version, wait_s

    async def __aenter__(self) -> None:
        if RESERVE.get():
            HELD.set(await self.plane.reserve(self.name, self.version, self.wait_s))

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # gRPC decodes in the block: the owner answers a request it cannot decode in its own order
        # (an unknown model is a 404 before the tensors are looked at). HTTP reads its body here:
        # a body that did not arrive is the worker's answer, as it would be the one process's.
        if isinstance(exc, ServingError) and not isinstance(exc, RequestTimeout):
            raise ForwardRaw from exc


class Pending:
    __slots__ = ("future", "block", "deadline")

    def __init__(self, future: asyncio.Future[InferResponse], block: int | None, deadline: float) -> None:
        self.future = future
        self.block = block
        self.deadline = deadline


class WorkerPlane:
    """The subset of `serving.dataplane.DataPlane` the infer paths use, answered by the owner."""

    def __init__(self, channel: Channel, request_arena: Arena | None, inline_max: int, timeout_s: float) -> None:
        self.channel = channel
        self.request_arena = request_arena
        self.response_arena: Arena | None = None  # the owner's, attached once it says which
        self.inline_max = inline_max
        self.timeout_s = timeout_s
        self.shared_memory = SharedMemory()  # off here: the shared-memory endpoints are the owner's
        self.draining = False
        self._ready = False
        self._keys = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._reserves: dict[int, asyncio.Future[None]] = {}
        self._frees: list[int] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready and not self.draining

    def set_state(self, ready: bool, draining: bool) -> None:
        self._ready, self.draining = ready, draining

    def is_decoupled(self, name: str, version: str | None = None) -> bool:
        return False  # the owner knows; it refuses a decoupled model's infer, and HTTP's is forwarded then

    def admission(self, name: str, version: str | None, wait_s: float = 0.0) -> _Admission:
        if self.draining:
            raise Unavailable(DRAINING)
        return _Admission(self, name, version, wait_s)

    async def reserve(self, name: str, version: str | None, wait_s: float) -> int:
        """A place in the owner's queue for the request (its key); the owner's refusal raises as there."""
        key = next(self._keys)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reserves[key] = future
        if not self.channel.send({"t": "reserve", "k": key, "m": name, "v": version or "", "w": wait_s}):
            del self._reserves[key]
            raise Unavailable("the model server went away; retry")
        try:
            await asyncio.wait_for(future, wait_s + self.timeout_s)
        except BaseException:
            self._reserves.pop(key, None)
            self.release(key)  # granted meanwhile, or still waiting there: either way given back
            raise
        return key

    def release(self, key: int) -> None:
        """Give back a reserved place the request will not use (it failed before its infer frame)."""
        self.channel.send({"t": "release", "k": key})

    async def infer(self, name: str, version: str | None, request: InferRequest, span: Any = None) -> InferResponse:
        if request.shared_inputs or (request.outputs and any(o.shared_memory for o in request.outputs)):
            raise ForwardRaw
        descriptors, inline, block = pack_tensors(list(request.inputs.values()), self.request_arena,
                                                  self.inline_max)
        key = next(self._keys)
        outputs = None if request.outputs is None else [[o.name, o.binary] for o in request.outputs]
        header = {"t": "infer", "k": key, "m": name, "v": version or "", "id": request.id,
                  "p": request.parameters, "o": outputs, "i": descriptors, "r": HELD.get()}
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InferResponse] = loop.create_future()
        if not self.channel.send(header, inline):
            if block is not None and self.request_arena is not None:
                self.request_arena.free(block)
            raise Unavailable("the model server went away; retry")
        self._pending[key] = Pending(future, block, loop.time() + self.timeout_s)
        HELD.set(None)  # the infer frame carries the place
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_SECS, self._sweep)
        SENT.set(True)
        try:
            return await future
        except asyncio.CancelledError:  # the client went away: the owner cancels its part as one process would
            self.channel.send({"t": "cancel", "k": key})
            raise

    def on_response(self, header: dict[str, Any], inline: memoryview) -> None:
        """A ``r`` (response), ``e`` (error) or ``x`` (cancelled) frame: free the request's block, settle its future."""
        key = header.get("k")
        if type(key) is int and key in self._reserves:
            reserved = self._reserves.pop(key)
            if not reserved.done():
                if header.get("t") == "g":
                    reserved.set_result(None)
                else:
                    error = remote_error(header) if header.get("t") == "e" else Unavailable("no place; retry")
                    reserved.set_exception(error)
            elif header.get("t") == "g":
                self.release(key)  # the request stopped waiting: the place goes back
            return
        pending = self._pending.pop(key, None) if type(key) is int else None
        block = header.get("b")
        if header.get("t") == "r" and type(block) is int and block >= 0:
            self.free_response(block)
        if pending is None:
            return
        if pending.block is not None and self.request_arena is not None:
            self.request_arena.free(pending.block)
        if pending.future.done():
            return  # timed out here already
        if header.get("t") == "f":  # the owner wants the request whole (tracing is on there)
            pending.future.set_exception(ForwardRaw())
            return
        if header.get("t") == "x":
            pending.future.set_exception(Unavailable("the model server cancelled the request; retry"))
            return
        if header.get("t") == "e":
            error = remote_error(header)
            if header.get("a"):
                error.rejected = True  # type: ignore[attr-defined]  # the owner's admission: HTTP adds Retry-After
            pending.future.set_exception(error)
            return
        try:
            response = self._response(header, inline)
        except ServingError as exc:
            pending.future.set_exception(exc)
        else:
            pending.future.set_result(response)

    def _response(self, header: dict[str, Any], inline: memoryview) -> InferResponse:
        arena = self.response_arena.buf if self.response_arena is not None else None
        outputs = unpack_tensors(header.get("o"), arena, inline, copy=True)
        name, version, request_id, parameters = header.get("m"), header.get("v"), header.get("id"), header.get("p")
        if not isinstance(name, str) or not isinstance(version, str) or not isinstance(request_id, (str, type(None))) \
                or not isinstance(parameters, (dict, type(None))):
            raise ChannelError("front-end channel: a response frame lacks its model, version or id")
        return InferResponse(model_name=name, model_version=version, outputs=outputs, id=request_id,
                             parameters=parameters)

    def free_response(self, block: int) -> None:
        """Tell the owner, with the next frames of this turn, that a response block may be reused."""
        if not self._frees:
            asyncio.get_running_loop().call_soon(self._send_frees)
        self._frees.append(block)

    def _send_frees(self) -> None:
        frees, self._frees = self._frees, []
        self.channel.send({"t": "free", "b": frees})

    def _sweep(self) -> None:
        """Fail requests the owner has not answered in time (their blocks wait for the late answer)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for key, pending in self._pending.items():
            if pending.deadline > now:
                break  # in order of sending, so of deadline
            if not pending.future.done():
                pending.future.set_exception(Unavailable(
                    f"the model server did not answer within {self.timeout_s:g} s; retry"))
                self.channel.send({"t": "cancel", "k": key})
        self._sweeper = loop.call_later(SWEEP_SECS, self._sweep) if self._pending else None

    def fail_all(self, message: str) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(Unavailable(message))
        self._pending.clear()
        for reserved in self._reserves.values():
            if not reserved.done():
                reserved.set_exception(Unavailable(message))
        self._reserves.clear()
