"""Fuzz: what pb_utils models see of a request, and what the adapter does with whatever they answer.

Every request input a model receives must be the very values the request carried (dtype,
shape, bytes), with its id and parameters; and whatever a model puts in its responses
(wrong dtypes, undeclared names, non-responses, raised errors) becomes a per-request
error, never an exception out of the adapter.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serving.backends.python import python_handler
from serving.backends.python.adapter import TritonPythonHandler
from serving.config import parse_config
from serving.errors import ServingError
from serving.model import forget_handler_module
from serving.requests import RESERVED_PARAMETERS
from serving.types import Work
from tests.conftest import RunningServer, write_model

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SERVED = settings(max_examples=20, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}
CONFIG = "backend: \"python\"\nmax_batch_size: 0\n" + "".join(
    f'input {{ name: "IN_{t}" data_type: TYPE_{"STRING" if t == "BYTES" else t} dims: [ -1 ] optional: true }}\n'
    f'output {{ name: "OUT_{t}" data_type: TYPE_{"STRING" if t == "BYTES" else t} dims: [ -1 ] }}\n'
    for t in TYPES)
ECHO = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seen = []
        policy = json.loads(args["model_config"]).get("model_transaction_policy", {})
        self.decoupled = policy.get("decoupled", False)

    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            self.seen.append((inputs, request.request_id(), json.loads(request.parameters()),
                              request.requested_output_names()))
            mode = json.loads(request.parameters()).get("mode", "echo")
            outputs = [pb_utils.Tensor("OUT_" + name[3:], array) for name, array in inputs.items()]
            if mode == "wrong_dtype":
                outputs = [pb_utils.Tensor("OUT_INT32", np.zeros(2, np.float64))]
            elif mode == "undeclared":
                outputs = [pb_utils.Tensor("NOPE", np.zeros(2, np.int32))]
            elif mode == "raise":
                raise ValueError("asked to raise")
            elif mode == "not_a_response":
                responses.append("not a response")
                continue
            elif mode == "unanswered":
                responses.append(None)
                continue
            elif mode == "sender" and not self.decoupled:  # one response through the sender, None in its place
                request.get_response_sender().send(pb_utils.InferenceResponse(outputs),
                                                   flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                responses.append(None)
                continue
            response = pb_utils.InferenceResponse(outputs)
            if self.decoupled:
                request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                responses.append(response)
        return None if self.decoupled else responses
'''


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonPythonHandler]:
    model_dir = write_model(tmp_path_factory.mktemp("repo"), "echo", CONFIG, {1: {"model.py": ECHO}})
    spec = parse_config(CONFIG, model_dir)
    cls = python_handler(model_dir / "1" / "model.py", "echo", 1, "echo/1/model.py")
    instance = cls(name="echo", version=1, config=spec, path=model_dir / "1", device=torch.device("cpu"))
    instance.load()
    assert isinstance(instance, TritonPythonHandler)
    yield instance
    instance.unload()
    forget_handler_module("echo", 1)


def arrays(datatype: str, max_dims: int = 3) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=0, max_side=4)
    if datatype == "BYTES":
        return shapes.flatmap(_bytes_array)
    return hnp.arrays(TYPES[datatype], shapes)


def _bytes_array(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    def build(items: list[bytes]) -> np.ndarray:
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    size = int(np.prod(shape))
    return st.lists(st.binary(max_size=12), min_size=size, max_size=size).map(build)


requests_ = st.dictionaries(st.sampled_from(sorted(TYPES)), st.none(), min_size=1).flatmap(
    lambda chosen: st.fixed_dictionaries({f"IN_{t}": arrays(t) for t in chosen}))
# the parameters a client may set for the model: not the protocol's own (which the model does not see)
parameters_ = st.dictionaries(st.text(min_size=1, max_size=8).filter(
    lambda k: k != "mode" and k not in RESERVED_PARAMETERS and not k.startswith("triton_")),
                              st.one_of(st.text(max_size=8), st.integers(-2**40, 2**40), st.booleans()), max_size=4)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and (
        a.tolist() == b.tolist() if a.dtype == object else np.array_equal(a, b, equal_nan=True))


@FUZZ
@given(st.lists(st.tuples(requests_, st.one_of(st.none(), st.text(max_size=16)), parameters_), min_size=1,
                max_size=4))
def test_the_model_sees_each_request_as_it_came_and_answers_it(
        handler: TritonPythonHandler, batch: list[tuple[dict[str, np.ndarray], str | None, dict[str, Any]]]) -> None:
    handler.model.seen.clear()
    payloads = [_Payload(inputs, frozenset("OUT_" + n[3:] for n in inputs), request_id, parameters)
                for inputs, request_id, parameters in batch]
    results = handler.execute_requests(payloads)
    assert len(results) == len(batch)
    for (inputs, request_id, parameters), seen, result in zip(batch, handler.model.seen, results, strict=True):
        seen_inputs, seen_id, seen_parameters, seen_outputs = seen
        assert seen_inputs.keys() == inputs.keys()
        assert all(_same(seen_inputs[name], array) for name, array in inputs.items())
        assert seen_id == (request_id or "")
        assert seen_parameters == parameters
        assert seen_outputs == [f"OUT_{t}" for t in TYPES if f"IN_{t}" in inputs]  # in the config's order
        assert isinstance(result, dict) and set(result) == {"OUT_" + n[3:] for n in inputs}
        assert all(_same(result["OUT_" + name[3:]], array) for name, array in inputs.items())


@FUZZ
@given(st.lists(st.sampled_from(["echo", "sender", "wrong_dtype", "undeclared", "raise", "not_a_response",
                                 "unanswered"]), min_size=1, max_size=5), st.data())
def test_whatever_the_model_answers_is_one_result_per_request(handler: TritonPythonHandler, modes: list[str],
                                                              data: st.DataObject) -> None:
    payloads = [_Payload(data.draw(requests_), frozenset(), None, {"mode": mode}) for mode in modes]
    results = handler.execute_requests(payloads)
    assert len(results) == len(modes)
    if "raise" in modes:  # execute raised: every request of the batch fails with its message
        assert all(isinstance(r, ServingError) and "ValueError: asked to raise" in str(r) for r in results)
        return
    for mode, result in zip(modes, results, strict=True):
        assert isinstance(result, dict) if mode in ("echo", "sender") else isinstance(result, ServingError)


class _Payload:
    """A request as the batcher hands it over (`serving.types.Work` with the transport's id and parameters)."""

    def __init__(self, inputs: dict[str, np.ndarray], outputs: frozenset[str] | None, request_id: str | None,
                 parameters: dict[str, Any]) -> None:
        self.inputs, self.outputs, self.id, self.parameters = inputs, outputs, request_id, parameters


def test_the_protocols_own_parameters_are_not_the_models(handler: TritonPythonHandler) -> None:
    handler.model.seen.clear()
    given = {"binary_data_output": True, "timeout": 5, "triton_enable_empty_final_response": True, "mine": "x"}
    handler.execute_requests([_Payload({"IN_INT32": np.arange(2, dtype=np.int32)}, frozenset({"OUT_INT32"}),
                                       "r", given)])
    assert handler.model.seen[0][2] == {"mine": "x"}


def test_a_plain_work_payload_has_an_empty_id_and_no_parameters(handler: TritonPythonHandler) -> None:
    handler.model.seen.clear()
    (result,) = handler.execute_requests([Work({"IN_INT32": np.arange(3, dtype=np.int32)}, frozenset({"OUT_INT32"}))])
    assert handler.model.seen[0][1:3] == ("", {})
    assert isinstance(result, dict) and result["OUT_INT32"].tolist() == [0, 1, 2]
    # a request for every output, answered with one of them: the missing ones are named
    (missing,) = handler.execute_requests([Work({"IN_INT32": np.arange(3, dtype=np.int32)}, None)])
    assert isinstance(missing, ServingError) and "gave no output 'OUT_BOOL'" in str(missing)


# -- through a real server: a decoupled echo over the gRPC stream ------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("served")
    write_model(repository, "echo_stream", CONFIG + "model_transaction_policy { decoupled: true }\n",
                {1: {"model.py": ECHO}})
    running = RunningServer(repository)
    yield running
    running.stop()


@SERVED
@given(st.dictionaries(st.sampled_from(["INT32", "FP32", "BYTES", "UINT8"]), st.none(), min_size=1).flatmap(
    lambda chosen: st.fixed_dictionaries({f"IN_{t}": arrays(t, 1).filter(lambda a: a.size > 0) for t in chosen})),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12))
def test_streamed_echo_returns_the_inputs(served: RunningServer, inputs: dict[str, np.ndarray],
                                          request_id: str) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served.server.grpc_port}")
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        tensors = []
        for name, array in inputs.items():
            datatype = name[3:]
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        client.async_stream_infer("echo_stream", tensors, request_id=request_id,
                                  parameters={"tag": json.dumps(sorted(inputs))})
        result, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
        client.close()
    assert error is None, error.message()
    assert result.get_response().id == request_id
    for name, array in inputs.items():
        echoed = result.as_numpy("OUT_" + name[3:])
        assert echoed.shape == array.shape
        assert echoed.tolist() == array.tolist() if array.dtype == object else np.array_equal(echoed, array,
                                                                                             equal_nan=True)
