"""Recorders in separate processes: sharing one directory, and a kill -9 in the middle of traffic.

Each writer is a real `Recorder` (queue, thread, segment writer) in its own process, fed
exchanges at a known rate; it prints the index of every record it has handed over, so what
was sent is known exactly even after a SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from sidecar.drift.reader import count_rows, segment_files
from sidecar.metrics import Metrics
from sidecar.segments import SegmentWriter, finished_segments
from sidecar.spool import read_batches

from .support import ROOT, wait_until

RECORDING = """
import sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from sidecar.config import RecordingConfig
from sidecar.metrics import Metrics
from sidecar.recorder import Recorder
from tests.sidecar.test_recorder import exchange
directory, tag = Path(sys.argv[1]), sys.argv[2]
rate, count, segment = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
recorder = Recorder(RecordingConfig(dir=directory, segment_records=segment), Metrics(CollectorRegistry()))
recorder.start()
print("ready", flush=True)
start = time.monotonic()
for index in range(count):
    time.sleep(max(0.0, start + index / rate - time.monotonic()))
    assert recorder.submit(exchange(request_id=f"{tag}-{index}", key=f"{tag}-{index}"))
    print(index, flush=True)
print("sent", flush=True)
sys.stdin.read()
print("stopped" if recorder.stop(30) else "lost", flush=True)
"""


class Writer:
    """A recorder process; `lines` reads its output up to a line."""

    def __init__(self, directory: Path, tag: str, rate: float, count: int, segment_records: int) -> None:
        self.tag = tag
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(RECORDING), str(directory), tag, str(rate), str(count),
             str(segment_records)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.sent = 0

    def read_until(self, done: str, deadline: float = 30.0) -> None:
        """Read lines until one is ``done`` (``ready``, ``sent``, an index); bounded in time."""
        assert self.process.stdout is not None
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            line = self.process.stdout.readline().strip()
            assert line, f"the {self.tag} writer exited early ({self.process.poll()})"
            if line.isdigit():
                self.sent = int(line) + 1
            if line == done:
                return
        raise AssertionError(f"the {self.tag} writer did not print {done!r} in {deadline}s")

    def kill(self) -> None:
        """SIGKILL, then count what it had handed over before dying."""
        self.process.send_signal(signal.SIGKILL)
        assert self.process.stdout is not None
        rest, _ = self.process.communicate(timeout=30)
        indices = [int(line) for line in rest.split() if line.isdigit()]
        if indices:
            self.sent = indices[-1] + 1

    def stop(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        assert self.process.stdout.read().strip() == "stopped"
        assert self.process.wait(30) == 0


@contextmanager
def writing(*args: object) -> Iterator[Writer]:
    writer = Writer(*args)  # type: ignore[arg-type]
    try:
        yield writer
    finally:
        if writer.process.poll() is None:
            writer.process.kill()
            writer.process.communicate(timeout=30)


def on_disk(directory: Path, tag: str) -> int:
    """Records of one writer that a kill would not lose: in finished segments and in its open stream."""
    streams = list(directory.glob(".records-*.arrows"))
    rows = [r for p in finished_segments(directory) for r in pq.read_table(p, columns=["request_id"])
            .column("request_id").to_pylist()]
    rows += [r for p in streams for b in read_batches(p) for r in b.column("request_id").to_pylist()]
    return sum(1 for r in rows if r.startswith(f"{tag}-"))


def all_ids(directory: Path) -> list[str]:
    """Every record id in the finished segments, each segment read in full (so any unreadable one fails)."""
    ids: list[str] = []
    for path in segment_files(directory):
        table = pq.read_table(path)
        table.validate(full=True)
        ids += table.column("request_id").to_pylist()
    assert count_rows(segment_files(directory)) == len(ids) == ds.dataset(directory, format="parquet").count_rows()
    return ids


def test_two_live_recorders_and_a_third_starting_share_a_directory(tmp_path: Path) -> None:
    count = 1500
    with writing(tmp_path, "a", 1000.0, count, 400) as a, writing(tmp_path, "b", 1000.0, count, 400) as b:
        a.read_until("ready")
        wait_until(lambda: list(tmp_path.glob(".records-*.arrows")), 20, "the first writer's open segment")
        b.read_until("ready")  # started while the other writes: it must not touch the other's files
        a.read_until("sent")
        b.read_until("sent")
        wait_until(lambda: on_disk(tmp_path, "a") == count and on_disk(tmp_path, "b") == count, 20,
                   "both writers' records flushed")
        opened = sorted(p.name for p in tmp_path.glob(".records-*"))
        assert len([n for n in opened if n.endswith(".arrows")]) == 2 and len(finished_segments(tmp_path)) == 6
        third = SegmentWriter(tmp_path, Metrics(CollectorRegistry()), 1000, 60.0, 1 << 30)
        assert sorted(p.name for p in tmp_path.glob(".records-*")) == sorted([*opened, f".records-{third.name}.lock"])
        third.close()
        b.kill()  # after its flush: nothing of it may be lost
        a.stop()
    fourth = SegmentWriter(tmp_path, Metrics(CollectorRegistry()), 1000, 60.0, 1 << 30)  # finishes b's segment
    fourth.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in finished_segments(tmp_path)]
    ids = all_ids(tmp_path)
    assert sorted(ids) == sorted(f"{tag}-{i}" for tag in "ab" for i in range(count))


def test_a_kill_9_mid_traffic_loses_at_most_a_second_of_records(tmp_path: Path) -> None:
    rate = 500.0
    with writing(tmp_path, "k", rate, 100_000, 10_000) as victim:  # the default segment size: no rotation
        victim.read_until("ready")
        victim.read_until("1400")
        victim.kill()
    assert victim.process.returncode == -signal.SIGKILL
    assert finished_segments(tmp_path) == [] and len(list(tmp_path.glob(".records-*.arrows"))) == 1
    SegmentWriter(tmp_path, Metrics(CollectorRegistry()), 10_000, 60.0, 1 << 30).close()
    ids = all_ids(tmp_path)
    kept = len(ids)
    assert ids == [f"k-{i}" for i in range(kept)]  # in order, none twice, no gap: only the tail is lost
    lost = victim.sent - kept
    assert 0 <= lost <= rate * 1.5, f"{lost} of {victim.sent} records lost"
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in finished_segments(tmp_path)]
