"""Parquet segments: rotation, atomic finish, crash safety, the disk quota, write errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from sidecar.metrics import Metrics
from sidecar.records import SCHEMA
from sidecar.segments import SegmentWriter, finished_segments
from sidecar.tables import Record, ResponseRecord
from sidecar.tensors import tensor_value

from .support import ROOT


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


def test_segments_are_written_under_a_hidden_name_until_finished(tmp_path: Path) -> None:
    w = writer(tmp_path, Metrics(CollectorRegistry()), row_group_records=1)
    w.append(record(0), 100)
    (temporary,) = tmp_path.glob(".records-*.parquet.tmp")
    assert finished_segments(tmp_path) == []
    finished = w.rotate()
    assert finished is not None and finished.name == temporary.name[1:-len(".tmp")]
    assert not temporary.exists()


CRASHING_WRITER = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from sidecar.metrics import Metrics
from sidecar.segments import SegmentWriter
from tests.sidecar.test_segments import record
w = SegmentWriter(Path(sys.argv[1]), Metrics(CollectorRegistry()), 2, 3600.0, 1 << 30, row_group_records=1)
for index in range(5):
    w.append(record(index), 100)
print("written", flush=True)
sys.stdin.read()
"""


def test_a_crash_loses_only_the_unfinished_segment(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CRASHING_WRITER), str(tmp_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "written"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    (leftover,) = tmp_path.glob(".records-*.tmp")
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(leftover)  # no footer: this is why it never carries a finished name
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1", "r2", "r3"]
    writer(tmp_path, Metrics(CollectorRegistry()))  # the next run cleans up
    assert not leftover.exists() and len(finished_segments(tmp_path)) == 2


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
    os.rmdir(directory)
    directory.write_text("not a directory any more")
    w.append(record(0), 100)
    w.append(record(1), 100)
    assert count(metrics, "sidecar_records_lost_total", reason="write_error") == 2
    directory.unlink()
    directory.mkdir()
    w.append(record(2), 100)
    w.close()
    assert ds.dataset(directory, format="parquet").to_table().column("request_id").to_pylist() == ["r2"]
