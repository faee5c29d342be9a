"""Process and load-generator plumbing shared by run.py and gpu_bench.py: start, wait, stop, measure.

Every server runs in its own session (process group), so stopping it with SIGTERM (and
SIGKILL after a grace period) also ends any worker processes it spawned.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"


class Unavailable(Exception):
    """A system that could not be installed or started; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def run_install(label: str, steps: list[list[str]], log: Path) -> None:
    """Run a peer's install commands in turn, each logged and bounded to 30 minutes; `Unavailable` if one fails."""
    with open(log, "w") as out:
        for argv in steps:
            out.write("$ " + " ".join(argv) + "\n")
            out.flush()
            try:
                done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False)
            except subprocess.TimeoutExpired:
                raise Unavailable(f"{label}: '{' '.join(argv[-3:])}' took over 30 minutes") from None
            if done.returncode != 0:
                raise Unavailable(f"{label} did not install ({' '.join(argv[3:])}): {log_tail(log, 3)}")


class ServerProcess:
    """One server process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - outlives this call; closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise Unavailable(f"{self.name} exited with status {self.proc.returncode}: {log_tail(self.log)}")

    def wait_log(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until a line of the log matches ``pattern``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.log.read_text(errors="replace"))
            if match:
                return match
            self.check_alive()
            time.sleep(0.1)
        raise Unavailable(f"{self.name}: no {pattern!r} in its log after {timeout:.0f}s: {log_tail(self.log)}")

    def wait_ready(self, url: str, timeout: float) -> None:
        """Poll ``url`` until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        raise Unavailable(f"{self.name}: {url} not ready after {timeout:.0f}s: {log_tail(self.log)}")

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds."""
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # The leader may be gone while its workers linger: give them a moment, then kill.
        for _ in range(20):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()
        return self.proc.returncode


@dataclass
class Point:
    """One measurement: a load generator against one system at one concurrency."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int = 0  # non-200 responses plus transport errors
    detail: list[str] = field(default_factory=list)


def failed_point(reason: str) -> Point:
    return Point(rps=float("nan"), p50_ms=float("nan"), p99_ms=float("nan"), requests=0, failures=1,
                 detail=[reason])


_HEY_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_HEY_PCT = re.compile(r"^\s*(\d+)% in ([0-9.]+) secs", re.M)
_HEY_STATUS = re.compile(r"^\s*\[(\d+)\]\s+(\d+) responses", re.M)
_HEY_ERRORS = re.compile(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)")
_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+:\d+")


def parse_hey(text: str) -> Point:
    rps = _HEY_RPS.search(text)
    percentiles = {int(p): float(s) * 1000 for p, s in _HEY_PCT.findall(text)}
    statuses = {int(code): int(n) for code, n in _HEY_STATUS.findall(text)}
    detail = [f"HTTP {code}: {n}" for code, n in sorted(statuses.items()) if code != 200]
    errors: Counter[str] = Counter()
    block = _HEY_ERRORS.search(text)
    if block:  # one line per distinct message; addresses and ports make most messages distinct
        for line in block.group(1).strip().splitlines():
            count, _, message = line.strip().partition("]")
            errors[_ADDRESS.sub("<addr>", message.strip())[:160]] += int(count.lstrip("["))
    detail += [f"{n} x {message}" for message, n in errors.most_common(3)]
    if rps is None or 50 not in percentiles:
        return failed_point("hey printed no summary: " + " ".join(text.split())[-300:])
    ok = statuses.get(200, 0)
    return Point(rps=float(rps.group(1)), p50_ms=percentiles[50], p99_ms=percentiles.get(99, float("nan")),
                 requests=sum(statuses.values()) + sum(errors.values()),
                 failures=sum(statuses.values()) - ok + sum(errors.values()),
                 detail=detail)


def hey(url: str, body: Path, concurrency: int, duration: float | None = None, requests: int | None = None) -> Point:
    """Run ``hey`` (POST ``body`` as JSON) for ``duration`` seconds or ``requests`` requests."""
    argv = ["hey", "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-D", str(body)]
    argv += ["-z", f"{duration:g}s"] if duration is not None else ["-n", str(max(requests or 0, concurrency))]
    limit = (duration or 0) + 120
    try:
        done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return failed_point(f"hey did not finish within {limit:.0f}s")
    return parse_hey(done.stdout + done.stderr)


def load_program(program: str, url: str, model: str, concurrency: int, duration: float, warmup: int) -> Point:
    """One of the asyncio tritonclient load generators (programs/binary_load.py, programs/grpc_load.py)."""
    argv = [sys.executable, str(PROGRAMS / program), "--url", url, "--model", model,
            "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, check=False)
    except subprocess.TimeoutExpired:
        return failed_point(f"{program} did not finish in time")
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return failed_point(f"{program} failed: {' '.join(done.stderr.split())[-300:]}")
    return Point(rps=out["rps"], p50_ms=out["p50_ms"], p99_ms=out["p99_ms"], requests=out["requests"],
                 failures=out["failures"], detail=out["errors"])


def median_point(points: list[Point]) -> tuple[Point, float, float]:
    """The median of each figure over repetitions, with the min and max req/s."""
    good = [p for p in points if p.rps == p.rps]  # drop NaN (failed) points
    failures = sum(p.failures for p in points)
    detail = sorted({d for p in points for d in p.detail})
    if not good:
        return Point(float("nan"), float("nan"), float("nan"), 0, failures, detail), float("nan"), float("nan")
    rps = [p.rps for p in good]
    merged = Point(rps=statistics.median(rps), p50_ms=statistics.median(p.p50_ms for p in good),
                   p99_ms=statistics.median(p.p99_ms for p in good), requests=sum(p.requests for p in good),
                   failures=failures, detail=detail)
    return merged, min(rps), max(rps)


def scrape_histogram(metrics_url: str, name: str, model: str) -> tuple[float, float]:
    """(sum, count) of serve's histogram ``name`` for ``model``, all versions together."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    totals = {"sum": 0.0, "count": 0.0}
    pattern = re.compile(rf'^{re.escape(name)}_(sum|count)\{{([^}}]*)\}}\s+([0-9.eE+-]+)$', re.M)
    for kind, labels, value in pattern.findall(text):
        if f'model="{model}"' in labels:
            totals[kind] += float(value)
    return totals["sum"], totals["count"]


def scrape_batch_size(metrics_url: str, model: str) -> tuple[float, float]:
    """(sum, count) of ``serving_batch_size`` (rows per executed batch) for ``model``."""
    return scrape_histogram(metrics_url, "serving_batch_size", model)


def machine() -> str:
    """The CPU, its cores and memory, in one line."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, IndexError, ValueError):
        pass
    return f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}{memory}, {platform.system()}"


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Replace the text between the markers ``start`` and ``end`` (appended when missing)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{section}\n{end}{after}")
