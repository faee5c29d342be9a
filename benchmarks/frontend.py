"""The front end side by side: serve against Triton 2.51 and the no-op floors, gRPC and HTTP JSON, h2load.

    python benchmarks/frontend.py                     # the table: 3 x 10 s per point (about 8 minutes)
    python benchmarks/frontend.py --quick             # a smoke run: 3 s points, once (about 2 minutes)
    python benchmarks/frontend.py --workers 1,2,4 --write --note "quiet machine"
    python benchmarks/frontend.py --write-repository DIR   # the simple model: DIR/serve, DIR/triton
    python benchmarks/frontend.py --write-requests DIR     # DIR/infer.grpc and DIR/infer.json, the h2load bodies

Every system serves Triton's add/sub ``simple`` model (frontend_model.py): serve as TorchScript in
one process and with ``--frontend-workers N``, serve on Triton's own Python-backend ``model.py``,
Triton with its Python backend, and the no-op floors. The load is h2load with 64 requests in flight:
gRPC on 4 connections x 16 streams, HTTP JSON (``--h1``) on 64 connections. Each point is warmed up,
then timed; the systems are interleaved within each repetition (the order rotates), and the table
shows medians. A point with any failed request is invalid: it is marked, and the run exits 1.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import h2load
from frontend_model import GRPC_PATH, HTTP_PATH, MODEL, write_repository, write_requests
from frontend_systems import (
    System,
    failures_between,
    inference_counts,
    probe,
    start_floor,
    start_serve_system,
    start_triton_system,
)
from harness import Point, Unavailable, machine, median_point, scrape_batch_size, write_section
from latency_pairs import steal_s
from triton_peer import ensure_installed

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- frontend:start -->", "<!-- frontend:end -->"
PROTOCOLS = {"grpc": "gRPC", "http": "HTTP JSON"}
T = TypeVar("T")
SYSTEMS = ("serve", "workers", "serve-python", "triton", "floor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-repository", type=Path, metavar="DIR",
                        help="write the simple model's repositories, DIR/serve and DIR/triton, and exit")
    parser.add_argument("--write-requests", type=Path, metavar="DIR",
                        help="write the h2load bodies, DIR/infer.grpc and DIR/infer.json, and exit")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s points, 1 repetition, short warm-up")
    parser.add_argument("--duration", type=float, help="seconds per timed point (default 10; --quick 3)")
    parser.add_argument("--repeats", type=int, help="repetitions, systems interleaved (default 3; --quick 1)")
    parser.add_argument("--warmup", type=int, help="warm-up requests before each point (default 3000; --quick 1000)")
    parser.add_argument("--workers", default="1,2", help="serve --frontend-workers N for each N (default 1,2; "
                        "'' for none)")
    parser.add_argument("--protocols", default="grpc,http", help="grpc, http or both (default grpc,http)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"which of {', '.join(SYSTEMS)} to measure")
    parser.add_argument("--grpc-connections", type=int, default=4, help="h2load gRPC connections (default 4)")
    parser.add_argument("--grpc-streams", type=int, default=16, help="streams per gRPC connection (default 16)")
    parser.add_argument("--http-connections", type=int, default=64, help="h2load --h1 connections (default 64)")
    parser.add_argument("--h2load-threads", type=int, default=1, help="h2load's native threads (default 1)")
    parser.add_argument("--write", action="store_true", help="rewrite the front-end section of benchmarks/RESULTS.md")
    parser.add_argument("--note", default="", help="a line for the results' header (the machine's state, say)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1000 if args.quick else 3000)
    args.workers = [int(n) for n in args.workers.split(",") if n.strip()]
    args.protocols = [p for p in args.protocols.split(",") if p]
    args.systems = [s for s in args.systems.split(",") if s]
    for value, allowed, flag in ((args.protocols, PROTOCOLS, "--protocols"), (args.systems, SYSTEMS, "--systems")):
        if unknown := set(value) - set(allowed):
            parser.error(f"{flag}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
    if any(n < 1 for n in args.workers) or args.duration <= 0 or args.repeats < 1:
        parser.error("--workers takes counts of at least 1; --duration and --repeats must be positive")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_systems(args: argparse.Namespace, workdir: Path, unavailable: dict[str, str]) -> list[System]:
    """Every system asked for; one that cannot start is reported as unavailable and the run goes on."""
    serve_repo, triton_repo = write_repository(workdir / "repository")
    starters: list[tuple[str, Callable[[], System]]] = []
    if "serve" in args.systems:
        label = "serve, one process"
        starters.append((label, partial(start_serve_system, serve_repo, workdir, 0, "serve", label)))
    for n in args.workers if "workers" in args.systems else ():
        label = f"serve --frontend-workers {n}"
        starters.append((label, partial(start_serve_system, serve_repo, workdir, n, f"serve-w{n}", label)))
    if "serve-python" in args.systems:
        label = "serve, Triton's model.py"
        starters.append((label, partial(start_serve_system, triton_repo, workdir, 0, "serve-python", label)))
    if "triton" in args.systems:
        def triton() -> System:  # its virtualenv is made here, on first use
            return start_triton_system(ensure_installed(), triton_repo, workdir)
        starters.append(("Triton", triton))
    for protocol in args.protocols if "floor" in args.systems else ():
        starters.append((f"no-op {protocol}", partial(start_floor, protocol, workdir)))
    systems = []
    for label, start in starters:
        say(f"starting {label} ...")
        try:
            systems.append(probe(start(), args.protocols))
        except Unavailable as exc:
            unavailable[label] = str(exc)
            say(f"  unavailable: {exc}")
    return systems


def measure_point(args: argparse.Namespace, system: System, load: h2load.Load
                  ) -> tuple[Point, tuple[float, float] | None]:
    """Warm up, then one timed h2load run; the point, and serve's (rows, batches) during it.

    The warm-up is a run of its own: h2load 1.52's ``--warm-up-time`` sends no request at all over
    HTTP/2 (it works with ``--h1`` only), so it cannot warm the gRPC points.
    """
    base = system.bases[load.protocol]
    answer = system.answer_bytes.get(load.protocol) if load.protocol == "grpc" else None
    h2load.run(load, base, requests=args.warmup, answer_bytes=answer, threads=args.h2load_threads)
    counts = scrape(inference_counts, system)
    batch = scrape(batch_sizes, system) if system.kind == "serve" else None
    point = h2load.run(load, base, seconds=args.duration, answer_bytes=answer, threads=args.h2load_threads)
    after = scrape(inference_counts, system)
    if counts is not None and after is not None:  # the server's own count: what the byte check misses
        failed, what = failures_between(counts, after, load.in_flight)
        if failed:
            point.failures += failed
            point.detail.append(f"the server counted {failed} failed inference request(s): {what}")
    elif system.metrics:
        point.failures += 1
        point.detail.append(f"{system.label}'s metrics did not answer around the point")
    after_batch = scrape(batch_sizes, system) if batch is not None else None
    if batch is None or after_batch is None:
        return point, None
    return point, (after_batch[0] - batch[0], after_batch[1] - batch[1])


def measure(args: argparse.Namespace, systems: list[System], bodies: dict[str, Path]) -> dict:
    """Every point, ``--repeats`` times; within each repetition the systems take turns, the order rotating."""
    loads = {"grpc": h2load.Load("grpc", GRPC_PATH, bodies["grpc"], args.grpc_connections, args.grpc_streams),
             "http": h2load.Load("http", HTTP_PATH, bodies["http"], args.http_connections)}
    points: dict[tuple[str, str], list[Point]] = defaultdict(list)
    batches: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for rep in range(args.repeats):
        for protocol in args.protocols:
            chosen = [s for s in systems if protocol in s.bases]
            shift = rep % max(1, len(chosen))
            for system in chosen[shift:] + chosen[:shift]:
                point, batch = measure_point(args, system, loads[protocol])
                points[(system.key, protocol)].append(point)
                if batch is not None:
                    batches[(system.key, protocol)].append(batch)
                say(f"  [{rep + 1}/{args.repeats}] {PROTOCOLS[protocol]:<9} {system.label:<30} {point.rps:8.0f} req/s"
                    f"  p50 {point.p50_ms:6.2f} ms  p99 {point.p99_ms:7.2f} ms"
                    + (f"  INVALID: {point.failures} failed ({'; '.join(point.detail)})" if point.failures else ""))
    return {"points": points, "batches": batches}


def scrape(read: Callable[[str], T], system: System) -> T | None:
    """One read of the system's /metrics (bounded in time by the reader), or None when it has none or is gone."""
    if not system.metrics:
        return None
    try:
        return read(system.metrics)
    except (OSError, ValueError):
        return None


