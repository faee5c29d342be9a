"""KServe v2 tensors in gRPC messages: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

Pure numpy and the protos tritonclient ships (``tritonclient.grpc.service_pb2``); the
binary layout of ``raw_input_contents`` is the same as HTTP's binary extension, so the
decoding is shared with `serving.codecs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from .codecs import binary_data, decode_tensor, element_count
from .errors import InvalidInput
from .types import NUMPY_DTYPES, InferRequest, InferResponse, RequestedOutput, Tensor

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


def _typed_tensor(tensor: Any, shape: list[int]) -> Tensor:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in NUMPY_DTYPES:
            raise InvalidInput(f"input '{name}': {datatype} has no typed contents field; send it in "
                               "raw_input_contents")
        return decode_tensor({"name": name, "datatype": datatype, "shape": shape}, None)
    count = element_count(name, shape)  # before anything is sized by it
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': shape {shape} needs {count} values, contents has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        try:
            array = np.array(values, dtype=NUMPY_DTYPES[datatype])
        except OverflowError:  # e.g. 300 in the int_contents of an INT8 input
            raise InvalidInput(f"input '{name}': {field} holds values out of the range of {datatype}") from None
    return Tensor(name, datatype, array.reshape(shape))


def decode_model_infer_request(message: Any) -> InferRequest:
    """A ``ModelInferRequest`` as an `InferRequest` (raw or typed contents)."""
    if not message.inputs:
        raise InvalidInput("the request needs at least one input")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
                           "give one per input, in order")
    inputs: dict[str, Tensor] = {}
    for index, tensor in enumerate(message.inputs):
        shape = list(tensor.shape)  # int64 on the wire: negative dims are refused with the JSON ones
        if raw:
            decoded = decode_tensor({"name": tensor.name, "datatype": tensor.datatype, "shape": shape},
                                    memoryview(raw[index]))
        else:
            decoded = _typed_tensor(tensor, shape)
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
