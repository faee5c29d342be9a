"""An asyncio load generator speaking KServe v2 over gRPC through tritonclient.grpc.aio.

N workers share ``--connections`` clients (default 1: one channel, one HTTP/2 connection;
worker i uses client i % K, each client on a connection of its own); each sends one request
with a raw FP32 tensor (``raw_input_contents``), waits for the answer (raw output),
records the latency and sends the next. Prints one JSON object, with the same keys as
binary_load.py.

    python benchmarks/programs/grpc_load.py --url 127.0.0.1:8001 --model classifier --concurrency 16

Several copies can share one timed window (benchmarks/gpu_bench.py runs them so, so that the
Python client is not the bottleneck): with ``--start-at stdin`` each warms up, prints ``warm``,
reads a wall-clock time (``time.time()``) from stdin and starts timing then. ``--latencies
FILE`` saves every latency (seconds, .npy) for the caller to merge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

import numpy as np
import tritonclient.grpc.aio as grpcclient


async def run(args: argparse.Namespace) -> dict[str, object]:
    shape = [int(d) for d in args.shape.split(",")]
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    inputs = [grpcclient.InferInput(args.input, shape, "FP32")]
    inputs[0].set_data_from_numpy(data)  # gRPC: always raw bytes
    outputs = [grpcclient.InferRequestedOutput(args.output)]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    # grpcio shares one connection among the channels of a process unless each has its own subchannel pool
    clients = [grpcclient.InferenceServerClient(url=args.url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(max(1, args.connections))]

    async def one(client: grpcclient.InferenceServerClient) -> bool:
        try:
            result = await client.infer(args.model, inputs, outputs=outputs)
            answer = result.as_numpy(args.output)
            if answer is None or answer.shape[:1] != (shape[0],):
                errors[f"wrong output shape {None if answer is None else list(answer.shape)}"] += 1
                return False
            return True
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
            errors[f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"] += 1
            return False

    async def worker(index: int, deadline: float) -> None:
        client = clients[index % len(clients)]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            ok = await one(client)
            if ok:
                latencies.append(time.perf_counter() - start)

    try:
        for _ in range(max(1, args.warmup // args.concurrency)):  # warm-up: open the channel, fill caches
            await asyncio.gather(*(one(clients[i % len(clients)]) for i in range(args.concurrency)))
        warmup_errors = sum(errors.values())
        errors.clear()
        late = 0.0
        if args.start_at:
            if args.start_at == "stdin":
                print("warm", flush=True)
                start_at = float(sys.stdin.readline())
            else:
                start_at = float(args.start_at)
            wait = start_at - time.time()
            late = max(0.0, -wait)
            await asyncio.sleep(max(0.0, wait))
        start = time.perf_counter()
        await asyncio.gather(*(worker(i, start + args.duration) for i in range(args.concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        for client in clients:
            await client.close()
    if args.latencies:
        np.save(args.latencies, np.asarray(latencies, dtype=np.float64))
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([float("nan")])
    failures = sum(errors.values())
    return {"rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": len(latencies) + failures, "failures": failures,
            "errors": [f"{n} x {message}" for message, n in errors.most_common(5)],
            "elapsed_s": elapsed, "late_s": late, "warmup_failures": warmup_errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="host:port of the gRPC endpoint")
    parser.add_argument("--model", default="classifier")
    parser.add_argument("--input", default="INPUT__0", help="input tensor name")
    parser.add_argument("--output", default="OUTPUT__0", help="output tensor name")
    parser.add_argument("--shape", default="1,64", help="shape of the FP32 input, batch first (default 1,64)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--connections", type=int, default=1, help="clients (HTTP/2 connections) the workers "
                        "share; serve's gRPC port accepts the calls of each connection through one of its servers")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=200, help="requests before timing starts")
    parser.add_argument("--start-at", help="wall-clock time (time.time()) to start timing, or stdin: say 'warm' "
                        "after the warm-up and read it from stdin")
    parser.add_argument("--latencies", help="save every latency, in seconds, to this .npy file")
    args = parser.parse_args()
    # asyncio's own loop: grpc.aio drives its own completion queue, and on uvloop it was no faster.
    out = asyncio.run(run(args))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
