"""The record writer: what the crash-safe open segment costs, and what a kill -9 loses.

    python benchmarks/records_bench.py                  # both parts, a table each
    python benchmarks/records_bench.py --records 20000 --kills 5

1. Throughput of the recorder thread's writing: `SegmentWriter` (an Arrow IPC stream written
   through at least once a second, and Parquet row groups) against building the same Parquet
   alone (`ParquetBuilder`, the writer without the stream, as it was before the stream), for
   narrow records (one 10-float output, primary and one shadow) and wide ones (1,000 floats in
   the inputs and in both outputs); the largest single `append` is the pause a rotation costs.
   Best of ``--repeat`` interleaved runs of each.
2. Loss on kill -9: a `Recorder` in a subprocess fed at a fixed rate, killed at a random point
   after 2 s; the next writer recovers the directory and the records found are counted against
   those handed over (the subprocess prints each index after `submit`).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.records.decode import tensor_value
from sidecar.records.metrics import RecordMetrics as Metrics
from sidecar.records.segments import SegmentWriter
from sidecar.records.spool import ParquetBuilder
from sidecar.records.tables import Record, ResponseRecord, to_table
from tests.sidecar.records.test_shared_records import all_ids, writing


def record(index: int, width: int) -> Record:
    out = tensor_value("OUT", "FP32", np.random.default_rng(index).random((1, width), dtype=np.float32))
    return Record(f"r{index}", 1.7e9 + index, "m", "http", [out] if width > 10 else None,
                  ResponseRecord("primary", "1", 200, 1.0, None, [out]),
                  [ResponseRecord("v2", "2", 200, 1.0, None, [out])])


def writer_rate(count: int, width: int, stream: bool) -> tuple[float, float]:
    """Records/s and the largest append in ms, writing ``count`` records in 10,000-record segments."""
    records = [record(i, width) for i in range(1000)]
    directory = Path(tempfile.mkdtemp())
    try:
        worst = 0.0
        started = time.perf_counter()
        if stream:
            writer = SegmentWriter(directory, Metrics(CollectorRegistry()), 10_000, 3600.0, 1 << 40)
            for index in range(count):
                before = time.perf_counter()
                writer.append(records[index % 1000], 100)
                worst = max(worst, time.perf_counter() - before)
            writer.close()
        else:  # the same Parquet, built from the same 1,000-record tables, without the stream
            builder, rows = ParquetBuilder(directory / "a.parquet"), 0
            for first in range(0, count, 1000):
                before = time.perf_counter()
                builder.add(to_table(records[:min(1000, count - first)]))
                rows += 1000
                if rows % 10_000 == 0:
                    builder.finish()
                    builder = ParquetBuilder(directory / f"{rows}.parquet")
                worst = max(worst, time.perf_counter() - before)
            builder.finish()
        return count / (time.perf_counter() - started), worst * 1000
    finally:
        shutil.rmtree(directory)


def kill_loss(rate: float, seed: int) -> tuple[int, int]:
    """Records handed over and records recovered, one kill -9."""
    directory = Path(tempfile.mkdtemp())
    try:
        with writing(directory, "k", rate, 10_000_000, 10_000) as victim:
            victim.read_until("ready")
            victim.read_until(str(int(rate * 2 + random.Random(seed).random() * rate)))
            victim.kill()
        SegmentWriter(directory, Metrics(CollectorRegistry()), 10_000, 60.0, 1 << 40).close()
        return victim.sent, len(all_ids(directory))
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=3, help="writer runs per kind, the best kept")
    parser.add_argument("--kills", type=int, default=3, help="kills per rate")
    args = parser.parse_args()
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    print("\n| records | writer | records/s | largest append ms |\n|---|---|--:|--:|")
    for width, name in ((10, "narrow"), (1000, "wide")):
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.repeat):  # interleaved; the best of each, as load from other jobs only slows
            for stream in (False, True):
                runs[stream].append(writer_rate(args.records, width, stream))
        for stream, results in runs.items():
            label = "SegmentWriter (stream + Parquet)" if stream else "Parquet alone"
            print(f"| {name} | {label} | {max(r for r, _ in results):,.0f} | {min(w for _, w in results):.0f} |")
    print("\n| rate | kills | handed over | lost (max) | lost, seconds of traffic (max) |\n|--:|--:|--:|--:|--:|")
    for rate in (500.0, 2000.0):
        losses = [(sent, sent - kept) for sent, kept in (kill_loss(rate, seed) for seed in range(args.kills))]
        worst = max(lost for _, lost in losses)
        print(f"| {rate:,.0f}/s | {len(losses)} | {sum(s for s, _ in losses):,} | {worst:,} | {worst / rate:.2f} |")
    print(f"\nload average after: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
