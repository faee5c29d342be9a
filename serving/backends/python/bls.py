"""BLS: a model's ``InferenceRequest(...).exec()`` / ``async_exec()`` on another model of this server.

Calls go in-process through `serving.inprocess.InProcess` (checked as a client's request,
queued in the called model's batcher, counted in its statistics). A decoupled call
(``exec(decoupled=True)``) goes through the called model's response stream
(`serving.streaming.respond`) and yields each response as it comes, then an empty one when
the final flag came alone, as Triton's iterator does. A call that fails is not raised: it
is a response whose ``has_error()`` is true.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from inference_protocol.tensors import InferRequest, InferResponse, RequestedOutput
from inference_protocol.tensors import Tensor as WireTensor

from ...errors import NotFound, ServingError, Unavailable, failure_text
from ...inprocess import datatype_of
from ...streaming import EMPTY_FINAL, respond
from .responses import InferenceResponse, error_code
from .tensors import Tensor, TritonError, TritonModelException

__all__ = ["BLS", "BlsContext", "Call", "run", "run_async", "run_stream", "run_stream_async"]

BLS_TIMEOUT_SECS = 600.0  # a BLS call from a worker thread never waits longer than this for one response


class BlsContext:
    """What BLS calls from a model's code need: the server's models and the loop they run on."""

    def __init__(self, models: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.models = models  # a serving.inprocess.InProcess, or None when the server gave none
        self.loop = loop  # the event loop an async execute runs on; None on an instance thread


# The BLS context of the model whose code is running: set around each initialize and execute
# (a context variable, so models on other threads and tasks each see their own)
BLS: contextvars.ContextVar[BlsContext | None] = contextvars.ContextVar("pb_utils_bls", default=None)


class Call(NamedTuple):
    """One BLS request, checked and ready to send."""

    context: BlsContext
    model: str
    version: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    timeout_us: int
    parameters: dict[str, Any]


def call(model: str, version: int | str, tensors: list[Tensor], outputs: list[str], timeout_us: int,
         parameters: str) -> Call:
    """A BLS request from the model's code; `TritonModelException` where it cannot be sent."""
    context = BLS.get()
    if context is None or context.models is None:
        raise TritonModelException("BLS requests can be sent only from a model's initialize or execute "
                                   "(in the thread or task that runs it)")
    if not model:
        raise TritonModelException("a BLS request needs model_name")
    inputs: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.name() in inputs:
            raise TritonModelException(f"the BLS request names input '{tensor.name()}' twice")
        inputs[tensor.name()] = tensor.as_numpy()
    named = None if str(version) in ("", "-1") else str(version)
    return Call(context, model, named, inputs, outputs or None, max(timeout_us, 0), json.loads(parameters))


def _response(call: Call, outputs: Mapping[str, np.ndarray]) -> InferenceResponse:
    names = call.outputs or list(outputs)
    return InferenceResponse([Tensor(name, outputs[name]) for name in names if name in outputs])


def _failed(call: Call, exc: BaseException) -> InferenceResponse:
    if isinstance(exc, (NotFound, Unavailable)):  # Triton's text for a model that does not serve
        message = (f"Model {call.model} - Error when running inference: Failed for execute the inference "
                   f"request. Model '{call.model}' is not ready.")
    else:
        message = str(exc) if isinstance(exc, ServingError) else failure_text(exc)
    return InferenceResponse([], error=TritonError(message, error_code(exc)))


def _on_server_loop(call: Call) -> bool:
    try:
        return call.context.loop is not None and asyncio.get_running_loop() is call.context.loop
    except RuntimeError:
        return False


def run(call: Call) -> InferenceResponse:
    """``exec()``: from the instance thread, waits for the one response."""
    if _on_server_loop(call):
        raise TritonModelException("exec() would block the event loop an async execute runs on; "
                                   "use await request.async_exec() there")
    try:
        outputs = call.context.models.infer_blocking(call.model, call.version, call.inputs, call.outputs,
                                                     timeout_us=call.timeout_us, parameters=call.parameters,
                                                     timeout_s=BLS_TIMEOUT_SECS)
    except Exception as exc:  # noqa: BLE001  # Triton answers a failed BLS call with an error response
        return _failed(call, exc)
    return _response(call, outputs)


