"""Error answers, side by side with tritonserver: unknown models, failed loads, model errors.

Texts compare by prefix (serve may add a hint after Triton's words) and without Python
tracebacks. Where serve answers another status on purpose, KNOWN_STATUS says which and why,
so a change on either side shows here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .answers import grpc_call, same_text, without_traceback
from .servers import Pair

pytestmark = pytest.mark.timeout(900)  # the first test installs the wheel and starts tritonserver

VECTOR = list(range(16))
SIMPLE = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": VECTOR},
                     {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}


def mode(value: int) -> dict[str, Any]:
    return {"inputs": [{"name": "MODE", "shape": [1, 1], "datatype": "INT32", "data": [value]}]}



# (Triton's status, serve's status, why serve differs) for the cases where they differ on purpose
KNOWN_STATUS: dict[str, tuple[int, int, str]] = {
    "ready of unknown model": (400, 404, "serve answers 404 for every unknown model; Triton's ready says 400"),
    "ready of unknown version": (400, 404, "as above"),
    "stats of unknown model": (400, 404, "Triton answers 400 'requested model ... is not available'"),
    "infer on failed model": (404, 503, "serve: a model that is there but failed is unavailable (503)"),
    "metadata of failed model": (404, 503, "as above"),
    "infer on ensemble with unknown step": (404, 503, "serve keeps the ensemble as a model that failed to load"),
}

UNKNOWN: list[tuple[str, str, str, Any]] = [
    ("infer on unknown model", "POST", "/v2/models/nope/infer", SIMPLE),
    ("infer on unknown model version", "POST", "/v2/models/nope/versions/3/infer", SIMPLE),
    ("metadata of unknown model", "GET", "/v2/models/nope", None),
    ("config of unknown model", "GET", "/v2/models/nope/config", None),
    ("ready of unknown model", "GET", "/v2/models/nope/ready", None),
    ("stats of unknown model", "GET", "/v2/models/nope/stats", None),
    ("infer on unknown version", "POST", "/v2/models/simple/versions/7/infer", SIMPLE),
    ("metadata of unknown version", "GET", "/v2/models/simple/versions/7", None),
    ("ready of unknown version", "GET", "/v2/models/simple/versions/7/ready", None),
    ("infer on failed model", "POST", "/v2/models/init_fails/infer",
     {"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]}]}),
    ("metadata of failed model", "GET", "/v2/models/init_fails", None),
    ("infer on ensemble with unknown step", "POST", "/v2/models/ensemble_unknown_step/infer", {"inputs": []}),
]


@pytest.mark.parametrize("case, method, path, body", UNKNOWN, ids=[case for case, *_ in UNKNOWN])
def test_unknown_models_answer_as_triton_does(pair: Pair, case: str, method: str, path: str, body: Any) -> None:
    triton, serve = pair.http(method, path, body)
    expected_status, serve_status, _why = KNOWN_STATUS.get(case, (triton.status, triton.status, ""))
    assert (triton.status, serve.status) == (expected_status, serve_status), (triton, serve)
    if triton.error.startswith("Request for unknown model"):
        # the model's name and what is unknown about it, as clients match it; what follows may differ
        words = triton.error.split(" is not found")[0].split(" has no available versions")[0]
        assert serve.error.startswith(words), (triton.error, serve.error)


@pytest.mark.parametrize("name, call", [
    ("metadata", lambda client: client.get_model_metadata("nope")),
    ("config", lambda client: client.get_model_config("nope")),
    ("infer", lambda client: client.infer("nope", [])),
    ("unknown version", lambda client: client.get_model_metadata("simple", "7")),
])
def test_unknown_models_over_grpc(pair: Pair, name: str, call: Callable[[grpcclient.InferenceServerClient], Any]
                                  ) -> None:
    triton, serve = pair.both(lambda url: grpc_call(lambda: call(grpcclient.InferenceServerClient(url))), grpc=True)
    assert triton.code == serve.code == "NOT_FOUND"
    assert same_text(serve.message, triton.message), (triton.message, serve.message)


def test_ready_of_unknown_model_over_grpc_is_false(pair: Pair) -> None:
    triton, serve = pair.both(lambda url: grpc_call(
        lambda: grpcclient.InferenceServerClient(url).is_model_ready("nope")), grpc=True)
    assert (triton.code, triton.value) == (serve.code, serve.value) == ("OK", False)


@pytest.mark.parametrize("case, body", [
    ("missing input", {"inputs": SIMPLE["inputs"][:1]}),
    ("wrong datatype", {"inputs": [SIMPLE["inputs"][0], {**SIMPLE["inputs"][1], "datatype": "FP32"}]}),
    ("wrong shape", {"inputs": [SIMPLE["inputs"][0], {**SIMPLE["inputs"][1], "shape": [1, 8], "data": [1] * 8}]}),
    ("batch too large", {"inputs": [{**spec, "shape": [9, 16], "data": [0] * 144} for spec in SIMPLE["inputs"]]}),
    ("unknown output", {**SIMPLE, "outputs": [{"name": "NOPE"}]}),
])
def test_refused_requests_are_client_errors(pair: Pair, case: str, body: Any) -> None:
    """Same status; the texts are serve's own (they name the fix), Triton's are in triton-reference."""
    triton, serve = pair.http("POST", "/v2/models/simple/infer", body)
    assert triton.status == serve.status == 400, (case, triton, serve)
    assert serve.error


# What a Python model's failure looks like to the client: (MODE, HTTP status, gRPC code)
MODEL_ERRORS = [(1, 500, "INTERNAL"), (2, 500, "INTERNAL"), (3, 500, "INTERNAL"), (4, 400, "INVALID_ARGUMENT")]


@pytest.mark.parametrize("value, status, code", MODEL_ERRORS)
def test_python_model_errors(pair: Pair, value: int, status: int, code: str) -> None:
    triton, serve = pair.http("POST", "/v2/models/errors/infer", mode(value))
    assert triton.status == serve.status == status
    assert same_text(serve.error, triton.error), (triton.error, serve.error)
    request = grpcclient.InferInput("MODE", [1, 1], "INT32")
    request.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    over_grpc = pair.both(lambda url: grpc_call(
        lambda: grpcclient.InferenceServerClient(url).infer("errors", [request])), grpc=True)
    assert over_grpc[0].code == over_grpc[1].code == code
    assert same_text(over_grpc[1].message, over_grpc[0].message)


@pytest.mark.parametrize("value, status", [(1, 500), (2, 500), (4, 400)])
def test_a_failing_step_fails_its_ensemble_request(pair: Pair, value: int, status: int) -> None:
    """Triton: "in ensemble 'E', <the step's message>"; serve also names the step, before the message."""
    triton, serve = pair.http("POST", "/v2/models/ensemble_failing_step/infer", mode(value))
    assert triton.status == serve.status == status
    prefix = "in ensemble 'ensemble_failing_step', "
    assert triton.error.startswith(prefix) and serve.error.startswith(prefix), (triton.error, serve.error)
    step_words = without_traceback(triton.error).removeprefix(prefix)
    assert step_words in serve.error, (triton.error, serve.error)
    ok = pair.http("POST", "/v2/models/ensemble_failing_step/infer", mode(0))
    assert ok[0].status == ok[1].status == 200  # only the failed request failed
    assert ok[0].body["outputs"] == ok[1].body["outputs"]


def test_http_inference_on_a_decoupled_model_is_refused(pair: Pair) -> None:
    body = {"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [4]},
                       {"name": "DELAY", "shape": [1], "datatype": "UINT32", "data": [0]},
                       {"name": "WAIT", "shape": [1], "datatype": "UINT32", "data": [0]}]}
    triton, serve = pair.http("POST", "/v2/models/repeat_int32/infer", body)
    assert same_text(serve.error, triton.error), (triton.error, serve.error)
    assert triton.status == serve.status == 501


def test_unary_grpc_inference_on_a_decoupled_model_is_refused(pair: Pair) -> None:
    inputs = []
    for name, datatype, value in [("IN", "INT32", np.int32), ("DELAY", "UINT32", np.uint32),
                                  ("WAIT", "UINT32", np.uint32)]:
        tensor = grpcclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.zeros(1, dtype=value))
        inputs.append(tensor)
    triton, serve = pair.both(lambda url: grpc_call(
        lambda: grpcclient.InferenceServerClient(url).infer("repeat_int32", inputs)), grpc=True)
    assert triton.code == serve.code == "UNIMPLEMENTED"
    assert same_text(serve.message, triton.message), (triton.message, serve.message)


def test_bls_call_to_an_unknown_model_answers_an_error_response(pair: Pair) -> None:
    """pb_utils' exec() does not raise: the response has_error(), and the caller passes it on."""
    body = {"inputs": [{"name": "INPUT0", "shape": [16], "datatype": "INT32", "data": VECTOR},
                       {"name": "INPUT1", "shape": [16], "datatype": "INT32", "data": VECTOR},
                       {"name": "MODEL", "shape": [1], "datatype": "BYTES", "data": ["nope"]}]}
    triton, serve = pair.http("POST", "/v2/models/bls_add/infer", body)
    assert triton.status == serve.status == 500
    # Triton: "Model nope - Error when running inference: ... Model 'nope' is not ready."
    assert triton.error.startswith("BLS call failed: ") and serve.error.startswith("BLS call failed: ")
    assert "'nope'" in triton.error and "'nope'" in serve.error


