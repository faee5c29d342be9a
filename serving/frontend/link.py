"""The owner's end of one worker's hand-off connection: infer frames in, responses out.

Each ``infer`` frame becomes a call of the owner's real `DataPlane` — admission around the
building of the request, as the transports do around their decoding, then `DataPlane.infer`
— so the checks, the errors, the statistics and the metrics are those of one process. Its
tensors are numpy views on the worker's request arena (no copy); the outputs go into this
worker's response arena, or inline when they are small or the arena is full.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from inference_protocol.tensors import InferRequest, RequestedOutput

from .. import tracing
from ..errors import ServingError, Unavailable
from .arena import Arena
from .channel import Channel
from .ipc import MAX_HEADER, ChannelError, error_header, pack_tensors, unpack_tensors

if TYPE_CHECKING:
    from ..admission import Place
    from ..dataplane import DataPlane

log = logging.getLogger(__name__)

INTERNAL = "internal server error; the server log has the details"  # the transports' words
MAX_WAIT_S = 600.0


class Internal(ServingError):
    """An unexpected failure, answered as the transports answer one (500, INTERNAL)."""


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ChannelError(f"front-end channel: an infer frame's {what} is not a string")
    return value


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(o, list) and len(o) == 2 and isinstance(o[0], str)
                                            and o[1] in (None, True, False) for o in raw):
        raise ChannelError("front-end channel: an infer frame's outputs are not [name, binary] pairs")
    return [RequestedOutput(name, binary) for name, binary in raw]


class WorkerLink:
    """One worker's connection; ``index`` and ``pid`` are known once its hello arrived."""

    def __init__(self, dataplane: DataPlane, admission_wait_s: float, inline_max: int, arena_bytes: int,
                 max_frame: int, on_hello: Callable[[WorkerLink], bool],
                 on_listening: Callable[[WorkerLink], None]) -> None:
        self.dataplane = dataplane
        self.admission_wait_s = admission_wait_s
        self.inline_max = inline_max
        self.arena_bytes = arena_bytes
        self.on_hello = on_hello  # whether the worker is one we started
        self.on_listening = on_listening
        self.channel = Channel(self._on_frame, max_frame, "front-end channel")
        self.index: int | None = None
        self.pid: int | None = None
        self.request_arena: Arena | None = None
        self.response_arena: Arena | None = None
        self.listening = asyncio.Event()
        self.connections = [0, 0]  # open, refused (HTTP), as the worker last said
        self._tasks: dict[int, asyncio.Task[None]] = {}  # the running infer requests, by the worker's key
        self._reserving: dict[int, asyncio.Task[None]] = {}  # places being waited for, by key
        self._places: dict[int, Place] = {}  # places held for requests whose bodies are still arriving
        self._releasing: set[asyncio.Future[None]] = set()

    def _on_frame(self, header: dict[str, Any], inline: memoryview) -> None:
        kind = header.get("t")
        if kind == "infer":
            key = header.get("k")
            if type(key) is not int or key in self._tasks:
                log.warning("front-end worker %s sent an infer frame without a key of its own; dropped", self.index)
                return
            task = self._tasks[key] = asyncio.ensure_future(self._infer(key, header, inline))
            task.add_done_callback(functools.partial(self._done, key))
        elif kind == "reserve":
            key = header.get("k")
            if type(key) is int and key not in self._reserving and key not in self._places:
                self._reserving[key] = asyncio.ensure_future(self._reserve(key, header))
        elif kind == "release":
            key = header.get("k")
            if type(key) is int:
                self._release(key)
        elif kind == "cancel":  # the client went away (or the worker stopped waiting): as a cancelled handler
            key = header.get("k")
            running = self._tasks.get(key) if type(key) is int else None
            if running is not None:
                running.cancel()
        elif kind == "free":
            blocks = header.get("b")
            if self.response_arena is not None and isinstance(blocks, list):
                for block in blocks:
                    if type(block) is not int or not self.response_arena.free(block):
                        log.warning("front-end worker %s freed a block it was not given (%r)", self.index,
                                    str(block)[:32])
        elif kind == "conns":
            counts = header.get("http")
            if isinstance(counts, list) and len(counts) == 2 and all(type(n) is int for n in counts):
                self.connections = counts
        elif kind == "hello" and self.index is None:
            self._hello(header)
        elif kind == "listening" and self.index is not None:
            self.listening.set()
            self.on_listening(self)

    async def _reserve(self, key: int, header: dict[str, Any]) -> None:
        """A place in the queue before the body has come, as the HTTP transport takes one."""
        try:
            wait_s = header.get("w")
            if not isinstance(wait_s, (int, float)) or not 0 <= wait_s <= MAX_WAIT_S:
                raise ChannelError("front-end channel: a reserve frame's wait is not 0 to 600 seconds")
            place = self.dataplane.admission(_text(header.get("m"), "model"), _text(header.get("v"), "version"),
                                             float(wait_s))
            await place.__aenter__()
        except ServingError as exc:
            self.channel.send(error_header(key, exc, admission=isinstance(exc, Unavailable)))
            return
        finally:
            self._reserving.pop(key, None)
        self._places[key] = place
        if not self.channel.send({"t": "g", "k": key}):
            self._release(key)

    def _release(self, key: int) -> None:
        waiting = self._reserving.pop(key, None)
        if waiting is not None:
            waiting.cancel()
        place = self._places.pop(key, None)
        if place is not None:
            task = asyncio.ensure_future(place.__aexit__(None, None, None))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    def _done(self, key: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)

    def _hello(self, header: dict[str, Any]) -> None:
        index, pid = header.get("n"), header.get("pid")
        if type(index) is not int or type(pid) is not int:
            self.channel.close()
            return
        self.index, self.pid = index, pid
        if not self.on_hello(self):
            log.warning("a front-end channel said it was worker %d (pid %d), which is not running; closing it",
                        index, pid)
            self.channel.close()
            return
        try:
            if header.get("arena"):
                self.request_arena = Arena.attach(header["arena"], header.get("size"))  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            log.warning("front-end worker %d: its arena cannot be used (%s); its tensors travel inline", index, exc)
        self.response_arena = Arena.create(self.arena_bytes, f"front-end worker {index}'s responses") \
            if self.arena_bytes else None
        arena = self.response_arena
        self.channel.send({"t": "hello", "arena": arena.name if arena else None, "size": arena.size if arena else 0,
                           "ready": self.dataplane.ready(), "drain": self.dataplane.draining})

    def push_state(self) -> None:
        self.channel.send({"t": "state", "ready": self.dataplane.ready(), "drain": self.dataplane.draining})

    async def _infer(self, key: int, header: dict[str, Any], inline: memoryview) -> None:
        try:
            answer, blobs, block = await self._answer(key, header, inline)
        except ServingError as exc:
            answer, blobs, block = error_header(key, exc), [], None
        except asyncio.CancelledError:  # cancelled for the worker: it waits only to free the request's block
            answer, blobs, block = {"t": "x", "k": key}, [], None
        if not self.channel.send(answer, blobs) and block is not None and self.response_arena is not None:
            self.response_arena.free(block)  # the worker is gone: the block is nobody's

    async def _answer(self, key: int, header: dict[str, Any],
                      inline: memoryview) -> tuple[dict[str, Any], list[Any], int | None]:
        dataplane = self.dataplane
        if tracing.current() is not None:  # switched on after start: traced requests take the owner's own path
            return {"t": "f", "k": key}, [], None
        try:
            name, version = _text(header.get("m"), "model"), _text(header.get("v"), "version")
            held = header.get("r")
            place = self._places.pop(held, None) if type(held) is int else None
            if place is not None:  # reserved while the body came: the place passes to this request now
                try:
                    request = self._request(header, inline)
                finally:
                    await place.__aexit__(None, None, None)  # it does not wait: nothing runs before infer
            else:
                try:
                    async with dataplane.admission(name, version, self.admission_wait_s):
                        request = self._request(header, inline)
                except Unavailable as exc:
                    return error_header(key, exc, admission=True), [], None
            response = await dataplane.infer(name, version, request, None)
            descriptors, blobs, block = pack_tensors(response.outputs, self.response_arena, self.inline_max)
            if sum(len(blob) for blob in blobs) > self.channel.reader.max_frame - MAX_HEADER:
                raise ChannelError("the response's outputs are too large to pass through a front-end worker "
                                   "(2 GiB); request fewer or smaller outputs")
        except ServingError:
            raise
        except Exception:  # never a traceback to the client
            log.exception("unhandled error in a front-end worker's infer request")
            raise Internal(INTERNAL) from None
        return ({"t": "r", "k": key, "m": response.model_name, "v": response.model_version, "id": response.id,
                 "p": response.parameters, "o": descriptors, "b": -1 if block is None else block}, blobs, block)

    def _request(self, header: dict[str, Any], inline: memoryview) -> InferRequest:
        request_id, parameters = header.get("id"), header.get("p")
        if request_id is not None and not isinstance(request_id, str):
            raise ChannelError("front-end channel: an infer frame's id is not a string")
        if not isinstance(parameters, dict):
            raise ChannelError("front-end channel: an infer frame's parameters are not an object")
        arena = self.request_arena.buf if self.request_arena is not None else None
        tensors = unpack_tensors(header.get("i"), arena, inline, copy=False)
        inputs = {tensor.name: tensor for tensor in tensors}
        if len(inputs) != len(tensors) or not inputs:
            raise ChannelError("front-end channel: an infer frame has no inputs, or one twice")
        return InferRequest(inputs=inputs, id=request_id, parameters=parameters, outputs=_outputs(header.get("o")))

    def close_arenas(self) -> None:
        """Give back the worker's places; unlink both arenas now, unmap them once none of its requests runs."""
        for key in list(self._reserving) + list(self._places):
            self._release(key)
        for arena in (self.request_arena, self.response_arena):
            if arena is not None:
                arena.unlink()
        if not self._tasks:
            self._unmap()
        else:
            waiting = list(self._tasks.values())
            asyncio.ensure_future(asyncio.wait(waiting)).add_done_callback(lambda _: self._unmap())

    def _unmap(self) -> None:
        for arena in (self.request_arena, self.response_arena):
            if arena is not None:
                arena.close()
