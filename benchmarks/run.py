"""serve against its floor, its limit and its peers, side by side on this machine.

    python benchmarks/run.py            # serve (JSON, binary, gRPC), the no-op floor, the in-process limit
    python benchmarks/run.py --peers    # and MLServer and KServe (virtualenvs made on first use)
    python benchmarks/run.py --quick    # a smoke run: short points, one repetition
    python benchmarks/run.py --write    # also rewrite the results section of benchmarks/RESULTS.md

Every load point is repeated (systems interleaved, so noise hits all alike) and the median
is reported. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import peers
from harness import (
    PROGRAMS,
    Point,
    ServerProcess,
    Unavailable,
    free_port,
    hey,
    load_program,
    machine,
    median_point,
    scrape_batch_size,
    write_section,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REPOSITORY = ROOT / "examples" / "models"
MODEL = "classifier"
MODEL_FILE = REPOSITORY / MODEL / "2" / "model.pt"
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass
class System:
    key: str
    label: str
    client: str  # a key of CLIENTS
    base: str  # http://127.0.0.1:PORT, or 127.0.0.1:PORT for gRPC
    metrics: str | None = None  # serve's /metrics

    def measure(self, concurrency: int, duration: float, warmup: int, body: Path) -> Point:
        if self.client in LOAD_PROGRAMS:
            url = self.base.removeprefix("http://")
            return load_program(LOAD_PROGRAMS[self.client], url, MODEL, concurrency, duration, warmup)
        return hey(f"{self.base}/v2/models/{MODEL}/infer", body, concurrency, duration=duration)


CLIENTS = {"hey": "hey, JSON", "binary": "tritonclient http.aio, binary", "grpc": "tritonclient grpc.aio, raw"}
LOAD_PROGRAMS = {"binary": "binary_load.py", "grpc": "grpc_load.py"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s points, 1 repetition, short warm-up")
    parser.add_argument("--peers", action="store_true", help="also measure MLServer and KServe")
    parser.add_argument("--write", action="store_true", help="rewrite the results section of benchmarks/RESULTS.md")
    parser.add_argument("--duration", type=float, help="seconds per load point (default 10; --quick 2)")
    parser.add_argument("--repeats", type=int, help="repetitions of each load point (default 3; --quick 1)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per server (default 3000; --quick 300)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client concurrencies")
    args = parser.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (300 if args.quick else 3000)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def torch_threads() -> int:
    """serve's default: the cores less one, which the event loop keeps."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def write_body(workdir: Path) -> Path:
    """The JSON request every hey-driven system gets: one row of 64 FP32 values."""
    row = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    body = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                        "data": [round(float(v), 6) for v in row]}]}
    path = workdir / "request.json"
    path.write_text(json.dumps(body))
    return path


