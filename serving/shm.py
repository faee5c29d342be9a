"""System shared memory (Triton's extension): regions a client on this host registers by key.

A region is ``byte_size`` bytes at ``offset`` in a POSIX shared-memory object
(``/dev/shm/<key>``, what ``shm_open`` and ``tritonclient.utils.shared_memory`` create).
An input may name a region instead of carrying its values, and a requested output a
region to be written into. Every number is the client's claim: each read and write is
checked against the region, and the region against the object's size at that moment.

The object is read and written through its file descriptor (``pread``/``pwrite``), never
mapped: a client that shrinks the object after registering it gets an error instead of
bringing the server down with SIGBUS, and the values a model sees cannot change under
it while it runs. A region is opened without following symbolic links and must be a
regular file of the shared-memory directory; its key is a plain name.

Registration is off unless the server was started with ``--allow-client-shm true``
(Triton's flag, off by default there too): a client that can register a key can make
the server read and write any shared-memory object the server's user may open.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from inference_protocol.binary import binary_data, deserialize_bytes
from inference_protocol.datatypes import NUMPY_DTYPES
from inference_protocol.errors import brief
from inference_protocol.shm import SharedInput, SharedMemoryRef
from inference_protocol.tensors import InferRequest, RequestedOutput, Tensor, element_count

from .errors import InvalidInput, NotFound, Unsupported

DEFAULT_ROOT = Path("/dev/shm")
MAX_REGIONS = 256  # each holds a file descriptor open
MAX_NAME = 256
MAX_KEY = 255  # NAME_MAX of the shared-memory file system
DISABLED = ("system shared memory is off on this server; start it with --allow-client-shm true to register "
            "regions")
NO_CUDA = ("CUDA shared memory is not supported by this server; use system shared memory (a client on the same "
           "host) or send the tensors in the request")


class AlreadyExists(InvalidInput):
    """A region name that is registered already (400 over HTTP, ALREADY_EXISTS over gRPC, as Triton)."""

    grpc_code = "ALREADY_EXISTS"


def _shown(text: str) -> str:
    """A client's name or key for a message: short, control characters escaped."""
    text = text[:64]
    return text if text.isprintable() else text.encode("unicode_escape").decode()


