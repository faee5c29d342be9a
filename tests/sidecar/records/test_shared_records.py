"""Writers in separate processes: real sidecars sharing one directory, and a kill -9 in the middle of traffic.

For the kill, the writer is a real `Recorder` (queue, thread, segment writer) in its own
process, fed exchanges at a known rate; it prints the index of every record it has handed
over, so what was sent is known exactly even after a SIGKILL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.drift.reader import count_rows, segment_files
from sidecar.records.metrics import RecordMetrics as Metrics
from sidecar.records.segments import SegmentWriter, finished_segments
from sidecar.records.spool import read_batches

from ..support import ROOT, SidecarProcess, Stub, wait_until

RECORDING = """
import sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from sidecar.config.file import RecordingConfig
from sidecar.records.metrics import RecordMetrics as Metrics
from sidecar.records.recorder import Recorder
from tests.sidecar.records.test_recorder import exchange
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
    writer = Writer(*args)  # type: ignore[arg-type]  # Writer's own parameters, passed through
    try:
        yield writer
    finally:
        if writer.process.poll() is None:
            writer.process.kill()
            writer.process.communicate(timeout=30)


def on_disk(directory: Path, tag: str) -> int:
    """Records of one writer that a kill would not lose: in finished segments and in its open stream.

    Finished segments are listed first: a segment finished meanwhile is then missed (the count
    is low, and the caller polls again), never counted twice; -1 when a stream went under us.
    """
    finished = finished_segments(directory)
    streams = list(directory.glob(".records-*.arrows"))
    try:
        rows = [r for p in finished for r in pq.read_table(p, columns=["request_id"]).column("request_id").to_pylist()]
        rows += [r for p in streams for b in read_batches(p) for r in b.column("request_id").to_pylist()]
    except FileNotFoundError:  # finished (or deleted by the quota) between the listing and the read
        return -1
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


def model_stub() -> Stub:
    """A v2 model server that answers every inference with the same scores."""
    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"model_name": request.match_info["model"], "model_version": "1", "id": body["id"],
                                  "outputs": [{"name": "OUT", "datatype": "FP32", "shape": [1, 2],
                                               "data": [0.25, 0.75]}]})

    def routes(app: web.Application) -> None:
        app.router.add_post("/v2/models/{model}/infer", infer)
    return Stub(routes)


def sidecar(directory: Path, config: Path, primary: Stub, shadow: Stub) -> SidecarProcess:
    process = SidecarProcess("--listen", "127.0.0.1:0", "--grpc-listen", "off", "--metrics-port", "0",
                             "--primary", primary.url, "--shadow", f"v2={shadow.url}", "--record-dir", str(directory),
                             "--config", str(config), "--drain-timeout-secs", "0", "--shadow-drain-secs", "1")
    stderr = process.process.stderr
    assert stderr is not None
    threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()  # keep its log pipe moving
    return process


def send(process: SidecarProcess, tag: str, indices: range) -> None:
    for index in indices:
        body = json.dumps({"id": f"{tag}-{index}", "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 2],
                                                               "data": [1.0, float(index)]}]}).encode()
        request = urllib.request.Request(f"http://{process.http}/v2/models/m/infer", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


def test_live_sidecars_sharing_a_directory_never_touch_each_others_records(tmp_path: Path) -> None:
    """The issue's case: a replica starting next to a live one, then a kill -9 and another start."""
    records, config, count = tmp_path / "records", tmp_path / "sidecar.json", 150
    config.write_text(json.dumps({"recording": {"segment_records": 60}}))
    primary, shadow = model_stub(), model_stub()
    started: list[SidecarProcess] = []
    try:
        a = sidecar(records, config, primary, shadow)
        started.append(a)
        send(a, "a", range(50))
        wait_until(lambda: on_disk(records, "a") == 50, 20, "the first replica's open segment on disk")
        (open_segment,) = records.glob(".records-*.arrows")
        b = sidecar(records, config, primary, shadow)  # starts next to a live writer with an open segment
        started.append(b)
        send(b, "b", range(count))
        wait_until(lambda: on_disk(records, "b") == count, 20, "the second replica's records on disk")
        assert sum(batch.num_rows for batch in read_batches(open_segment)) == 50  # untouched by b's start
        send(a, "a", range(50, count))
        wait_until(lambda: on_disk(records, "a") == count, 20, "the first replica's records on disk")
        live = sorted(p.name for p in records.glob(".records-*.arrows"))
        assert len(live) == 2 and len(finished_segments(records)) == 4
        b.kill()  # SIGKILL: its open segment (30 records) stays as a stream
        c = sidecar(records, config, primary, shadow)  # finishes b's segment, leaves a's alone
        started.append(c)
        # the segment is written first and its stream removed after it (a crash between keeps the stream):
        # wait for both, then only a's stream is left
        wait_until(lambda: len(finished_segments(records)) == 5 and not any(
            f"-{b.process.pid}-" in p.name for p in records.glob(".records-*.arrows")), 20,
            "the dead replica's segment finished and its stream removed")
        assert [n for n in live if n in {p.name for p in records.glob(".records-*.arrows")}] == [
            n for n in live if f"-{a.process.pid}-" in n]
        for process in (a, c):
            process.process.send_signal(signal.SIGTERM)
            assert process.finish(30) == 0
    finally:
        for process in started:
            process.kill()
        primary.stop()
        shadow.stop()
    assert sorted(p.name for p in records.iterdir()) == [p.name for p in finished_segments(records)]
    ids = all_ids(records)
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
