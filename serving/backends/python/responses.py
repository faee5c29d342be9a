"""pb_utils.InferenceResponse, and how its errors map to this server's errors and back."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import InvalidInput, NotFound, ServingError, Unavailable, Unsupported
from .tensors import Tensor, TritonError, TritonModelException

__all__ = ["InferenceResponse", "ModelResponseError", "as_serving_error", "error_code", "parameters_json"]


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
        self._parameters = parameters_json(parameters)

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


def parameters_json(parameters: Mapping[str, Any] | str | None) -> str:
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
