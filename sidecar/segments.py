"""Parquet segment files in a directory, written so that a crash never corrupts a finished one.

A segment is written under a hidden temporary name (``.records-….parquet.tmp``, which
pyarrow, pandas and DuckDB skip), closed, fsynced and renamed to ``records-….parquet``
when it is complete: after ``segment_records`` records or ``segment_secs`` seconds. A
crash loses the segment being written, never a finished one; temporary files left by a
crash are removed at start. Names start with the UTC time, so sorting them sorts by age,
across replicas too; a disk quota deletes the oldest finished segments first.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq

from .metrics import Metrics
from .records import SCHEMA, SEGMENT_SUFFIX
from .tables import Record, to_table

log = logging.getLogger(__name__)

PREFIX = "records-"
ROW_GROUP_RECORDS = 1000
ROW_GROUP_BYTES = 32 * 1024 * 1024


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finished_segments(directory: Path) -> list[Path]:
    """The finished segments of a directory, oldest first."""
    return sorted(p for p in directory.glob(f"{PREFIX}*{SEGMENT_SUFFIX}") if p.is_file())


class SegmentWriter:
    """Appends records to the current segment and rotates it; used from one thread only."""

    def __init__(self, directory: Path, metrics: Metrics, segment_records: int, segment_secs: float,
                 max_bytes: int, row_group_records: int = ROW_GROUP_RECORDS) -> None:
        self.directory = directory
        self.row_group_records = row_group_records
        self.metrics = metrics
        self.segment_records = segment_records
        self.segment_secs = segment_secs
        self.max_bytes = max_bytes
        self._host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:63] or "host"
        self._seq = 0
        self._buffer: list[Record] = []
        self._buffer_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._records = 0  # in the current segment, flushed or buffered
        self._opened = 0.0  # monotonic time of the segment's first record
        directory.mkdir(parents=True, exist_ok=True)
        leftovers = list(directory.glob(f".{PREFIX}*{SEGMENT_SUFFIX}.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            log.warning("removed %d unfinished segment(s) left in %s by an earlier run", len(leftovers), directory)

    @property
    def pending(self) -> int:
        """Records not yet in a finished segment."""
        return self._records

    def append(self, record: Record, size: int) -> None:
        if self._records == 0:
            self._opened = time.monotonic()
        self._buffer.append(record)
        self._buffer_bytes += size
        self._records += 1
        if len(self._buffer) >= self.row_group_records or self._buffer_bytes >= ROW_GROUP_BYTES:
            self._flush()
        if self._records >= self.segment_records:
            self.rotate()

    def seconds_to_rotation(self) -> float | None:
        """How long until the current segment is due by age; None when it is empty."""
        if self._records == 0:
            return None
        return max(0.0, self._opened + self.segment_secs - time.monotonic())

    def rotate_if_due(self) -> None:
        due = self.seconds_to_rotation()
        if due is not None and due <= 0:
            self.rotate()

    def _flush(self) -> None:
        if not self._buffer:
            return
        records, self._buffer, self._buffer_bytes = self._buffer, [], 0
        try:
            table = to_table(records)
            if self._writer is None:
                self._seq += 1
                stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
                name = f"{PREFIX}{stamp}-{self._host}-{os.getpid()}-{self._seq:06d}{SEGMENT_SUFFIX}"
                self._final = self.directory / name
                self._tmp = self.directory / f".{name}.tmp"
                self.directory.mkdir(parents=True, exist_ok=True)  # recreated if it was removed
                self._writer = pq.ParquetWriter(str(self._tmp), SCHEMA, compression="zstd")
            self._writer.write_table(table)
        except Exception as exc:  # noqa: BLE001 - disk, Arrow or an unencodable value: never stop recording
            self._fail(exc)

    def rotate(self) -> Path | None:
        """Finish the current segment (fsync, rename); returns its path, or None if it was empty."""
        self._flush()
        if self._writer is None or self._tmp is None or self._final is None:
            return None
        tmp, final, count = self._tmp, self._final, self._records
        try:
            self._writer.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except Exception as exc:  # noqa: BLE001 - see _flush
            self._fail(exc)
            return None
        self._writer = self._tmp = self._final = None
        self._records = 0
        self.metrics.records_written.inc(count)
        self.metrics.segments_rotated.inc()
        self._enforce_quota()
        return final

    def _fail(self, exc: BaseException) -> None:
        """Drop the current segment: its records are counted lost, the directory stays clean."""
        log.error("cannot write records to %s: %s; %d record(s) lost", self.directory, exc, self._records)
        self.metrics.records_lost.labels("write_error").inc(self._records)
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001 - the segment is being dropped anyway
            pass
        if self._tmp is not None:
            try:
                self._tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the directory itself is gone or unusable; the next segment tries again
        self._writer = self._tmp = self._final = None
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
        """Finish the current segment, if it holds any record."""
        self.rotate()
