"""Parquet segments: rotation, atomic finish, time-bounded flushes, crash recovery, sharing, the quota, write errors."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from sidecar.drift.errors import DriftError
from sidecar.drift.reader import segment_files
from sidecar.records.decode import tensor_value
from sidecar.records.metrics import RecordMetrics as Metrics
from sidecar.records.schema import SCHEMA
from sidecar.records.segments import SegmentWriter, finished_segments
from sidecar.records.spool import read_batches
from sidecar.records.tables import Record, ResponseRecord

from ..support import ROOT


def record(index: int, width: int = 10) -> Record:
    out = tensor_value("OUT", "FP32", np.full((1, width), index, dtype=np.float32))
    return Record(f"r{index}", 1_700_000_000 + index, "m", "http", None,
                  ResponseRecord("primary", "1", 200, 1.0, None, [out]), [])


def writer(directory: Path, metrics: Metrics, **kwargs: int | float) -> SegmentWriter:
    options: dict = {"segment_records": 1000, "segment_secs": 3600.0, "max_bytes": 1 << 30, **kwargs}
    return SegmentWriter(directory, metrics, **options)


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_rotation_by_records_and_the_directory_reads_as_one_dataset(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    w = writer(tmp_path, metrics, segment_records=3)
    for index in range(7):
        w.append(record(index), 100)
    assert len(finished_segments(tmp_path)) == 2 and w.pending == 1
    w.close()
    segments = finished_segments(tmp_path)
    assert len(segments) == 3 and not list(tmp_path.glob(".*"))
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert table.schema.equals(SCHEMA)
    assert sorted(table.column("request_id").to_pylist(), key=lambda r: int(r[1:])) == [f"r{i}" for i in range(7)]
    assert pq.read_table(segments[0]).column("request_id").to_pylist() == ["r0", "r1", "r2"]
    assert count(metrics, "sidecar_records_written_total") == 7
    assert count(metrics, "sidecar_segments_rotated_total") == 3


def test_the_open_segment_is_a_hidden_stream_until_finished(tmp_path: Path) -> None:
    w = writer(tmp_path, Metrics(CollectorRegistry()), row_group_records=1)
    w.append(record(0), 100)
    (stream,) = tmp_path.glob(".records-*.arrows")
    assert [p.name for p in tmp_path.glob(".*.lock")] == [f".records-{w.name}.lock"]
    assert [b.num_rows for b in read_batches(stream)] == [1]  # on disk before the segment is finished
    assert finished_segments(tmp_path) == []
    with pytest.raises(DriftError, match="still being written"):
        segment_files(tmp_path)  # the offline reader skips it, as pyarrow datasets do
    assert ds.dataset(tmp_path, format="parquet").files == []
    finished = w.rotate()
    assert finished is not None and finished.name == stream.name[1:-len(".arrows")] + ".parquet"
    assert w.name in finished.name and not stream.exists()
    w.close()
    assert not list(tmp_path.glob(".*"))  # the lock goes with the writer


def test_buffered_records_reach_the_disk_within_the_flush_interval(tmp_path: Path) -> None:
    w = writer(tmp_path, Metrics(CollectorRegistry()), flush_secs=0.2)
    w.append(record(0), 100)
    w.append(record(1), 100)
    due = w.seconds_to_due()
    assert due is not None and 0.1 < due <= 0.2
    assert not list(tmp_path.glob(".records-*.arrows"))  # still buffered
    time.sleep(due)
    w.tick()
    (stream,) = tmp_path.glob(".records-*.arrows")
    assert sum(b.num_rows for b in read_batches(stream)) == 2 and w.pending == 2
    rotation = w.seconds_to_due()
    assert rotation is not None and rotation > 3000  # now only the rotation is due
    w.close()


CRASHING_WRITER = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from sidecar.drift.errors import DriftError
from sidecar.drift.reader import segment_files
from sidecar.records.metrics import RecordMetrics as Metrics
from sidecar.records.segments import SegmentWriter
from tests.sidecar.records.test_segments import record
w = SegmentWriter(Path(sys.argv[1]), Metrics(CollectorRegistry()), 2, 3600.0, 1 << 30, row_group_records=1)
for index in range(5):
    w.append(record(index), 100)
print("written", flush=True)
sys.stdin.read()
"""


def test_a_kill_loses_nothing_written_and_the_next_writer_finishes_the_open_segment(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CRASHING_WRITER), str(tmp_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "written"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    (stream,) = tmp_path.glob(".records-*.arrows")
    (lock,) = tmp_path.glob(".records-*.lock")
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1", "r2", "r3"]
    metrics = Metrics(CollectorRegistry())
    w = writer(tmp_path, metrics)  # the next run takes the dead writer's lock and finishes its segment
    assert not stream.exists() and not lock.exists()
    segments = finished_segments(tmp_path)
    assert len(segments) == 3 and segments[-1].name == stream.name[1:-len(".arrows")] + ".parquet"
    assert pq.read_table(segments[-1]).column("request_id").to_pylist() == ["r4"]
    recovered = pq.read_schema(segments[-1])
    assert recovered.equals(SCHEMA) and recovered.metadata == SCHEMA.metadata
    assert recovered.equals(pq.read_schema(segments[0]), check_metadata=True)  # as its writer would have left it
    assert count(metrics, "sidecar_records_written_total") == 0  # another writer's records
    w.close()
    assert not list(tmp_path.glob(".*"))


def test_a_starting_writer_leaves_a_live_writers_files_alone(tmp_path: Path) -> None:
    live = writer(tmp_path, Metrics(CollectorRegistry()), row_group_records=1)
    live.append(record(0), 100)
    before = sorted(p.name for p in tmp_path.iterdir())
    other = writer(tmp_path, Metrics(CollectorRegistry()))  # a second descriptor: flock tells them apart
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, f".records-{other.name}.lock"])
    other.append(record(1), 100)
    other.close()
    live.append(record(2), 100)
    live.close()
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1", "r2"]
    assert not list(tmp_path.glob(".*"))


def test_the_quota_deletes_the_oldest_segments_first(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    probe = writer(tmp_path / "probe", metrics, segment_records=1)
    probe.append(record(0, width=2000), 100)
    size = finished_segments(tmp_path / "probe")[0].stat().st_size
    w = writer(tmp_path / "records", metrics, segment_records=1, max_bytes=int(size * 2.5))
    for index in range(5):
        w.append(record(index, width=2000), 100)
    kept = finished_segments(tmp_path / "records")
    assert [pq.read_table(p).column("request_id")[0].as_py() for p in kept] == ["r3", "r4"]
    assert count(metrics, "sidecar_segments_deleted_total") == 3
    assert sum(p.stat().st_size for p in kept) <= size * 2.5


def test_a_write_error_counts_the_records_lost_and_the_writer_goes_on(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    directory = tmp_path / "records"
    w = writer(directory, metrics, segment_records=2)
    shutil.rmtree(directory)
    directory.write_text("not a directory any more")
    w.append(record(0), 100)
    w.append(record(1), 100)
    assert count(metrics, "sidecar_records_lost_total", reason="write_error") == 2
    directory.unlink()
    directory.mkdir()
    w.append(record(2), 100)
    w.append(record(3), 100)
    assert [p.name for p in directory.glob(".*")] == [f".records-{w.name}.lock"]  # taken again in the new directory
    w.close()
    assert ds.dataset(directory, format="parquet").to_table().column("request_id").to_pylist() == ["r2", "r3"]
    assert not list(directory.glob(".*"))
