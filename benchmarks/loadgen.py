"""The benchmarks' HTTP load generator: a raw HTTP/1.1 keep-alive client timing each request.

Closed loop (each connection sends its next request when the last is answered) or open loop
at a rate over all connections; ``perf_counter`` per request, since hey reports in 0.1 ms
steps, too coarse for a hop. Responses need a Content-Length (every server measured sends one).
Run in a process of its own (``sidecar_bench.py load``), on uvloop.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any


class _Connection(asyncio.Protocol):
    """One keep-alive connection; responses need a Content-Length (every server here sends one)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.need: int | None = None
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's: a Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            self.status = int(head[9:12])
            self.need = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) >= self.need and self.waiter is not None and not self.waiter.done():
            del self.buffer[:self.need]
            self.need = None
            self.waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    async def send(self, payload: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(payload)
        return await self.waiter


async def run_load(host: str, port: int, path: str, body: bytes, concurrency: int, duration: float, warmup: float,
                   rate: float | None) -> dict[str, Any]:
    """``concurrency`` connections POSTing ``body`` to ``path``: closed loop, or open at ``rate`` req/s in all."""
    loop = asyncio.get_running_loop()
    payload = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    connections = [(await loop.create_connection(_Connection, host, port))[1] for _ in range(concurrency)]
    latencies: list[float] = []
    failures = 0

    async def worker(conn: _Connection, index: int, until: float, record: bool) -> None:
        nonlocal failures
        interval = concurrency / rate if rate else 0.0
        next_at = time.perf_counter() + (index * interval / concurrency if rate else 0.0)
        while True:
            if rate:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            started = time.perf_counter()
            if started >= until:
                return
            status = await conn.send(payload)
            if record:
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

    begin = time.perf_counter()
    await asyncio.gather(*(worker(c, i, begin + warmup, False) for i, c in enumerate(connections)))
    begin = time.perf_counter()
    await asyncio.gather(*(worker(c, i, begin + duration, True) for i, c in enumerate(connections)))
    elapsed = time.perf_counter() - begin
    for conn in connections:
        assert conn.transport is not None
        conn.transport.close()
    return {"rps": len(latencies) / elapsed, **percentiles(latencies), "requests": len(latencies),
            "failures": failures}


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p90 and p99 of latencies in seconds, in ms (NaN when there are none)."""
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000 if ordered else float("nan")

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99)}
