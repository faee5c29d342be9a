"""The open segment as an Arrow IPC stream that a kill -9 cannot take; writers' locks; recovery.

Every writer holds an exclusive ``flock`` on its own lock file, ``.records-<writer>.lock``,
for as long as it lives, and every file it writes carries its name (host, pid and a random
token, so two containers with pid 1 on one host differ too). Records go to the open segment,
``.records-<UTC time>-<writer>-<n>.arrows``, as IPC stream batches written straight through
to the OS: a process killed at any point leaves every batch written before, and at most a
torn last batch, which reading stops short of. The same records are built in row groups
into Parquet under ``.records-….parquet.tmp``; finishing fsyncs it, renames it to
``records-….parquet``, fsyncs the directory, and only then removes the stream, so a finished
segment is complete or absent.

A writer that starts (or `recover`, offline) finishes the streams of every writer whose lock
it can take, that is, whose process is gone; a live writer's lock cannot be taken, so its files
are never touched. Files whose writer left no lock file are left alone. Every unfinished name
starts with a dot and none ends in ``.parquet``, so pyarrow datasets, pandas, DuckDB and
shadowserve-drift skip them.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import SCHEMA, SEGMENT_SUFFIX

log = logging.getLogger(__name__)

PREFIX = "records-"
STREAM_SUFFIX = ".arrows"
LOCK_SUFFIX = ".lock"
ROW_GROUP_RECORDS = 1000
ROW_GROUP_BYTES = 32 * 1024 * 1024
COMPRESSION = None  # read only by a recovery: lz4 would cost half a Parquet encoding more, to save ~30%
_STREAM = re.compile(rf"\.{PREFIX}(\d{{8}}T\d{{12}}Z)-(.+)-(\d{{6}}){re.escape(STREAM_SUFFIX)}")
_TEMPORARY = re.compile(rf"\.{PREFIX}\d{{8}}T\d{{12}}Z-(.+)-\d{{6}}{re.escape(SEGMENT_SUFFIX)}\.tmp")


def writer_name() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:63] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def segment_stem(writer: str, seq: int) -> str:
    """``records-<UTC time>-<writer>-<n>``: sorting names sorts segments by age, across writers."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{PREFIX}{stamp}-{writer}-{seq:06d}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OwnerLock:
    """An exclusive ``flock`` on a writer's lock file, held through an open descriptor."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path, create: bool = False) -> OwnerLock | None:
        """The lock, or None when another process holds it (or the file is gone)."""
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                return None
            if create:
                path.unlink(missing_ok=True)  # a lock nobody can hold would look like a dead writer's
            raise
        lock = cls(path, fd)
        if not lock.held():  # whoever held it before finished the recovery and removed the file
            lock.release(remove=False)
            return None
        return lock

    def held(self) -> bool:
        """True while this descriptor locks the file the path names (not one removed meanwhile)."""
        if self._fd is None:
            return False
        try:
            here, there = os.fstat(self._fd), os.stat(self.path)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def release(self, remove: bool) -> None:
        """Unlock; with ``remove``, delete the file first (while still holding it, so no one else is in)."""
        if self._fd is None:
            return
        try:
            if remove and self.held():
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


class Stream:
    """One open segment: IPC stream batches, each written through to the OS as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sink = pa.OSFile(str(path), "wb")  # unbuffered: a batch is in the OS once written
        self._writer = pa.ipc.new_stream(self._sink, SCHEMA, options=pa.ipc.IpcWriteOptions(compression=COMPRESSION))

    def write(self, table: pa.Table) -> None:
        for batch in table.to_batches():
            self._writer.write_batch(batch)

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()


