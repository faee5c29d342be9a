"""Decoding what upstreams answer (and clients send) into record tensors, HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from inference_protocol.binary import serialize_bytes
from inference_protocol.codecs import encode_infer_response
from inference_protocol.tensors import InferResponse, Tensor
from sidecar.records import decode as tensors
from sidecar.records.decode import DecodeError

SCORES = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
WORDS = np.array([b"good", b"bad", b"\xff\x00"], dtype=object).reshape(3, 1)
FLAGS = np.array([True, False, True]).reshape(3, 1)


def response(binary: bool) -> tuple[bytes, int | None]:
    outputs = [Tensor("SCORES", "FP32", SCORES), Tensor("WORDS", "BYTES", WORDS), Tensor("FLAGS", "BOOL", FLAGS)]
    return encode_infer_response(InferResponse("m", "3", outputs, id="abc"), [binary, True, binary])


@pytest.mark.parametrize("binary", [False, True])
def test_http_responses_json_and_binary(binary: bool) -> None:
    body, header_length = response(binary)
    decoded = tensors.http_response(body, header_length)
    assert decoded.model_version == "3" and decoded.model_name == "m"
    scores, words, flags = decoded.tensors
    assert (scores.name, scores.datatype, scores.shape) == ("SCORES", "FP32", (3, 4))
    assert scores.values is not None and scores.values.dtype == np.float64
    np.testing.assert_array_equal(scores.array(), SCORES.astype(np.float64))
    assert words.strings == [b"good", b"bad", b"\xff\x00"] and words.values is None
    np.testing.assert_array_equal(flags.array(), [[1.0], [0.0], [1.0]])


def test_bf16_outputs_become_their_float_values() -> None:
    body = orjson.dumps({"model_name": "m", "outputs": [{"name": "B", "datatype": "BF16", "shape": [2],
                                                          "data": [1.5, -2.0]}]})
    (tensor,) = tensors.http_response(body, None).tensors
    np.testing.assert_array_equal(tensor.array(), [1.5, -2.0])


@pytest.mark.parametrize("body, header_length", [
    (b"<html>oops</html>", None),
    (b'{"outputs": 3}', None),
    (b'{"outputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}', None),
    (b'{"outputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}', None),
    (b'{"outputs": []}', 500),
])
def test_garbage_is_a_decode_error(body: bytes, header_length: int | None) -> None:
    with pytest.raises(DecodeError):
        tensors.http_response(body, header_length)


def test_http_requests_and_their_ids() -> None:
    header = {"id": "req-9", "inputs": [{"name": "X", "datatype": "INT64", "shape": [1, 2],
                                         "parameters": {"binary_data_size": 16}}]}
    head = orjson.dumps(header)
    body = head + np.array([[7, -8]], dtype=np.int64).tobytes()
    decoded = tensors.http_request(body, len(head))
    assert decoded.request_id == "req-9"
    np.testing.assert_array_equal(decoded.tensors[0].array(), [[7.0, -8.0]])
    assert tensors.http_request_id(body, len(head)) == "req-9"
    assert tensors.http_request_id(b"not json", None) is None
    assert tensors.http_error(b'{"error": "no such model"}') == "no such model"
    assert tensors.http_error(b"plain") is None


def _infer_response(raw: bool) -> bytes:
    message = pb.ModelInferResponse(model_name="m", model_version="2", id="g-1")
    scores = message.outputs.add(name="SCORES", datatype="FP32", shape=[3, 4])
    words = message.outputs.add(name="WORDS", datatype="BYTES", shape=[3, 1])
    if raw:
        message.raw_output_contents.extend([SCORES.tobytes(), serialize_bytes(WORDS)])
    else:
        scores.contents.fp32_contents.extend(SCORES.reshape(-1).tolist())
        words.contents.bytes_contents.extend(WORDS.reshape(-1).tolist())
    return message.SerializeToString()


@pytest.mark.parametrize("raw", [True, False])
def test_grpc_responses_raw_and_typed(raw: bool) -> None:
    decoded = tensors.grpc_response(_infer_response(raw))
    assert decoded.model_version == "2"
    scores, words = decoded.tensors
    np.testing.assert_array_equal(scores.array(), SCORES.astype(np.float64))
    assert words.strings == [b"good", b"bad", b"\xff\x00"] and words.shape == (3, 1)


def test_grpc_requests() -> None:
    message = pb.ModelInferRequest(model_name="classifier", model_version="1", id="g-2")
    message.inputs.add(name="X", datatype="FP16", shape=[2])
    message.raw_input_contents.append(np.array([0.5, 2.0], dtype=np.float16).tobytes())
    decoded = tensors.grpc_request(message.SerializeToString())
    assert (decoded.model_name, decoded.model_version, decoded.request_id) == ("classifier", "1", "g-2")
    np.testing.assert_array_equal(decoded.tensors[0].array(), [0.5, 2.0])


def test_grpc_garbage_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        tensors.grpc_response(b"\xff\xff\xff garbage")
    message = pb.ModelInferResponse()
    message.outputs.add(name="X", datatype="FP32", shape=[4])
    message.raw_output_contents.append(b"\x00" * 3)
    with pytest.raises(DecodeError, match="'X'"):
        tensors.grpc_response(message.SerializeToString())
