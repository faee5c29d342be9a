"""The front-end workers' hand-off: frames, the checks on what a frame claims, the arena and its allocator."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_protocol.errors import InvalidInput, NotFound, ServingError, Unavailable
from inference_protocol.tensors import Tensor
from serving.frontend.arena import ALIGN, ROOT, Allocator, Arena, remove_stale
from serving.frontend.ipc import (
    ARENA,
    INLINE,
    ChannelError,
    FrameError,
    FrameReader,
    encode_frame,
    error_header,
    pack_tensors,
    remote_error,
    unpack_tensors,
)
from serving.streaming import DecoupledOnly


def _bytes(pieces: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(piece) for piece in pieces)


@pytest.fixture
def arena() -> Iterator[Arena]:
    created = Arena.create(1024 * 1024, "test")
    assert created is not None
    yield created
    created.unlink()
    created.close()


# -- framing ---------------------------------------------------------------------------

def test_frames_cut_from_a_stream_in_any_pieces() -> None:
    stream = _bytes(encode_frame({"t": "a", "k": 1}, [b"xyz"])) + _bytes(encode_frame({"t": "b"}))
    for step in (1, 3, 7, len(stream)):
        reader = FrameReader(1 << 20)
        frames = [frame for at in range(0, len(stream), step) for frame in reader.feed(stream[at:at + step])]
        assert [(h, bytes(inline)) for h, inline in frames] == [({"t": "a", "k": 1}, b"xyz"), ({"t": "b"}, b"")]


def test_a_frame_past_the_limit_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader(max_frame=100)
    with pytest.raises(FrameError, match="exceeds the limit"):
        reader.feed(struct.pack("<II", 101, 2))


@pytest.mark.parametrize(("prefix", "message"), [
    (struct.pack("<II", 4, 5) + b"{}{}", "frame header"),  # header longer than its frame
    (struct.pack("<II", 2, 2) + b"[]", "not a JSON object"),
    (struct.pack("<II", 2, 2) + b"{x", "not JSON"),
])
def test_malformed_frames_break_the_channel(prefix: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        FrameReader(1 << 20).feed(prefix)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_any_bytes_give_frames_or_a_frame_error(data: bytes) -> None:
    reader = FrameReader(max_frame=256, max_header=128)
    try:
        for header, inline in reader.feed(data):
            assert isinstance(header, dict) and len(inline) <= 256
    except FrameError:
        pass


# -- tensor descriptors ----------------------------------------------------------------

def _tensors() -> list[Tensor]:
    return [Tensor("a", "INT32", np.arange(16, dtype=np.int32).reshape(1, 16)),
            Tensor("s", "BYTES", np.array([b"x", b"yz"], dtype=object)),
            Tensor("e", "FP32", np.zeros((0, 3), dtype=np.float32))]


def test_small_tensors_travel_inline() -> None:
    descriptors, inline, block = pack_tensors(_tensors(), None, inline_max=4096)
    assert block is None and all(d[3] == INLINE for d in descriptors)
    tensors = unpack_tensors(descriptors, None, memoryview(_bytes(inline)), copy=False)
    assert [t.name for t in tensors] == ["a", "s", "e"]
    assert np.array_equal(tensors[0].array, _tensors()[0].array) and tensors[0].array.shape == (1, 16)
    assert list(tensors[1].array) == [b"x", b"yz"] and tensors[2].array.shape == (0, 3)


def test_tensors_go_into_one_arena_block_and_come_back_as_copies(arena: Arena) -> None:
    descriptors, inline, block = pack_tensors(_tensors(), arena, inline_max=0)
    assert block == 0 and inline == [] and all(d[3] == ARENA and d[4] % ALIGN == 0 for d in descriptors)
    copied = unpack_tensors(descriptors, arena.buf, memoryview(b""), copy=True)
    assert arena.free(block)
    arena.buf[0:64] = b"\xff" * 64  # the block is reused: copies do not change
    assert np.array_equal(copied[0].array, _tensors()[0].array)


def test_a_full_arena_sends_the_tensors_inline(arena: Arena) -> None:
    big = Tensor("big", "UINT8", np.ones(arena.size + 1, dtype=np.uint8))
    first = pack_tensors([big], arena, inline_max=0)
    assert first[2] is None and first[0][0][3] == INLINE  # larger than the arena: inline
    held = pack_tensors([Tensor("half", "UINT8", np.ones(arena.size // 2 + 64, dtype=np.uint8))], arena, 0)
    assert held[2] is not None
    half = [Tensor("half", "UINT8", np.ones(arena.size // 2, dtype=np.uint8))]
    second = pack_tensors(half, arena, 0)
    assert second[2] is None and len(_bytes(second[1])) == arena.size // 2  # no room left: inline
    assert arena.free(held[2])
    assert pack_tensors(half, arena, 0)[2] == 0  # room again once the block is given back


@pytest.mark.parametrize(("descriptor", "message"), [
    (["a", "INT32", [16], ARENA, 1024 * 1024 - 32, 64], "runs past its buffer"),
    (["a", "INT32", [16], INLINE, 0, 64], "runs past its buffer"),
    (["a", "INT32", [15], ARENA, 0, 64], "needs 60 bytes, not 64"),
    (["a", "INT33", [16], ARENA, 0, 64], "unknown datatype"),
    (["a", "INT32", [-1], ARENA, 0, 64], "non-negative integers"),
    (["a", "INT32", [16], 2, 0, 64], "no valid place"),
    (["a", "INT32", [16], ARENA, -64, 64], "no valid place"),
    (["a", "INT32", [16], ARENA, 0], "6 fields"),
    ([1, "INT32", [16], ARENA, 0, 64], "not a string"),
    (["s", "BYTES", [3], ARENA, 0, 8], "front-end channel: input 's'"),
])
def test_a_descriptor_that_does_not_hold_fails_its_request(arena: Arena, descriptor: list[object],
                                                           message: str) -> None:
    with pytest.raises(ChannelError, match=message) as failure:
        unpack_tensors([descriptor], arena.buf, memoryview(b"\0" * 32), copy=False)
    assert failure.value.http_status == 500 and failure.value.grpc_code == "INTERNAL"


def test_an_arena_block_needs_an_arena() -> None:
    with pytest.raises(ChannelError, match="arena this channel lacks"):
        unpack_tensors([["a", "INT32", [16], ARENA, 0, 64]], None, memoryview(b""), copy=False)


_fields = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=8),
                    st.lists(st.integers(-4, 2**64), max_size=40))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_fields, st.lists(_fields, max_size=7)), max_size=4), st.binary(max_size=128))
def test_fuzz_descriptors_give_tensors_within_their_buffers_or_a_channel_error(raw: list[object],
                                                                                 inline: bytes) -> None:
    buffer = bytearray(256)
    try:
        tensors = unpack_tensors(raw, memoryview(buffer), memoryview(inline), copy=False)
    except ChannelError:
        return
    for tensor in tensors:
        assert tensor.array.size == int(np.prod(tensor.array.shape))


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("error", [InvalidInput("bad shape"), NotFound("no model"), Unavailable("full"),
                                   DecoupledOnly("streams only"), ChannelError("x")])
def test_errors_come_back_as_the_same_class_with_the_same_words(error: ServingError) -> None:
    again = remote_error(orjson.loads(orjson.dumps(error_header(7, error))))
    assert type(again) is type(error) and str(again) == str(error)
    assert (again.http_status, again.grpc_code) == (error.http_status, error.grpc_code)


def test_an_unknown_error_class_keeps_its_codes() -> None:
    again = remote_error({"c": "SomethingElse", "h": 409, "g": "ALREADY_EXISTS", "s": "twice"})
    assert isinstance(again, ServingError) and (again.http_status, again.grpc_code, str(again)) == \
        (409, "ALREADY_EXISTS", "twice")
    odd = remote_error({"c": 3, "h": "x", "g": "NOPE", "s": None})
    assert (odd.http_status, odd.grpc_code) == (500, "INTERNAL")


# -- the allocator ---------------------------------------------------------------------

def test_the_allocator_merges_what_is_freed() -> None:
    allocator = Allocator(4 * ALIGN)
    blocks = [allocator.allocate(ALIGN) for _ in range(4)]
    assert blocks == [0, ALIGN, 2 * ALIGN, 3 * ALIGN] and allocator.allocate(1) is None
    for block in (blocks[1], blocks[3], blocks[2]):
        assert allocator.free(block)  # type: ignore[arg-type]
    assert allocator.free_ranges() == [(ALIGN, 4 * ALIGN)] and not allocator.free(ALIGN)
    assert allocator.allocate(3 * ALIGN) == ALIGN


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 600)), max_size=60))
def test_fuzz_the_allocator_never_hands_out_overlapping_blocks(steps: list[tuple[bool, int]]) -> None:
    allocator = Allocator(4096)
    held: dict[int, int] = {}
    for allocate, size in steps:
        if allocate or not held:
            start = allocator.allocate(size)
            if start is not None:
                assert start % ALIGN == 0 and start + size <= 4096
                assert all(start + size <= s or s + n <= start for s, n in held.items())
                held[start] = size
        else:
            start = sorted(held)[size % len(held)]
            assert allocator.free(start)
            del held[start]
    for start in list(held):
        allocator.free(start)
    assert allocator.free_ranges() == [(0, 4096)] and allocator.used_bytes == 0


def test_an_arena_is_attached_only_by_name_and_size(arena: Arena) -> None:
    other = Arena.attach(arena.name, arena.size)
    arena.buf[:4] = b"abcd"
    assert bytes(other.buf[:4]) == b"abcd" and other.allocator is None
    other.close()
    for name, size in (("../etc/passwd", 1), (arena.name, arena.size + 1), ("shadowserve-frontend-x/../y", 1)):
        with pytest.raises((ValueError, OSError)):
            Arena.attach(name, size)


# -- the worker process ----------------------------------------------------------------

def test_the_worker_imports_no_torch() -> None:
    code = ("import sys, serving.frontend.worker; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnxruntime', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", f"the front-end worker imports {out.stdout.strip()}"


def test_arenas_of_processes_that_are_gone_are_removed(arena: Arena) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    pid = int(gone.stdout)
    left = ROOT / f"shadowserve-frontend-{pid}-0123456789ab"
    left.write_bytes(b"x")
    try:
        assert remove_stale() >= 1 and not left.exists()
        assert (ROOT / arena.name).exists()  # this process's own stays
    finally:
        left.unlink(missing_ok=True)
