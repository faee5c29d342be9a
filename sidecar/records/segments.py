"""Parquet segment files in a directory, shared by writers, written so that a crash costs at most a second.

Records are appended to the open segment, an Arrow IPC stream (see `sidecar.records.spool`), whose
batches are written through to the OS when ``row_group_records`` records are buffered and
at the latest ``flush_secs`` after the first of them: a kill -9 loses at most that much. The
same batches go, in row groups, to Parquet under a hidden temporary name; after
``segment_records`` records or ``segment_secs`` seconds that is fsynced and renamed to
``records-….parquet`` and the stream removed, so a finished segment is never incomplete.
Each writer holds a lock of its own for its life and touches only its own files; at start it
finishes the open segments of writers that are gone (their locks are free) and leaves those
of live ones alone, so replicas can share a volume.
Names start with the UTC time, so sorting them sorts by age, across replicas too; a disk
quota deletes the oldest finished segments first.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .metrics import RecordMetrics
from .schema import SEGMENT_SUFFIX
from .spool import (
    PREFIX,
    ROW_GROUP_BYTES,
    ROW_GROUP_RECORDS,
    STREAM_SUFFIX,
    OwnerLock,
    ParquetBuilder,
    Stream,
    lock_path,
    recover,
    segment_stem,
    writer_name,
)
from .tables import Record, to_table

log = logging.getLogger(__name__)

FLUSH_SECS = 1.0  # the most a kill -9 may cost


def finished_segments(directory: Path) -> list[Path]:
    """The finished segments of a directory, oldest first."""
    return sorted(p for p in directory.glob(f"{PREFIX}*{SEGMENT_SUFFIX}") if p.is_file())


class SegmentWriter:
    """Appends records to the current segment, flushes and rotates it; used from one thread only."""

    def __init__(self, directory: Path, metrics: RecordMetrics, segment_records: int, segment_secs: float,
                 max_bytes: int, row_group_records: int = ROW_GROUP_RECORDS, flush_secs: float = FLUSH_SECS,
                 finish_dead: bool = True) -> None:
        self.directory = directory
        self.row_group_records = row_group_records
        self.metrics = metrics
        self.segment_records = segment_records
        self.segment_secs = segment_secs
        self.max_bytes = max_bytes
        self.flush_secs = flush_secs
        self.name = writer_name()
        self._seq = 0
        self._buffer: list[Record] = []
        self._buffer_bytes = 0
        self._buffered = 0.0  # monotonic time of the oldest buffered record
        self._stream: Stream | None = None  # what a kill -9 leaves
        self._parquet: ParquetBuilder | None = None  # what rotation renames
        self._records = 0  # in the current segment, flushed or buffered
        self._opened = 0.0  # monotonic time of the segment's first record
        self._lock: OwnerLock | None = None
        self._unlocked = False  # warned that the directory cannot be locked
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._own_lock()
        except OSError as exc:  # an unusable directory: every write counts its losses and tries again
            log.error("cannot prepare the record directory %s: %s", directory, exc)
        if finish_dead:
            self.finish_dead_writers()

    def finish_dead_writers(self) -> list[Path]:
        """Finish the open segments that writers which are gone left in the directory (see `sidecar.records.spool`)."""
        try:
            recovered = recover(self.directory, own=self.name)
        except OSError as exc:
            log.error("cannot recover the records in %s: %s", self.directory, exc)
            return []
        if recovered:
            log.warning("finished %d segment(s) left open in %s by writers that are gone", len(recovered),
                        self.directory)
            self._enforce_quota()
        return recovered

    def _own_lock(self) -> None:
        """Hold this writer's lock; taken again if the directory was removed and made anew."""
        if self._lock is not None and self._lock.held():
            return
        if self._lock is not None:
            self._lock.release(remove=False)
        try:
            self._lock = OwnerLock.take(lock_path(self.directory, self.name), create=True)
        except OSError as exc:  # no flock here (ENOLCK): others leave files without a lock alone, so go on
            self._lock = None
            if not self._unlocked:
                log.warning("cannot lock %s (%s): the open segment of this writer will not be recovered by "
                            "another after a crash", self.directory, exc)
            self._unlocked = True

    @property
    def pending(self) -> int:
        """Records not yet in a finished segment."""
        return self._records

    @property
    def unflushed(self) -> int:
        """Records only in memory: what this process dying now would lose (the rest is recovered)."""
        return len(self._buffer)

    def append(self, record: Record, size: int) -> None:
        now = time.monotonic()
        if self._records == 0:
            self._opened = now
        if not self._buffer:
            self._buffered = now
        self._buffer.append(record)
        self._buffer_bytes += size
        self._records += 1
        if len(self._buffer) >= self.row_group_records or self._buffer_bytes >= ROW_GROUP_BYTES:
            self._flush()
        if self._records >= self.segment_records:
            self.rotate()

    def seconds_to_due(self) -> float | None:
        """How long until the buffer is due to be flushed or the segment to be finished; None when empty."""
        now = time.monotonic()
        waits = [self._buffered + self.flush_secs - now] if self._buffer else []
        if self._records:
            waits.append(self._opened + self.segment_secs - now)
        return max(0.0, min(waits)) if waits else None

    def tick(self) -> None:
        """Flush and rotate what is due by age."""
        now = time.monotonic()
        if self._records and now >= self._opened + self.segment_secs:
            self.rotate()
        elif self._buffer and now >= self._buffered + self.flush_secs:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        records, self._buffer, self._buffer_bytes = self._buffer, [], 0
        try:
            table = to_table(records)
            if self._stream is None or self._parquet is None:
                self._seq += 1
                stem = segment_stem(self.name, self._seq)
                self.directory.mkdir(parents=True, exist_ok=True)  # recreated if it was removed
                self._own_lock()
                self._parquet = ParquetBuilder(self.directory / f"{stem}{SEGMENT_SUFFIX}", self.row_group_records)
                self._stream = Stream(self.directory / f".{stem}{STREAM_SUFFIX}")
            self._stream.write(table)
            self._parquet.add(table)
        except Exception as exc:  # noqa: BLE001 - disk, Arrow or an unencodable value: never stop recording
            self._fail(exc)

    def rotate(self) -> Path | None:
        """Finish the current segment (Parquet, fsync, rename); returns its path, or None if it was empty."""
        self._flush()
        if self._stream is None or self._parquet is None:
            return None
        stream, final, count = self._stream, self._parquet.final, self._records
        try:
            self._parquet.finish()
            stream.close()
            stream.path.unlink()  # only now: until the rename, the stream is what a crash leaves
        except Exception as exc:  # noqa: BLE001 - see _flush
            self._fail(exc)
            return None
        self._stream = self._parquet = None
        self._records = 0
        self.metrics.records_written.inc(count)
        self.metrics.segments_rotated.inc()
        self._enforce_quota()
        return final

    def _fail(self, exc: BaseException) -> None:
        """Drop the current segment: its records are counted lost, the directory stays clean."""
        log.error("cannot write records to %s: %s; %d record(s) lost", self.directory, exc, self._records)
        self.metrics.records_lost.labels("write_error").inc(self._records)
        if self._parquet is not None:
            self._parquet.abandon()
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - the segment is being dropped anyway
                pass
            try:
                self._stream.path.unlink(missing_ok=True)
            except OSError:
                pass  # the directory itself is gone or unusable; the next segment tries again
        self._stream = self._parquet = None
        self._buffer, self._buffer_bytes, self._records = [], 0, 0

    def _enforce_quota(self) -> None:
        sizes: dict[Path, int] = {}
        for path in finished_segments(self.directory):
            try:
                sizes[path] = path.stat().st_size
            except OSError:
                continue  # deleted meanwhile, by another replica's quota
        total = sum(sizes.values())
        for path in list(sizes)[:-1]:  # the newest always stays
            if total <= self.max_bytes:
                break
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot delete %s for the disk quota: %s", path, exc)
                continue
            total -= sizes[path]
            self.metrics.segments_deleted.inc()
            log.info("deleted %s to keep the record directory under %d bytes", path.name, self.max_bytes)

    def close(self) -> None:
        """Finish the current segment, if it holds any record, and give up the lock."""
        self.rotate()
        if self._lock is not None:
            self._lock.release(remove=True)
            self._lock = None
