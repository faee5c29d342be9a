"""Fuzzing the request path of ONNX models: tritonclient requests, good and broken, against a real serve.

A request that fits the config is answered exactly as ONNX Runtime answers it directly; any
other gets 400 (or 404 for an unknown model), never a 5xx: wrong names, datatypes, shapes,
shapes that lie about the data, batch sizes out of range, sizes of zero, strings that are not
UTF-8.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as httpclient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from inference_protocol.datatypes import DATATYPES, NUMPY_DTYPES
from serving.backends.onnx import OnnxModel
from serving.backends.onnx_options import session_plan
from serving.config import parse_config
from serving.errors import ConfigError

from ..conftest import RunningServer, write_model
from . import onnx_models

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# model -> (max_batch_size, {input: (datatype, dims)}, the ONNX file)
MODELS: dict[str, tuple[int, dict[str, tuple[str, list[int]]], bytes]] = {
    "classifier": (8, {"INPUT": ("FP32", [4])}, onnx_models.classifier()),
    "simple": (8, {"INPUT0": ("INT32", [16]), "INPUT1": ("INT32", [16])}, onnx_models.add_sub()),
    "strings": (4, {"TEXT": ("BYTES", [1])}, onnx_models.strings_identity()),
    "ragged": (4, {"X": ("FP32", [-1])}, onnx_models.identity(TensorProto.FLOAT, ["batch", "n"])),
    "fixed": (0, {"X": ("FP32", [2, 3])}, onnx_models.fixed()),
}
OUTPUTS = {"classifier": {"PROBS": ("FP32", [3]), "LABEL": ("INT64", [1])},
           "simple": {"OUTPUT0": ("INT32", [16]), "OUTPUT1": ("INT32", [16])},
           "strings": {"SAME": ("BYTES", [1])}, "ragged": {"Y": ("FP32", [-1])},
           "fixed": {"Y": ("FP32", [2, 3]), "SUM": ("FP32", [1])}}
SESSIONS = {name: ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            for name, (_, _, model) in MODELS.items()}


def config(name: str) -> str:
    batch, inputs, _ = MODELS[name]
    def tensors(items: dict[str, tuple[str, list[int]]]) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: TYPE_{"STRING" if d == "BYTES" else d} dims: {dims} }}'
                         for n, (d, dims) in items.items())
    return (f'platform: "onnxruntime_onnx"\nmax_batch_size: {batch}\ninput [ {tensors(inputs)} ]\n'
            f'output [ {tensors(OUTPUTS[name])} ]\n' + ("dynamic_batching { }\n" if batch else ""))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("onnx_fuzz")
    for name, (_, _, model) in MODELS.items():
        write_model(repo, name, config(name), {1: {"model.onnx": model}})
    running = RunningServer(repo)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.url, network_timeout=30) as c:
        yield c


def values(datatype: str, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    if datatype == "BYTES":
        text = st.text(max_size=6).map(str.encode)
        return hnp.arrays(object, shape, elements=text | text | text | st.binary(max_size=8))  # mostly UTF-8
    dtype = np.dtype(np.float32) if datatype == "BF16" else NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        width: Literal[16, 32, 64] = 16 if dtype.itemsize == 2 else 32 if dtype.itemsize == 4 else 64
        return hnp.arrays(dtype, shape, elements=st.floats(-1e3, 1e3, width=width))
    return hnp.arrays(dtype, shape)


def shape_verdict(shape: list[int], batch: int, dims: list[int]) -> bool | None:
    """Whether a shape fits an input of the config; None for a size of zero where any size goes."""
    full = ([-2] if batch else []) + dims  # -2: the batch dimension
    if len(shape) != len(full):
        return False
    verdict: bool | None = True
    for size, want in zip(shape, full, strict=True):
        if (want == -2 and not 1 <= size <= batch) or (want >= 0 and size != want):
            return False
        if want == -1 and size == 0:
            verdict = None
    return verdict


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, list[tuple[str, str, np.ndarray, list[int]]], bool | None]:
    """(model, [(name, datatype, array, declared shape)], whether the request fits the config).

    None: it may go either way (a size of zero in a variable dimension), but an answer must be right.
    """
    model = draw(st.sampled_from([*MODELS, "nope"]))
    batch, inputs, _ = MODELS.get(model, (0, {"X": ("FP32", [1])}, b""))
    fits: bool | None = model in MODELS
    rows = [draw(st.integers(0, batch + 2))] if batch else []
    ragged = draw(st.integers(0, 3))
    sent = []
    for name, (datatype, dims) in inputs.items():
        if draw(st.integers(0, 9)) == 0:
            fits = False
            continue  # a required input left out
        if draw(st.integers(0, 9)) == 0:
            name, fits = name + "_", False
        if draw(st.integers(0, 7)) == 0:
            other = draw(st.sampled_from(DATATYPES))
            fits = fits and other == datatype
            datatype = other
        shape = rows + [ragged if d == -1 else d for d in dims]
        if draw(st.integers(0, 7)) == 0:
            shape = draw(st.lists(st.integers(0, 5), max_size=4))
        array = draw(values(datatype, tuple(shape)))
        if datatype == "BF16":  # tritonclient takes BF16 as ml_dtypes.bfloat16 (a dependency of it)
            array = array.astype(ml_dtypes.bfloat16)
        if datatype == "BYTES" and not all(_utf8(v) for v in array.reshape(-1)):
            fits = False
        declared = shape
        if draw(st.integers(0, 9)) == 0:  # a shape that may lie about the data sent
            declared = draw(st.lists(st.integers(0, 6), max_size=3))
            if math.prod(declared) != array.size:
                fits = False
            else:  # the same elements: it does not lie, it reshapes
                array = array.reshape(declared)
        verdict = shape_verdict(declared, batch, dims)
        fits = False if fits is False or verdict is False else (None if verdict is None or fits is None else True)
        sent.append((name, datatype, array, declared))
    if batch and len({a.shape[0] if a.ndim else -1 for _, _, a, _ in sent}) > 1:
        fits = False  # inputs with different batch sizes
    return model, sent, fits


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def expected(model: str, sent: list[tuple[str, str, np.ndarray, list[int]]]) -> dict[str, np.ndarray]:
    feeds = {name: np.array([v.decode() for v in a.reshape(-1)], dtype=object).reshape(a.shape)
             if datatype == "BYTES" else a for name, datatype, a, _ in sent}
    session = SESSIONS[model]
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(names, feeds), strict=True))
    if model == "fixed":
        results["SUM"] = results["SUM"].reshape(1)
    return results


@FUZZ
@given(requests())
def test_every_request_is_answered_as_onnx_runtime_does_or_refused_as_the_clients_fault(
        client: httpclient.InferenceServerClient,
        request: tuple[str, list[tuple[str, str, np.ndarray, list[int]]], bool | None]) -> None:
    model, sent, fits = request
    inputs = []
    for name, datatype, array, declared in sent:
        inp = httpclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inp.set_shape(declared)  # a lie when the data holds another count of elements
        inputs.append(inp)
    try:
        result: Any = client.infer(model, inputs)
    except InferenceServerException as exc:
        event(f"refused {exc.status()}")
        assert exc.status() in ("400", "404"), exc
        assert fits is not True, exc
        return
    event(f"answered by {model}")
    assert fits is not False, f"accepted what does not fit: {[(n, d, list(a.shape), s) for n, d, a, s in sent]}"
    for name, want in expected(model, sent).items():
        got = result.as_numpy(name)
        if want.dtype == object:
            assert [v.decode() for v in got.reshape(-1)] == list(want.reshape(-1))
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6)


# -- what a repository holds: config parameters and the model file ----------------------------

PARAMETER_KEYS = ["intra_op_thread_count", "inter_op_thread_count", "execution_mode", "enable_mem_arena",
                  "enable_mem_pattern", "cudnn_conv_algo_search", "gpu_mem_limit", "arena_extend_strategy",
                  "do_copy_in_default_stream", "session.intra_op.allow_spinning", "other"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(PARAMETER_KEYS), st.text(max_size=12) | st.integers(-5, 2**65).map(str),
                       max_size=5), st.integers(-3, 3))
def test_any_parameters_give_a_plan_or_a_config_error(parameters: dict[str, str], level: int) -> None:
    config = pb.ModelConfig()
    config.optimization.graph.level = level
    try:
        plan = session_plan(config, parameters)
    except ConfigError as exc:
        assert str(exc).startswith(("parameter ", "gpu_", "cpu_")), exc
        return
    assert 0 <= plan.intra_op_threads <= 1024 and 0 <= plan.inter_op_threads <= 1024


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(MODELS["classifier"][2]) - 1), st.integers(0, 255)), min_size=1,
                max_size=6), st.integers(0, len(MODELS["classifier"][2])))
@example(flips=[(350, 128)], cut=0)  # a tensor name that is no longer UTF-8 (a UnicodeDecodeError once)
def test_a_damaged_model_file_loads_or_is_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                         flips: list[tuple[int, int]], cut: int) -> None:
    model = bytearray(MODELS["classifier"][2])
    for offset, value in flips:
        model[offset] = value
    directory = write_model(tmp_path_factory.mktemp("damaged"), "classifier", config("classifier"),
                            {1: {"model.onnx": bytes(model[:cut] if cut else model)}})
    spec = parse_config((directory / "config.pbtxt").read_text(), directory)
    handler = OnnxModel(name="classifier", version=1, config=spec, path=directory / "1", device=torch.device("cpu"))
    try:
        handler.load()
    except ConfigError as exc:
        assert str(directory) not in str(exc)
        return
    try:
        handler.predict({"INPUT": torch.ones(2, 4)})  # it loaded and matches its config: it runs, or says why
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors (a request would get them as a 500)
        assert type(exc).__module__.startswith("onnxruntime"), exc
