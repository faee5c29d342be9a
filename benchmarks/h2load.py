"""h2load (C, nghttp2-client) as a load generator for both protocols, and the parser of what it prints.

gRPC: one HTTP/2 POST per call with a prebuilt length-prefixed message as the body (``-d``),
``content-type: application/grpc`` and ``te: trailers``; HTTP JSON: ``--h1``, one request per
connection at a time. h2load prints min/max/mean/sd of the request time but no percentiles, so
each run writes ``--log-file`` (one line per request: start µs, status, µs to the end of the
response), from which p50 and p99 are computed.

A gRPC call that fails still answers HTTP 200, with the error in the trailers, and h2load counts it
as succeeded; such an answer carries no message, so each run is also checked by its DATA bytes: a
run whose responses carry fewer bytes than ``done x`` the size of a good answer had failures.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import Point, failed_point

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
JSON_HEADERS = ("content-type: application/json",)
MAX_LOG_BYTES = 512 * 2**20  # a log line is about 30 bytes: millions of requests fit

_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", re.M)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_TRAFFIC = re.compile(r"^traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?\((\d+)\) data", re.M)
_FINISHED = re.compile(r"^finished in ([0-9.]+)(ms|s), ([0-9.]+) req/s", re.M)
_MEAN = re.compile(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", re.M)


@dataclass(frozen=True)
class Summary:
    """What h2load printed at the end of one run."""

    seconds: float
    rps: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status: tuple[int, int, int, int]  # 2xx, 3xx, 4xx, 5xx
    data_bytes: int
    mean_ms: float


def _ms(text: str) -> float:
    """h2load's durations: ``123us``, ``4.56ms``, ``1.2s``."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def parse_summary(text: str) -> Summary | None:
    """The figures of h2load's summary, or None when it printed none (it did not run)."""
    requests, status, traffic, finished = (p.search(text) for p in (_REQUESTS, _STATUS, _TRAFFIC, _FINISHED))
    if not (requests and status and traffic and finished):
        return None
    mean = _MEAN.search(text)
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    counts = [int(v) for v in requests.groups()]
    return Summary(seconds=seconds, rps=float(finished.group(3)), total=counts[0], started=counts[1], done=counts[2],
                   succeeded=counts[3], failed=counts[4], errored=counts[5], timeout=counts[6],
                   status=(int(status.group(1)), int(status.group(2)), int(status.group(3)), int(status.group(4))),
                   data_bytes=int(traffic.group(3)), mean_ms=_ms(mean.group(3)) if mean else float("nan"))


def log_latencies_ms(log: Path) -> np.ndarray:
    """Each request's time in ms, from h2load's ``--log-file`` (start µs, status, elapsed µs, tab-separated)."""
    with log.open("rb") as file:
        raw = file.read(MAX_LOG_BYTES + 1)
    if len(raw) > MAX_LOG_BYTES:
        raise ValueError(f"{log} is over {MAX_LOG_BYTES} bytes; run shorter points")
    values = [int(parts[2]) for line in raw.splitlines() if len(parts := line.split(b"\t")) >= 3
              and parts[2].strip().isdigit()]
    return np.asarray(values, dtype=np.float64) / 1000.0


def to_point(summary: Summary | None, latencies_ms: np.ndarray, answer_bytes: int | None, output: str) -> Point:
    """One measured point; every kind of failure h2load or the byte check saw is counted and described."""
    if summary is None:
        return failed_point("h2load printed no summary: " + " ".join(output.split())[-300:])
    # h2load's "failed" counts every request that got no 2xx: refused, reset, timed out or 3xx-5xx
    failures = summary.failed
    detail = [f"HTTP {label}: {count}" for label, count in zip(("3xx", "4xx", "5xx"), summary.status[1:], strict=True)
              if count]
    detail += [f"h2load: {count} {kind}" for kind, count in (("errored", summary.errored),
                                                            ("timed out", summary.timeout)) if count]
    if answer_bytes:
        short = summary.succeeded - summary.data_bytes // answer_bytes
        if short > 0:  # gRPC errors answer 200 with an empty body and the status in the trailers
            failures += short
            detail.append(f"{short} answer(s) without the expected {answer_bytes}-byte message (gRPC errors)")
    if summary.done == 0 or len(latencies_ms) == 0:
        return failed_point("h2load completed no request" + (f" ({'; '.join(detail)})" if detail else ""))
    p50, p99 = np.percentile(latencies_ms, [50, 99])
    return Point(rps=summary.rps, p50_ms=float(p50), p99_ms=float(p99), requests=summary.done, failures=failures,
                 detail=detail)


@dataclass(frozen=True)
class Load:
    """One protocol's h2load shape: the URL path, the body, the headers, connections and streams."""

    protocol: str  # "grpc" or "http"
    path: str
    body: Path
    connections: int
    streams: int = 1  # concurrent streams per connection (HTTP/2 only)

    @property
    def in_flight(self) -> int:
        return self.connections * self.streams

    def argv(self, base: str) -> list[str]:
        """h2load's arguments, less the duration or count, for the server at ``base`` (http://host:port)."""
        argv = ["h2load", "-c", str(self.connections), "-d", str(self.body)]
        if self.protocol == "http":
            argv.append("--h1")
        else:
            argv += ["-m", str(self.streams)]
        for header in GRPC_HEADERS if self.protocol == "grpc" else JSON_HEADERS:
            argv += ["-H", header]
        return [*argv, base + self.path]


def run(load: Load, base: str, *, seconds: float | None = None, requests: int | None = None,
        answer_bytes: int | None = None, threads: int = 1) -> Point:
    """One h2load run for ``seconds`` (``-D``) or ``requests`` (``-n``); p50/p99 from its per-request log."""
    if (seconds is None) == (requests is None):
        raise ValueError("give seconds or requests, not both")
    budget = (seconds or 0) + 60 + (requests or 0) / 200  # a stalled server must not stall the benchmark
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        log = Path(tmp) / "requests.log"
        shape = ["-D", f"{seconds:g}"] if seconds is not None else ["-n", str(max(requests or 0, load.in_flight))]
        argv = [*load.argv(base)[:1], "-t", str(threads), *shape, "--log-file", str(log), *load.argv(base)[1:]]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=budget, check=False)
        except subprocess.TimeoutExpired:
            return failed_point(f"h2load did not finish within {budget:.0f}s")
        output = done.stdout + done.stderr
        latencies = log_latencies_ms(log) if log.exists() else np.empty(0)
    return to_point(parse_summary(output), latencies, answer_bytes, output)