def batch_sizes(metrics: str) -> tuple[float, float]:
    """(sum, count) of serve's batch sizes for the model."""
    return scrape_batch_size(metrics, MODEL)


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def ratio(a: Point | None, b: Point | None) -> str:
    if a is None or b is None or not (a.rps == a.rps and b.rps == b.rps and b.rps > 0):
        return "n/a"
    return f"{a.rps / b.rps:.2f}"


def paired(points: dict[tuple[str, str], list[Point]], a: tuple[str, str], b: tuple[str, str]) -> str:
    """The median of the per-repetition ratios a / b: the two were measured minutes apart at most, so
    the machine's drift between repetitions moves both alike."""
    ratios = [x.rps / y.rps for x, y in zip(points.get(a, []), points.get(b, []), strict=False)
              if x.rps == x.rps and y.rps == y.rps and y.rps > 0]
    return f" (per repetition: median {statistics.median(ratios):.2f} of {len(ratios)})" if len(ratios) > 1 else ""


def render(args: argparse.Namespace, systems: list[System], raw: dict, unavailable: dict[str, str]) -> str:
    medians: dict[tuple[str, str], Point] = {}
    ranges: dict[tuple[str, str], tuple[float, float]] = {}
    for key, values in raw["points"].items():
        medians[key], low, high = median_point(values)
        ranges[key] = (low, high)
    triton = next((s for s in systems if s.kind == "triton"), None)
    lines = [f"h2load; gRPC: {args.grpc_connections * args.grpc_streams} in flight ({args.grpc_connections} "
             f"connections x {args.grpc_streams} streams, a prebuilt length-prefixed ModelInferRequest); HTTP JSON: "
             f"{args.http_connections} in flight (--h1, {args.http_connections} connections); "
             f"median of {args.repeats} x {args.duration:g} s per point, each after {args.warmup} warm-up requests.",
             "", "| protocol | system | req/s | req/s range | p50 ms | p99 ms | failed | vs Triton | vs no-op floor "
             "| mean batch |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for protocol in args.protocols:
        floor = medians.get((f"floor-{protocol}", protocol))
        top = medians.get((triton.key, protocol)) if triton else None
        for system in (s for s in systems if protocol in s.bases):
            point = medians[(system.key, protocol)]
            low, high = ranges[(system.key, protocol)]
            sums = raw["batches"].get((system.key, protocol), [])
            rows = sum(c for _, c in sums)
            batch = f"{sum(s for s, _ in sums) / rows:.1f}" if rows else ""
            failed = f"**{point.failures} (invalid)**" if point.failures else "0"
            lines.append(f"| {PROTOCOLS[protocol]} | {system.label} | {fmt(point.rps)} | {fmt(low)}–{fmt(high)} | "
                         f"{fmt(point.p50_ms, 2)} | {fmt(point.p99_ms, 2)} | {failed} | "
                         f"{ratio(point, top) if system.kind != 'triton' else ''} | "
                         f"{ratio(point, floor) if system.kind != 'floor' else ''} | {batch} |")
    lines += ["", "Done when: serve ≥ 1.0× Triton on each protocol with a p99 no worse than Triton's; in one "
              "process, serve ≥ 0.9 of its protocol's no-op floor.", ""]
    for protocol in args.protocols:
        top = medians.get((triton.key, protocol)) if triton else None
        for system in (s for s in systems if s.kind == "serve" and protocol in s.bases):
            point = medians[(system.key, protocol)]
            if top is not None and triton is not None:
                p99 = "no worse than" if point.p99_ms <= top.p99_ms else "worse than"
                lines.append(f"- {PROTOCOLS[protocol]}: {system.label} / Triton: **{ratio(point, top)}**"
                             f"{paired(raw['points'], (system.key, protocol), (triton.key, protocol))}, "
                             f"p99 {fmt(point.p99_ms, 2)} ms, {p99} Triton's {fmt(top.p99_ms, 2)} ms")
        serve, floor = medians.get(("serve", protocol)), medians.get((f"floor-{protocol}", protocol))
        if serve and floor:
            lines.append(f"- {PROTOCOLS[protocol]}, one process: serve / no-op floor: **{ratio(serve, floor)}**"
                         f"{paired(raw['points'], ('serve', protocol), (f'floor-{protocol}', protocol))}")
    for label, reason in unavailable.items():
        lines.append(f"- {label}: unavailable: {reason[-400:]}")  # the tail of a log says most
    invalid = sorted({f"- {s.label} ({PROTOCOLS[p]}): {d}" for s in systems for p in args.protocols
                      if (s.key, p) in medians for d in medians[(s.key, p)].detail})
    if invalid:
        lines += ["", "Failures (a point with failures is invalid):", "", *invalid]
    return "\n".join(lines)


def header(args: argparse.Namespace, context: dict) -> str:
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False).stdout.split()
    lines = [f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- Machine: {machine()}",
             f"- Command: `{shlex.join(['python', 'benchmarks/frontend.py', *sys.argv[1:]])}`",
             f"- Load generator: {' '.join(h2[-1:]) or 'h2load'} ({args.h2load_threads} thread), on the same machine",
             f"- Load average (1, 5, 15 min): before {context['load_before']}, after {context['load_after']}",
             f"- CPU steal: {context['steal']:.1f} s over {context['wall']:.0f} s of wall time (all CPUs)"]
    if args.note:
        lines.append(f"- Note: {args.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_repository or args.write_requests:
        if args.write_repository:
            serve, triton = write_repository(args.write_repository)
            print(f"serve: {serve}\ntriton: {triton}")
        if args.write_requests:
            grpc_file, json_file = write_requests(args.write_requests)
            print(f"grpc: {grpc_file}\njson: {json_file}")
        return 0
    if shutil.which("h2load") is None:
        say("h2load is not installed (Debian/Ubuntu: apt-get install nghttp2-client)")
        return 2
    # SIGTERM unwinds like Ctrl-C, so the finally block stops every server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="shadowserve-frontend-bench-"))
    unavailable: dict[str, str] = {}
    systems: list[System] = []
    try:
        grpc_body, json_body = write_requests(workdir / "requests")
        systems = start_systems(args, workdir, unavailable)
        if not systems:
            say("nothing to measure: every system was unavailable")
            return 1
        load_before, steal, started = os.getloadavg(), steal_s(), time.monotonic()
        raw = measure(args, systems, {"grpc": grpc_body, "http": json_body})
        context = {"load_before": ", ".join(f"{v:.2f}" for v in load_before), "steal": steal_s() - steal,
                   "wall": time.monotonic() - started}
        context["load_after"] = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    finally:
        for system in reversed(systems):
            system.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    section = header(args, context) + "\n\n" + render(args, systems, raw, unavailable)
    print(section)
    if args.write:
        write_section(RESULTS, START, END, section)
        say(f"wrote {RESULTS.relative_to(HERE.parent)}")
    return 1 if any(p.failures for values in raw["points"].values() for p in values) else 0


if __name__ == "__main__":
    sys.exit(main())
