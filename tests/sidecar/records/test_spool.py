"""The open segment's IPC stream, writers' locks and the recovery of dead writers' segments."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.records.segments import finished_segments
from sidecar.records.spool import (
    OwnerLock,
    Stream,
    lock_path,
    read_batches,
    recover,
    segment_stem,
)
from sidecar.records.tables import to_table

from .test_segments import record

DEAD = "pod-a-1-0123abcd"


def dead_writer(directory: Path, batches: list[int], writer: str = DEAD) -> tuple[Path, list[int]]:
    """A writer killed with its segment open: a lock file nobody holds, and an unfinished stream.

    Returns the stream and the file's size after each batch (where a later batch starts).
    """
    lock_path(directory, writer).touch()
    stream = Stream(directory / f".{segment_stem(writer, 1)}.arrows")
    ends, first = [], 0
    for rows in batches:
        stream.write(to_table([record(first + i) for i in range(rows)]))
        ends.append(stream.path.stat().st_size)
        first += rows
    return stream.path, ends  # never closed: no end-of-stream marker, as after a kill -9


def request_ids(paths: list[Path]) -> list[str]:
    return [rid for path in paths for rid in pq.read_table(path).column("request_id").to_pylist()]


def test_a_dead_writers_stream_becomes_its_segment(tmp_path: Path) -> None:
    path, _ = dead_writer(tmp_path, [3, 4])
    assert recover(tmp_path) == [tmp_path / (path.name[1:-len(".arrows")] + ".parquet")]
    assert request_ids(finished_segments(tmp_path)) == [f"r{i}" for i in range(7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in finished_segments(tmp_path)]


@pytest.mark.parametrize("cut", ["in_the_schema", "after_one_batch", "one_byte_in", "halfway", "one_byte_short"])
def test_a_torn_tail_is_recovered_up_to_the_last_complete_batch(tmp_path: Path, cut: str) -> None:
    path, ends = dead_writer(tmp_path, [3, 4, 5])
    size = {"in_the_schema": 7, "after_one_batch": ends[0], "one_byte_in": ends[1] + 1,
            "halfway": (ends[1] + ends[2]) // 2, "one_byte_short": ends[2] - 1}[cut]
    os.truncate(path, size)
    kept = {"in_the_schema": 0, "after_one_batch": 3}.get(cut, 7)
    assert sum(b.num_rows for b in read_batches(path)) == kept
    recovered = recover(tmp_path)
    assert request_ids(recovered) == [f"r{i}" for i in range(kept)]
    assert len(recovered) == (1 if kept else 0)
    assert not path.exists() and not lock_path(tmp_path, DEAD).exists()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.floats(0.0, 1.0))
def test_wherever_a_kill_cuts_the_stream_exactly_the_complete_batches_are_kept(sizes: list[int],
                                                                              where: float) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        path, ends = dead_writer(directory, sizes)
        cut = int(where * ends[-1])
        os.truncate(path, cut)
        kept = sum(rows for rows, end in zip(sizes, ends, strict=True) if end <= cut)
        assert request_ids(recover(directory)) == [f"r{i}" for i in range(kept)]
        assert list(directory.glob(".*")) == []


def test_an_empty_stream_leaves_nothing(tmp_path: Path) -> None:
    path, _ = dead_writer(tmp_path, [])
    assert path.stat().st_size == 0  # killed before its first flush
    assert recover(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_a_live_writers_lock_cannot_be_taken_and_its_files_stay(tmp_path: Path) -> None:
    path, _ = dead_writer(tmp_path, [2])
    held = OwnerLock.take(lock_path(tmp_path, DEAD))
    assert held is not None and held.held()
    assert OwnerLock.take(lock_path(tmp_path, DEAD)) is None  # another descriptor, as another process
    before = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert recover(tmp_path) == []
    assert {p.name: p.stat().st_size for p in tmp_path.iterdir()} == before
    held.release(remove=False)
    assert len(recover(tmp_path)) == 1 and not path.exists()


def test_a_lock_removed_by_the_last_holder_is_not_taken(tmp_path: Path) -> None:
    path = lock_path(tmp_path, DEAD)
    path.touch()
    fd = os.open(path, os.O_RDWR)  # opened by a second recoverer before the first removes it
    try:
        first = OwnerLock.take(path)
        assert first is not None
        first.release(remove=True)
        late = OwnerLock(path, os.dup(fd))
        assert not late.held() and OwnerLock.take(path) is None
        late.release(remove=True)
    finally:
        os.close(fd)
    assert OwnerLock.take(path, create=True) is not None  # a new writer of that name starts clean


def test_a_segment_finished_before_the_kill_is_not_written_twice(tmp_path: Path) -> None:
    path, _ = dead_writer(tmp_path, [2])
    (first,) = recover(tmp_path)
    second, _ = dead_writer(tmp_path, [2])  # the stream again, as if killed between rename and unlink
    os.replace(second, path)
    assert recover(tmp_path) == [] and not path.exists()
    assert finished_segments(tmp_path) == [first] and request_ids([first]) == ["r0", "r1"]


def test_a_conversion_cut_short_is_done_again(tmp_path: Path) -> None:
    path, _ = dead_writer(tmp_path, [2])
    partial = tmp_path / f"{path.name[:-len('.arrows')]}.parquet.tmp"
    partial.write_bytes(b"PAR1 half a file")
    (segment,) = recover(tmp_path)
    assert request_ids([segment]) == ["r0", "r1"] and not partial.exists()


def test_files_without_a_writers_lock_are_left_alone(tmp_path: Path) -> None:
    path, _ = dead_writer(tmp_path, [2])
    lock_path(tmp_path, DEAD).unlink()
    older = tmp_path / ".records-20261201T000000000000Z-host-1-000001.parquet.tmp"  # an earlier release's name
    older.write_bytes(b"PAR1")
    assert recover(tmp_path) == []
    assert path.exists() and older.exists()


def test_each_writer_recovers_only_its_own_files(tmp_path: Path) -> None:
    dead, _ = dead_writer(tmp_path, [2], writer="b-" + DEAD)  # a name that ends like another's
    live, _ = dead_writer(tmp_path, [3])
    held = OwnerLock.take(lock_path(tmp_path, DEAD))
    assert held is not None
    (segment,) = recover(tmp_path)
    assert "b-" + DEAD in segment.name and not dead.exists() and live.exists()
    held.release(remove=False)
