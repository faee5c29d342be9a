"""Shared-memory arenas: one per worker and direction, and the allocator of their blocks.

A worker creates its request arena and allocates in it; the owner creates one response
arena per worker and allocates in that. The receiver only reads at the offsets a frame
gives (checked by `serving.frontend.ipc`), and tells the allocating side when a block may
be reused: a response frees the request's block, a later frame the response's.

An arena is a POSIX shared-memory object (``/dev/shm/<name>``, what ``shm_open`` makes),
opened here directly rather than through ``multiprocessing.shared_memory``: on Python
before 3.13 that registers every object, even one it only attaches to, with a
resource-tracker process, which would start one more process per worker and unlink or
warn about the objects at exit. The file is created ``O_EXCL`` and ``0600``, opened
without following links, and its pages are reserved at once (``posix_fallocate``): tmpfs
files are sparse, and a write past the free space of a small ``/dev/shm`` (64 MiB in a
container by default) would kill the process with SIGBUS instead of failing here.
"""

from __future__ import annotations

import bisect
import errno
import logging
import mmap
import os
import re
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/dev/shm")
PREFIX = "shadowserve-frontend-"
NAME = re.compile(r"shadowserve-frontend-[0-9a-z-]{1,64}")
ALIGN = 64
MIN_SIZE = 1024 * 1024  # below this an arena is not worth having: tensors travel inline


class Allocator:
    """First fit over the free ranges, kept sorted and merged; every block a multiple of `ALIGN`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._starts: list[int] = [0] if size else []  # free ranges, by start
        self._ends: list[int] = [size] if size else []
        self._used: dict[int, int] = {}  # block start -> its size
        self.used_bytes = 0

    def allocate(self, size: int) -> int | None:
        """The start of a free block of at least ``size`` bytes, or None when none is left."""
        size = max(ALIGN, -(-size // ALIGN) * ALIGN)
        for index, (start, end) in enumerate(zip(self._starts, self._ends, strict=True)):
            if end - start >= size:
                if end - start == size:
                    del self._starts[index], self._ends[index]
                else:
                    self._starts[index] = start + size
                self._used[start] = size
                self.used_bytes += size
                return start
        return None

    def free(self, start: int) -> bool:
        """Give back the block at ``start``; False (and nothing changes) when no block starts there."""
        size = self._used.pop(start, None)
        if size is None:
            return False
        self.used_bytes -= size
        end = start + size
        index = bisect.bisect_left(self._starts, start)
        if index < len(self._starts) and self._starts[index] == end:  # merge with the range after
            end = self._ends[index]
            del self._starts[index], self._ends[index]
        if index > 0 and self._ends[index - 1] == start:  # ... and with the one before
            self._ends[index - 1] = end
        else:
            self._starts.insert(index, start)
            self._ends.insert(index, end)
        return True

    def free_ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))


class Arena:
    """A mapped shared-memory object; ``allocator`` is set on the side that allocates in it."""

    def __init__(self, name: str, size: int, fd: int, created: bool) -> None:
        self.name = name
        self.size = size
        self._map = mmap.mmap(fd, size) if size else None
        os.close(fd)
        self.buf = memoryview(self._map) if self._map is not None else memoryview(b"")
        self.created = created
        self.allocator = Allocator(size) if created else None

    def allocate(self, size: int) -> int | None:
        return self.allocator.allocate(size) if self.allocator is not None else None

    def free(self, start: int) -> bool:
        return self.allocator.free(start) if self.allocator is not None else False

    @classmethod
    def create(cls, size: int, what: str) -> Arena | None:
        """A new arena of ``size`` bytes, halved while ``/dev/shm`` lacks the room; None below `MIN_SIZE`."""
        while size >= MIN_SIZE:
            name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
            try:
                fd = os.open(ROOT / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except OSError as exc:  # no /dev/shm here, or not writable: correct without one, a copy slower
                log.warning("%s: no shared-memory arena (%s): tensors travel inline", what, exc)
                return None
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                os.close(fd)
                os.unlink(ROOT / name)
                if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                    log.warning("%s: no shared-memory arena (%s): tensors travel inline", what, exc)
                    return None
                log.warning("%s: /dev/shm has no room for %d MiB; trying half (mount a larger /dev/shm, in a "
                            "pod an emptyDir with medium Memory)", what, size >> 20)
                size //= 2
                continue
            return cls(name, size, fd, created=True)
        log.warning("%s: no shared-memory arena (no room in /dev/shm): tensors travel inline, a copy more", what)
        return None

    @classmethod
    def attach(cls, name: str, size: int) -> Arena:
        """The peer's arena ``name`` of ``size`` bytes; ValueError when it is not one of ours, of that size."""
        if not isinstance(name, str) or not NAME.fullmatch(name) or type(size) is not int or size < 0:
            raise ValueError("not an arena name and size")
        fd = os.open(ROOT / name, os.O_RDWR | os.O_NOFOLLOW)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size != size:
            os.close(fd)
            raise ValueError(f"{name} is not a {size}-byte file of this user")
        return cls(name, size, fd, created=False)

    def unlink(self) -> None:
        """Remove the name (the memory stays until every mapping is closed)."""
        try:
            os.unlink(ROOT / self.name)
        except FileNotFoundError:
            pass

    def close(self) -> bool:
        """Unmap; False while arrays still view the memory (closed when they are collected)."""
        if self._map is None:
            return True
        try:
            self.buf.release()
            self._map.close()
        except BufferError:
            return False
        return True


def remove_stale(pid: int | None = None) -> int:
    """Unlink the arenas ``pid`` created (a worker that died without cleaning up), or, with no pid, those
    of this user whose creator is no longer running (a server killed with its workers); how many."""
    removed = 0
    for path in ROOT.glob(f"{PREFIX}{pid if pid is not None else ''}*"):
        creator = path.name[len(PREFIX):].split("-", 1)[0]
        if not creator.isdigit():
            continue
        if pid is None:
            try:
                if path.lstat().st_uid != os.getuid():
                    continue
                os.kill(int(creator), 0)
                continue  # still running (or the number was reused): not ours to judge
            except ProcessLookupError:
                pass
            except (PermissionError, FileNotFoundError):
                continue
        elif creator != str(pid):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
