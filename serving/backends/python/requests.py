"""pb_utils' requests and response senders.

A request that ``execute`` receives and a BLS request a model builds are both an
`InferenceRequest`: the first comes from a client, the second goes to another model of
this server when the model calls `exec` or ``await async_exec`` (`serving.backends.python.bls`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...streaming import ResponseStream, StreamClosed
from . import bls
from .responses import InferenceResponse, ModelResponseError, parameters_json
from .tensors import Tensor, TritonModelException

__all__ = ["InferenceRequest", "InferenceResponseSender", "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
           "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END"]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

class InferenceResponseSender:
    """Sends a decoupled request's responses, from any thread, and ends them with the final flag."""

    def __init__(self, stream: ResponseStream | Any | None, convert: Callable[[InferenceResponse], Any]) -> None:
        self._stream = stream
        self._convert = convert
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        """Send ``response`` (None: no response, the flag alone); ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL``
        ends the stream."""
        if self._stream is None:
            raise TritonModelException("this request has no response stream: a decoupled model answers through "
                                       "gRPC ModelStreamInfer or exec(decoupled=True) from another model")
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
        if isinstance(stream, ResponseStream) and not stream.finished and not stream.cancelled:
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
        self._parameters = parameters_json(parameters)
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

    def _call(self) -> bls.Call:
        return bls.call(self._model_name, self._model_version, self._inputs, self._requested_output_names,
                        self._timeout, self._parameters)

    def exec(self, decoupled: bool = False) -> Any:
        """Run the request on the model it names and wait for the response; errors come in the response.

        ``decoupled=True``: an iterator of the model's responses, as it sends them.
        """
        if decoupled:
            return bls.run_stream(self._call())
        return bls.run(self._call())

    async def async_exec(self, decoupled: bool = False) -> Any:
        """``exec`` for an ``async def execute``: awaits without blocking other requests.

        ``decoupled=True``: an iterator of every response the model sent.
        """
        if decoupled:
            return await bls.run_stream_async(self._call())
        return await bls.run_async(self._call())
