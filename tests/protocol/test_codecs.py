"""v2 HTTP bodies: JSON data, the binary extension, BYTES; every malformed body refused with a reason."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference_protocol.binary import deserialize_bytes, serialize_bytes
from inference_protocol.codecs import decode_infer_request, encode_infer_response, json_object
from inference_protocol.datatypes import NUMPY_DTYPES
from inference_protocol.errors import InvalidInput
from inference_protocol.tensors import InferResponse, Tensor

NUMERIC = [t for t in NUMPY_DTYPES if t not in ("BYTES", "BF16")]


def request(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_data_flat_and_nested_decode_to_the_datatype(datatype: str) -> None:
    values = [[1, 0, 1], [0, 1, 1]] if datatype == "BOOL" else [[1, 2, 3], [4, 5, 6]]
    for data in (values, [v for row in values for v in row]):
        decoded = decode_infer_request(request({"name": "x", "datatype": datatype, "shape": [2, 3], "data": data}))
        array = decoded.inputs["x"].array
        assert array.dtype == NUMPY_DTYPES[datatype] and array.shape == (2, 3)
        assert array.tolist() == np.asarray(values, dtype=NUMPY_DTYPES[datatype]).tolist()


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_data_decodes_and_encodes_bit_for_bit(datatype: str) -> None:
    array = (np.arange(6) % 2).astype(NUMPY_DTYPES[datatype]).reshape(2, 3)
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3],
                                       "parameters": {"binary_data_size": array.nbytes}}]})
    decoded = decode_infer_request(header + array.tobytes(), len(header))
    assert decoded.inputs["x"].array.tobytes() == array.tobytes()
    body, length = encode_infer_response(InferResponse("m", "1", [Tensor("y", datatype, array)]), [True])
    meta = orjson.loads(body[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == array.nbytes
    assert body[length:] == array.tobytes()


def test_bytes_tensors_round_trip_in_json_and_binary() -> None:
    decoded = decode_infer_request(request({"name": "t", "datatype": "BYTES", "shape": [2, 1],
                                            "data": [["héllo"], ["wörld"]]}))
    array = decoded.inputs["t"].array
    assert array.shape == (2, 1) and array.reshape(-1).tolist() == ["héllo".encode(), "wörld".encode()]
    blob = serialize_bytes(array)
    assert blob == struct.pack("<I", 6) + "héllo".encode() + struct.pack("<I", 6) + "wörld".encode()
    assert deserialize_bytes(blob, 2, "t").tolist() == array.reshape(-1).tolist()
    body, length = encode_infer_response(InferResponse("m", "1", [Tensor("t", "BYTES", array)]), [False])
    assert length is None and orjson.loads(body)["outputs"][0]["data"] == ["héllo", "wörld"]


def test_request_fields_id_parameters_and_outputs() -> None:
    decoded = decode_infer_request(request(
        {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, id="req-7",
        parameters={"binary_data_output": True},
        outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}]))
    assert decoded.id == "req-7" and decoded.parameters == {"binary_data_output": True}
    assert [(o.name, o.binary) for o in decoded.outputs or []] == [("a", None), ("b", False)]


def test_response_echoes_id_and_mixes_json_and_binary_outputs() -> None:
    a = np.array([[1.5, 2.5]], dtype=np.float32)
    b = np.array([[7]], dtype=np.int64)
    body, length = encode_infer_response(InferResponse("m", "3", [Tensor("a", "FP32", a), Tensor("b", "INT64", b)],
                                                       id="r1"), [False, True])
    assert length is not None
    meta = orjson.loads(body[:length])
    assert meta["id"] == "r1" and meta["model_version"] == "3"
    assert meta["outputs"][0] == {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}
    assert body[length:] == b.tobytes()


@pytest.mark.parametrize("body, header_length, message", [
    (b"{not json", None, "not valid JSON"),
    (b"[]", None, "JSON object"),
    (b'{"inputs": []}', None, "non-empty 'inputs'"),
    (request({"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}), None, "unknown datatype 'FP33'"),
    (request({"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}), None, "needs 2 values"),
    (request({"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}), None, "'shape' must be a list"),
    (request({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}), None, "non-negative"),
    (request({"name": "x", "datatype": "FP32", "shape": [2]}), None, "give its values"),
    (request({"name": "x", "datatype": "INT32", "shape": [2], "data": [1, "a"]}), None, "INT32"),
    (request({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}), None, "rectangular"),
    (request({"name": "x", "datatype": "BYTES", "shape": [1], "data": [5]}), None, "must be strings"),
    (request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
             {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}), None, "given twice"),
    (request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}), 10_000, "Inference-Header-Content-Length"),
    (request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, id=5), None, "'id' must be a string"),
    (request({"name": "x", "datatype": [], "shape": [1], "data": [1]}), None, r"unknown datatype \[\]"),
    (request({"name": "x", "datatype": {}, "shape": [1], "data": [1]}), None, "unknown datatype"),
    (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ' + b"[" * 1000 + b'"a"' + b"]" * 1000 +
     b"}]}", None, "nested more than 32 lists deep"),
    (request({"name": "x", "datatype": "FP32", "shape": [2**32, 2**32], "data": [1]}), None, "more than 2147483647"),
    (request({"name": "x", "datatype": "FP32", "shape": [0, 2**40], "data": []}), None, "more than 2147483647"),
    (request({"name": "x", "datatype": "FP32", "shape": [1] * 33, "data": [1]}), None, "at most 32"),
    (request({"name": "x", "datatype": "FP32", "shape": [1.0], "data": [1]}), None, "non-negative integers"),
    (request({"name": "x", "datatype": "FP32", "shape": [True], "data": [1]}), None, "non-negative integers"),
    (request({"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}), None, "out of bounds for uint8"),
    (request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, parameters={"binary_data_output": "no"}),
     None, "'binary_data_output' must be true or false"),
    (request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
             outputs=[{"name": "y", "parameters": {"binary_data": 1}}]), None, "'binary_data' must be true or false"),
    (request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, outputs=[{"name": "y", "parameters": 7}]),
     None, "'parameters' must be an object"),
    (request({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}), -1, "Inference-Header-Content-Length"),
])
def test_malformed_requests_say_what_is_wrong(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_infer_request(body, header_length)


def test_binary_sizes_must_match_the_shape_and_the_body() -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                       "parameters": {"binary_data_size": 8}}]})
    with pytest.raises(InvalidInput, match="needs 16 bytes"):
        decode_infer_request(header + bytes(8), len(header))
    with pytest.raises(InvalidInput, match="runs past the end"):
        decode_infer_request(header + bytes(4), len(header))
    exact = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                      "parameters": {"binary_data_size": 16}}]})
    with pytest.raises(InvalidInput, match="4 bytes of binary data are not claimed"):
        decode_infer_request(exact + bytes(20), len(exact))
    with pytest.raises(InvalidInput, match="claims 100 bytes"):
        deserialize_bytes(struct.pack("<I", 100) + b"ab", 1, "s")
    with pytest.raises(InvalidInput, match="left over"):
        deserialize_bytes(struct.pack("<I", 1) + b"abc", 1, "s")
    # a declared count is checked against the bytes before anything is allocated for it
    with pytest.raises(InvalidInput, match="declares 67108864 BYTES elements but 8 bytes of data hold at most 2"):
        deserialize_bytes(struct.pack("<I", 1) + b"ab\x00\x00", 67108864, "s")


def test_non_utf8_bytes_output_in_json_asks_for_binary() -> None:
    tensor = Tensor("raw", "BYTES", np.array([b"\xff\xfe"], dtype=object))
    with pytest.raises(InvalidInput, match="binary_data"):
        encode_infer_response(InferResponse("m", "1", [tensor]), [False])
    body, length = encode_infer_response(InferResponse("m", "1", [tensor]), [True])
    assert length is not None and body[length:] == struct.pack("<I", 2) + b"\xff\xfe"


@pytest.mark.parametrize(("body", "expected"), [(b"", {}), (b"  \n", {}), (b'{"a": 1}', {"a": 1}),
                                             (b'{"a": 123456789012345678901234567890}', {"a": 1.2345678901234568e29})])
def test_an_optional_json_object_body(body: bytes, expected: dict[str, object]) -> None:
    assert json_object(body) == expected


@pytest.mark.parametrize(("body", "message"), [(b"{nope", "not valid JSON"), (b"[1]", "must be a JSON object"),
                                                (b'"text"', "must be a JSON object"), (b"\xff\xfe", "not valid JSON"),
                                                (b'{"a": 1e999}', "not valid JSON")])
def test_a_body_that_is_no_json_object_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        json_object(body)


# orjson.dumps writes integers within 64 bits only; the integers beyond that reach the reader as text (see the cases
# above and the binary bodies here), never through the encoder.
_JSON_INTEGERS = st.integers(min_value=-(2**63), max_value=2**64 - 1)


@given(st.one_of(st.binary(max_size=256), st.recursive(
    st.none() | st.booleans() | _JSON_INTEGERS | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=16).map(orjson.dumps)))
def test_any_body_gives_an_object_or_a_client_error(body: bytes) -> None:
    try:
        result = json_object(body)
    except InvalidInput:
        return
    assert isinstance(result, dict)
