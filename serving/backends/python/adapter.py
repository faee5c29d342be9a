"""Runs a Triton ``TritonPythonModel`` as a handler: initialize, execute per batch, finalize.

Each instance holds one ``TritonPythonModel`` object. ``initialize(args)`` runs at load
with Triton's args, ``execute(requests)`` receives the dynamic batch as the list of its
`InferenceRequest` objects and returns one `InferenceResponse` per request (a decoupled
model returns None and answers through each request's response sender), and
``finalize()`` runs at unload. A response with an error fails only its request; an
exception out of ``execute`` fails every request of the batch with its message.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from ...config import TensorSpec
from ...errors import ConfigError, ModelError, ServingError, failure_text
from ...model import RequestHandler
from ...requests import model_parameters
from ...streaming import StreamClosed, is_decoupled
from .bls import BLS, BlsContext
from .requests import InferenceRequest, InferenceResponseSender
from .responses import InferenceResponse, as_serving_error
from .tensors import V2_TO_NUMPY, Tensor, v2_of_dtype

log = logging.getLogger(__name__)

__all__ = ["TritonPythonHandler", "AsyncTritonPythonHandler", "adapter_for"]


def _described(exc: BaseException) -> str:
    # Triton names the exception's class before its message (the traceback stays in the log here)
    return f"{type(exc).__name__}: {failure_text(exc)}"


class TritonPythonHandler(RequestHandler):
    """The handler of a model.py that defines ``TritonPythonModel`` (made per version by `adapter_for`)."""

    model_class: ClassVar[type]
    counter: ClassVar[Iterator[int]]

    def load(self) -> None:
        spec = self.config
        self.decoupled = is_decoupled(spec)
        self.outputs: dict[str, TensorSpec] = {t.name: t for t in spec.outputs}
        self.instance_name = f"{self.name}_0_{next(self.counter)}"
        self.bls = BlsContext(getattr(self, "models", None), None)
        try:
            self.model = self.model_class()
            initialize = getattr(self.model, "initialize", None)
            if initialize is not None:
                with self._bls_context(self.bls):
                    result = initialize(self.args())
                    if inspect.isawaitable(result):
                        asyncio.run(_awaited(result))
        except Exception as exc:
            log.error("model %s: initialize failed", self.name, exc_info=exc)
            raise ModelError(f"Internal: {_described(exc)} (raised by initialize of instance "
                             f"'{self.instance_name}'; the server log has the traceback)") from exc

    def args(self) -> dict[str, str]:
        """Triton's ``initialize`` args: every value a string, the config as JSON."""
        device = self.device
        return {
            "model_config": json.dumps(self.config.to_json()),
            "model_instance_kind": "GPU" if device.type == "cuda" else "CPU",
            "model_instance_name": self.instance_name,
            "model_instance_device_id": str(device.index or 0),
            "model_repository": str(self.path.parent),
            "model_version": str(self.version),
            "model_name": self.name,
        }

    def unload(self) -> None:
        finalize = getattr(getattr(self, "model", None), "finalize", None)
        if finalize is None:
            return
        try:
            result = finalize()
            if inspect.isawaitable(result):
                asyncio.run(_awaited(result))
        except Exception:  # a failing finalize must not stop the unload
            log.exception("model %s: finalize failed", self.name)

    @staticmethod
    @contextmanager
    def _bls_context(context: BlsContext) -> Iterator[None]:
        token = BLS.set(context)
        try:
            yield
        finally:
            BLS.reset(token)

    # -- execute ---------------------------------------------------------------------------

    def execute_requests(self, requests: list[Any]) -> list[Any]:
        received, senders = self._received(requests)
        try:
            with self._bls_context(self.bls):
                returned = self.model.execute(received)
        except Exception as exc:  # noqa: BLE001  # the model's failure becomes its requests' error
            return self._failed(exc, len(requests))
        return self._results(requests, returned, senders)

    def _failed(self, exc: Exception, count: int) -> list[Any]:
        log.error("model %s failed on a batch of %d requests", self.instance_name, count, exc_info=exc)
        error = ModelError(f"Failed to process the request(s) for model '{self.instance_name}', "
                           f"message: {_described(exc)}")
        return [error] * count

    def _received(self, requests: list[Any]) -> tuple[list[InferenceRequest], list[OneResponse | None]]:
        """The requests as ``execute`` sees them, and the one-response senders of a model that is not decoupled."""
        received, senders = [], []
        for payload in requests:
            inputs = [Tensor(name, array) for name, array in payload.inputs.items()]
            wanted = payload.outputs
            names = [name for name in self.outputs if wanted is None or name in wanted]
            given = getattr(payload, "parameters", None) or {}
            parameters = json.dumps(model_parameters(given), default=str)  # BLS callers' too
            one = None if self.decoupled else OneResponse()
            stream = getattr(payload, "stream", None) if self.decoupled else one
            sender = InferenceResponseSender(stream, self.convert)
            received.append(InferenceRequest.received(inputs, getattr(payload, "id", None) or "", names, parameters,
                                                      sender, self.name, self.version))
            senders.append(one)
        return received, senders

    def _results(self, requests: list[Any], returned: Any, senders: list[OneResponse | None]) -> list[Any]:
        count = len(requests)
        if self.decoupled:
            if returned is not None and not (isinstance(returned, list) and all(r is None for r in returned)):
                return [ModelError(f"model '{self.name}' is decoupled: execute must return None and send each "
                                   "request's responses through its response sender")] * count
            missing = [ModelError(f"model '{self.name}' is decoupled: call it through gRPC ModelStreamInfer, "
                                  "or with exec(decoupled=True) from another model")]
            return [None if getattr(p, "stream", None) is not None else missing[0] for p in requests]
        if returned is None:  # every request answered through its sender (one response each)
            returned = [None] * count
        if not isinstance(returned, (list, tuple)) or len(returned) != count:
            got = f"{len(returned)} responses" if isinstance(returned, (list, tuple)) else type(returned).__name__
            return [ModelError(f"model '{self.name}': execute returned {got} for {count} requests; return a list "
                               "with one pb_utils.InferenceResponse per request, in order")] * count
        results = []
        for payload, response, sender in zip(requests, returned, senders, strict=True):
            if response is None and sender is not None:
                result = sender.result(self.name)
            elif isinstance(response, InferenceResponse):
                result = self.convert(response)
            else:
                result = ModelError(f"model '{self.name}': execute returned a {type(response).__name__} where a "
                                    "pb_utils.InferenceResponse belongs")
            if isinstance(result, dict):
                result = self._complete(result, payload.outputs)
            results.append(result)
        return results

    def _complete(self, outputs: dict[str, np.ndarray], wanted: frozenset[str] | None) -> dict[str, np.ndarray] | \
            ServingError:
        names = wanted if wanted is not None else self.outputs.keys()
        absent = [name for name in names if name not in outputs]
        if absent:
            return ModelError(f"model '{self.name}' gave no output {', '.join(map(repr, sorted(absent)))} in its "
                              "response; add a pb_utils.Tensor for each output the request asks for")
        return outputs

    def convert(self, response: InferenceResponse) -> dict[str, np.ndarray] | ServingError:
        """A model's response as outputs by name (host arrays of the config's types), or its error."""
        error = response.error()
        if error is not None:
            return as_serving_error(error)
        outputs: dict[str, np.ndarray] = {}
        for tensor in response.output_tensors():
            if not isinstance(tensor, Tensor):
                return ModelError(f"model '{self.name}': output_tensors must hold pb_utils.Tensor objects")
            declared = self.outputs.get(tensor.name())
            if declared is None:
                return ModelError(f"model '{self.name}' returned output '{tensor.name()}' that its config does not "
                                  f"declare; its outputs are {', '.join(self.outputs)}")
            array = _as_declared(self.name, declared, tensor.as_numpy())
            if isinstance(array, ServingError):
                return array
            outputs[declared.name] = array
        return outputs


