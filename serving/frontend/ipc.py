"""The hand-off channel's frames, and the checks on everything a frame claims.

A frame is ``<u32 length><u32 header length><header><inline bytes>`` (little-endian):
``length`` counts the header and the inline bytes, the header is an orjson object, and the
inline bytes carry the tensors that did not go through shared memory. A tensor travels as
a descriptor ``[name, datatype, shape, where, offset, nbytes]``: ``where`` is `ARENA` (at
``offset`` in the sender's arena) or `INLINE` (at ``offset`` in the frame's inline bytes).

Nothing a frame says is trusted: lengths are bounded before anything is buffered, and a
descriptor's offset, size and shape are checked against the arena, the frame and each
other before a view is built (`unpack_tensors`). A frame that breaks the framing closes
the channel (`FrameError`); a descriptor that does not hold fails only its request
(`ChannelError`, a 500 that says so).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from inference_protocol.binary import binary_data, deserialize_bytes
from inference_protocol.datatypes import NUMPY_DTYPES
from inference_protocol.errors import GRPC_TO_HTTP, InvalidInput, ServingError
from inference_protocol.tensors import Tensor

from .arena import Arena

PREFIX = struct.Struct("<II")
MAX_HEADER = 4 * 1024 * 1024  # a header holds names, shapes and parameters, never tensor values
MAX_TENSORS = 4096  # per message
MAX_NAME = 4096
MAX_DIMS = 32
MAX_MESSAGE = 64 * 1024  # an error message carried back
ARENA, INLINE = 0, 1
ALIGN = 64  # tensors start on cache lines in an arena block

Descriptor = list[Any]  # [name, datatype, shape, where, offset, nbytes]


class FrameError(Exception):
    """The byte stream is not a sequence of well-formed frames: the channel cannot go on."""


class ChannelError(ServingError):
    """A frame's descriptor does not hold (a fault of this server, not of the client)."""

    http_status = 500
    grpc_code = "INTERNAL"


def encode_frame(header: dict[str, Any], inline: Sequence[bytes | memoryview] = ()) -> list[bytes | memoryview]:
    """The pieces of one frame, for ``transport.writelines``."""
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    size = len(head)
    for part in inline:
        size += len(part)
    return [PREFIX.pack(size, len(head)), head, *inline]


class FrameReader:
    """Cuts a byte stream into ``(header, inline bytes)`` frames, each at most ``max_frame`` bytes."""

    def __init__(self, max_frame: int, max_header: int = MAX_HEADER) -> None:
        self.max_frame = max_frame
        self.max_header = max_header
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], memoryview]]:
        """The frames completed by ``data``; raises `FrameError` on a frame that breaks the rules."""
        if self._buffer:
            self._buffer += data
            source: bytes | bytearray = self._buffer
        else:
            source = data  # the common case: whole frames in one read, cut without copying
        view = memoryview(source)
        frames: list[tuple[dict[str, Any], memoryview]] = []
        offset = 0
        while len(view) - offset >= PREFIX.size:
            size, header_size = PREFIX.unpack_from(view, offset)
            if size > self.max_frame:
                raise FrameError(f"a frame of {size} bytes exceeds the limit of {self.max_frame}")
            if header_size > size or header_size > self.max_header:
                raise FrameError(f"a frame header of {header_size} bytes in a frame of {size} (at most "
                                 f"{self.max_header})")
            end = offset + PREFIX.size + size
            if end > len(view):
                break
            start = offset + PREFIX.size
            try:
                header = orjson.loads(view[start:start + header_size])
            except orjson.JSONDecodeError as exc:
                raise FrameError(f"a frame header is not JSON: {exc}") from None
            if not isinstance(header, dict):
                raise FrameError("a frame header is not a JSON object")
            inline = view[start + header_size:end]
            if source is self._buffer:
                inline = memoryview(bytes(inline))  # the buffer is reused below
            frames.append((header, inline))
            offset = end
        if source is self._buffer:
            view.release()
            del self._buffer[:offset]
        elif offset < len(data):
            self._buffer += view[offset:]
        return frames


