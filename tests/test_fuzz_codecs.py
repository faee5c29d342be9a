"""Property-based fuzzing of the request decoders: JSON/binary over HTTP, protobuf over gRPC.

Whatever the bytes, a decoder either returns tensors no larger than the request, or
raises `InvalidInput` (400 / INVALID_ARGUMENT) with a message for a person; it never
raises anything else and never allocates more than a small multiple of the input.
The strategies are shared with tests/test_fuzz_servers.py and benchmarks/fuzz_soak.py.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import orjson
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from inference_protocol.codecs import decode_infer_request
from inference_protocol.datatypes import DATATYPES
from inference_protocol.errors import InvalidInput, ServingError
from inference_protocol.protobuf import CONTENTS_FIELD, decode_model_infer_request
from inference_protocol.tensors import InferRequest

# Bounded for CI: each property runs in a few seconds on a slow machine.
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# What a decoder may allocate beyond its input's size: fixed overhead plus a multiple
# that covers Python objects for parsed JSON (a 2-byte "1," becomes a 36-byte int + slot).
FIXED_BYTES = 256 * 1024
PER_INPUT_BYTE = 64

# -- strategies ------------------------------------------------------------------------------

INT64 = st.integers(-2**63, 2**63 - 1)
HUGE = st.sampled_from([2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -1, -2**63])
scalars = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | \
    st.text(max_size=6)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=12)
dims = st.integers(-2, 6) | HUGE | scalars
shapes = st.lists(dims, max_size=5) | st.lists(st.integers(0, 3), min_size=30, max_size=40) | json_values
datatypes = st.sampled_from(DATATYPES) | json_values | st.sampled_from(["fp32", "STRING", "TYPE_FP32", "²"])
data = json_values | st.lists(st.floats(allow_nan=False) | st.integers(-300, 300), max_size=70) | \
    st.lists(st.lists(st.text(max_size=3), max_size=3), max_size=3)
parameters = json_values | st.fixed_dictionaries({}, optional={
    "binary_data_size": st.integers(-2, 80) | HUGE | json_values,
    "binary_data_output": json_values, "binary_data": json_values, "timeout": json_values})
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["INPUT__0", "TEXT", "x"]) | json_values, "datatype": datatypes, "shape": shapes},
    optional={"data": data, "parameters": parameters})
outputs = st.lists(st.fixed_dictionaries({"name": st.text(max_size=4) | json_values},
                                         optional={"parameters": parameters}), max_size=3) | json_values
requests = st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=3) | json_values},
                                 optional={"id": json_values, "parameters": parameters, "outputs": outputs})


def _nested(depth: int, leaf: bytes) -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@st.composite
def http_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A request body and its Inference-Header-Content-Length (None: no binary section)."""
    kind = draw(st.sampled_from(["json", "json", "json", "deep", "binary", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), draw(st.none() | st.integers(-5, 300))
    if kind == "deep":  # nesting that orjson parses but recursion would not survive
        depth = draw(st.integers(30, 1000))
        leaf = draw(st.sampled_from([b'"a"', b"1", b"[]"]))
        field = draw(st.sampled_from(["data", "shape"]))
        datatype = draw(st.sampled_from([b'"BYTES"', b'"FP32"']))
        return (b'{"inputs": [{"name": "TEXT", "datatype": ' + datatype + b', "shape": [1, 1], "' +
                field.encode() + b'": ' + _nested(depth, leaf) + b"}]}"), None
    header = orjson.dumps(draw(requests))
    if kind == "json":
        return header, None
    tail = draw(st.binary(max_size=96))
    length = draw(st.just(len(header)) | st.integers(-3, len(header) + len(tail) + 3))
    return header + tail, length


def _set_contents(tensor: Any, field: str, values: list[Any]) -> None:
    getattr(tensor.contents, field).extend(values)


CONTENT_VALUES: dict[str, st.SearchStrategy[list[Any]]] = {
    "bool_contents": st.lists(st.booleans(), max_size=70),
    "int_contents": st.lists(st.integers(-2**31, 2**31 - 1), max_size=70),
    "int64_contents": st.lists(INT64, max_size=70),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=70),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=70),
    "fp32_contents": st.lists(st.floats(width=32), max_size=70),
    "fp64_contents": st.lists(st.floats(), max_size=70),
    "bytes_contents": st.lists(st.binary(max_size=8), max_size=8),
}