def start_serve(workdir: Path) -> tuple[ServerProcess, list[System]]:
    """serve on free ports (0: the server picks), read back from its start line."""
    argv = [sys.executable, "-m", "serving", "--model-repository", str(REPOSITORY), "--host", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    process = ServerProcess("serve", argv, workdir / "serve.log", cwd=ROOT)
    try:
        match = process.wait_log(r"listening http=\S*:(\d+) grpc=\S*:(\d+) metrics=\S*:(\d+)", timeout=60)
        base = f"http://127.0.0.1:{match.group(1)}"
        grpc = f"127.0.0.1:{match.group(2)}"
        metrics = f"http://127.0.0.1:{match.group(3)}/metrics"
        process.wait_ready(f"{base}/v2/health/ready", timeout=120)
    except BaseException:
        process.stop()
        raise
    return process, [System("serve", "serve", "hey", base, metrics),
                     System("serve-binary", "serve", "binary", base, metrics),
                     System("serve-grpc", "serve", "grpc", grpc, metrics)]


def start_noop(workdir: Path) -> tuple[ServerProcess, System]:
    port = free_port()
    process = ServerProcess("no-op", [sys.executable, str(PROGRAMS / "noop_server.py"), "--port", str(port)],
                            workdir / "noop.log")
    base = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(f"{base}/v2/health/ready", timeout=60)
    except BaseException:
        process.stop()
        raise
    return process, System("noop", "no-op aiohttp + uvloop", "hey", base)


def start_noop_grpc(workdir: Path) -> tuple[ServerProcess, System]:
    port = free_port()
    process = ServerProcess("no-op gRPC", [sys.executable, str(PROGRAMS / "noop_grpc_server.py"), "--port", str(port)],
                            workdir / "noop-grpc.log")
    try:
        process.wait_log(r"listening on", timeout=60)
    except BaseException:
        process.stop()
        raise
    return process, System("noop-grpc", "no-op grpc.aio + uvloop", "grpc", f"127.0.0.1:{port}")


def start_peer(peer: peers.Peer, workdir: Path) -> tuple[ServerProcess, System]:
    version = peers.ensure_installed(peer)
    process, base = peers.STARTERS[peer.name](MODEL_FILE, workdir, torch_threads())
    try:
        process.wait_ready(f"{base}/v2/models/{MODEL}/ready", timeout=240)
    except BaseException:
        process.stop()
        raise
    return process, System(peer.name, f"{peer.label} {version}", "hey", base)


def run_limit(duration: float) -> dict:
    argv = [sys.executable, str(PROGRAMS / "inprocess.py"), "--model", str(MODEL_FILE), "--duration", str(duration),
            "--threads", str(torch_threads())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace, workdir: Path) -> dict:
    """Start everything, measure, stop everything; returns the raw figures."""
    say(f"in-process limit ({MODEL_FILE.relative_to(ROOT)}) ...")
    limit = run_limit(1.0 if args.quick else 5.0)
    body = write_body(workdir)
    processes: list[ServerProcess] = []
    systems: list[System] = []
    unavailable: dict[str, str] = {}
    points: dict[tuple[str, int], list[Point]] = defaultdict(list)
    batches: dict[str, list[tuple[float, float]]] = defaultdict(list)
    try:
        say("starting serve and the no-op floor ...")
        process, serve_systems = start_serve(workdir)
        processes.append(process)
        process, noop = start_noop(workdir)
        processes.append(process)
        process, noop_grpc = start_noop_grpc(workdir)
        processes.append(process)
        systems += [*serve_systems, noop, noop_grpc]
        for peer in peers.PEERS if args.peers else ():
            say(f"starting {peer.label} ...")
            try:
                process, system = start_peer(peer, workdir)
            except Unavailable as exc:
                unavailable[peer.label] = str(exc)
                say(f"  {peer.label} unavailable: {exc}")
                continue
            processes.append(process)
            systems.append(system)
        for system in systems:
            if system.client == "hey":
                say(f"warming up {system.label} ({args.warmup} requests) ...")
                hey(f"{system.base}/v2/models/{MODEL}/infer", body, 16, requests=args.warmup)
        top = max(args.concurrency)
        for rep in range(args.repeats):
            for concurrency in args.concurrency:
                shift = rep % len(systems)
                for system in systems[shift:] + systems[:shift]:
                    before = scrape_batch_size(system.metrics, MODEL) if system.metrics and concurrency == top else None
                    point = system.measure(concurrency, args.duration, min(args.warmup, 500), body)
                    if before is not None and system.metrics:  # `before` comes only from a metrics URL
                        after = scrape_batch_size(system.metrics, MODEL)
                        batches[system.key].append((after[0] - before[0], after[1] - before[1]))
                    points[(system.key, concurrency)].append(point)
                    say(f"  [{rep + 1}/{args.repeats}] c={concurrency:<3} {system.label} ({system.client}): "
                        f"{point.rps:8.0f} req/s  p50 {point.p50_ms:6.2f} ms  p99 {point.p99_ms:6.2f} ms"
                        + (f"  {point.failures} failed" if point.failures else ""))
    finally:
        for process in reversed(processes):
            status = process.stop()
            if status not in (0, -15, None):
                say(f"{process.name} exited with status {status} on SIGTERM")
    return {"limit": limit, "systems": systems, "points": points, "batches": batches, "unavailable": unavailable}


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def render(args: argparse.Namespace, raw: dict) -> str:
    systems: list[System] = raw["systems"]
    points = raw["points"]
    lines = [f"HTTP and gRPC: one [1, 64] FP32 row per request; median of {args.repeats} x {args.duration:g} s "
             "per point.", "",
             "| c | system | client | req/s | req/s range | p50 ms | p99 ms | failed |",
             "|--:|---|---|--:|--:|--:|--:|--:|"]
    medians: dict[tuple[str, int], Point] = {}
    for concurrency in args.concurrency:
        for system in systems:
            point, low, high = median_point(points[(system.key, concurrency)])
            medians[(system.key, concurrency)] = point
            lines.append(f"| {concurrency} | {system.label} | {CLIENTS[system.client]} | {fmt(point.rps)} | "
                         f"{fmt(low)}–{fmt(high)} | {fmt(point.p50_ms, 2)} | {fmt(point.p99_ms, 2)} | "
                         f"{point.failures} |")
    limit = raw["limit"]
    lines += ["", f"In-process limit: torch.jit.load + torch.inference_mode, {limit['threads']} torch thread(s), "
              f"torch {limit['torch']}.", "",
              "| batch | rows/s | calls/s | p50 ms/call | p99 ms/call |", "|--:|--:|--:|--:|--:|"]
    for r in limit["results"]:
        lines.append(f"| {r['batch']} | {fmt(r['rows_per_s'])} | {fmt(r['calls_per_s'])} | {fmt(r['p50_ms'], 3)} | "
                     f"{fmt(r['p99_ms'], 3)} |")
    top = max(args.concurrency)
    serve = medians.get(("serve", top))
    lines += ["", f"At c={top} (median req/s, same run):", ""]
    for key, label in (("noop", "no-op floor"), ("mlserver", "MLServer"), ("kserve", "KServe")):
        other = medians.get((key, top))
        if serve and other and other.rps == other.rps and other.rps > 0:
            lines.append(f"- serve (hey, JSON) / {label}: **{serve.rps / other.rps:.2f}**")
    grpc, binary = medians.get(("serve-grpc", top)), medians.get(("serve-binary", top))
    if grpc and binary and binary.rps == binary.rps and binary.rps > 0:
        lines.append(f"- serve, gRPC / HTTP binary (both tritonclient aio clients): **{grpc.rps / binary.rps:.2f}**")
    floor = medians.get(("noop-grpc", top))
    if grpc and floor and floor.rps == floor.rps and floor.rps > 0:
        lines.append(f"- serve, gRPC / no-op grpc.aio floor (same client): **{grpc.rps / floor.rps:.2f}**")
    for key, label in (("serve", CLIENTS["hey"]), ("serve-binary", CLIENTS["binary"]), ("serve-grpc", CLIENTS["grpc"])):
        sums = raw["batches"].get(key)
        if sums and sum(c for _, c in sums):
            mean = sum(s for s, _ in sums) / sum(c for _, c in sums)
            lines.append(f"- serve's mean batch size ({label}), from /metrics: {mean:.1f} rows")
    for label, reason in raw["unavailable"].items():
        lines.append(f"- {label}: unavailable: {reason}")
    failures = [(s.label, CLIENTS[s.client], d) for s in systems for c in args.concurrency
                for d in medians[(s.key, c)].detail]
    if failures:
        lines += ["", "Failures:", "", *sorted({f"- {label} ({client}): {d}" for label, client, d in failures})]
    return "\n".join(lines)


def header(args: argparse.Namespace) -> str:
    command = " ".join(["python", "benchmarks/run.py", *sys.argv[1:]])
    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "?"
    return "\n".join([
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        f"- Software: shadowserve {version('shadowserve')}, Python {platform.python_version()}, tritonclient "
        f"{version('tritonclient')}, grpcio {version('grpcio')}; the load generators run on the same machine as "
        "the servers",
        f"- Points: {args.duration:g} s each, {args.repeats} repetition(s), systems interleaved; "
        f"{args.warmup} warm-up requests per server"])


def main() -> int:
    args = parse_args()
    if shutil.which("hey") is None:
        say("hey is not installed (Debian/Ubuntu: apt-get install hey)")
        return 2
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="shadowserve-bench-"))
    try:
        raw = run(args, workdir)
    except Unavailable as exc:
        say(f"cannot run the benchmark: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    section = header(args) + "\n\n" + render(args, raw)
    print(section)
    if args.write:
        write_section(RESULTS, START, END, section)
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
