"""KServe v2 tensors on the wire: JSON ``data`` and the binary tensor data extension.

Pure numpy; no torch and no transport. The HTTP transport decodes a request body with
`decode_infer_request` and encodes a response with `encode_infer_response`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from .errors import InvalidInput
from .types import NUMPY_DTYPES, InferRequest, InferResponse, RequestedOutput, Tensor

_LENGTH = struct.Struct("<I")

# Bounds on what a request may declare. A shape is a claim, not a measurement: the
# element count it gives is checked against these and against the bytes (or values)
# actually received before anything is allocated for it.
MAX_DIMS = 32  # numpy 1.x's limit; no model input has more
MAX_ELEMENTS = 2**31 - 1  # per tensor; a larger product is an overflow, not a request


def _brief(value: Any) -> str:
    """A value from a request for a message: short, and never a recursive ``repr``.

    Messages must not echo whole bodies, and a list nested a thousand deep would
    exhaust the stack in ``repr``.
    """
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        if any(isinstance(item, (list, dict)) for item in value):
            return "[[...]]"
        return "[" + ", ".join(_brief(item) for item in value[:8]) + (", ...]" if len(value) > 8 else "]")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def element_count(name: str, shape: list[int]) -> int:
    """The number of elements of ``shape`` (non-negative ints), refusing overflowing products."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {_brief(shape)}")
        count *= dim
    if count > MAX_ELEMENTS or any(dim > MAX_ELEMENTS for dim in shape):
        raise InvalidInput(f"input '{name}': shape {_brief(shape)} declares more than {MAX_ELEMENTS} elements; "
                           "split the request")
    return count


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
    view = memoryview(buffer)
    if count > len(view) // _LENGTH.size:  # each element takes at least its 4-byte length
        raise InvalidInput(f"input '{name}': the shape declares {count} BYTES elements but {len(view)} bytes of data "
                           f"hold at most {len(view) // _LENGTH.size} (each element starts with a 4-byte length)")
    out = np.empty(count, dtype=object)
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


def _flatten(data: list[Any], name: str) -> list[Any]:
    """The leaves of nested lists, in order; iterative, and no deeper than a shape can be."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                if len(stack) >= MAX_DIMS:
                    raise InvalidInput(f"input '{name}': 'data' is nested more than {MAX_DIMS} lists deep")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", dict: "an object",
               type(None): "null"}


# -- decode --------------------------------------------------------------------------------

def _shape(name: str, value: Any) -> tuple[tuple[int, ...], int]:
    """A JSON shape and its element count."""
    if type(value) is not list:
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers, got {_brief(value)}")
    return tuple(value), element_count(name, value)


def decode_tensor(obj: Any, binary: memoryview | None) -> Tensor:
    """One entry of a request's ``inputs``; ``binary`` is its slice of the binary section, if any."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise InvalidInput("each entry of 'inputs' must be an object with a string 'name'")
    name = obj["name"]
    datatype = obj.get("datatype")
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"input '{name}': unknown datatype {_brief(datatype)}; use one of "
                           f"{', '.join(NUMPY_DTYPES)}")
    shape, count = _shape(name, obj.get("shape"))
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
        flat = _flatten(data, name)
        if len(flat) != count:
            raise InvalidInput(f"input '{name}': shape {list(shape)} needs {count} values, 'data' has {len(flat)}")
        array = np.empty(count, dtype=object)
        for index, item in enumerate(flat):
            if isinstance(item, str):
                array[index] = item.encode()
            else:
                raise InvalidInput(f"input '{name}': BYTES values in JSON must be strings, got "
                                   f"{_JSON_TYPES.get(type(item), 'another value')}")
        return Tensor(name, datatype, array.reshape(shape))
    try:
        array = np.asarray(data, dtype=np.float32 if datatype == "BF16" else dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': 'data' is not a {'rectangular' if data else ''} list of "
                           f"{datatype} values ({str(exc)[:100]})") from None
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
        raise InvalidInput(f"input {_brief(obj.get('name'))}: binary_data_size must be a non-negative integer")
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
                raise InvalidInput(f"input {_brief(raw.get('name'))}: binary_data_size {size} runs past the end of the "
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
    if type(parameters.get("binary_data_output", False)) is not bool:
        raise InvalidInput("parameter 'binary_data_output' must be true or false")
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
        if not isinstance(params, dict):
            raise InvalidInput(f"output '{item['name']}': 'parameters' must be an object")
        binary = params.get("binary_data")
        if binary is not None and type(binary) is not bool:
            raise InvalidInput(f"output '{item['name']}': parameter 'binary_data' must be true or false")
        if "classification" in params:
            raise InvalidInput(f"output '{item['name']}': the classification extension is not supported; "
                               "request the scores and take the top-k on the client")
        outputs.append(RequestedOutput(item["name"], binary))
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
