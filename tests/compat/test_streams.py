"""ModelStreamInfer, side by side with tritonserver: decoupled responses, final flags, errors on a stream.

Messages are grouped by request id (one request's messages keep their order; two requests on one
stream may interleave differently in the two servers); errors on a stream carry no id in
tritonclient, so they are compared as a sorted list.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .answers import without_traceback
from .servers import Pair

pytestmark = pytest.mark.timeout(900)  # the first test may install the wheel and start tritonserver

Send = tuple[str, str, dict[str, np.ndarray]]  # (request id, model, inputs)
DATATYPES = {np.dtype(np.int32): "INT32", np.dtype(np.uint32): "UINT32"}


def repeat(request_id: str, values: list[int], delays: list[int] | None = None) -> Send:
    return request_id, "repeat_int32", {
        "IN": np.array(values, dtype=np.int32),
        "DELAY": np.array(delays if delays is not None else [1] * len(values), dtype=np.uint32),
        "WAIT": np.array([5], dtype=np.uint32)}


def simple(request_id: str, model: str = "simple") -> Send:
    return request_id, model, {"INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
                               "INPUT1": np.ones((1, 16), dtype=np.int32)}


def stream(url: str, sends: list[Send], empty_final: bool, counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Every message of one stream: each request ends with its final message, an error, or (without the
    empty final response) its expected count of messages; then a short wait catches any extra one."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    seen: dict[str, Any] = {"errors": []}
    ended: set[str] = set()

    def done() -> bool:
        finished = len(ended) + len(seen["errors"])
        if counts is not None:
            finished += sum(len(seen.get(request_id, [])) >= count for request_id, count in counts.items())
        return finished >= len(sends)

    try:
        for request_id, model, named in sends:
            inputs = []
            for name, array in named.items():
                tensor = grpcclient.InferInput(name, list(array.shape), DATATYPES[array.dtype])
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=empty_final)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                result, error = answers.get(timeout=0.3 if done() else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if error is not None:
                seen["errors"].append(without_traceback(error.message()))
                continue
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            seen.setdefault(response.id, []).append(
                (response.model_name, response.model_version,
                 {out.name: result.as_numpy(out.name).tolist() for out in response.outputs}, final))
            if final:
                ended.add(response.id)
        seen["errors"].sort()
        return seen
    finally:
        client.stop_stream()


@pytest.mark.parametrize("values", [[4, 5, 6], [], [7]], ids=["three", "none", "one"])
@pytest.mark.parametrize("empty_final", [True, False], ids=["empty-final", "no-empty-final"])
def test_decoupled_responses_are_tritons(pair: Pair, values: list[int], empty_final: bool) -> None:
    """One message per value; with the empty final response asked for, one more: no outputs, version ""."""
    counts = None if empty_final else {"s1": len(values)}  # nothing marks the end without the empty final one
    triton, serve = pair.both(lambda url: stream(url, [repeat("s1", values)], empty_final, counts), grpc=True)
    assert serve == triton


def test_two_decoupled_requests_on_one_stream(pair: Pair) -> None:
    sends = [repeat("a", [1, 2, 3], [5, 5, 5]), repeat("b", [10, 20], [1, 1])]
    triton, serve = pair.both(lambda url: stream(url, sends, True), grpc=True)
    assert serve == triton


def test_an_error_response_with_the_final_flag(pair: Pair) -> None:
    """repeat_int32 answers IN and DELAY of different lengths with a TritonError sent with FINAL."""
    triton, serve = pair.both(lambda url: stream(url, [repeat("bad", [1, 2], [1])], True), grpc=True)
    assert triton == {"errors": ["expected IN and DELAY shape to match, got [2] and [1]"]}
    assert serve == triton


def test_models_that_are_not_decoupled_over_a_stream(pair: Pair) -> None:
    """One response each, final; an ensemble and a BLS model alike."""
    sends = [simple("plain"), simple("bls", "bls_add"),
             ("ensemble", "ensemble_add", {"RAW": np.arange(16, dtype=np.int32).reshape(1, 16)})]
    sends[1] = ("bls", "bls_add", {name: array.reshape(16) for name, array in sends[1][2].items()})
    triton, serve = pair.both(lambda url: stream(url, sends, True), grpc=True)
    assert serve == triton


def test_errors_on_a_stream_leave_it_open(pair: Pair) -> None:
    """An unknown model and a raising execute are stream errors; the request after them is answered."""
    mode = {"MODE": np.array([[2]], dtype=np.int32)}
    sends = [simple("unknown", "nope"), ("raises", "errors", mode), simple("after")]
    triton, serve = pair.both(lambda url: stream(url, sends, True), grpc=True)
    assert triton["errors"] == sorted(
        ["Request for unknown model: 'nope' is not found",
         "Failed to process the request(s) for model 'errors_0_0', message: TritonModelException: MODE 2 asks "
         "execute to raise"])
    assert [message.split(";")[0] for message in serve["errors"]] == triton["errors"]  # serve adds its hint
    assert serve["after"] == triton["after"]
