"""pb_utils' requests, responses and response senders, and BLS calls to other models.

A request that `execute` receives and a BLS request a model builds are both an
`InferenceRequest`: the first comes from a client, the second goes to another model of
this server when the model calls `exec` or ``await async_exec``, in-process (through
`serving.inprocess.InProcess`, the batcher of the model called included).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import InvalidInput, NotFound, ServingError, Unavailable, Unsupported, failure_text
from ...streaming import ResponseStream, StreamClosed
from .tensors import Tensor, TritonError, TritonModelException

__all__ = ["InferenceRequest", "InferenceResponse", "InferenceResponseSender", "BlsContext", "BLS",
           "TRITONSERVER_RESPONSE_COMPLETE_FINAL", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
           "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END", "error_code", "as_serving_error"]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
BLS_TIMEOUT_SECS = 600.0  # a BLS call from a worker thread never waits longer than this


class InferenceResponse:
    """The answer to one request: output tensors, or an error that fails only this request."""

    def __init__(self, output_tensors: Sequence[Tensor] | None = None, error: TritonError | None = None,
                 parameters: Mapping[str, Any] | str | None = None) -> None:
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, (list, tuple)):
            raise TritonModelException('"output_tensors" must be a list.')
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException('"error" must be a pb_utils.TritonError or None.')
        self._output_tensors = list(output_tensors)
        self._error = error
        self._parameters = _parameters_json(parameters)

    def output_tensors(self) -> list[Tensor]:
        """The output tensors."""
        return self._output_tensors

    def has_error(self) -> bool:
        """Whether the response carries an error."""
        return self._error is not None

    def error(self) -> TritonError | None:
        """The response's error, or None."""
        return self._error

    def parameters(self) -> str:
        """The response's parameters as a JSON object string."""
        return self._parameters


def _parameters_json(parameters: Mapping[str, Any] | str | None) -> str:
    if parameters is None:
        return "{}"
    if isinstance(parameters, str):
        try:
            decoded = json.loads(parameters)
        except ValueError:
            raise TritonModelException("parameters must be a dict or a JSON object string") from None
        if not isinstance(decoded, dict):
            raise TritonModelException("parameters must be a dict or a JSON object string")
        return parameters
    if not isinstance(parameters, Mapping):
        raise TritonModelException("parameters must be a dict or a JSON object string")
    for key, value in parameters.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, bool)):
            raise TritonModelException("parameters map strings to strings, integers or booleans")
    return json.dumps(dict(parameters))


# TritonError codes as this server's errors (their HTTP status and gRPC code), Triton's mapping
_CODES: dict[int, type[ServingError]] = {TritonError.INVALID_ARG: InvalidInput, TritonError.NOT_FOUND: NotFound,
                                         TritonError.UNAVAILABLE: Unavailable, TritonError.UNSUPPORTED: Unsupported}
_GRPC = {TritonError.ALREADY_EXISTS: ("ALREADY_EXISTS", 409), TritonError.CANCELLED: ("CANCELLED", 499),
         TritonError.UNKNOWN: ("UNKNOWN", 500)}


class ModelResponseError(ServingError):
    """An error a model put in a response (`TritonError`); its code decides the status."""

    reason = "BACKEND"

    def __init__(self, message: str, code: int = TritonError.INTERNAL) -> None:
        super().__init__(message)
        self.grpc_code, self.http_status = _GRPC.get(code, ("INTERNAL", 500))


def as_serving_error(error: TritonError) -> ServingError:
    """A model's `TritonError` as the error its client gets (the message as given)."""
    kind = _CODES.get(error.code())
    message = str(error.message())
    return kind(message) if kind is not None else ModelResponseError(message, error.code())


def error_code(exc: BaseException) -> int:
    """The `TritonError` code of this server's error (a failed BLS call)."""
    if isinstance(exc, InvalidInput):
        return TritonError.INVALID_ARG
    if isinstance(exc, NotFound):
        return TritonError.NOT_FOUND
    if isinstance(exc, Unavailable):
        return TritonError.UNAVAILABLE
    if isinstance(exc, Unsupported):
        return TritonError.UNSUPPORTED
    return TritonError.INTERNAL