def pack_tensors(tensors: Sequence[Tensor], arena: Arena | None,
                 inline_max: int) -> tuple[list[Descriptor], list[bytes | memoryview], int | None]:
    """Descriptors, inline bytes and the arena block (None: none) for ``tensors``.

    They go into one block of ``arena`` when their total exceeds ``inline_max`` bytes and
    the arena has room; else inline in the frame (correct, a copy more).
    """
    datas = [binary_data(tensor) for tensor in tensors]  # the binary extension's form travels
    total = sum(-(-len(data) // ALIGN) * ALIGN for data in datas)
    block = arena.allocate(total) if arena is not None and total > inline_max else None
    descriptors: list[Descriptor] = []
    inline: list[bytes | memoryview] = []
    offset = 0
    for tensor, data in zip(tensors, datas, strict=True):
        size = len(data)
        if block is not None:
            assert arena is not None
            start = block + offset
            arena.buf[start:start + size] = data
            descriptors.append([tensor.name, tensor.datatype, list(tensor.shape), ARENA, start, size])
            offset += -(-size // ALIGN) * ALIGN
        else:
            descriptors.append([tensor.name, tensor.datatype, list(tensor.shape), INLINE, offset, size])
            inline.append(data)
            offset += size
    return descriptors, inline, block


def _descriptor(raw: Any) -> tuple[str, str, list[int], int, int, int]:
    if not isinstance(raw, list) or len(raw) != 6:
        raise ChannelError("front-end channel: a tensor descriptor is not a list of 6 fields")
    name, datatype, shape, where, offset, nbytes = raw
    if type(name) is not str or len(name) > MAX_NAME:
        raise ChannelError("front-end channel: a tensor name is not a string of at most 4096 characters")
    if type(datatype) is not str or datatype not in NUMPY_DTYPES:
        raise ChannelError(f"front-end channel: tensor '{name[:64]}' has an unknown datatype")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d < 2**63 for d in shape)):
        raise ChannelError(f"front-end channel: tensor '{name[:64]}' has a shape that is not a list of at most "
                           f"{MAX_DIMS} non-negative integers")
    if where not in (ARENA, INLINE) or type(offset) is not int or type(nbytes) is not int \
            or offset < 0 or nbytes < 0:
        raise ChannelError(f"front-end channel: tensor '{name[:64]}' has no valid place")
    return name, datatype, shape, where, offset, nbytes


def unpack_tensors(raw: Any, arena: memoryview | None, inline: memoryview, copy: bool) -> list[Tensor]:
    """Tensors from descriptors, each checked against its buffer and its shape.

    ``copy``: copy values out of the arena (a receiver that frees the block at once);
    without it the arrays are views on the arena, valid until the block is freed.
    """
    if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
        raise ChannelError(f"front-end channel: the tensors are not a list of at most {MAX_TENSORS}")
    tensors = []
    for entry in raw:
        name, datatype, shape, where, offset, nbytes = _descriptor(entry)
        buffer = inline if where == INLINE else arena
        if buffer is None:
            raise ChannelError(f"front-end channel: tensor '{name[:64]}' is placed in an arena this channel lacks")
        if offset + nbytes > len(buffer):
            raise ChannelError(f"front-end channel: tensor '{name[:64]}' at {offset} + {nbytes} bytes runs past "
                               f"its buffer of {len(buffer)}")
        count = 1
        for dim in shape:
            count *= dim
        data = buffer[offset:offset + nbytes]
        if datatype == "BYTES":
            try:
                array = deserialize_bytes(data, count, name).reshape(shape)
            except InvalidInput as exc:
                raise ChannelError(f"front-end channel: {exc}") from None
        else:
            dtype = NUMPY_DTYPES[datatype]
            if count * dtype.itemsize != nbytes:
                raise ChannelError(f"front-end channel: tensor '{name[:64]}' of shape {shape[:8]} {datatype} "
                                   f"needs {count * dtype.itemsize} bytes, not {nbytes}")
            try:
                array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape) if count else \
                    np.empty(shape, dtype=dtype)
            except ValueError:  # an empty shape numpy cannot hold (dimensions past its limits)
                raise ChannelError(f"front-end channel: tensor '{name[:64]}' has a shape numpy cannot "
                                   "hold") from None
            if copy and where == ARENA:
                array = array.copy()
        tensors.append(Tensor(name, datatype, array))
    return tensors


# -- errors ----------------------------------------------------------------------------

def error_header(key: int, exc: ServingError, admission: bool = False) -> dict[str, Any]:
    """An error frame: the class by name, its codes and its message (what the worker re-raises)."""
    return {"t": "e", "k": key, "c": type(exc).__name__, "h": exc.http_status, "g": exc.grpc_code,
            "s": str(exc)[:MAX_MESSAGE], "a": admission}


def _error_classes() -> dict[str, type[ServingError]]:
    classes: dict[str, type[ServingError]] = {}
    pending: list[type[ServingError]] = [ServingError]
    while pending:
        cls = pending.pop()
        classes.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return classes


def remote_error(header: dict[str, Any]) -> ServingError:
    """The `ServingError` an error frame describes, as the same class where this process knows it."""
    message = header.get("s")
    message = message[:MAX_MESSAGE] if isinstance(message, str) else "internal server error"
    status, code = header.get("h"), header.get("g")
    cls = _error_classes().get(str(header.get("c")), ServingError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)  # not cls.__init__: some take other arguments (NotJSON)
    if type(status) is int and 100 <= status <= 599 and status != cls.http_status:
        exc.http_status = status
    if isinstance(code, str) and code in GRPC_TO_HTTP and code != cls.grpc_code:
        exc.grpc_code = code
    return exc