class OneResponse:
    """The response sender of a request to a model that is not decoupled: one response, sent within execute.

    Triton lets such a model answer through ``request.get_response_sender()`` instead of returning
    the response (execute then returns None in its place).
    """

    def __init__(self) -> None:
        self.outputs: dict[str, np.ndarray] | ServingError | None = None
        self.finished = False
        self.cancelled = False

    def send(self, outputs: dict[str, np.ndarray] | ServingError | None, final: bool = False,
             wait: bool = True) -> None:
        if self.finished:
            raise StreamClosed("this request's response sender is closed: the final flag was sent already")
        if outputs is not None:
            if self.outputs is not None:
                raise StreamClosed("a model that is not decoupled sends one response per request; set "
                                   "model_transaction_policy { decoupled: true } to send more")
            self.outputs = outputs
        self.finished = final

    def fail(self, error: ServingError) -> None:
        if not self.finished:
            self.outputs, self.finished = error, True

    def result(self, model: str) -> dict[str, np.ndarray] | ServingError:
        """What the request gets once execute returned None for it."""
        if self.outputs is None or not self.finished:
            return ModelError(f"model '{model}': execute returned None for a request but did not answer it through "
                              "its response sender (one response with flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL) "
                              "before returning; return one pb_utils.InferenceResponse per request instead")
        return self.outputs


