"""ONNX models that cannot serve: each shows in the repository index with its reason, the others serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from ..conftest import RunningServer, Serve, write_model
from . import onnx_models

CLASSIFIER_CONFIG = """
    platform: "onnxruntime_onnx"
    max_batch_size: {batch}
    input [ {{ name: "{input}" data_type: {datatype} dims: {dims} }} ]
    output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ 3 ] }} ]
    """
# model name -> (config fields, the model file's bytes or None for no file, what the index's reason says)
BROKEN: dict[str, tuple[dict[str, str], bytes | None, tuple[str, ...]]] = {
    "wrong_type": ({"datatype": "TYPE_INT32"}, onnx_models.classifier(), ("'INPUT'", "TYPE_INT32", "TYPE_FP32")),
    "wrong_input": ({"input": "PIXELS"}, onnx_models.classifier(), ("'PIXELS'", "no such input", "INPUT")),
    "wrong_output": ({"output": "SCORES"}, onnx_models.classifier(), ("'SCORES'", "no such output", "PROBS")),
    "wrong_rank": ({"dims": "[ 4, 1 ]"}, onnx_models.classifier(), ("'INPUT'", "[-1, 4, 1]", "[-1, 4]")),
    "wrong_size": ({"dims": "[ 5 ]"}, onnx_models.classifier(), ("'INPUT'", "[-1, 5]", "[-1, 4]")),
    "fixed_batch": ({}, onnx_models.classifier(batch=2), ("first dimension is fixed at 2", "max_batch_size 0")),
    "corrupt": ({}, b"\x08\x07garbage, not a protobuf", ("ONNX Runtime cannot load corrupt/1/model.onnx",)),
    # fails in ONNX Runtime's initialisation, which it also logs to stderr itself
    "bad_locale": ({}, onnx_models.upper(locale="xx_NOPE.UTF-8"), ("cannot load bad_locale/1/model.onnx", "locale")),
    "missing": ({}, None, ("missing/1/model.onnx", "is missing")),
}
DEFAULTS = {"batch": "8", "input": "INPUT", "datatype": "TYPE_FP32", "dims": "[ 4 ]", "output": "PROBS"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("onnx_errors")
    write_model(repo, "good", CLASSIFIER_CONFIG.format(**DEFAULTS), {1: {"model.onnx": onnx_models.classifier()}})
    for name, (fields, model, _) in BROKEN.items():
        write_model(repo, name, CLASSIFIER_CONFIG.format(**{**DEFAULTS, **fields}),
                    {1: {} if model is None else {"model.onnx": model}})
    # a model input the config leaves out
    write_model(repo, "undeclared", """
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
        """, {1: {"model.onnx": onnx_models.add_sub()}})
    # torch's options mean nothing around an ONNX Runtime session
    for option in ("torch_compile", "cuda_graphs"):
        value = "default" if option == "torch_compile" else "true"
        write_model(repo, f"with_{option}", CLASSIFIER_CONFIG.format(**DEFAULTS)
                    + f'parameters {{ key: "{option}" value {{ string_value: "{value}" }} }}',
                    {1: {"model.onnx": onnx_models.classifier()}})
    return repo


@pytest.mark.parametrize("option", ["torch_compile", "cuda_graphs"])
def test_torch_execution_options_are_refused_for_onnx_models(server: RunningServer, option: str) -> None:
    row = index(server)[f"with_{option}"]
    assert row["state"] == "UNAVAILABLE" and "ONNX Runtime optimises and captures graphs itself" in row["reason"], row


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    running = RunningServer(repo)
    yield running
    running.stop()


def index(server: RunningServer) -> dict[str, dict]:
    with httpclient.InferenceServerClient(server.url) as client:
        return {row["name"]: row for row in client.get_model_repository_index()}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_model_that_does_not_match_its_config_shows_why(server: RunningServer, repo: Path, name: str) -> None:
    row = index(server)[name]
    assert row["state"] == "UNAVAILABLE"
    for part in BROKEN[name][2]:
        assert part in row["reason"], row
    assert str(repo) not in row["reason"]  # no host paths in answers
    with httpclient.InferenceServerClient(server.url) as client:
        assert not client.is_model_ready(name)


def test_a_model_input_the_config_leaves_out(server: RunningServer) -> None:
    reason = index(server)["undeclared"]["reason"]
    assert "['INPUT1']" in reason and "does not declare" in reason


def test_the_other_models_serve_meanwhile(server: RunningServer) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}") as client:
        inp = grpcclient.InferInput("INPUT", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        probs = client.infer("good", [inp]).as_numpy("PROBS")
        np.testing.assert_allclose(probs.sum(axis=1), [1.0, 1.0], rtol=1e-5)
        with pytest.raises(InferenceServerException, match="wrong_type") as caught:
            client.infer("wrong_type", [inp])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"


def test_a_load_with_a_fixed_config_brings_the_model_up(tmp_path: Path) -> None:
    """The load API with a config override that corrects the datatype: Triton's way of repairing a config."""
    write_model(tmp_path, "repaired", CLASSIFIER_CONFIG.format(**{**DEFAULTS, "datatype": "TYPE_INT32"}),
                {1: {"model.onnx": onnx_models.classifier()}})
    running = RunningServer(tmp_path, model_control_mode="explicit", load_model=())
    try:
        with httpclient.InferenceServerClient(running.url) as client:
            with pytest.raises(InferenceServerException, match="TYPE_FP32"):
                client.load_model("repaired")
            fixed = CLASSIFIER_CONFIG.format(**DEFAULTS)
            config = json_format.MessageToDict(text_format.Parse(fixed, pb.ModelConfig()),
                                               preserving_proto_field_name=True)
            client.load_model("repaired", config=json.dumps(config))
            assert client.is_model_ready("repaired")
    finally:
        running.stop()


def test_onnx_runtime_writes_nothing_outside_the_json_log(repo: Path) -> None:
    """serve's stderr stays one JSON object a line with broken ONNX models (ONNX Runtime logs to stderr itself)."""
    serve = Serve(repo)  # parses every line as JSON
    try:
        with httpclient.InferenceServerClient(serve.http.removeprefix("http://")) as client:
            assert client.is_model_ready("good")
    finally:
        serve.process.terminate()
        assert serve.finish() == 0
    failed = [line for line in serve.lines if "cannot load bad_locale/1/model.onnx" in line["message"]]
    assert failed, [line["message"] for line in serve.lines]
