"""KServe v2 tensors on the wire: JSON ``data`` and the binary tensor data extension.

Pure numpy; no torch and no transport. The HTTP transport decodes a request body with
`decode_infer_request` and encodes a response with `encode_infer_response`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from .errors import InvalidInput
from .types import NUMPY_DTYPES, InferRequest, InferResponse, RequestedOutput, Tensor

_LENGTH = struct.Struct("<I")


# -- BF16 ----------------------------------------------------------------------------------

def bf16_bits_from_float(values: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest, ties to even) and return the raw bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def float_from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


# -- BYTES ---------------------------------------------------------------------------------

def serialize_bytes(array: np.ndarray) -> bytes:
    """The v2 binary form of a BYTES tensor: each element as a 4-byte LE length and its bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: memoryview | bytes, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    view = memoryview(buffer)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"input '{name}': binary BYTES data ends after {index} of {count} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input '{name}': element {index} claims {length} bytes but the data ends first")
        out[index] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements")
    return out


def _flatten(data: Any, out: list[Any]) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten(item, out)
        else:
            out.append(item)


# -- decode --------------------------------------------------------------------------------

def _shape(name: str, value: Any) -> tuple[int, ...]:
    if type(value) is not list or not all(type(d) is int and d >= 0 for d in value):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def decode_tensor(obj: Any, binary: memoryview | None) -> Tensor:
    """One entry of a request's ``inputs``; ``binary`` is its slice of the binary section, if any."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise InvalidInput("each entry of 'inputs' must be an object with a string 'name'")
    name = obj["name"]
    datatype = obj.get("datatype")
    if datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"input '{name}': unknown datatype {datatype!r}; use one of {', '.join(NUMPY_DTYPES)}")
    shape = _shape(name, obj.get("shape"))
    count = math.prod(shape)
    dtype = NUMPY_DTYPES[datatype]
    if binary is not None:
        if datatype == "BYTES":
            return Tensor(name, datatype, deserialize_bytes(binary, count, name).reshape(shape))
        if len(binary) != count * dtype.itemsize:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
                f"binary_data_size gives {len(binary)}")
        return Tensor(name, datatype, np.frombuffer(binary, dtype=dtype).reshape(shape))
    data = obj.get("data")
    if data is None:
        raise InvalidInput(f"input '{name}': give its values in 'data' or as binary data (binary_data_size)")
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat: list[Any] = []
        _flatten(data, flat)
        if len(flat) != count:
            raise InvalidInput(f"input '{name}': shape {list(shape)} needs {count} values, 'data' has {len(flat)}")
        array = np.empty(count, dtype=object)
        for index, item in enumerate(flat):
            if isinstance(item, str):
                array[index] = item.encode()
            else:
                raise InvalidInput(f"input '{name}': BYTES values in JSON must be strings, got {type(item).__name__}")
        return Tensor(name, datatype, array.reshape(shape))
    try:
        array = np.asarray(data, dtype=np.float32 if datatype == "BF16" else dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': 'data' is not a {'rectangular' if data else ''} list of "
                           f"{datatype} values ({exc})") from None
    if array.size != count:
        raise InvalidInput(f"input '{name}': shape {list(shape)} needs {count} values, 'data' has {array.size}")
    if datatype == "BF16":
        array = bf16_bits_from_float(array)
    return Tensor(name, datatype, array.reshape(shape))


def _binary_size(obj: dict[str, Any]) -> int | None:
    params = obj.get("parameters")
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"input '{obj.get('name')}': binary_data_size must be a non-negative integer")
    return size


def decode_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a v2 infer request body (JSON, optionally followed by binary tensor data)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        obj = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for raw in raw_inputs:
        size = _binary_size(raw) if isinstance(raw, dict) else None
        chunk = None
        if size is not None:
            if offset + size > len(binary):
                raise InvalidInput(f"input '{raw.get('name')}': binary_data_size {size} runs past the end of the "
                                   f"body ({len(binary) - offset} bytes left); check Inference-Header-Content-Length")
            chunk = binary[offset:offset + size]
            offset += size
        tensor = decode_tensor(raw, chunk)
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input's "
                           "binary_data_size")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return InferRequest(inputs=inputs, id=request_id, parameters=parameters,
                        outputs=_requested_outputs(obj.get("outputs"), parameters))


def _requested_outputs(raw: Any, parameters: dict[str, Any]) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    outputs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("each entry of 'outputs' must be an object with a string 'name'")
        params = item.get("parameters") or {}
        binary = params.get("binary_data") if isinstance(params, dict) else None
        if "classification" in (params if isinstance(params, dict) else {}):
            raise InvalidInput(f"output '{item['name']}': the classification extension is not supported; "
                               "request the scores and take the top-k on the client")
        outputs.append(RequestedOutput(item["name"], None if binary is None else bool(binary)))
    return outputs


# -- encode --------------------------------------------------------------------------------

def json_data(tensor: Tensor) -> Any:
    """The flat ``data`` of a tensor in a JSON response (orjson writes numpy arrays natively)."""
    array = tensor.array
    if tensor.datatype == "BYTES":
        try:
            return [item.decode() if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidInput(f"output '{tensor.name}' holds bytes that are not UTF-8; request it as binary "
                               "data (parameters: {\"binary_data\": true})") from None
    if tensor.datatype == "BF16":
        array = float_from_bf16_bits(array)
    return np.ascontiguousarray(array).reshape(-1)


def binary_data(tensor: Tensor) -> bytes | memoryview:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.array)
    array = np.ascontiguousarray(tensor.array)
    return memoryview(array).cast("B") if array.size else b""


def encode_infer_response(response: InferResponse, binary: Iterable[bool]) -> tuple[bytes, int | None]:
    """Encode a response; ``binary`` says per output whether it goes in the binary section.

    Returns the body and, when any output is binary, the length of its JSON header
    (the value of ``Inference-Header-Content-Length``).
    """
    outputs = []
    blobs: list[bytes | memoryview] = []
    for tensor, as_binary in zip(response.outputs, binary):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if as_binary:
            blob = binary_data(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_data(tensor)
        outputs.append(entry)
    obj: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        obj["id"] = response.id
    if response.parameters:
        obj["parameters"] = response.parameters
    obj["outputs"] = outputs
    header = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
