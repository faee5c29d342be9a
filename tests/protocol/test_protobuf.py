"""v2 tensors in gRPC messages: raw and typed contents, of requests and of responses."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from inference_protocol.binary import serialize_bytes
from inference_protocol.errors import InvalidInput
from inference_protocol.protobuf import decode_model_infer_request, decode_tensors, encode_model_infer_response
from inference_protocol.tensors import InferResponse, Tensor

SCORES = np.arange(6, dtype=np.float32).reshape(2, 3)


def test_responses_decode_as_they_were_encoded() -> None:
    words = np.array([b"a", b"\xff"], dtype=object).reshape(2, 1)
    message = encode_model_infer_response(InferResponse("m", "1", [Tensor("S", "FP32", SCORES),
                                                                   Tensor("W", "BYTES", words)]))
    scores, strings = decode_tensors(message.outputs, message.raw_output_contents, "output")
    np.testing.assert_array_equal(scores.array, SCORES)
    assert strings.array.tolist() == words.tolist()
    assert message.raw_output_contents[1] == serialize_bytes(words)


def test_typed_contents_and_their_checks() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="X", datatype="INT32", shape=[2]).contents.int_contents.extend([3, -4])
    assert decode_model_infer_request(request).inputs["X"].array.tolist() == [3, -4]
    half = pb.ModelInferResponse()
    half.outputs.add(name="H", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInput, match="output 'H': FP16 has no typed contents field; send it in "
                                           "raw_output_contents"):
        decode_tensors(half.outputs, half.raw_output_contents, "output")
    short = pb.ModelInferResponse()
    short.outputs.add(name="A", datatype="FP32", shape=[1])
    short.outputs.add(name="B", datatype="FP32", shape=[1])
    short.raw_output_contents.append(b"\x00" * 4)
    with pytest.raises(InvalidInput, match="raw_output_contents has 1 entries for 2 outputs"):
        decode_tensors(short.outputs, short.raw_output_contents, "output")
