"""Drawn requests sent to tritonserver and to serve: the same outputs, or both refused alike.

Triton is the oracle for what a request of any shape, datatype and content becomes; where it
answers, serve must answer the same values, and where it refuses (400), serve must refuse too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .answers import grpc_call
from .servers import Pair

pytestmark = pytest.mark.timeout(900)  # the first test may install the wheel and start tritonserver

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DATATYPES = {"INT32": st.integers(-(2**31), 2**31 - 1), "INT64": st.integers(-(2**40), 2**40),
             "FP32": st.floats(-1e6, 1e6, width=32), "UINT8": st.integers(0, 255), "BOOL": st.booleans()}


@st.composite
def simple_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Two inputs for "simple" (INT32 [-1, 16], batch up to 8), mostly right, sometimes not."""
    rows = draw(st.integers(1, 9))
    width = draw(st.sampled_from([16, 16, 16, 15, 17]))
    inputs = []
    for name in draw(st.sampled_from([["INPUT0", "INPUT1"], ["INPUT0", "INPUT1"], ["INPUT0"], ["INPUT1", "INPUT0"]])):
        datatype = draw(st.sampled_from(["INT32", "INT32", "INT32", *DATATYPES]))
        data = draw(st.lists(DATATYPES[datatype], min_size=rows * width, max_size=rows * width))
        inputs.append({"name": name, "shape": [rows, width], "datatype": datatype, "data": data})
    return {"inputs": inputs}


@SETTINGS
@given(body=simple_requests())
def test_simple_answers_as_triton(pair: Pair, body: dict[str, Any]) -> None:
    triton, serve = pair.http("POST", "/v2/models/simple/infer", body)
    assert serve.status == triton.status, (body, triton, serve)
    if triton.status == 200:
        assert serve.body["outputs"] == triton.body["outputs"]


@SETTINGS
@given(words=st.lists(st.binary(max_size=24), min_size=1, max_size=6), rows=st.integers(1, 3))
def test_bytes_round_trip_as_in_triton(pair: Pair, words: list[bytes], rows: int) -> None:
    array = np.array([words] * rows, dtype=np.object_)

    def ask(url: str) -> Any:
        tensor = grpcclient.InferInput("INPUT0", list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        answer = grpc_call(lambda: grpcclient.InferenceServerClient(url).infer("simple_identity", [tensor]))
        return answer.code, answer.value.as_numpy("OUTPUT0").tolist() if answer.value is not None else answer.message

    triton, serve = pair.both(ask, grpc=True)
    assert serve == triton == ("OK", array.tolist())


@SETTINGS
@given(values=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=16, max_size=16))
def test_ensemble_and_bls_outputs_as_in_triton(pair: Pair, values: list[int]) -> None:
    ensemble = {"inputs": [{"name": "RAW", "shape": [1, 16], "datatype": "INT32", "data": values}]}
    bls = {"inputs": [{"name": f"INPUT{i}", "shape": [16], "datatype": "INT32", "data": values} for i in (0, 1)]}
    for model, body in (("ensemble_add", ensemble), ("bls_add", bls)):
        triton, serve = (answer.body for answer in pair.http("POST", f"/v2/models/{model}/infer", body))
        by_name = [sorted(outputs["outputs"], key=lambda out: out["name"]) for outputs in (triton, serve)]
        assert by_name[1] == by_name[0], model  # int32 overflow wraps the same way in both



NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64, "STRING": np.object_}


def values_of(name: str) -> st.SearchStrategy[Any]:
    if name == "BOOL":
        return st.booleans()
    if name == "STRING":
        return st.binary(max_size=12)
    if name == "FP16":
        return st.floats(allow_nan=False, width=16)
    if name == "FP32":
        return st.floats(allow_nan=False, width=32)
    if name == "FP64":
        return st.floats(allow_nan=False)
    info = np.iinfo(NUMPY[name])
    return st.integers(int(info.min), int(info.max))


@st.composite
def typed_inputs(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.sampled_from(sorted(NUMPY)), min_size=1, max_size=4, unique=True))
    return {name: np.array(draw(st.lists(values_of(name), max_size=5)), dtype=NUMPY[name]) for name in names}


@SETTINGS
@given(named=typed_inputs())
def test_every_datatype_reaches_the_model_as_in_triton(pair: Pair, named: dict[str, np.ndarray]) -> None:
    """What as_numpy() gives a pb_utils model (dtype, shape, values) and what comes back, per datatype."""
    def ask(url: str) -> Any:
        inputs = []
        for name, array in named.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if name == "STRING" else name)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        answer = grpc_call(lambda: grpcclient.InferenceServerClient(url).infer("dtype_echo", inputs))
        if answer.value is None:
            return answer.code, answer.message
        result = answer.value
        outputs = {out.name: result.as_numpy(out.name).tolist() for out in result.get_response().outputs
                   if out.name != "SEEN"}
        return answer.code, result.as_numpy("SEEN")[0], outputs

    triton, serve = pair.both(ask, grpc=True)
    assert serve == triton