class BlsContext:
    """What BLS calls from a model's code need: the server's models and the loop they run on."""

    def __init__(self, models: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.models = models  # a serving.inprocess.InProcess, or None when the server gave none
        self.loop = loop  # the event loop an async execute runs on; None on an instance thread


# The BLS context of the model whose code is running: set around each initialize and execute
# (a context variable, so models on other threads and tasks each see their own)
BLS: contextvars.ContextVar[BlsContext | None] = contextvars.ContextVar("pb_utils_bls", default=None)


class InferenceResponseSender:
    """Sends a decoupled request's responses, from any thread, and ends them with the final flag."""

    def __init__(self, stream: ResponseStream | None, convert: Callable[[InferenceResponse], Any]) -> None:
        self._stream = stream
        self._convert = convert
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        """Send ``response`` (None: no response, the flag alone); ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL``
        ends the stream."""
        if self._stream is None:
            raise TritonModelException("this request has no response sender: the model is not decoupled "
                                       "(set model_transaction_policy { decoupled: true }) or it was called "
                                       "through HTTP or ModelInfer; return the responses from execute")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is None and not final:
            raise TritonModelException("send() needs a response, or flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL")
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException("send() takes a pb_utils.InferenceResponse")
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        outputs = None if response is None else self._convert(response)
        try:
            self._stream.send(outputs, final)
        except StreamClosed as exc:
            raise TritonModelException(str(exc)) from None
        self._closed = final

    def is_cancelled(self) -> bool:
        """Whether the client went away (the model may stop sending)."""
        return self._stream is not None and self._stream.cancelled

    def __del__(self) -> None:
        # a sender dropped without the final flag would leave the client waiting forever
        stream = getattr(self, "_stream", None)
        if stream is not None and not stream.finished and not stream.cancelled:
            try:
                stream.fail(ModelResponseError("the model released this request's response sender without sending "
                                               "the final flag (TRITONSERVER_RESPONSE_COMPLETE_FINAL)"))
            except RuntimeError:  # the server's loop is closed: nobody is waiting any more
                pass


class InferenceRequest:
    """A request: received by ``execute``, or built by the model to call another model (BLS).

    Example (BLS)::

        response = pb_utils.InferenceRequest(model_name="classifier", requested_output_names=["PROBS"],
                                             inputs=[pb_utils.Tensor("PIXELS", pixels)]).exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
    """

    def __init__(self, model_name: str = "", inputs: Sequence[Tensor] | None = None,
                 requested_output_names: Sequence[str] | None = None, model_version: int | str = -1,
                 correlation_id: int | str = 0, request_id: str = "", flags: int = 0, timeout: int = 0,
                 parameters: Mapping[str, Any] | str | None = None, **options: Any) -> None:
        if not isinstance(model_name, str):
            raise TritonModelException("model_name must be a string")
        self._model_name = model_name
        self._inputs = list(inputs or [])
        if any(not isinstance(t, Tensor) for t in self._inputs):
            raise TritonModelException("inputs must be a list of pb_utils.Tensor")
        self._requested_output_names = [str(n) for n in (requested_output_names or [])]
        self._model_version = model_version
        self._correlation_id = correlation_id
        self._request_id = request_id or ""
        self._flags = flags
        self._timeout = int(timeout)
        self._parameters = _parameters_json(parameters)
        self._sender = InferenceResponseSender(None, lambda r: None)
        self._options = options  # preferred_memory, trace: accepted, not needed in-process

    @classmethod
    def received(cls, inputs: list[Tensor], request_id: str, requested_output_names: list[str], parameters: str,
                 sender: InferenceResponseSender, model_name: str, model_version: int) -> InferenceRequest:
        """A request as ``execute`` receives it."""
        request = cls(model_name, inputs, requested_output_names, model_version, request_id=request_id)
        request._parameters = parameters
        request._sender = sender
        return request

    def inputs(self) -> list[Tensor]:
        """The input tensors."""
        return self._inputs

    def requested_output_names(self) -> list[str]:
        """The outputs the client asked for (every output of the config when it named none)."""
        return self._requested_output_names

    def request_id(self) -> str:
        """The client's request id, or an empty string."""
        return self._request_id

    def correlation_id(self) -> int | str:
        """The sequence's correlation id; 0 (sequence batching is not served)."""
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        """The request's timeout in microseconds (0: none)."""
        return self._timeout

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int | str:
        return self._model_version

    def parameters(self) -> str:
        """The request's parameters as a JSON object string (``json.loads`` it)."""
        return self._parameters

    def get_response_sender(self) -> InferenceResponseSender:
        """The sender of this request's responses (decoupled models)."""
        return self._sender

    def is_cancelled(self) -> bool:
        """Whether the client went away."""
        return self._sender.is_cancelled()

    # -- BLS -------------------------------------------------------------------------------

    def _call(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        context = BLS.get()
        if context is None or context.models is None:
            raise TritonModelException("BLS requests can be sent only from a model's initialize or execute "
                                       "(in the thread or task that runs it)")
        if not self._model_name:
            raise TritonModelException("a BLS request needs model_name")
        inputs: dict[str, np.ndarray] = {}
        for tensor in self._inputs:
            if tensor.name() in inputs:
                raise TritonModelException(f"the BLS request names input '{tensor.name()}' twice")
            inputs[tensor.name()] = tensor.as_numpy()
        version = None if str(self._model_version) in ("", "-1") else str(self._model_version)
        outputs = self._requested_output_names or None
        options = {"timeout_us": max(self._timeout, 0), "parameters": json.loads(self._parameters)}
        return context, (self._model_name, version, inputs, outputs), options

    def _response(self, outputs: Mapping[str, np.ndarray]) -> InferenceResponse:
        names = self._requested_output_names or list(outputs)
        return InferenceResponse([Tensor(name, outputs[name]) for name in names if name in outputs])

    def _failed(self, exc: Exception) -> InferenceResponse:
        if isinstance(exc, (NotFound, Unavailable)):  # Triton's text for a model that does not serve
            message = (f"Model {self._model_name} - Error when running inference: Failed for execute the inference "
                       f"request. Model '{self._model_name}' is not ready.")
        else:
            message = str(exc) if isinstance(exc, ServingError) else failure_text(exc)
        return InferenceResponse([], error=TritonError(message, error_code(exc)))

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run the request on the model it names and wait for the response; errors come in the response."""
        if decoupled:
            raise TritonModelException("decoupled BLS requests (exec(decoupled=True)) are not supported by this "
                                       "server; call the model without decoupled")
        context, args, options = self._call()
        if context.loop is not None and _running_loop() is context.loop:
            raise TritonModelException("exec() would block the event loop an async execute runs on; "
                                       "use await request.async_exec() there")
        try:
            outputs = context.models.infer_blocking(*args, **options, timeout_s=BLS_TIMEOUT_SECS)
        except Exception as exc:  # noqa: BLE001  # Triton answers a failed BLS call with an error response
            return self._failed(exc)
        return self._response(outputs)

    async def async_exec(self, decoupled: bool = False) -> InferenceResponse:
        """``exec`` for an ``async def execute``: awaits the response without blocking other requests."""
        if decoupled:
            raise TritonModelException("decoupled BLS requests (async_exec(decoupled=True)) are not supported by "
                                       "this server; call the model without decoupled")
        context, args, options = self._call()
        try:
            if context.loop is not None and _running_loop() is context.loop:
                outputs = await context.models.infer(*args, **options)
            else:  # another loop (asyncio.run inside a sync execute): the server's loop runs the call
                call = functools.partial(context.models.infer_blocking, *args, **options, timeout_s=BLS_TIMEOUT_SECS)
                outputs = await asyncio.get_running_loop().run_in_executor(None, call)
        except Exception as exc:  # noqa: BLE001  # Triton answers a failed BLS call with an error response
            return self._failed(exc)
        return self._response(outputs)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
