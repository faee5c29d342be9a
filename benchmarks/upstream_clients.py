"""The hop's upstream client alone: the sidecar's `HttpUpstream` against aiohttp's ClientSession.

    python benchmarks/upstream_clients.py --port 8000 --concurrency 16 --duration 2

Both clients send the same request (``classifier``'s body) to the same upstream from this
one process, on uvloop, in a closed loop at the given concurrency, each with its own
keep-alive pool. The figures: requests per second, latency percentiles, and the CPU this
process spent per request, which is what the client costs the sidecar (the upstream runs
elsewhere). Prints one JSON line: {"lean": {...}, "aiohttp": {...}}. ``sidecar_bench.py``
runs it against its no-op upstream; this is the row that decides which client the hop keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # after the path: the client measured is this checkout's, not an installed one
from loadgen import percentiles  # beside this script

from sidecar.upstream.client import HttpUpstream

PATH = "/v2/models/classifier/infer"
HEADERS = (("Content-Type", "application/json"), ("Host", "upstream"))
BODY = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                              "data": [0.1] * 64}]}).encode()

Send = Callable[[], Awaitable[bytes]]


async def _closed_loop(send: Send, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0

    async def worker(until: float, record: bool) -> None:
        nonlocal failures
        while time.perf_counter() < until:
            start = time.perf_counter()
            try:
                await send()
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError):
                failures += 1
                continue
            if record:
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(began + duration, True) for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    count = len(latencies)
    return {"rps": count / elapsed, **percentiles(latencies), "cpu_us": cpu / count * 1e6 if count else 0.0,
            "requests": count, "failures": failures}


async def compare(port: int, concurrency: int, duration: float, warmup: float) -> dict[str, dict[str, Any]]:
    base = f"http://127.0.0.1:{port}"
    lean = HttpUpstream(base, 30.0, 5.0, concurrency)
    # Configured as the sidecar configured its session: no decompression, no headers of its own.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30.0),
        timeout=aiohttp.ClientTimeout(total=30.0, connect=5.0), auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar())
    url = base + PATH

    async def with_lean() -> bytes:
        response = await lean.send("POST", PATH, HEADERS, BODY)
        return await response.read()

    async def with_aiohttp() -> bytes:
        async with session.request("POST", url, data=BODY, headers=HEADERS, allow_redirects=False) as response:
            return await response.read()

    try:
        return {"lean": await _closed_loop(with_lean, concurrency, duration, warmup),
                "aiohttp": await _closed_loop(with_aiohttp, concurrency, duration, warmup)}
    finally:
        await lean.close()
        await session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the upstream's port on 127.0.0.1")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per client")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per client")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(compare(args.port, args.concurrency, args.duration, args.warmup))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
