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
    out = []
    for index, tensor in enumerate(tensors):
        shape = list(tensor.shape)  # int64 on the wire: negative dims are refused with the JSON ones
        if raw:
            out.append(decode_tensor({"name": tensor.name, "datatype": tensor.datatype, "shape": shape},
                                     memoryview(raw[index]), role))
        else:
            out.append(_typed_tensor(tensor, shape, role))
    return out


def decode_model_infer_request(message: Any) -> InferRequest:
    """A ``ModelInferRequest`` as an `InferRequest` (raw or typed contents)."""
    if not message.inputs:
        raise InvalidInput("the request needs at least one input")
    inputs: dict[str, Tensor] = {}
    for decoded in decode_tensors(message.inputs, message.raw_input_contents):
        if decoded.name in inputs:
            raise InvalidInput(f"input '{decoded.name}' is given twice")
        inputs[decoded.name] = decoded
    outputs = None
    if message.outputs:
        outputs = []
        for output in message.outputs:
            if "classification" in output.parameters:
                raise InvalidInput(f"output '{output.name}': the classification extension is not supported; "
                                   "request the scores and take the top-k on the client")
            outputs.append(RequestedOutput(output.name, True))
    parameters = {key: parameter_value(value) for key, value in message.parameters.items()}
    return InferRequest(inputs=inputs, id=message.id or None, parameters=parameters, outputs=outputs)


def encode_model_infer_response(response: InferResponse) -> Any:
    """An `InferResponse` as a ``ModelInferResponse`` with ``raw_output_contents``."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                    id=response.id or "")
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_output_contents.append(bytes(binary_data(tensor)))
    return message