async def run_async(call: Call) -> InferenceResponse:
    """``await async_exec()``: on the server's loop (an async execute), or from another loop."""
    models = call.context.models
    try:
        if _on_server_loop(call):
            outputs = await models.infer(call.model, call.version, call.inputs, call.outputs,
                                         timeout_us=call.timeout_us, parameters=call.parameters)
        else:  # another loop (asyncio.run inside a sync execute): the server's loop runs the call
            blocking = functools.partial(models.infer_blocking, call.model, call.version, call.inputs, call.outputs,
                                         timeout_us=call.timeout_us, parameters=call.parameters,
                                         timeout_s=BLS_TIMEOUT_SECS)
            outputs = await asyncio.get_running_loop().run_in_executor(None, blocking)
    except Exception as exc:  # noqa: BLE001  # Triton answers a failed BLS call with an error response
        return _failed(call, exc)
    return _response(call, outputs)


# -- decoupled calls -------------------------------------------------------------------------

async def _stream(call: Call) -> AsyncGenerator[InferenceResponse, None]:
    """The called model's responses as pb_utils responses; on the server's loop."""
    try:
        model = call.context.models.lookup(call.model, call.version)
        expected = {t.name: t.datatype for t in model.spec.inputs}
        tensors = {}
        for name, array in call.inputs.items():
            datatype, value = datatype_of(name, array, expected.get(name))
            tensors[name] = WireTensor(name, datatype, value)
        outputs = None if call.outputs is None else [RequestedOutput(name) for name in call.outputs]
        request = InferRequest(tensors, parameters={**call.parameters, EMPTY_FINAL: True}, outputs=outputs)
        if call.timeout_us:
            request.parameters["timeout"] = call.timeout_us
        if not model.spec.proto.model_transaction_policy.decoupled:  # one response, then the end
            yield await run_async(call._replace(context=BlsContext(call.context.models, asyncio.get_running_loop())))
            return
        answers = respond(model, request)
    except Exception as exc:  # noqa: BLE001  # Triton answers a failed BLS call with an error response
        yield _failed(call, exc)
        return
    async for answer in answers:
        if isinstance(answer, InferResponse):
            yield InferenceResponse([Tensor(t.name, t.array) for t in answer.outputs])
        else:
            yield _failed(call, answer)


async def _next(responses: AsyncIterator[InferenceResponse]) -> InferenceResponse:
    return await responses.__anext__()


def run_stream(call: Call) -> Iterator[InferenceResponse]:
    """``exec(decoupled=True)``: each response as the called model sends it, fetched one at a time."""
    if _on_server_loop(call):
        raise TritonModelException("exec(decoupled=True) would block the event loop an async execute runs on; "
                                   "use await request.async_exec(decoupled=True) there")
    loop = call.context.models.loop
    if loop is None or loop.is_closed():
        yield _failed(call, Unavailable("in-process inference is not available: the server's models are not running"))
        return
    responses = _stream(call)
    try:
        while True:
            future = asyncio.run_coroutine_threadsafe(_next(responses), loop)
            try:
                response = future.result(BLS_TIMEOUT_SECS)
            except StopAsyncIteration:
                return
            yield response
    finally:  # the model stopped reading, or read to the end: the stream closes on the server's loop
        asyncio.run_coroutine_threadsafe(responses.aclose(), loop).result(BLS_TIMEOUT_SECS)


async def run_stream_async(call: Call) -> Iterator[InferenceResponse]:
    """``await async_exec(decoupled=True)``: every response, collected (iterating must not block the loop)."""
    if not _on_server_loop(call):
        return iter(await asyncio.get_running_loop().run_in_executor(None, lambda: list(run_stream(call))))
    return iter([response async for response in _stream(call)])