def read_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The complete batches of a stream, in order; a torn tail (a writer killed mid-batch) ends it."""
    with pa.OSFile(str(path), "rb") as source:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError):
            return  # killed before its schema was written: no records in it
        while True:
            try:
                batch = reader.read_next_batch()
                batch.validate(full=True)
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError) as exc:
                log.warning("%s ends in an incomplete batch (%s); the batches before it are kept", path.name, exc)
                return
            yield batch


class ParquetBuilder:
    """A Parquet segment built in row groups under a hidden temporary name, then fsynced and renamed.

    A crash at any point leaves either no segment or a complete one (and the temporary,
    which the next owner of the writer's lock removes).
    """

    def __init__(self, final: Path, row_group_records: int = ROW_GROUP_RECORDS) -> None:
        self.final = final
        self.temporary = final.with_name(f".{final.name}.tmp")
        self.row_group_records = row_group_records
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._group: list[pa.Table] = []
        self._group_rows = self._group_bytes = 0

    def add(self, table: pa.Table) -> None:
        """Buffer rows; a row group is written once ``row_group_records`` rows or 32 MiB are buffered."""
        self._group.append(table)
        self._group_rows += table.num_rows
        self._group_bytes += table.nbytes
        self.rows += table.num_rows
        if self._group_rows >= self.row_group_records or self._group_bytes >= ROW_GROUP_BYTES:
            self._write_group()

    def _write_group(self) -> None:
        if not self._group:
            return
        table = pa.concat_tables(self._group)  # time-bounded flushes make small tables: one row group of them
        self._group, self._group_rows, self._group_bytes = [], 0, 0
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.temporary), table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def finish(self) -> int:
        """Write the rest, fsync, rename, fsync the directory; the rows (0: no segment written)."""
        try:
            self._write_group()
            if self._writer is None:
                return 0
            self._writer.close()
            self._writer = None
            fsync_path(self.temporary)
            os.replace(self.temporary, self.final)
            fsync_path(self.final.parent)
        except BaseException:
            self.abandon()
            raise
        return self.rows

    def abandon(self) -> None:
        """Drop what was written (the directory may be gone: nothing here raises)."""
        self._group = []
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001 - being dropped anyway
            pass
        self._writer = None
        try:
            self.temporary.unlink(missing_ok=True)
        except OSError:
            pass


def finish(stream: Path, final: Path) -> int:
    """Write the complete batches of ``stream`` as the Parquet segment ``final``; the rows (0: none written)."""
    builder = ParquetBuilder(final)
    try:
        for batch in read_batches(stream):
            builder.add(pa.Table.from_batches([batch]))
    except BaseException:
        builder.abandon()
        raise
    return builder.finish()


def lock_path(directory: Path, writer: str) -> Path:
    return directory / f".{PREFIX}{writer}{LOCK_SUFFIX}"


def recover(directory: Path, own: str | None = None) -> list[Path]:
    """Finish the open segments of every writer of ``directory`` that is gone; the segments written.

    Safe while other writers run and while another process recovers too: a writer's files are
    touched only by whoever holds its lock, and the lock file goes last, once they are done.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    locks = {name[len(PREFIX) + 1:-len(LOCK_SUFFIX)] for name in names
             if name.startswith(f".{PREFIX}") and name.endswith(LOCK_SUFFIX)}
    owners = [_owner(name) for name in names]
    unowned = sum(1 for owner in owners if owner is not None and owner not in locks)
    if unowned:
        log.warning("%d unfinished record file(s) in %s have no writer's lock file; they are left as they are",
                    unowned, directory)
    finished: list[Path] = []
    for writer in sorted(locks - {own}):
        try:
            lock = OwnerLock.take(lock_path(directory, writer))
        except OSError as exc:  # not a file we can lock: not a writer's
            log.warning("cannot lock %s: %s", lock_path(directory, writer).name, exc)
            continue
        if lock is None:
            continue  # alive, or being recovered by another process
        done = False
        try:
            # listed again under the lock: the writer may have opened a segment since the first listing
            finished += _recover_writer(directory, writer, [n for n in os.listdir(directory) if _owner(n) == writer])
            done = True
        except (OSError, pa.ArrowException) as exc:
            log.error("cannot recover the records of writer %s in %s: %s; the next start tries again",
                      writer, directory, exc)
        finally:
            lock.release(remove=done)  # kept on failure, so that a later start tries again
    return finished


def _owner(name: str) -> str | None:
    """The writer of an unfinished file (a stream or a Parquet temporary), else None."""
    match = _STREAM.fullmatch(name) or _TEMPORARY.fullmatch(name)
    if match is None:
        return None
    return match.group(2) if match.re is _STREAM else match.group(1)


def _recover_writer(directory: Path, writer: str, names: list[str]) -> list[Path]:
    finished: list[Path] = []
    for name in sorted(names, key=lambda n: (not n.endswith(".tmp"), n)):  # temporaries first
        path = directory / name
        if name.endswith(".tmp"):
            path.unlink(missing_ok=True)  # a conversion cut short: its stream is still there
            continue
        final = directory / (name[1:-len(STREAM_SUFFIX)] + SEGMENT_SUFFIX)
        if final.exists():  # finished, killed before the stream was removed
            path.unlink(missing_ok=True)
            continue
        rows = finish(path, final)
        path.unlink(missing_ok=True)
        if rows:
            finished.append(final)
        log.warning("recovered %d record(s) of writer %s, which is gone, into %s", rows, writer,
                    final.name if rows else "nothing (the segment was empty)")
    return finished