@st.composite
def infer_messages(draw: st.DrawFn) -> Any:
    """A ``ModelInferRequest``: raw or typed contents, declared shapes of any int64."""
    message = pb.ModelInferRequest(model_name=draw(st.sampled_from(["classifier", "sentiment", "nope", ""])),
                                   model_version=draw(st.sampled_from(["", "1", "2", "7", "²", "x", "1" * 40])),
                                   id=draw(st.text(max_size=4)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from(DATATYPES) | st.text(max_size=5))
        shape = draw(st.lists(st.integers(-2, 70) | HUGE | INT64, max_size=4))
        tensor = message.inputs.add(name=draw(st.sampled_from(["INPUT__0", "TEXT", "x"])), datatype=datatype,
                                    shape=shape)
        if raw:
            message.raw_input_contents.append(draw(st.binary(max_size=300)))
        else:
            field = draw(st.sampled_from(sorted(CONTENT_VALUES)) | st.just(CONTENTS_FIELD.get(datatype, "")))
            if field:
                _set_contents(tensor, field, draw(CONTENT_VALUES[field]))
    if draw(st.booleans()):
        message.raw_input_contents.append(draw(st.binary(max_size=16)))  # one more than the inputs
    for _ in range(draw(st.integers(0, 2))):
        output = message.outputs.add(name=draw(st.text(max_size=4)))
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = 3
    if draw(st.booleans()):
        message.parameters["timeout"].int64_param = draw(INT64)
    if draw(st.booleans()):
        message.parameters["binary_data_output"].string_param = "yes"
    return message


@st.composite
def corrupt_messages(draw: st.DrawFn) -> bytes:
    """Bytes that claim to be a ModelInferRequest: a real one damaged, or noise."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    data = bytearray(draw(infer_messages()).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, len(data)))
        if action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


# -- properties ------------------------------------------------------------------------------

CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|Traceback")


class Traced:
    """Peak bytes allocated inside the block (tracing only there: it slows everything down)."""

    def __enter__(self) -> Traced:
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@contextlib.contextmanager
def shallow_stack(frames: int = 120) -> Iterator[None]:
    """Let the block use only ``frames`` more stack frames: a server calls the decoders deep
    in its own stack, so a decoder's depth must not grow with the input's nesting."""
    depth = 0
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def check_decoder(call: Callable[[], InferRequest], size: int) -> InferRequest | None:
    """Run a decoder: a request no larger than its input, or InvalidInput; bounded memory."""
    result: InferRequest | None = None
    error: ServingError | None = None
    with Traced() as traced, shallow_stack():
        try:
            result = call()
        except ServingError as exc:
            error = exc
    if error is not None:
        assert isinstance(error, InvalidInput), f"{type(error).__name__} ({error.http_status}): {error}"
        assert error.http_status == 400 and error.grpc_code == "INVALID_ARGUMENT"
        message = str(error)
        assert message and len(message) < 1000 and not CLASS_NAME.search(message), message
    peak = traced.peak
    assert peak <= FIXED_BYTES + PER_INPUT_BYTE * size, f"{peak} bytes allocated for a {size}-byte request"
    if result is not None:  # every element costs at least a byte of the request
        assert sum(t.array.size for t in result.inputs.values()) <= max(size, 1)
    return result


@FUZZ
@given(http_bodies())
def test_decode_infer_request_only_raises_invalid_input(body: tuple[bytes, int | None]) -> None:
    payload, header_length = body
    check_decoder(lambda: decode_infer_request(payload, header_length), len(payload))


@FUZZ
@given(infer_messages())
def test_decode_model_infer_request_only_raises_invalid_input(message: Any) -> None:
    check_decoder(lambda: decode_model_infer_request(message), message.ByteSize())


@FUZZ
@given(corrupt_messages())
def test_corrupt_protobuf_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return  # the gRPC transport answers INVALID_ARGUMENT for these (tests/test_fuzz_servers.py)
    check_decoder(lambda: decode_model_infer_request(message), len(data))


def test_the_measured_attack_costs_no_memory() -> None:
    """gRPC: 44 bytes declaring BYTES [2147483648, 1] made serve allocate until it was killed."""
    message = pb.ModelInferRequest(model_name="sentiment")
    message.inputs.add(name="TEXT", datatype="BYTES", shape=[2147483648, 1])
    message.raw_input_contents.append(b"\x01\x00\x00\x00ab\x00\x00")
    wire = message.SerializeToString()
    assert len(wire) < 50
    for shape in ([2147483648, 1], [67108864, 1], [3, 1]):
        del message.inputs[0].shape[:]
        message.inputs[0].shape.extend(shape)
        parsed = pb.ModelInferRequest.FromString(message.SerializeToString())
        with Traced() as traced, pytest.raises(InvalidInput, match=r"declares|hold at most"):
            decode_model_infer_request(parsed)
        assert traced.peak < 1024 * 1024
    header = orjson.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [67108864, 1],
                                       "parameters": {"binary_data_size": 8}}]})
    with Traced() as traced, pytest.raises(InvalidInput, match="hold at most 2"):
        decode_infer_request(header + b"\x01\x00\x00\x00ab\x00\x00", len(header))
    assert traced.peak < 1024 * 1024
