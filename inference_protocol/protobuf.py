"""v2 tensors in gRPC messages: ``ModelInferRequest`` and ``ModelInferResponse``.

The messages are the ones tritonclient ships (``tritonclient.grpc.service_pb2``); no gRPC
server or channel is imported. The binary layout of ``raw_input_contents`` and
``raw_output_contents`` is the binary extension's, so the decoding is `codecs.decode_tensor`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from .binary import binary_data
from .codecs import decode_tensor
from .datatypes import NUMPY_DTYPES
from .errors import InvalidInput
from .shm import SharedInput, shared_memory_ref
from .tensors import InferRequest, InferResponse, RequestedOutput, Role, Tensor, element_count

# v2 datatype -> the typed field of InferTensorContents (FP16 and BF16 travel only as raw bytes)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameter_value(parameter: Any) -> Any:
    """The Python value of an ``InferParameter`` (or ``ModelRepositoryParameter``)."""
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _typed_tensor(tensor: Any, shape: list[int], role: Role) -> Tensor:
    """A tensor whose values are in its typed ``contents`` field."""
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in NUMPY_DTYPES:
            raise InvalidInput(f"{role} '{name}': {datatype} has no typed contents field; send it in "
                               f"raw_{role}_contents")
        return decode_tensor({"name": name, "datatype": datatype, "shape": shape}, None, role)
    count = element_count(name, shape, role)  # before anything is sized by it
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"{role} '{name}': shape {shape} needs {count} values, contents has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        try:
            array = np.array(values, dtype=NUMPY_DTYPES[datatype])
        except OverflowError:  # e.g. 300 in the int_contents of an INT8 input
            raise InvalidInput(f"{role} '{name}': {field} holds values out of the range of {datatype}") from None
    return Tensor(name, datatype, array.reshape(shape))


def decode_tensors(tensors: Sequence[Any], raw: Sequence[bytes], role: Role = "input") -> list[Tensor]:
    """A message's ``inputs`` (or ``outputs``) with their raw contents, or their typed contents without any."""
    if raw and len(raw) != len(tensors):
        raise InvalidInput(f"raw_{role}_contents has {len(raw)} entries for {len(tensors)} {role}s; "
                           f"give one per {role}, in order")
    if raw:
        return [_raw_tensor(tensor, contents, role) for tensor, contents in zip(tensors, raw, strict=True)]
    return [_typed_tensor(tensor, tensor.shape[:], role) for tensor in tensors]


def _raw_tensor(tensor: Any, contents: bytes, role: Role) -> Tensor:
    """A tensor whose values are ``contents`` (its entry of ``raw_*_contents``).

    Every upb field access costs a wrapper object, so each field is read once. A fixed-size
    datatype whose bytes match its shape is taken here; anything else (BYTES, an unknown
    datatype, a size that does not match) goes through `decode_tensor`, which has the one
    copy of the checks and their messages.
    """
    name, datatype = tensor.name, tensor.datatype
    shape = tensor.shape[:]  # a list of ints (int64 on the wire: negative dims are refused with the JSON ones)
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is not None and datatype != "BYTES" and len(contents) == element_count(name, shape, role) * dtype.itemsize:
        return Tensor(name, datatype, np.ndarray(shape, dtype, contents))  # a read-only view, as frombuffer's
    return decode_tensor({"name": name, "datatype": datatype, "shape": shape}, memoryview(contents), role)


def decode_model_infer_request(message: Any) -> InferRequest:
    """A ``ModelInferRequest`` as an `InferRequest` (raw or typed contents)."""
    tensors = message.inputs
    if not tensors:
        raise InvalidInput("the request needs at least one input")
    shared: dict[str, SharedInput] = {}
    in_message = []  # raw_input_contents holds the values of these alone, in order (as tritonclient sends them)
    for tensor in tensors:
        found = _shared_input(tensor) if tensor.parameters else None
        if found is None:
            in_message.append(tensor)
        elif found.name in shared:
            raise InvalidInput(f"input '{found.name}' is given twice")
        else:
            shared[found.name] = found
    inputs: dict[str, Tensor] = {}
    for decoded in decode_tensors(in_message, message.raw_input_contents):
        if decoded.name in inputs or decoded.name in shared:
            raise InvalidInput(f"input '{decoded.name}' is given twice")
        inputs[decoded.name] = decoded
    outputs = None
    requested = message.outputs
    if requested:
        outputs = []
        for output in requested:
            parameters = output.parameters
            if not parameters:
                outputs.append(RequestedOutput(output.name, True, None))
                continue
            if "classification" in parameters:
                raise InvalidInput(f"output '{output.name}': the classification extension is not supported; "
                                   "request the scores and take the top-k on the client")
            where = shared_memory_ref(output.name, _parameters(parameters), "output")
            outputs.append(RequestedOutput(output.name, True, where))
    parameters = message.parameters
    return InferRequest(inputs=inputs, id=message.id or None, parameters=_parameters(parameters) if parameters else {},
                        outputs=outputs, shared_inputs=shared)


def _parameters(parameters: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def _shared_input(tensor: Any) -> SharedInput | None:
    """An input whose values are in a shared-memory region; None for one whose values are in the message."""
    where = shared_memory_ref(tensor.name, _parameters(tensor.parameters)) if tensor.parameters else None
    if where is None:
        return None
    if tensor.HasField("contents"):
        raise InvalidInput(f"unexpected 'content' provided when using shared memory for input tensor "
                           f"'{tensor.name}'; give its values in the region or in the message, not both")
    if tensor.datatype not in NUMPY_DTYPES:
        raise InvalidInput(f"input '{tensor.name}': unknown datatype {tensor.datatype[:40]!r}; use one of "
                           f"{', '.join(NUMPY_DTYPES)}")
    shape = list(tensor.shape)
    element_count(tensor.name, shape)
    return SharedInput(tensor.name, tensor.datatype, tuple(shape), where)


def encode_model_infer_response(response: InferResponse) -> Any:
    """An `InferResponse` as a ``ModelInferResponse`` with ``raw_output_contents``."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id or "")
    outputs, contents = message.outputs, message.raw_output_contents  # each upb access builds a wrapper
    shared = response.in_shared_memory
    for tensor in response.outputs:
        array = tensor.array
        outputs.add(name=tensor.name, datatype=tensor.datatype, shape=array.shape)
        if shared and tensor.name in shared:  # it keeps its (empty) place: each output's contents stay at its index
            contents.append(b"")
        elif tensor.datatype == "BYTES":
            contents.append(bytes(binary_data(tensor)))
        else:  # the binary form of a fixed-size datatype is its values' bytes in C order, as tobytes gives them
            contents.append(array.tobytes())
    return message
