"""v2 HTTP bodies: a JSON header with tensors in ``data``, optionally followed by binary tensor data.

The runtime's HTTP transport decodes a request body with `decode_infer_request` and
encodes a response with `encode_infer_response`; the sidecar reads both sides of an
exchange with `split_body` and `decode_tensors`, so it reads tensors exactly as they were written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from .binary import binary_data, deserialize_bytes, split_binary
from .datatypes import NUMPY_DTYPES, bf16_bits_from_float, float_from_bf16_bits
from .errors import InvalidInput, NotJSON, brief
from .headers import HEADER_LENGTH
from .shm import SharedInput, shared_memory_ref
from .tensors import MAX_DIMS, MAX_ELEMENTS, InferRequest, InferResponse, RequestedOutput, Role, Tensor, element_count

_NO_BINARY = memoryview(b"")
_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", dict: "an object",
               type(None): "null"}


def _flatten(data: list[Any], name: str, role: Role) -> list[Any]:
    """The leaves of nested lists, in order; iterative, and no deeper than a shape can be."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                if len(stack) >= MAX_DIMS:
                    raise InvalidInput(f"{role} '{name}': 'data' is nested more than {MAX_DIMS} lists deep")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


# -- decode --------------------------------------------------------------------------------

def json_object(body: bytes) -> dict[str, Any]:
    """An optional JSON object body: empty is ``{}`` (the repository and admin endpoints accept none)."""
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NotJSON("request", str(exc)) from None
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object")
    return value