def test_index_rows_in_mode_none(pair: Pair) -> None:
    triton, serve = pair.http("POST", "/v2/repository/index", {})
    assert triton.status == serve.status == 200
    rows = {row["name"]: row for row in triton.body}
    theirs = {row["name"]: row for row in serve.body}
    assert rows.keys() == theirs.keys()
    for name, row in rows.items():
        if "state" not in row:  # never became a model in Triton (ensemble_unknown_step, ensemble_cycle)
            assert theirs[name]["state"] == "UNAVAILABLE" and theirs[name]["reason"], theirs[name]
            continue
        assert (theirs[name]["version"], theirs[name]["state"]) == (row["version"], row["state"]), name
        if row["state"] == "UNAVAILABLE":
            # Triton: "Internal: RuntimeError: init_fails refuses to initialize\n\nAt:\n ..."
            cause = without_traceback(row["reason"]).removeprefix("Internal: ")
            assert cause in theirs[name]["reason"], (row, theirs[name])
    assert "no_such_model" in theirs["ensemble_unknown_step"]["reason"]
    ready = pair.http("POST", "/v2/repository/index", {"ready": True})
    assert sorted(row["name"] for row in ready[0].body) == sorted(row["name"] for row in ready[1].body)


def test_not_ready_while_a_model_failed(pair: Pair) -> None:
    """Both are live and not ready (strict readiness): Triton says 400, serve 503."""
    live = pair.http("GET", "/v2/health/live")
    assert live[0].status == live[1].status == 200
    ready = pair.http("GET", "/v2/health/ready")
    assert (ready[0].status, ready[1].status) == (400, 503)