def _name(name: Any) -> str:
    if type(name) is not str or not name:
        raise InvalidInput("'region name' is necessary to register system shared memory region")
    if len(name) > MAX_NAME or not name.isprintable():
        raise InvalidInput(f"shared memory region name '{_shown(name)}' is not valid: use up to {MAX_NAME} printable "
                           "characters")
    return name


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a shared-memory object (``/name`` or ``name``, no directories); None when it can."""
    plain = key[1:] if key.startswith("/") else key
    if not plain:
        return "it is empty"
    if "/" in plain:
        return "it must be a plain name such as /input_data, without directories"
    if not plain.isprintable():
        return "it holds characters that are not printable"
    if plain in (".", ".."):
        return "it names a directory"
    if len(plain.encode("utf-8", "surrogatepass")) > MAX_KEY:
        return f"it is longer than {MAX_KEY} bytes"
    return None


class Region:
    """A registered region, open for reading and writing until it is unregistered."""

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int) -> None:
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.fd = fd
        self.users = 0  # requests that will write an output into it

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def span(self, where: SharedMemoryRef, what: str) -> int:
        """The object offset of ``where``, checked to lie within the region."""
        if where.offset > self.byte_size:
            raise InvalidInput(f"Invalid offset for shared memory region: '{self.name}' ({what}: offset "
                               f"{where.offset} of a region of {self.byte_size} bytes)")
        if where.offset + where.byte_size > self.byte_size:
            raise InvalidInput(f"Invalid offset + byte size for shared memory region: '{self.name}' ({what}: "
                               f"{where.offset} + {where.byte_size} bytes run past the region's {self.byte_size})")
        return self.offset + where.offset

    def _check_object(self, end: int) -> None:
        size = os.fstat(self.fd).st_size
        if size < end:
            raise InvalidInput(f"the shared memory object '{_shown(self.key)}' of region '{self.name}' shrank to "
                               f"{size} bytes after it was registered, below the {end} the request needs; register "
                               "it again")

    def read(self, where: SharedMemoryRef, what: str) -> np.ndarray:
        """The ``where.byte_size`` bytes of ``where``, copied into a new buffer."""
        start = self.span(where, what)
        self._check_object(start + where.byte_size)
        buffer = np.empty(where.byte_size, dtype=np.uint8)
        view = buffer.data
        done = 0
        while done < where.byte_size:
            got = os.preadv(self.fd, [view[done:]], start + done)
            if got <= 0:  # the object shrank between the check and the read
                raise InvalidInput(f"the shared memory object '{_shown(self.key)}' of region '{self.name}' ended after "
                                   f"{start + done} bytes while {what} was read; register it again")
            done += got
        return buffer

    def write(self, where: SharedMemoryRef, data: bytes | memoryview, what: str) -> None:
        start = self.span(where, what)
        self._check_object(start + len(data))  # a write past the end would grow the object, not fill the region
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwritev(self.fd, [view[done:]], start + done)


class SharedMemory:
    """The registered system shared-memory regions of one server, by name."""

    def __init__(self, allowed: bool = False, root: Path = DEFAULT_ROOT, max_input_bytes: int = 2**31,
                 max_regions: int = MAX_REGIONS) -> None:
        self.allowed = allowed
        self.root = root
        self.max_input_bytes = max_input_bytes  # a request's inputs from regions, together (as a body's limit)
        self.max_regions = max_regions
        self.regions: dict[str, Region] = {}

    # -- the extension's API ----------------------------------------------------------------

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every region's status, or the one named (`NotFound` when it is not registered)."""
        if not name:
            return [self.regions[each].status() for each in sorted(self.regions)]
        region = self.regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{_shown(name)}'; GET "
                           "/v2/systemsharedmemory/status lists the registered ones")
        return [region.status()]

    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        """Open the object ``key`` and register ``byte_size`` bytes of it at ``offset`` as ``name``."""
        if not self.allowed:
            raise Unsupported(DISABLED)
        name = _name(name)
        if type(key) is not str:
            raise InvalidInput("Shared memory register request has no 'key' field; give the key of the "
                               "shared memory object, e.g. /input_data")
        if byte_size is None:
            raise InvalidInput(f"Shared memory register request has no 'byte_size' field; give the size of region "
                               f"'{name}' in bytes")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if type(value) is not int or not 0 <= value < 2**63:
                raise InvalidInput(f"'{field}' of shared memory region '{name}' must be a non-negative integer, "
                                   f"got {brief(value)}")
        problem = key_problem(key)
        if problem:
            raise InvalidInput(f"Unable to open shared memory region: '{_shown(key)}': {problem}")
        if name in self.regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager; unregister it first")
        if len(self.regions) >= self.max_regions:
            raise InvalidInput(f"{len(self.regions)} shared memory regions are registered, the most this server "
                               "holds; unregister some first")
        fd = self._open(key)
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidInput(f"failed to register shared memory region '{name}': invalid args: offset "
                                   f"{offset} + byte_size {byte_size} run past the {size} bytes of the object "
                                   f"'{_shown(key)}'")
        except BaseException:
            os.close(fd)
            raise
        self.regions[name] = Region(name, key, offset, byte_size, fd)

    def _open(self, key: str) -> int:
        path = self.root / key.lstrip("/")
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block the server
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise InvalidInput(f"Unable to open shared memory region: '{key}': no such object; create it on the "
                               "server's host (shm_open, tritonclient.utils.shared_memory) before registering") \
                from None
        except OSError as exc:
            raise InvalidInput(f"Unable to open shared memory region: '{key}': {exc.strerror or 'cannot open'}") \
                from None
        except ValueError:  # a name the file system cannot encode (a lone surrogate)
            raise InvalidInput(f"Unable to open shared memory region: '{_shown(key)}': it is not a valid file "
                               "name") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidInput(f"Unable to open shared memory region: '{key}': it is not a shared memory object")
        return fd

    def unregister(self, name: str | None = None) -> None:
        """Unregister one region (nothing happens for a name not registered) or, without a name, every one.

        A region a running request will write an output into stays registered, and the
        call fails naming it, as Triton refuses: the client may unmap it only afterwards.
        """
        names = [name] if name else list(self.regions)
        busy = []
        for each in names:
            region = self.regions.get(each)
            if region is None:
                continue
            if region.users:
                busy.append(each)
                continue
            del self.regions[each]
            os.close(region.fd)
        if busy:
            if name:
                raise InvalidInput(f"Cannot unregister shared memory region '{name}', it is currently in use; "
                                   "retry once its requests have finished")
            raise InvalidInput("Failed to unregister the following system shared memory regions: "
                               f"{', '.join(busy)} (in use by running requests); retry once they have finished")

    def close(self) -> None:
        for region in self.regions.values():
            os.close(region.fd)
        self.regions.clear()

    # -- inference ---------------------------------------------------------------------------

    def _region(self, where: SharedMemoryRef) -> Region:
        if not self.allowed:
            raise Unsupported(DISABLED)
        region = self.regions.get(where.region)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{_shown(where.region)}'; register it first "
                           "(POST /v2/systemsharedmemory/region/<name>/register)")
        return region

    def read_inputs(self, request: InferRequest, model: str) -> None:
        """Read the request's inputs that are in regions into ``request.inputs`` (for ``model``'s messages)."""
        total = sum(shared.where.byte_size for shared in request.shared_inputs.values())
        if total > self.max_input_bytes:
            raise InvalidInput(f"the request's inputs in shared memory take {total} bytes, more than the limit of "
                               f"{self.max_input_bytes} (--max-request-bytes); send smaller requests")
        for shared in request.shared_inputs.values():
            request.inputs[shared.name] = self._tensor(shared, model)
        request.shared_inputs = {}

    def _tensor(self, shared: SharedInput, model: str) -> Tensor:
        name, datatype, where = shared.name, shared.datatype, shared.where
        count = element_count(name, list(shared.shape))
        dtype = NUMPY_DTYPES[datatype]
        if datatype != "BYTES" and where.byte_size != count * dtype.itemsize:  # before any read or allocation
            raise InvalidInput(f"input byte size mismatch for input '{name}' for model '{model}'. Expected "
                               f"{count * dtype.itemsize}, got {where.byte_size} (shape {list(shared.shape)} of "
                               f"{datatype}; set shared_memory_byte_size to match)")
        data = self._region(where).read(where, f"input '{name}'")
        if datatype == "BYTES":
            array = deserialize_bytes(data.data, count, name)
        else:
            array = data.view(dtype)
        return Tensor(name, datatype, array.reshape(shared.shape))

    def hold_outputs(self, outputs: list[RequestedOutput] | None) -> OutputRegions:
        """The regions the request's outputs go to, checked now and kept registered until released."""
        held = []
        for output in outputs or ():
            if output.shared_memory is not None:
                region = self._region(output.shared_memory)
                region.span(output.shared_memory, f"output '{output.name}'")
                held.append((output.name, output.shared_memory, region))
        return OutputRegions(held)


class OutputRegions:
    """The regions a request's outputs will be written into; each stays registered until `release`."""

    def __init__(self, held: list[tuple[str, SharedMemoryRef, Region]]) -> None:
        self.held = held
        for _name, _where, region in held:
            region.users += 1

    def write(self, tensors: list[Tensor]) -> frozenset[str]:
        """Write each output that has a region into it (the binary extension's layout); their names."""
        if not self.held:
            return frozenset()
        by_name = {tensor.name: tensor for tensor in tensors}
        for name, where, region in self.held:
            tensor = by_name[name]
            data = binary_data(tensor)
            if len(data) > where.byte_size:
                raise InvalidInput(f"shared memory size specified with the request for output '{name}' "
                                   f"({where.byte_size} bytes) should be at least {len(data)} bytes to hold the "
                                   "results")
            region.write(where, data, f"output '{name}'")
        return frozenset(name for name, _where, _region in self.held)

    def release(self) -> None:
        for _name, _where, region in self.held:
            region.users -= 1
        self.held = []


__all__ = ["SharedMemory", "Region", "OutputRegions", "AlreadyExists", "key_problem"]
