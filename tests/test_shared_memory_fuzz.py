"""Fuzzing system shared memory: names, keys, offsets and sizes from a client are claims.

Whatever is registered lies inside the shared-memory directory and inside its object;
a read returns exactly the bytes of its span; a write changes nothing outside its span;
anything else is a client error (4xx), never a crash, a 500 or a leaked descriptor.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from inference_protocol.binary import binary_data
from inference_protocol.datatypes import NUMPY_DTYPES
from inference_protocol.errors import InvalidInput
from inference_protocol.shm import PARAMETERS, SharedInput, SharedMemoryRef, shared_memory_ref
from inference_protocol.tensors import InferRequest, RequestedOutput, Tensor
from serving.errors import ServingError
from serving.shm import SharedMemory

from .conftest import RunningServer
from .shm_regions import TRITON

OBJECT = bytes(range(80))  # the object: region "r" is its bytes 8..72
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WIRE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

sizes = st.one_of(st.integers(-3, 100), st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64]), st.booleans(),
                  st.floats(allow_nan=True), st.none(), st.text(max_size=3))
keys = st.one_of(st.sampled_from(["/obj", "obj", "//obj", "/link", "/fifo", "/dir", "/missing", "/", "", ".", "..",
                                  "/../outside/secret", "../outside/secret", "/obj/..", "/./obj", "/obj\0x"]),
                 st.text(alphabet="./\\\0ob\n", max_size=12), st.text(max_size=300),
                 st.text(st.characters(categories=["Cs", "Cc", "Zl"]), max_size=4).map(lambda s: "/" + s))
names = st.one_of(st.text(max_size=300), st.sampled_from(["r", "in", "input_data"]), st.integers(), st.none())


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as base:
        shm_dir = Path(base) / "shm"
        shm_dir.mkdir()
        (Path(base) / "outside").mkdir()
        (Path(base) / "outside" / "secret").write_bytes(b"s" * 4096)
        (shm_dir / "obj").write_bytes(OBJECT)
        (shm_dir / "link").symlink_to(Path(base) / "outside" / "secret")
        os.mkfifo(shm_dir / "fifo")
        (shm_dir / "dir").mkdir()
        yield shm_dir


@FUZZ
@given(name=names, key=keys, offset=sizes, byte_size=sizes)
def test_registration_stays_inside_the_directory_and_the_object(root: Path, name: Any, key: Any, offset: Any,
                                                                byte_size: Any) -> None:
    memory = SharedMemory(allowed=True, root=root)
    before = descriptors()
    try:
        memory.register(name, key, offset, byte_size)
    except ServingError:
        assert memory.status() == []
    else:
        [status] = memory.status()
        assert key.lstrip("/") == "obj" and key.count("/") <= 1  # the one regular object, by a plain name
        assert type(offset) is int and type(byte_size) is int and offset >= 0 and offset + byte_size <= len(OBJECT)
        assert status == {"name": name, "key": key, "offset": offset, "byte_size": byte_size}
    memory.unregister()
    assert descriptors() == before


datatypes = st.sampled_from(sorted(NUMPY_DTYPES))
shapes = st.lists(st.integers(0, 70), max_size=3).map(tuple)


@pytest.fixture
def region(root: Path) -> Iterator[SharedMemory]:
    (root / "obj").write_bytes(OBJECT)
    memory = SharedMemory(allowed=True, root=root, max_input_bytes=48)
    memory.register("r", "/obj", 8, 64)
    yield memory
    memory.close()


@FUZZ
@given(datatype=datatypes, shape=shapes, byte_size=st.integers(0, 200), offset=st.integers(0, 200),
       name=st.sampled_from(["r", "ghost"]))
def test_a_read_returns_exactly_its_span(region: SharedMemory, datatype: str, shape: tuple[int, ...], byte_size: int,
                                         offset: int, name: str) -> None:
    where = SharedMemoryRef(name, byte_size, offset)
    request = InferRequest(inputs={}, shared_inputs={"X": SharedInput("X", datatype, shape, where)})
    try:
        region.read_inputs(request, "m")
    except ServingError as exc:
        assert exc.http_status in (400, 404)
        return
    assert name == "r" and offset + byte_size <= 64 and byte_size <= 48
    tensor = request.inputs["X"]
    assert tensor.shape == shape
    span = OBJECT[8 + offset:8 + offset + byte_size]
    assert bytes(binary_data(tensor)) == span


@FUZZ
@given(datatype=datatypes.filter(lambda d: d != "BYTES"), count=st.integers(0, 40), byte_size=st.integers(0, 200),
       offset=st.integers(0, 200))
def test_a_write_changes_nothing_outside_its_span(region: SharedMemory, root: Path, datatype: str, count: int,
                                                  byte_size: int, offset: int) -> None:
    array = np.frombuffer(b"\x5a" * (count * NUMPY_DTYPES[datatype].itemsize), dtype=NUMPY_DTYPES[datatype])
    tensor = Tensor("Y", datatype, array)
    (root / "obj").write_bytes(OBJECT)  # the same object (truncated and rewritten), fresh for each example
    try:
        held = region.hold_outputs([RequestedOutput("Y", None, SharedMemoryRef("r", byte_size, offset))])
        try:
            held.write([tensor])
        finally:
            held.release()
    except ServingError as exc:
        assert exc.http_status == 400
        assert (root / "obj").read_bytes() == OBJECT
        return
    written = (root / "obj").read_bytes()
    start, length = 8 + offset, array.nbytes
    assert offset + byte_size <= 64 and length <= byte_size
    assert written[:start] == OBJECT[:start] and written[start + length:] == OBJECT[start + length:]
    assert written[start:start + length] == array.tobytes()
    assert len(written) == len(OBJECT)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=6)


@FUZZ
@given(parameters=st.dictionaries(st.sampled_from([*PARAMETERS, "binary_data_size", "other"]), json_values))
def test_the_parameters_make_a_ref_or_a_client_error(parameters: dict[str, Any]) -> None:
    try:
        where = shared_memory_ref("T", parameters)
    except InvalidInput:
        assert any(key in parameters for key in PARAMETERS)
        return
    if where is None:
        assert not any(key in parameters for key in PARAMETERS)
    else:
        assert type(where.region) is str and where.region == parameters["shared_memory_region"]
        assert type(where.byte_size) is int and where.byte_size >= 0 and type(where.offset) is int


# -- over the wire -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(TRITON, allow_client_shm=True, model_control_mode="explicit", load_model=("simple",))
    yield running
    running.stop()


def post(server: RunningServer, path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{server.url}{path}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def registered(server: RunningServer) -> Iterator[str]:
    key = f"/shadowserve_fuzz_{os.getpid()}"
    path = Path("/dev/shm") / key[1:]
    path.write_bytes(np.arange(32, dtype=np.int32).tobytes())
    assert post(server, "/v2/systemsharedmemory/region/r/register", {"key": key, "offset": 0, "byte_size": 128})[0] \
        == 200
    yield key
    post(server, "/v2/systemsharedmemory/unregister", {})
    path.unlink()


def entry(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "datatype": "INT32", "shape": [1, 16], "parameters": params}


@WIRE
@given(params=st.dictionaries(st.sampled_from([*PARAMETERS, "binary_data_size"]),
                              st.one_of(st.sampled_from(["r", "ghost"]), st.integers(-2, 200), json_values)),
       out=st.dictionaries(st.sampled_from(PARAMETERS), st.one_of(st.sampled_from(["r"]), st.integers(-2, 200))))
def test_http_infer_with_fuzzed_regions(server: RunningServer, registered: str, params: dict[str, Any],
                                        out: dict[str, Any]) -> None:
    body = {"inputs": [entry("INPUT0", params), {**entry("INPUT1", {}), "data": list(range(16))}],
            "outputs": [{"name": "OUTPUT0", "parameters": out}]}
    status, answer = post(server, "/v2/models/simple/infer", body)
    assert status in (200, 400, 404), answer
    if status != 200:
        assert isinstance(answer["error"], str) and "internal" not in answer["error"]


@WIRE
@given(key=keys, offset=sizes, byte_size=sizes, name=st.text(alphabet="abc_-.", min_size=1, max_size=20))
def test_http_register_with_fuzzed_fields(server: RunningServer, registered: str, key: Any, offset: Any,
                                          byte_size: Any, name: str) -> None:
    if name == "r":
        return
    status, answer = post(server, f"/v2/systemsharedmemory/region/{name}/register",
                          {"key": key, "offset": offset, "byte_size": byte_size})
    assert status in (200, 400, 404), answer
    post(server, f"/v2/systemsharedmemory/region/{name}/unregister", {})


@WIRE
@given(kind=st.sampled_from(["int64_param", "string_param", "bool_param", "double_param", "uint64_param"]),
       key=st.sampled_from(PARAMETERS), value=st.integers(-2**63, 2**63 - 1),
       region=st.sampled_from(["r", "ghost", ""]))
def test_grpc_infer_with_fuzzed_parameter_types(server: RunningServer, registered: str, kind: str, key: str,
                                                value: int, region: str) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.server.grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="simple")
    tensor = request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = 64
    parameter = tensor.parameters[key]
    setattr(parameter, kind, {"string_param": str(value), "bool_param": bool(value % 2), "double_param": float(value),
                              "uint64_param": abs(value)}.get(kind, value))
    request.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(np.ones(16, np.int32).tobytes())
    try:
        stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.details()
    finally:
        channel.close()


# -- registering, using and unregistering in any order --------------------------------------

class Lifecycle(RuleBasedStateMachine):
    """Regions registered, held by running requests, written, released and unregistered in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp())
        (self.root / "obj").write_bytes(OBJECT)
        self.memory = SharedMemory(allowed=True, root=self.root, max_regions=3)
        self.descriptors = descriptors()
        self.registered: dict[str, int] = {}  # name -> byte size
        self.held: list[tuple[str, Any]] = []  # (region, the OutputRegions of a "running request")

    @rule(name=st.sampled_from(["a", "b", "c", "d"]), size=st.integers(0, 90))
    def register(self, name: str, size: int) -> None:
        try:
            self.memory.register(name, "/obj", 0, size)
        except ServingError:
            assert name in self.registered or len(self.registered) == 3 or size > len(OBJECT)
        else:
            assert name not in self.registered and size <= len(OBJECT)
            self.registered[name] = size

    @rule(name=st.sampled_from(["a", "b", "c", "d", ""]))
    def unregister(self, name: str) -> None:
        busy = {region for region, _held in self.held}
        wanted = [name] if name else list(self.registered)
        try:
            self.memory.unregister(name or None)
        except ServingError as exc:
            assert busy & set(wanted), exc
        for each in wanted:
            if each not in busy:
                self.registered.pop(each, None)

    @rule(name=st.sampled_from(["a", "b", "c", "d"]), size=st.integers(0, 90))
    def start_request(self, name: str, size: int) -> None:
        try:
            held = self.memory.hold_outputs([RequestedOutput("Y", None, SharedMemoryRef(name, size))])
        except ServingError:
            assert name not in self.registered or size > self.registered[name]
        else:
            assert size <= self.registered[name]
            self.held.append((name, held))

    @precondition(lambda self: bool(self.held))
    @rule(index=st.integers(0, 10), count=st.integers(0, 30))
    def finish_request(self, index: int, count: int) -> None:
        _name, held = self.held.pop(index % len(self.held))
        try:
            held.write([Tensor("Y", "UINT8", np.full(count, 7, np.uint8))])
        except ServingError:
            pass  # a region too small for the result
        finally:
            held.release()
        assert (self.root / "obj").stat().st_size == len(OBJECT)

    @invariant()
    def status_is_what_was_registered(self) -> None:
        assert {s["name"]: s["byte_size"] for s in self.memory.status()} == self.registered

    def teardown(self) -> None:
        for _name, held in self.held:
            held.release()
        self.memory.unregister()
        assert descriptors() == self.descriptors  # every region's descriptor closed
        shutil.rmtree(self.root)


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