class AsyncTritonPythonHandler(TritonPythonHandler):
    """The handler of a model whose ``execute`` is ``async def``: runs on the event loop."""

    async def execute_requests(self, requests: list[Any]) -> list[Any]:  # type: ignore[override]  # async variant
        received, senders = self._received(requests)
        context = BlsContext(self.bls.models, asyncio.get_running_loop())
        try:
            with self._bls_context(context):
                returned = await self.model.execute(received)
        except Exception as exc:  # noqa: BLE001  # the model's failure becomes its requests' error
            return self._failed(exc, len(requests))
        return self._results(requests, returned, senders)


def _as_declared(model: str, declared: TensorSpec, array: np.ndarray) -> np.ndarray | ServingError:
    """An output array in the config's datatype; BYTES elements as ``bytes``."""
    if declared.datatype == "BYTES":
        if array.dtype.kind == "S":
            return array.astype(object)
        if array.dtype != np.object_:
            return ModelError(f"model '{model}': output '{declared.name}' is BYTES in the config but the model "
                              f"returned {v2_of_dtype(array.dtype) or array.dtype}")
        if any(not isinstance(item, bytes) for item in array.flat):
            return np.array([item if isinstance(item, bytes) else str(item).encode() for item in array.flat],
                            dtype=object).reshape(array.shape)
        return array
    wanted = V2_TO_NUMPY.get(declared.datatype)
    if wanted is None:  # BF16: numpy has no such type
        return ModelError(f"model '{model}': output '{declared.name}' is {declared.datatype}, which a Python backend "
                          "model cannot return as a numpy array; declare FP32 or FP16")
    if array.dtype != np.dtype(wanted):
        return ModelError(f"model '{model}': output '{declared.name}' is {declared.datatype} in the config but the "
                          f"model returned {v2_of_dtype(array.dtype) or array.dtype}; convert it with "
                          f"astype before making the pb_utils.Tensor")
    return array


async def _awaited(result: Any) -> Any:
    return await result


def adapter_for(model_class: type) -> type[TritonPythonHandler]:
    """A handler class for one version's ``TritonPythonModel``."""
    base = AsyncTritonPythonHandler if inspect.iscoroutinefunction(getattr(model_class, "execute", None)) \
        else TritonPythonHandler
    if not callable(getattr(model_class, "execute", None)):
        raise ConfigError("TritonPythonModel must define execute(self, requests)")
    return type(f"Triton{model_class.__name__}", (base,), {"model_class": model_class, "counter": itertools.count()})
