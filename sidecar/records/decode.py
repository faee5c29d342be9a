"""Decode v2 requests and responses, HTTP (JSON or binary) and gRPC, into record tensors.

Runs off the request path, on the recorder's thread. The wire format is
`inference_protocol`'s (numpy only), the same code the model server encodes with, so the
sidecar reads tensors exactly as they were written; this module only turns them into
the record schema's float64 values and strings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from inference_protocol.codecs import decode_infer_request, decode_tensors, split_body
from inference_protocol.datatypes import float_from_bf16_bits
from inference_protocol.errors import InvalidInput, NotJSON, error_message
from inference_protocol.protobuf import decode_tensors as decode_grpc_tensors
from inference_protocol.tensors import Role, Tensor


class DecodeError(ValueError):
    """A body that is not a well-formed v2 message."""


@dataclasses.dataclass
class TensorValue:
    """A tensor as the record schema holds it: float64 values, or the strings of a BYTES tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | None  # flat float64; None for BYTES
    strings: list[bytes] | None  # BYTES only

    @property
    def nbytes(self) -> int:
        if self.strings is not None:
            return sum(len(item) for item in self.strings)
        return 0 if self.values is None else int(self.values.nbytes)

    def array(self) -> np.ndarray:
        """The values in their shape (float64, or an object array of bytes)."""
        if self.strings is not None:
            out = np.empty(len(self.strings), dtype=object)
            out[:] = self.strings
            return out.reshape(self.shape)
        assert self.values is not None
        return self.values.reshape(self.shape)


@dataclasses.dataclass
class Decoded:
    """What a message carried: model version (responses), request id (requests) and tensors."""

    tensors: list[TensorValue]
    model_name: str | None = None
    model_version: str | None = None
    request_id: str | None = None


def tensor_value(name: str, datatype: str, array: np.ndarray) -> TensorValue:
    shape = tuple(int(d) for d in array.shape)
    if datatype == "BYTES":
        return TensorValue(name, datatype, shape, None,
                           [item if isinstance(item, bytes) else str(item).encode() for item in array.reshape(-1)])
    if datatype == "BF16":
        array = float_from_bf16_bits(array)
    return TensorValue(name, datatype, shape, np.asarray(array, dtype=np.float64).reshape(-1), None)


def _from_tensor(tensor: Tensor) -> TensorValue:
    return tensor_value(tensor.name, tensor.datatype, tensor.array)


# -- HTTP ----------------------------------------------------------------------------------------

def http_request(body: bytes, header_length: int | None) -> Decoded:
    """A v2 infer request body: its inputs and ``id``."""
    try:
        request = decode_infer_request(body, header_length)
    except InvalidInput as exc:
        raise DecodeError(str(exc)) from None
    return Decoded([_from_tensor(t) for t in request.inputs.values()], request_id=request.id)


def _header(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview]:
    """A response body's JSON header (an object) and its binary section."""
    try:
        obj, binary = split_body(body, header_length, "output")
    except NotJSON as exc:
        raise DecodeError(f"not JSON: {exc.detail}") from None
    except InvalidInput as exc:
        raise DecodeError(str(exc)) from None
    if not isinstance(obj, dict):
        raise DecodeError("not a JSON object")
    return obj, binary


def http_request_id(body: bytes, header_length: int | None) -> str | None:
    """The ``id`` of a v2 infer request, or None; never raises (the primary judges the request)."""
    try:
        obj, _ = split_body(body, header_length)
    except InvalidInput:
        return None
    request_id = obj.get("id") if isinstance(obj, dict) else None
    return request_id if isinstance(request_id, str) and request_id else None


def http_response(body: bytes, header_length: int | None) -> Decoded:
    """A v2 infer response body (JSON data or the binary extension): its outputs and version."""
    obj, binary = _header(body, header_length)
    raw_outputs = obj.get("outputs")
    if not isinstance(raw_outputs, list):
        raise DecodeError("no 'outputs' list")
    try:
        tensors = [_from_tensor(t) for t in decode_tensors(raw_outputs, binary, "output")]
    except InvalidInput as exc:
        raise DecodeError(str(exc)) from None
    version = obj.get("model_version")
    return Decoded(tensors, model_name=obj.get("model_name"), model_version=None if version is None else str(version))


def http_error(body: bytes) -> str | None:
    """The message of a v2 error body ``{"error": "..."}``, if it is one."""
    return error_message(body)


# -- gRPC ----------------------------------------------------------------------------------------

def _grpc_tensors(tensors: Sequence[Any], raw: Sequence[bytes], role: Role) -> list[TensorValue]:
    try:
        return [_from_tensor(t) for t in decode_grpc_tensors(tensors, raw, role)]
    except InvalidInput as exc:
        raise DecodeError(str(exc)) from None


def grpc_request(raw: bytes) -> Decoded:
    """A serialized ``ModelInferRequest``: model, id and inputs."""
    try:
        message = service_pb2.ModelInferRequest.FromString(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError is not exported consistently
        raise DecodeError(f"not a ModelInferRequest: {exc}") from None
    tensors = _grpc_tensors(message.inputs, message.raw_input_contents, "input")
    return Decoded(tensors, model_name=message.model_name, model_version=message.model_version or None,
                   request_id=message.id or None)


def grpc_response(raw: bytes) -> Decoded:
    """A serialized ``ModelInferResponse``: version and outputs."""
    try:
        message = service_pb2.ModelInferResponse.FromString(raw)
    except Exception as exc:  # noqa: BLE001 - see grpc_request
        raise DecodeError(f"not a ModelInferResponse: {exc}") from None
    tensors = _grpc_tensors(message.outputs, message.raw_output_contents, "output")
    return Decoded(tensors, model_name=message.model_name, model_version=message.model_version or None,
                   request_id=message.id or None)
