"""``shadowserve-drift recover``: what killed sidecars left open becomes segments; live writers' files stay."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sidecar.drift.cli import main
from sidecar.records.segments import finished_segments
from sidecar.records.spool import OwnerLock, Stream, lock_path, segment_stem
from sidecar.records.tables import to_table

from ..sidecar.records.test_segments import record
from ..sidecar.records.test_spool import dead_writer


def test_recover_finishes_dead_writers_below_the_root_and_leaves_live_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead_dir, live_dir = tmp_path / "live" / "pod-a", tmp_path / "live" / "pod-b"
    dead_dir.mkdir(parents=True)
    live_dir.mkdir(parents=True)
    dead_writer(dead_dir, [3, 4])  # a pod killed with its segment open, replaced under another name
    lock = OwnerLock.take(lock_path(live_dir, "pod-b-7-89abcdef"), create=True)  # a sidecar still running
    assert lock is not None
    stream = Stream(live_dir / f".{segment_stem('pod-b-7-89abcdef', 1)}.arrows")
    stream.write(to_table([record(i) for i in range(5)]))
    live_files = sorted(p.name for p in live_dir.iterdir())
    try:
        assert main(["recover", str(tmp_path / "live")]) == 0
        segments = finished_segments(dead_dir)
        assert [pq.read_table(p).num_rows for p in segments] == [7]
        assert sorted(p.name for p in live_dir.iterdir()) == live_files  # not touched
        assert "1 segment(s) recovered" in capsys.readouterr().out
        assert main(["recover", str(tmp_path / "live")]) == 0  # again: nothing left to do
        assert "0 segment(s) recovered" in capsys.readouterr().out
    finally:
        lock.release(remove=False)


def test_recover_of_a_missing_directory_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recover", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory of records" in capsys.readouterr().err
