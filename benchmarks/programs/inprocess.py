"""The limit: the TorchScript model called in-process, no server, no serialisation.

Prints one JSON object: for each batch size, rows/s, calls/s and per-call latency.

    python benchmarks/programs/inprocess.py --model examples/models/classifier/2/model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def measure(module: torch.jit.ScriptModule, batch: int, duration: float) -> dict[str, float]:
    x = torch.randn(batch, 64)
    for _ in range(200):  # warm-up: the profiling executor optimises after a few calls
        with torch.inference_mode():
            module(x)
    latencies = []
    start = time.perf_counter()
    deadline = start + duration
    now = start
    while now < deadline:
        with torch.inference_mode():
            module(x)
        end = time.perf_counter()
        latencies.append(end - now)
        now = end
    elapsed = now - start
    ms = np.asarray(latencies) * 1000
    return {"batch": batch, "calls": len(latencies), "calls_per_s": len(latencies) / elapsed,
            "rows_per_s": len(latencies) * batch / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: cores less one, as serve")
    args = parser.parse_args()
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(threads)
    module = torch.jit.load(args.model, map_location="cpu").eval()
    results = [measure(module, int(b), args.duration) for b in args.batches.split(",")]
    print(json.dumps({"threads": threads, "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
