"""gRPC ``ModelStreamInfer``: one bidirectional stream, many requests, their responses.

A request to an ordinary model gets one response, and those responses keep the order of
their requests. A request to a decoupled model gets each of its responses as the model
sends it (interleaved with the others'), until the final flag; with the request
parameter ``triton_enable_empty_final_response`` each response carries
``triton_final_response`` and a final flag sent alone becomes an empty response, as
Triton does. A request that fails, corrupt bytes included, gets its own
``error_message`` response and the stream goes on.

Bounded: up to STREAM_IN_FLIGHT requests of a stream compute at once (the reader waits
for a slot), and responses wait in a queue of that size for the writer, so a client that
does not read holds back its own requests and models, no one else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from inference_protocol.protobuf import decode_model_infer_request, encode_model_infer_response
from inference_protocol.tensors import InferResponse

from . import tracing
from .errors import InvalidInput, ServingError
from .streaming import EMPTY_FINAL, FINAL_FLAG

if TYPE_CHECKING:  # annotations only: the front-end workers import this module without torch
    from .dataplane import DataPlane

log = logging.getLogger(__name__)

STREAM_IN_FLIGHT = 64  # requests of one stream computing at once, and responses waiting to be written
_DONE = object()  # the writer's end-of-stream marker


def _message(response: InferResponse) -> Any:
    message = encode_model_infer_response(response)
    for key, value in (response.parameters or {}).items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        elif isinstance(value, int):
            message.parameters[key].int64_param = value
        else:
            message.parameters[key].string_param = str(value)
    return pb.ModelStreamInferResponse(infer_response=message)


def _error(request: Any, message: str) -> Any:
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                             id=request.id))


class StreamInfer:
    """The responses of one ``ModelStreamInfer`` call, from its request messages (as bytes)."""

    def __init__(self, dataplane: DataPlane, admission_wait_secs: float, parent: Any = None) -> None:
        self.dataplane = dataplane
        self.admission_wait_secs = admission_wait_secs
        self.parent = parent  # the caller's trace context, when tracing is on and it sent one (`spans.grpc_parent`)
        self.out: asyncio.Queue[Any] = asyncio.Queue(STREAM_IN_FLIGHT)
        self.slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        reader = asyncio.ensure_future(self._read(requests))
        try:
            while (message := await self.out.get()) is not _DONE:
                yield message
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            for task in list(self.tasks):
                task.cancel()

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        previous: asyncio.Future[None] | None = None  # the turn of the last ordinary request
        try:
            async for data in requests:
                await self.slots.acquire()
                turn = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(self._one(data, previous, turn))
                self.tasks.add(task)
                task.add_done_callback(self._finished)
                previous = turn
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            await self.out.put(_DONE)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()

    async def _one(self, data: bytes, previous: asyncio.Future[None] | None, turn: asyncio.Future[None]) -> None:
        try:
            message = await self._answer(data, turn)
            if message is not None:
                if previous is not None:
                    await previous  # ordinary requests are answered in the order they came
                await self.out.put(message)
        finally:
            if not turn.done():
                turn.set_result(None)

    async def _answer(self, data: bytes, turn: asyncio.Future[None]) -> Any:
        """An ordinary request's one response; None for a decoupled one, whose responses are sent already."""
        traced = tracing.current()
        if traced is None:
            return await self._respond(data, turn, None)
        from . import spans

        with spans.grpc_request(traced, self.parent, "ModelStreamInfer", "", "") as span:
            return await self._respond(data, turn, span)

    async def _respond(self, data: bytes, turn: asyncio.Future[None], span: Any) -> Any:
        request = pb.ModelInferRequest()
        try:
            try:
                request.ParseFromString(data)
            except DecodeError:
                raise InvalidInput("the stream message is not a valid ModelInferRequest (corrupt protobuf "
                                   "bytes)") from None
            name, version = request.model_name, request.model_version
            if span is not None:
                from . import spans

                span.set_attributes(spans.model_attributes(name, version))
            if self.dataplane.is_decoupled(name, version):
                turn.set_result(None)  # its responses come as they come: later requests need not wait
                await self._decoupled(request, span)
                return None
            async with self.dataplane.admission(name, version, self.admission_wait_secs):
                infer_request = decode_model_infer_request(request)
            response = await self.dataplane.infer(name, version, infer_request, span)
            if infer_request.parameters.get(EMPTY_FINAL) is True:  # the client asked to be told which is final
                response.parameters = {**(response.parameters or {}), FINAL_FLAG: True}
            return _message(response)
        except ServingError as exc:
            if span is not None:
                from . import spans

                spans.grpc_error(span, exc)
            return _error(request, str(exc))
        except Exception as exc:  # one request's failure must not end the stream
            log.exception("unhandled error in ModelStreamInfer")
            if span is not None:
                from . import spans

                spans.grpc_error(span, exc)
            return _error(request, "internal server error; the server log has the details")

    async def _decoupled(self, request: Any, span: Any) -> None:
        name, version = request.model_name, request.model_version
        async with self.dataplane.admission(name, version, self.admission_wait_secs):
            infer_request = decode_model_infer_request(request)
        # closed as soon as this task ends (a cancelled stream too), not when the collector finds it
        async with contextlib.aclosing(self.dataplane.infer_stream(name, version, infer_request, span)) as responses:
            async for response in responses:
                if isinstance(response, ServingError):
                    await self.out.put(_error(request, str(response)))
                else:
                    await self.out.put(_message(response))