def split_body(body: bytes, header_length: int | None, role: Role = "input") -> tuple[Any, memoryview]:
    """A body's JSON header, parsed (any JSON value), and its binary section (empty without a header length)."""
    if header_length is None:
        header, binary = body, _NO_BINARY
    elif 0 <= header_length <= len(body):
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        raise InvalidInput(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    try:
        return orjson.loads(header), binary
    except orjson.JSONDecodeError as exc:
        raise NotJSON("request" if role == "input" else "response", str(exc)) from None


def _shape(name: str, value: Any, role: Role) -> tuple[tuple[int, ...], int]:
    """A JSON shape and its element count."""
    if type(value) is not list:
        raise InvalidInput(f"{role} '{name}': 'shape' must be a list of non-negative integers, got {brief(value)}")
    if len(value) <= MAX_DIMS:  # the common shape, counted here; `element_count` refuses the others, with the reason
        count = 1
        for dim in value:
            if type(dim) is not int or dim < 0:
                break
            count *= dim
        else:
            if 0 < count <= MAX_ELEMENTS:  # so no dimension is above it either
                return tuple(value), count
    return tuple(value), element_count(name, value, role)


def decode_tensor(obj: Any, binary: memoryview | None, role: Role = "input") -> Tensor:
    """One entry of a message's ``inputs`` (or ``outputs``); ``binary`` is its slice of the binary data, if any."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise InvalidInput(f"each entry of '{role}s' must be an object with a string 'name'")
    name = obj["name"]
    datatype = obj.get("datatype")
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"{role} '{name}': unknown datatype {brief(datatype)}; use one of "
                           f"{', '.join(NUMPY_DTYPES)}")
    shape, count = _shape(name, obj.get("shape"), role)
    dtype = NUMPY_DTYPES[datatype]
    if binary is not None:
        if datatype == "BYTES":
            return Tensor(name, datatype, deserialize_bytes(binary, count, name, role).reshape(shape))
        if len(binary) != count * dtype.itemsize:
            raise InvalidInput(
                f"{role} '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
                f"binary_data_size gives {len(binary)}")
        return Tensor(name, datatype, np.frombuffer(binary, dtype=dtype).reshape(shape))
    data = obj.get("data")
    if data is None:
        raise InvalidInput(f"{role} '{name}': give its values in 'data' or as binary data (binary_data_size)")
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(data, name, role)
        if len(flat) != count:
            raise InvalidInput(f"{role} '{name}': shape {list(shape)} needs {count} values, 'data' has {len(flat)}")
        array = np.empty(count, dtype=object)
        for index, item in enumerate(flat):
            if isinstance(item, str):
                array[index] = item.encode()
            else:
                raise InvalidInput(f"{role} '{name}': BYTES values in JSON must be strings, got "
                                   f"{_JSON_TYPES.get(type(item), 'another value')}")
        return Tensor(name, datatype, array.reshape(shape))
    try:
        array = np.asarray(data, dtype=np.float32 if datatype == "BF16" else dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"{role} '{name}': 'data' is not a {'rectangular' if data else ''} list of "
                           f"{datatype} values ({str(exc)[:100]})") from None
    if array.size != count:
        raise InvalidInput(f"{role} '{name}': shape {list(shape)} needs {count} values, 'data' has {array.size}")
    if datatype == "BF16":
        array = bf16_bits_from_float(array)
    return Tensor(name, datatype, array if array.shape == shape else array.reshape(shape))


def decode_tensors(entries: list[Any], binary: memoryview, role: Role = "input") -> list[Tensor]:
    """Every entry of a message's tensor list, with the binary data each one claims."""
    chunks, _unclaimed = split_binary(entries, binary, role)
    return [decode_tensor(entry, chunk, role) for entry, chunk in zip(entries, chunks, strict=True)]


def decode_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse a v2 infer request body (JSON, optionally followed by binary tensor data)."""
    obj, binary = split_body(body, header_length)
    if not isinstance(obj, dict):
        raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the request needs a non-empty 'inputs' list")
    chunks, unclaimed = split_binary(raw_inputs, binary)
    inputs: dict[str, Tensor] = {}
    shared: dict[str, SharedInput] = {}
    for raw, chunk in zip(raw_inputs, chunks, strict=True):
        tensor = _shared_input(raw, chunk) or decode_tensor(raw, chunk)
        if tensor.name in inputs or tensor.name in shared:
            raise InvalidInput(f"input '{tensor.name}' is given twice")
        if isinstance(tensor, SharedInput):
            shared[tensor.name] = tensor
        else:
            inputs[tensor.name] = tensor
    if unclaimed:
        raise InvalidInput(f"{unclaimed} bytes of binary data are not claimed by any input's binary_data_size")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    if type(parameters.get("binary_data_output", False)) is not bool:
        raise InvalidInput("parameter 'binary_data_output' must be true or false")
    return InferRequest(inputs=inputs, id=request_id, parameters=parameters,
                        outputs=_requested_outputs(obj.get("outputs")), shared_inputs=shared)


def _shared_input(obj: Any, chunk: memoryview | None) -> SharedInput | None:
    """An input entry whose values are in a shared-memory region; None for any other entry."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(obj.get("parameters"),
                                                                                             dict):
        return None
    name = obj["name"]
    where = shared_memory_ref(name, obj["parameters"])
    if where is None:
        return None
    if chunk is not None or "data" in obj:
        given = [field for field, there in (("data", "data" in obj), ("binary_data_size", chunk is not None)) if there]
        raise InvalidInput("Input must set only one of the following fields: 'data', 'binary_data_size' in "
                           "'parameters', 'shared_memory_region' in 'parameters'. But set "
                           f"{' '.join(repr(field) for field in given)} 'shared_memory_region' for input '{name}'")
    datatype = obj.get("datatype")
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"input '{name}': unknown datatype {brief(datatype)}; use one of {', '.join(NUMPY_DTYPES)}")
    shape, _count = _shape(name, obj.get("shape"), "input")
    return SharedInput(name, datatype, shape, where)


def _requested_outputs(raw: Any) -> list[RequestedOutput] | None:
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
        where = shared_memory_ref(item["name"], params, "output")
        if where is not None and binary:
            raise InvalidInput(f"output '{item['name']}': can't set both 'shared_memory_region' and 'binary_data'; "
                               "its values go to the region")
        outputs.append(RequestedOutput(item["name"], binary, where))
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
    return array.ravel()  # a view where the array is C-contiguous, as orjson needs, else a copy in C order


def encode_infer_response(response: InferResponse, binary: Iterable[bool]) -> tuple[bytes, int | None]:
    """Encode a response; ``binary`` says per output whether it goes in the binary section.

    Returns the body and, when any output is binary, the length of its JSON header
    (the value of ``Inference-Header-Content-Length``).
    """
    outputs = []
    blobs: list[bytes | memoryview] = []
    for tensor, as_binary in zip(response.outputs, binary, strict=False):  # the request chose the outputs
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.name in response.in_shared_memory:
            pass  # its values are in the region the request named
        elif as_binary:
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
