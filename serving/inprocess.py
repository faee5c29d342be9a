"""Inference on this server's models from inside it: ensemble steps, BLS calls, custom handlers.

A request made here is checked exactly as the dataplane checks one from a client (the same
functions, the same messages), queued in the model's own batcher (so it batches with the
clients' requests) and counted in the model's statistics like any request. The arrays are
passed by reference: nothing is copied on the way in, and the outputs are the arrays the
model's instance split off its batch.

Example (in a `serving.Model` handler)::

    class Pipeline(serving.Model):
        async def predict(self, inputs):
            features = await self.models.infer("preprocess", None, {"RAW": inputs["RAW"]})
            return await self.models.infer("classifier", None, {"INPUT": features["FEATURES"]})
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from inference_protocol.datatypes import NUMPY_DTYPES
from inference_protocol.tensors import InferRequest, RequestedOutput, Tensor

from . import requests, tracing
from .errors import InvalidInput, Unavailable
from .types import Work

if TYPE_CHECKING:
    from .config import TensorSpec
    from .lifecycle import ModelVersion

__all__ = ["InProcess", "datatype_of"]

_DATATYPES = {dtype: name for name, dtype in NUMPY_DTYPES.items() if name != "BF16"}

def datatype_of(name: str, array: Any, expected: str | None) -> tuple[str, np.ndarray]:
    """The v2 datatype of an array handed in-process (numpy, or a torch tensor), and the array
    as the batcher takes it.

    ``expected`` is the model's datatype for the input (None for an input it does not have):
    raw uint16 bits count as BF16 where the model wants BF16, and numpy string arrays (``S``,
    ``U``) as BYTES, turned into object arrays of bytes as the transports decode them.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):  # a handler's own inputs, passed on
        tensor = array.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            return "BF16", tensor.view(torch.int16).numpy().view(np.uint16)
        array = tensor.numpy()
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"input '{name}' must be a numpy array or a torch tensor, got {type(array).__name__}")
    if array.dtype.kind == "S":
        return "BYTES", array.astype(object)
    if array.dtype.kind == "U":
        encoded = np.empty(array.shape, dtype=object)
        encoded.reshape(-1)[:] = [s.encode() for s in array.reshape(-1).tolist()]
        return "BYTES", encoded
    if expected == "BF16" and array.dtype == np.uint16:
        return "BF16", array
    datatype = _DATATYPES.get(array.dtype)
    if datatype is None:
        raise InvalidInput(f"input '{name}' has numpy dtype {array.dtype}, which no v2 datatype holds")
    return datatype, array


class InProcess:
    """Inference on this server's models from inside it: ensemble steps and BLS requests.

    ``lookup(name, version)`` is the repository's: it returns the version that serves, or
    raises `NotFound` / `Unavailable` as it does for a client's request.
    """

    def __init__(self, lookup: Callable[[str, str | None], ModelVersion]) -> None:
        self._lookup = lookup
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's loop, for `infer_blocking`

    def lookup(self, name: str, version: str | None = None) -> ModelVersion:
        """The version that would serve a request: `NotFound` / `Unavailable` as for a client's."""
        return self._lookup(name, version)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run `infer_blocking` calls on ``loop`` (the one the models start and serve on)."""
        self.loop = loop

    async def infer(self, name: str, version: str | None, inputs: dict[str, np.ndarray],
                    outputs: Collection[str] | None = None, *, timeout_us: int = 0,
                    parameters: Mapping[str, Any] | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        """Validated exactly as the dataplane validates a request (same errors), sent through the
        model's own batcher, counted in its statistics like any request.

        Returns the requested outputs (every output when ``outputs`` is None) by name.
        ``timeout_us`` > 0 bounds the time in the model's queue (as a request's ``timeout``
        parameter does where the model allows it); 0 leaves the model's own default.
        ``parameters`` and ``request_id`` reach the model as a client's would. Traced, it is a span
        in the caller's trace (`serving.spans.inprocess_request`).
        """
        traced = tracing.current()
        if traced is None:
            return await self._infer(name, version, inputs, outputs, timeout_us, parameters, request_id, None)
        from . import spans

        with spans.inprocess_request(traced, name, version) as span:
            return await self._infer(name, version, inputs, outputs, timeout_us, parameters, request_id, span)

    async def _infer(self, name: str, version: str | None, inputs: dict[str, np.ndarray],
                     outputs: Collection[str] | None, timeout_us: int, parameters: Mapping[str, Any] | None,
                     request_id: str | None, span: Any) -> dict[str, np.ndarray]:
        model = self._lookup(name, version)
        spec = model.spec
        batcher, stats = model.batcher, model.stats
        if batcher is None or stats is None:
            raise Unavailable(f"model '{name}' is not ready: it is loading or unloading")
        with requests.Counted(stats):
            request = self._request(spec.name, spec.inputs, inputs, outputs, parameters)
            arrays, rows, key = requests.check_inputs(spec, request)
            selected = requests.selected_outputs(spec, request)
            wanted = None if outputs is None else frozenset(t.name for t in selected)
            limit = timeout_us if timeout_us > 0 else requests.timeout_us(spec, request)
            work = Work(arrays, wanted, request_id, request.parameters, span)
            result = await batcher.submit(work, rows, key, limit)
        return {t.name: result[t.name] for t in selected}

    @staticmethod
    def _request(model: str, specs: tuple[TensorSpec, ...], inputs: Mapping[str, Any], outputs: Collection[str] | None,
                 parameters: Mapping[str, Any] | None) -> InferRequest:
        if not isinstance(inputs, Mapping):
            raise InvalidInput(f"the inputs of a request to model '{model}' must be a dict of numpy arrays by name")
        expected = {t.name: t.datatype for t in specs}
        tensors: dict[str, Tensor] = {}
        for input_name, array in inputs.items():
            if not isinstance(input_name, str):
                raise InvalidInput(f"input names must be strings, got {type(input_name).__name__}")
            datatype, array = datatype_of(input_name, array, expected.get(input_name))
            tensors[input_name] = Tensor(input_name, datatype, array)
        if isinstance(outputs, str):
            outputs = [outputs]  # one name, not its characters
        requested = None if outputs is None else [RequestedOutput(str(o)) for o in outputs]
        return InferRequest(tensors, parameters=dict(parameters or {}), outputs=requested)

    def infer_blocking(self, name: str, version: str | None, inputs: dict[str, np.ndarray],
                       outputs: Collection[str] | None = None, *, timeout_us: int = 0,
                       parameters: Mapping[str, Any] | None = None,
                       timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """The same from a worker thread (a model's execute): runs `infer` on the server's loop.

        Waits up to ``timeout_s`` seconds (None: as long as it takes); on the loop's own thread
        it refuses, since waiting there would stop the loop that must run the request.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            raise Unavailable("in-process inference is not available: the server's models are not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise InvalidInput("infer_blocking was called on the server's event loop, where it would wait "
                               "forever; await infer(...) there instead")
        future = asyncio.run_coroutine_threadsafe(
            self.infer(name, version, inputs, outputs, timeout_us=timeout_us, parameters=parameters), loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(f"request to model '{name}' did not finish within {timeout_s} s; "
                              "retry, or give it more time") from None
