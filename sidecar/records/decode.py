"""Decode v2 requests and responses, HTTP (JSON or binary) and gRPC, into record tensors.

Runs off the request path, on the recorder's thread. Shares serving's pure protocol
helpers (`serving.codecs`, numpy only) so the sidecar reads tensors exactly as the
model server writes them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from serving.codecs import decode_infer_request, decode_tensor, deserialize_bytes, float_from_bf16_bits
from serving.errors import InvalidInput
from serving.types import NUMPY_DTYPES, Tensor


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
        array = float_from_bf16_bits(np.asarray(array, dtype=np.uint16))
    return TensorValue(name, datatype, shape, np.asarray(array, dtype=np.float64).reshape(-1), None)


def _from_tensor(tensor: Tensor) -> TensorValue:
    return tensor_value(tensor.name, tensor.datatype, tensor.array)


# -- HTTP ----------------------------------------------------------------------------------------

def _split(body: bytes, header_length: int | None) -> tuple[Any, memoryview]:
    if header_length is not None and not 0 <= header_length <= len(body):
        raise DecodeError(f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body")
    header = body if header_length is None else body[:header_length]
    try:
        obj = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("not a JSON object")
    return obj, memoryview(body)[len(header):] if header_length is not None else memoryview(b"")


def http_request(body: bytes, header_length: int | None) -> Decoded:
    """A v2 infer request body: its inputs and ``id``."""
    try:
        request = decode_infer_request(body, header_length)
    except InvalidInput as exc:
        raise DecodeError(str(exc)) from None
    return Decoded([_from_tensor(t) for t in request.inputs.values()], request_id=request.id)


def http_request_id(body: bytes, header_length: int | None) -> str | None:
    """The ``id`` of a v2 infer request, or None; never raises (the primary judges the request)."""
    try:
        obj, _ = _split(body, header_length)
    except DecodeError:
        return None
    request_id = obj.get("id")
    return request_id if isinstance(request_id, str) and request_id else None


def http_response(body: bytes, header_length: int | None) -> Decoded:
    """A v2 infer response body (JSON data or the binary extension): its outputs and version."""
    obj, binary = _split(body, header_length)
    raw_outputs = obj.get("outputs")
    if not isinstance(raw_outputs, list):
        raise DecodeError("no 'outputs' list")
    tensors: list[TensorValue] = []
    offset = 0
    try:
        for raw in raw_outputs:
            params = raw.get("parameters") if isinstance(raw, dict) else None
            chunk = None
            if isinstance(params, dict) and "binary_data_size" in params:
                size = params["binary_data_size"]
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise DecodeError(f"output {raw.get('name')!r}: binary_data_size {size!r} does not fit the body")
                chunk = binary[offset:offset + size]
                offset += size
            tensors.append(_from_tensor(decode_tensor(raw, chunk)))
    except InvalidInput as exc:
        raise DecodeError(str(exc).replace("input '", "output '")) from None
    version = obj.get("model_version")
    return Decoded(tensors, model_name=obj.get("model_name"), model_version=None if version is None else str(version))


def http_error(body: bytes) -> str | None:
    """The message of a v2 error body ``{"error": "..."}``, if it is one."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    message = obj.get("error") if isinstance(obj, dict) else None
    return message if isinstance(message, str) else None


# -- gRPC ----------------------------------------------------------------------------------------

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _grpc_tensor(name: str, datatype: str, shape: Any, raw: bytes | None, contents: Any) -> TensorValue:
    if datatype not in NUMPY_DTYPES:
        raise DecodeError(f"tensor {name!r}: unknown datatype {datatype!r}")
    dims = tuple(int(d) for d in shape)
    count = math.prod(dims)
    try:
        if raw is not None:
            if datatype == "BYTES":
                return tensor_value(name, datatype, deserialize_bytes(raw, count, name).reshape(dims))
            array = np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype])
        elif datatype in _CONTENTS:
            values = list(getattr(contents, _CONTENTS[datatype]))
            if datatype == "BYTES":
                return TensorValue(name, datatype, dims, None, [bytes(v) for v in values])
            array = np.asarray(values, dtype=NUMPY_DTYPES[datatype])
        else:
            raise DecodeError(f"tensor {name!r}: {datatype} travels only as raw contents")
        return tensor_value(name, datatype, array.reshape(dims))
    except (InvalidInput, ValueError) as exc:
        raise DecodeError(f"tensor {name!r}: {exc}") from None


def grpc_request(raw: bytes) -> Decoded:
    """A serialized ``ModelInferRequest``: model, id and inputs."""
    try:
        message = service_pb2.ModelInferRequest.FromString(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError is not exported consistently
        raise DecodeError(f"not a ModelInferRequest: {exc}") from None
    contents = list(message.raw_input_contents)
    tensors = [_grpc_tensor(t.name, t.datatype, t.shape, contents[i] if i < len(contents) else None, t.contents)
               for i, t in enumerate(message.inputs)]
    return Decoded(tensors, model_name=message.model_name, model_version=message.model_version or None,
                   request_id=message.id or None)


def grpc_response(raw: bytes) -> Decoded:
    """A serialized ``ModelInferResponse``: version and outputs."""
    try:
        message = service_pb2.ModelInferResponse.FromString(raw)
    except Exception as exc:  # noqa: BLE001 - see grpc_request
        raise DecodeError(f"not a ModelInferResponse: {exc}") from None
    contents = list(message.raw_output_contents)
    tensors = [_grpc_tensor(t.name, t.datatype, t.shape, contents[i] if i < len(contents) else None, t.contents)
               for i, t in enumerate(message.outputs)]
    return Decoded(tensors, model_name=message.model_name, model_version=message.model_version or None,
                   request_id=message.id or None)
