"""System shared memory regions (serving.shm): registration, reads and writes, every claim checked.

The objects are plain files of a temporary directory standing in for /dev/shm (the same
file descriptor calls work on both); tests/test_shared_memory_server.py drives the real
/dev/shm through tritonclient.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inference_protocol.binary import serialize_bytes
from inference_protocol.shm import SharedInput, SharedMemoryRef
from inference_protocol.tensors import InferRequest, RequestedOutput, Tensor
from serving.errors import InvalidInput, NotFound, ServingError, Unsupported
from serving.shm import AlreadyExists, SharedMemory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "shm").mkdir()
    return tmp_path / "shm"


@pytest.fixture
def shm(root: Path) -> Iterator[SharedMemory]:
    memory = SharedMemory(allowed=True, root=root, max_input_bytes=1 << 20, max_regions=4)
    yield memory
    memory.close()


def make_object(root: Path, key: str, data: bytes) -> Path:
    path = root / key.lstrip("/")
    path.write_bytes(data)
    return path


def shared_input(name: str, datatype: str, shape: tuple[int, ...], region: str, size: int,
                 offset: int = 0) -> InferRequest:
    return InferRequest(inputs={}, shared_inputs={name: SharedInput(name, datatype, shape,
                                                                    SharedMemoryRef(region, size, offset))})


def test_register_status_and_unregister(shm: SharedMemory, root: Path) -> None:
    make_object(root, "/objects", bytes(256))
    shm.register("output_data", "/objects", 128, 128)
    shm.register("input_data", "objects", 0, 128)  # a key without its slash opens the same object (as Triton)
    assert shm.status() == [{"name": "input_data", "key": "objects", "offset": 0, "byte_size": 128},
                            {"name": "output_data", "key": "/objects", "offset": 128, "byte_size": 128}]
    assert shm.status("output_data") == [{"name": "output_data", "key": "/objects", "offset": 128, "byte_size": 128}]
    with pytest.raises(NotFound, match=r"^Unable to find system shared memory region: 'ghost'"):
        shm.status("ghost")
    shm.unregister("ghost")  # nothing to do, as Triton
    shm.unregister("input_data")
    assert [s["name"] for s in shm.status()] == ["output_data"]
    shm.unregister()
    assert shm.status() == []


def test_a_name_registers_once(shm: SharedMemory, root: Path) -> None:
    make_object(root, "o", bytes(8))
    shm.register("r", "/o", 0, 8)
    with pytest.raises(AlreadyExists, match=r"^shared memory region 'r' already in manager") as error:
        shm.register("r", "/o", 0, 4)
    assert (error.value.http_status, error.value.grpc_code) == (400, "ALREADY_EXISTS")


def test_off_unless_allowed(root: Path) -> None:
    make_object(root, "o", bytes(8))
    memory = SharedMemory(allowed=False, root=root)
    with pytest.raises(Unsupported, match="--allow-client-shm true"):
        memory.register("r", "/o", 0, 8)
    with pytest.raises(Unsupported, match="--allow-client-shm true"):
        memory.read_inputs(shared_input("X", "INT32", (2,), "r", 8), "m")
    assert memory.status() == []
    memory.unregister()  # clearing none is no error


@pytest.mark.parametrize("key", ["../outside/secret", "/../outside/secret", "a/b", "/", "", ".", "..", "//secret",
                                 "/x\0y", "/a\x01", "/\ud800", "/" + "k" * 256])
def test_keys_are_plain_names(shm: SharedMemory, root: Path, key: str) -> None:
    (root.parent / "outside").mkdir()
    make_object(root.parent / "outside", "secret", bytes(64))
    with pytest.raises(InvalidInput, match=r"^Unable to open shared memory region: '.*': it "):
        shm.register("r", key, 0, 8)
    assert shm.status() == []


def test_links_fifos_and_directories_are_refused_without_blocking(shm: SharedMemory, root: Path) -> None:
    secret = root.parent / "secret"
    secret.write_bytes(bytes(64))
    (root / "link").symlink_to(secret)
    os.mkfifo(root / "fifo")
    (root / "dir").mkdir()
    for key in ("/link", "/fifo", "/dir"):
        with pytest.raises(InvalidInput, match=f"^Unable to open shared memory region: '{key}'"):
            shm.register("r", key, 0, 8)
    with pytest.raises(InvalidInput, match="no such object; create it"):
        shm.register("r", "/missing", 0, 8)
    assert shm.status() == []


@pytest.mark.parametrize("offset, size", [(0, 65), (64, 1), (65, 0), (2**62, 2**62)])
def test_a_region_lies_within_its_object(shm: SharedMemory, root: Path, offset: int, size: int) -> None:
    make_object(root, "o", bytes(64))
    with pytest.raises(InvalidInput, match=r"^failed to register shared memory region 'r': invalid args: offset "
                                           r".* of the object '/o'"):
        shm.register("r", "/o", offset, size)


@pytest.mark.parametrize("name, key, offset, size, says", [
    ("", "/o", 0, 8, "'region name' is necessary"),
    ("r", None, 0, 8, "has no 'key' field"),
    ("r", "/o", 0, None, "has no 'byte_size' field"),
    ("r", "/o", -1, 8, "'offset' of shared memory region 'r' must be a non-negative integer"),
    ("r", "/o", 0, True, "'byte_size' of shared memory region 'r' must be a non-negative integer"),
    ("r", "/o", 0.5, 8, "'offset' of shared memory region 'r' must be a non-negative integer"),
    ("r", "/o", 0, 2**63, "'byte_size' of shared memory region 'r' must be a non-negative integer"),
    ("r\n", "/o", 0, 8, "is not valid: use up to 256 printable characters"),
    ("n" * 257, "/o", 0, 8, "is not valid"),
])
def test_register_checks_every_field(shm: SharedMemory, root: Path, name: object, key: object, offset: object,
                                     size: object, says: str) -> None:
    make_object(root, "o", bytes(8))
    with pytest.raises(InvalidInput, match=says):
        shm.register(name, key, offset, size)


def test_regions_are_bounded_in_number(shm: SharedMemory, root: Path) -> None:
    make_object(root, "o", bytes(8))
    for index in range(4):
        shm.register(f"r{index}", "/o", 0, 8)
    with pytest.raises(InvalidInput, match="4 shared memory regions are registered, the most"):
        shm.register("r4", "/o", 0, 8)


def test_inputs_are_read_at_their_offsets(shm: SharedMemory, root: Path) -> None:
    numbers = np.arange(16, dtype=np.int32)
    words = np.array([b"a", b"", b"xyz"], dtype=object)
    make_object(root, "in", bytes(8) + numbers.tobytes() + serialize_bytes(words))
    shm.register("in", "/in", 8, 64 + len(serialize_bytes(words)))
    request = shared_input("N", "INT32", (1, 16), "in", 64)
    request.shared_inputs.update(shared_input("W", "BYTES", (3,), "in", len(serialize_bytes(words)), 64).shared_inputs)
    shm.read_inputs(request, "m")
    assert request.shared_inputs == {}
    assert request.inputs["N"].array.tolist() == [numbers.tolist()]
    assert request.inputs["W"].array.tolist() == [b"a", b"", b"xyz"]
    (root / "in").write_bytes(bytes(100))  # the values were copied: the model never sees them change
    assert request.inputs["N"].array.tolist() == [numbers.tolist()]


@pytest.mark.parametrize("datatype, shape, size, offset, error, says", [
    ("INT32", (1, 16), 32, 0, InvalidInput, r"^input byte size mismatch for input 'X' for model 'm'. Expected 64, "
                                            "got 32"),
    ("INT32", (1, 16), 64, 8, InvalidInput, r"^Invalid offset \+ byte size for shared memory region: 'r'"),
    ("INT32", (1, 16), 64, 100, InvalidInput, "^Invalid offset for shared memory region: 'r'"),
    ("BYTES", (4,), 16, 0, InvalidInput, "binary BYTES data ends|claims"),
    ("INT32", (2**31, 2), 8, 0, InvalidInput, "declares more than"),
])
def test_input_claims_are_checked_before_reading(shm: SharedMemory, root: Path, datatype: str, shape: tuple[int, ...],
                                                 size: int, offset: int, error: type[ServingError], says: str) -> None:
    make_object(root, "o", b"\xff" * 64)
    shm.register("r", "/o", 0, 64)
    with pytest.raises(error, match=says):
        shm.read_inputs(shared_input("X", datatype, shape, "r", size, offset), "m")


def test_an_unknown_region_is_not_found(shm: SharedMemory) -> None:
    with pytest.raises(NotFound, match=r"^Unable to find shared memory region: 'ghost'"):
        shm.read_inputs(shared_input("X", "INT32", (1,), "ghost", 4), "m")


def test_inputs_from_regions_are_bounded_together(shm: SharedMemory, root: Path) -> None:
    make_object(root, "o", bytes(1 << 20))
    shm.register("r", "/o", 0, 1 << 20)
    request = shared_input("A", "UINT8", (2**19,), "r", 2**19)
    request.shared_inputs.update(shared_input("B", "UINT8", (2**20,), "r", 2**20).shared_inputs)
    with pytest.raises(InvalidInput, match="take 1572864 bytes, more than the limit of 1048576"):
        shm.read_inputs(request, "m")


def test_an_object_that_shrinks_after_registering_is_an_error_not_a_crash(shm: SharedMemory, root: Path) -> None:
    path = make_object(root, "o", bytes(64))
    shm.register("r", "/o", 0, 64)
    os.truncate(path, 16)
    with pytest.raises(InvalidInput, match="shrank to 16 bytes after it was registered"):
        shm.read_inputs(shared_input("X", "INT32", (16,), "r", 64), "m")
    regions = shm.hold_outputs([RequestedOutput("Y", None, SharedMemoryRef("r", 64))])
    with pytest.raises(InvalidInput, match="shrank to 16 bytes"):
        regions.write([Tensor("Y", "INT32", np.zeros(16, np.int32))])
    assert path.stat().st_size == 16  # not grown back by the write
    regions.release()


def test_an_unlinked_object_stays_readable_while_registered(shm: SharedMemory, root: Path) -> None:
    path = make_object(root, "o", np.arange(4, dtype=np.int32).tobytes())
    shm.register("r", "/o", 0, 16)
    path.unlink()
    request = shared_input("X", "INT32", (4,), "r", 16)
    shm.read_inputs(request, "m")
    assert request.inputs["X"].array.tolist() == [0, 1, 2, 3]


def test_outputs_are_written_in_the_binary_layout(shm: SharedMemory, root: Path) -> None:
    path = make_object(root, "out", bytes(96))
    shm.register("out", "/out", 16, 80)
    regions = shm.hold_outputs([RequestedOutput("N", None, SharedMemoryRef("out", 64)),
                                RequestedOutput("W", None, SharedMemoryRef("out", 16, 64)),
                                RequestedOutput("plain", None)])
    written = regions.write([Tensor("N", "INT32", np.arange(16, dtype=np.int32)),
                             Tensor("W", "BYTES", np.array([b"ab", b"c"], dtype=object)),
                             Tensor("plain", "INT32", np.zeros(1, np.int32))])
    regions.release()
    assert written == {"N", "W"}
    data = path.read_bytes()
    assert data[:16] == bytes(16)
    assert np.frombuffer(data[16:80], np.int32).tolist() == list(range(16))
    assert data[80:] == serialize_bytes(np.array([b"ab", b"c"], dtype=object)) + bytes(5)


def test_an_output_region_too_small_for_the_result(shm: SharedMemory, root: Path) -> None:
    make_object(root, "out", bytes(64))
    shm.register("out", "/out", 0, 64)
    regions = shm.hold_outputs([RequestedOutput("N", None, SharedMemoryRef("out", 16))])
    with pytest.raises(InvalidInput, match=r"^shared memory size specified with the request for output 'N' "
                                           r"\(16 bytes\) should be at least 64 bytes to hold the results"):
        regions.write([Tensor("N", "INT32", np.arange(16, dtype=np.int32))])
    regions.release()


def test_a_region_in_use_is_not_unregistered(shm: SharedMemory, root: Path) -> None:
    make_object(root, "o", bytes(64))
    shm.register("busy", "/o", 0, 64)
    shm.register("idle", "/o", 0, 64)
    regions = shm.hold_outputs([RequestedOutput("N", None, SharedMemoryRef("busy", 64))])
    with pytest.raises(InvalidInput, match=r"^Cannot unregister shared memory region 'busy', it is currently in use"):
        shm.unregister("busy")
    with pytest.raises(InvalidInput, match=r"^Failed to unregister the following system shared memory regions: busy"):
        shm.unregister()
    assert [s["name"] for s in shm.status()] == ["busy"]  # the idle one went
    regions.write([Tensor("N", "INT32", np.arange(16, dtype=np.int32))])
    regions.release()
    shm.unregister("busy")
    assert shm.status() == []


def test_an_output_region_is_checked_before_compute(shm: SharedMemory, root: Path) -> None:
    make_object(root, "o", bytes(64))
    shm.register("r", "/o", 0, 64)
    with pytest.raises(InvalidInput, match=r"^Invalid offset \+ byte size for shared memory region: 'r'"):
        shm.hold_outputs([RequestedOutput("N", None, SharedMemoryRef("r", 64, 1))])
    with pytest.raises(NotFound, match=r"^Unable to find shared memory region: 'ghost'"):
        shm.hold_outputs([RequestedOutput("N", None, SharedMemoryRef("ghost", 64))])
    shm.unregister("r")  # a failed hold keeps nothing in use
