"""serve on a compute-bound model against the same model called in-process: how busy serve keeps the device.

    python benchmarks/compute_bound.py                   # 3 repetitions of 10 s points (about 4 minutes)
    python benchmarks/compute_bound.py --quick           # a smoke run: 2 s points, once (about a minute)
    python benchmarks/compute_bound.py --before REV      # and serve from REV, interleaved (about 7 minutes)
    python benchmarks/compute_bound.py --write           # also rewrite its section of benchmarks/RESULTS.md

The model is the issue's MLP, 256→2048→2048→16 (ReLU between), scripted with TorchScript into a
temporary model repository (``max_batch_size: 64``, ``max_queue_delay_microseconds: 2000``, one
instance), served by ``python -m serving --cpu-threads 1``. The limit is the same TorchScript file
called in-process at batch 64 with one torch thread under ``torch.inference_mode``, measured
before every repetition and once after, the fastest used, since a busy machine only ever slows
a measurement down, never speeds it up (with ``--device cuda``: a
synchronisation after each call, and the copies from and to page-locked memory included).

serve is driven at one concurrency (default 128) with 1-row and 8-row requests: over HTTP by
``hey`` (JSON bodies), over gRPC by ``--grpc-processes`` processes of programs/grpc_load.py
(tritonclient.grpc.aio, raw tensors) sharing the concurrency and one timed window. Per point:
rows/s (the client's), its ratio to the limit, serve's busy fraction (Δ
``serving_instance_busy_seconds_total`` / Δwall, or where serve has no such counter Δ
``serving_compute_duration_seconds_sum``) and mean batch (Δsum / Δcount of
``serving_batch_size``), both from two scrapes of /metrics inside the load (a margin after its
start and before its end), and the client's p50 and p99.

Beside them, the HTTP front end's floor: programs/noop_server.py (aiohttp on uvloop, reads the
body, answers a fixed JSON) under the same hey load and bodies, in rows/s: no HTTP server on
aiohttp can take more requests than that on the machine, model or not. And the limit beside the
front end: the in-process limit measured again while hey drives that no-op server at the request
rate serve reached (``hey -q``, same bodies), which is what the model computes when the work every
HTTP server must do shares the machine with it (on two cores, a sibling busy with HTTP slows the
compute itself).

Last, the latency check: the example ``classifier`` (examples/models, copied into the same
repository) at concurrency 1, one JSON row per request, timed per request by the benchmarks'
closed-loop client (sidecar_bench.py's ``load``, µs resolution); with ``--before REV`` serve is
also started from a ``git archive`` of REV and every point runs on both, alternating which goes
first. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from compute_points import (
    DIMS,
    MODEL,
    Limit,
    Measured,
    Serve,
    build_repository,
    in_process_limit,
    measure,
    start_serve,
    write_body,
)
from harness import PROGRAMS, ServerProcess, Unavailable, free_port, hey, machine, write_section
from sidecar_bench import measure as closed_loop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- compute-bound:start -->", "<!-- compute-bound:end -->"
SMALL = "classifier"  # the latency check's model, from examples/models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s points, once, short limit and warm-up")
    parser.add_argument("--duration", type=float, help="seconds per load point (default 10; --quick 2)")
    parser.add_argument("--repeats", type=int, help="repetitions of every point (default 3; --quick 1)")
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight (default 128)")
    parser.add_argument("--rows", default="1,8", help="rows per request, comma-separated (default 1,8)")
    parser.add_argument("--transports", default="http,grpc", help="http, grpc or both (default http,grpc)")
    parser.add_argument("--grpc-processes", type=int, default=2, help="gRPC load processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in serve and in-process (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds (default 2000)")
    parser.add_argument("--limit-seconds", type=float, help="seconds per in-process measurement (default 3; "
                        "--quick 1)")
    parser.add_argument("--latency-duration", type=float, help="seconds per latency point (default 10; --quick 2)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per serve and model (default 2000; --quick 200)")
    parser.add_argument("--before", metavar="REV", help="also serve from a git archive of REV, interleaved")
    parser.add_argument("--after", metavar="REV", help="serve the after side from a git archive of REV, not from "
                        "the working tree")
    parser.add_argument("--write", action="store_true", help="rewrite the compute-bound section of RESULTS.md")
    parser.add_argument("--markdown", type=Path, help="also save the section to this file")
    args = parser.parse_args(argv)
    if args.quick and args.write:
        parser.error("--write records full runs only; drop --quick")
    quick = args.quick
    args.duration = args.duration or (2.0 if quick else 10.0)
    args.repeats = args.repeats or (1 if quick else 3)
    args.limit_seconds = args.limit_seconds or (1.0 if quick else 3.0)
    args.latency_duration = args.latency_duration or (2.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (200 if quick else 2000)
    args.rows = [int(r) for r in args.rows.split(",")]
    args.transports = [t.strip() for t in args.transports.split(",")]
    if not set(args.transports) <= {"http", "grpc"}:
        parser.error("--transports takes http, grpc or http,grpc")
    if not all(1 <= r <= 64 for r in args.rows):
        parser.error("--rows: each from 1 to 64 (the model's max_batch_size)")
    if args.concurrency < 1 or args.repeats < 1 or args.duration < 0.5:
        parser.error("--concurrency and --repeats at least 1, --duration at least 0.5 s")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def archive(rev: str, workdir: Path, name: str) -> Path:
    """The tree of ``rev`` (``git archive``), unpacked into ``workdir / name``."""
    tree = workdir / name
    tree.mkdir()
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True, timeout=120)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=data.stdout, check=True, timeout=120)
    return tree


def origin(tree: Path) -> str:
    """Which serving package a process started from ``tree`` imports (as start_serve starts it)."""
    done = subprocess.run([sys.executable, "-c", "import serving; print(serving.__file__)"], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=120)
    found = done.stdout.strip()
    if not found:
        return done.stderr.strip()[-200:]
    path = Path(found).resolve()
    # inside the tree: said relative to it (no paths of this machine in the results); outside, in full
    return f"{path.relative_to(tree.resolve())} of that tree" if path.is_relative_to(tree.resolve()) else str(path)


def small_body(workdir: Path) -> Path:
    row = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    path = workdir / "small.json"
    path.write_text(json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                                            "data": [round(float(v), 6) for v in row]}]}))
    return path


def warm_up(serve: Serve, args: argparse.Namespace, workdir: Path) -> None:
    base = f"http://{serve.http}/v2/models"
    hey(f"{base}/{MODEL}/infer", write_body(workdir, max(args.rows)), 16, requests=args.warmup)
    hey(f"{base}/{SMALL}/infer", small_body(workdir), 4, requests=args.warmup)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    raw: dict = {"load_before": loadavg(), "limits": [], "points": defaultdict(list), "latency": defaultdict(list),
                 "origins": {}, "floor": defaultdict(list), "beside": defaultdict(list)}
    say(f"building {MODEL} {'→'.join(map(str, DIMS))} ...")
    repository = workdir / "models"
    model_file = build_repository(repository, device=args.device, delay_us=args.delay_us)
    shutil.copytree(ROOT / "examples" / "models" / SMALL, repository / SMALL)
    trees = {"now": archive(args.after, workdir, "after") if args.after else ROOT}
    if args.before:
        trees["before"] = archive(args.before, workdir, "before")
    serves: dict[str, Serve] = {}
    try:
        for label, tree in trees.items():
            raw["origins"][label] = origin(tree)
            say(f"starting serve ({label}: {raw['origins'][label]}) ...")
            serves[label] = start_serve(repository, workdir, name=f"serve-{label}", tree=tree, device=args.device,
                                        threads=args.threads)
            warm_up(serves[label], args, workdir)
        labels = list(serves)
        for rep in range(args.repeats):
            raw["limits"].append(limit(model_file, args))
            for transport in args.transports:
                for rows in args.rows:
                    for label in labels[rep % len(labels):] + labels[:rep % len(labels)]:
                        point = measure(serves[label], transport, rows, args.concurrency, args.duration, workdir,
                                        processes=args.grpc_processes, warmup_rounds=1 if args.quick else 5)
                        raw["points"][(label, transport, rows)].append(point)
                        say(f"  [{rep + 1}/{args.repeats}] {label} {transport} {rows} row(s): " + point_line(point))
            if "http" in args.transports:
                floor(raw, args, workdir, rep, model_file)
        raw["limits"].append(limit(model_file, args))
        body = small_body(workdir)
        for rep in range(args.repeats):
            for label in labels[rep % len(labels):] + labels[:rep % len(labels)]:
                port = int(serves[label].http.rsplit(":", 1)[1])
                out = closed_loop(port, body, 1, args.latency_duration, 0.5)
                raw["latency"][label].append(out)
                say(f"  [{rep + 1}/{args.repeats}] {label} {SMALL} c=1: p50 {out['p50']:.3f} ms, "
                    f"p99 {out['p99']:.3f} ms, {out['failures']} failed")
    finally:
        for serve in serves.values():
            status = serve.process.stop()
            if status not in (0, -15, None):
                say(f"{serve.process.name} exited with status {status} on SIGTERM: see {serve.process.log}")
    raw["load_after"] = loadavg()
    return raw


def floor(raw: dict, args: argparse.Namespace, workdir: Path, rep: int, model_file: Path) -> None:
    """The no-op aiohttp server under the same hey load and bodies (the most an aiohttp front end takes),
    and the in-process limit while hey drives it at the rate serve reached (the model beside a front end)."""
    port = free_port()
    process = ServerProcess("no-op", [sys.executable, str(PROGRAMS / "noop_server.py"), "--port", str(port)],
                            workdir / "noop.log")
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    try:
        process.wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", timeout=60)
        for rows in args.rows:
            body = write_body(workdir, rows)
            point = hey(url, body, args.concurrency, duration=args.duration)
            raw["floor"][rows].append(point.rps * rows)
            say(f"  [{rep + 1}/{args.repeats}] no-op aiohttp, {rows} row(s) a body: {point.rps * rows:,.0f} rows/s")
            served = [p.rows_per_s / rows for (label, transport, r), ps in raw["points"].items()
                      if label == "now" and transport == "http" and r == rows for p in ps[-1:]]
            if not served or served[0] != served[0]:
                continue
            per_worker = served[0] / args.concurrency
            seconds = args.limit_seconds + 1.0
            pacer = subprocess.Popen(["hey", "-z", f"{seconds + 1:g}s", "-q", f"{per_worker:.3f}", "-c",
                                      str(args.concurrency), "-m", "POST", "-T", "application/json", "-D", str(body),
                                      url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.5)  # its connections open and its pace settles
                beside = limit(model_file, args, note=f"beside the no-op server at {served[0]:,.0f} req/s")
            finally:
                pacer.wait(timeout=seconds + 60)
            raw["beside"][rows].append(beside.rows_per_s)
    finally:
        process.stop()


def limit(model_file: Path, args: argparse.Namespace, note: str = "") -> Limit:
    # on a GPU the limit includes the copies from and to page-locked memory, which serve must also make
    result = in_process_limit(model_file, device=args.device, batch=64, threads=args.threads,
                              seconds=args.limit_seconds, copies=args.device.startswith("cuda"))
    where = f", {note}" if note else ""
    say(f"  in-process, batch 64, {args.threads} thread(s){where}: {result.rows_per_s:,.0f} rows/s, "
        f"{result.p50_ms:.2f} ms per call")
    return result


def point_line(point: Measured) -> str:
    w = point.window
    busy = f"busy {w.busy_mean:.2f}, batch {w.batch:.1f}" if w else "no window"
    return (f"{point.rows_per_s:,.0f} rows/s, {busy}, p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms"
            + (f", {point.failures} failed" if point.failures else ""))


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def median(values: list[float]) -> float:
    good = [v for v in values if v == v]
    return statistics.median(good) if good else float("nan")


def render(args: argparse.Namespace, raw: dict) -> str:
    limits: list[Limit] = raw["limits"]
    best = max(limits, key=lambda x: x.rows_per_s)  # other work only ever slows a measurement down
    ceiling = best.rows_per_s
    lines = [f"In-process limit: {fmt(ceiling)} rows/s (the fastest of {len(limits)}: "
             f"{', '.join(fmt(x.rows_per_s) for x in limits)}), batch 64, {args.threads} torch thread(s), "
             f"p50 {fmt(best.p50_ms, 2)} ms per call.", "",
             "| serve | transport | rows/request | c | rows/s (range) | vs in-process | busy | mean batch | "
             "busy ms/batch | p50 ms | p99 ms | failed |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    sources: dict[str, set[str]] = defaultdict(set)
    detail: set[str] = set()
    for transport in args.transports:
        for rows in args.rows:
            for label in ("before", "now"):
                points: list[Measured] = raw["points"].get((label, transport, rows), [])
                if not points:
                    continue
                windows = [p.window for p in points if p.window]
                sources[label].update(w.busy_source for w in windows)
                detail.update(f"{label} {transport} {rows} row(s): {d}" for p in points for d in p.detail)
                rate = median([p.rows_per_s for p in points])
                spread = f"{fmt(min(p.rows_per_s for p in points))}–{fmt(max(p.rows_per_s for p in points))}"
                name = tree_name(args, label)
                lines.append(f"| {name} | {transport} | {rows} | {args.concurrency} | {fmt(rate)} ({spread}) | "
                             f"**{fmt(rate / ceiling, 2)}** | {fmt(median([w.busy_mean for w in windows]), 2)} | "
                             f"{fmt(median([w.batch for w in windows]), 1)} | "
                             f"{fmt(median([w.ms_per_batch for w in windows]), 2)} | "
                             f"{fmt(median([p.p50_ms for p in points]), 2)} | "
                             f"{fmt(median([p.p99_ms for p in points]), 2)} | {sum(p.failures for p in points)} |")
    for rows, rates in sorted(raw["floor"].items()):
        lines.append(f"| no-op aiohttp (the HTTP floor) | http | {rows} | {args.concurrency} | {fmt(median(rates))} "
                     f"({fmt(min(rates))}–{fmt(max(rates))}) | **{fmt(median(rates) / ceiling, 2)}** | | | | | | |")
    beside_notes = []
    for rows, rates in sorted(raw["beside"].items()):
        served = median([p.rows_per_s for p in raw["points"].get(("now", "http", rows), [])])
        lines.append(f"| in-process beside the no-op server at serve's request rate | http | {rows} | "
                     f"{args.concurrency} | {fmt(median(rates))} ({fmt(min(rates))}–{fmt(max(rates))}) | "
                     f"**{fmt(median(rates) / ceiling, 2)}** | | | | | | |")
        beside_notes.append(f"- {rows} row(s) over HTTP: serve / the limit beside the front end: "
                            f"**{fmt(served / median(rates), 2)}**")
    lines += ["", *beside_notes] if beside_notes else []
    lines += ["", f"Latency check: {SMALL} (examples/models), one JSON row per request, c=1, "
              f"{args.latency_duration:g} s per run.", "",
              "| serve | p50 ms (runs) | p99 ms | failed |", "|---|--:|--:|--:|"]
    p50s: dict[str, float] = {}
    for label in ("before", "now"):
        runs = raw["latency"].get(label, [])
        if runs:
            p50s[label] = median([r["p50"] for r in runs])
            name = tree_name(args, label)
            lines.append(f"| {name} | **{fmt(p50s[label], 3)}** ({', '.join(fmt(r['p50'], 3) for r in runs)}) | "
                         f"{fmt(median([r['p99'] for r in runs]), 3)} | {sum(r['failures'] for r in runs)} |")
    lines.append("")
    if len(p50s) == 2:
        lines.append(f"- p50 now / before: **{p50s['now'] / p50s['before']:.3f}**")
    used = "; ".join(f"{tree_name(args, label)}: Δ {' and '.join(sorted(names))} / Δwall"
                     for label, names in sorted(sources.items()))
    lines.append(f"- busy ({used}), mean batch and busy ms/batch (busy time per batch, beside the limit's "
                 "ms per call: slower compute, not idle gaps) from /metrics inside each point; rows/s and "
                 "latencies from the clients")
    lines.append(f"- load average (1, 5, 15 min) before {raw['load_before']}, after {raw['load_after']}")
    lines += [f"- {d}" for d in sorted(detail)]
    return "\n".join(lines)


def tree_name(args: argparse.Namespace, label: str) -> str:
    if label == "before":
        return f"{args.before} (before)"
    return f"{args.after} (after)" if args.after else "working tree"


def header(args: argparse.Namespace, raw: dict) -> str:
    argv = [a for a in sys.argv[1:] if a != "--write"]
    origins = "; ".join(f"{tree_name(args, label)}: `{path}`" for label, path in raw["origins"].items())
    device = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    return "\n".join([
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}; device: {device}",
        f"- Command: `{' '.join(['python', 'benchmarks/compute_bound.py', *argv])}`",
        f"- Software: torch {torch.__version__}, Python {platform.python_version()}; serve from {origins}",
        f"- Model: {MODEL}, {'→'.join(map(str, DIMS))} FP32 MLP (TorchScript), max_batch_size 64, "
        f"max_queue_delay_microseconds {args.delay_us}, one instance, `--cpu-threads {args.threads}`",
        f"- Load: c={args.concurrency}; HTTP: hey, JSON; gRPC: {args.grpc_processes} process(es) of "
        f"programs/grpc_load.py, raw tensors; {args.duration:g} s points, {args.repeats} repetition(s), "
        "interleaved; every process on this machine"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("hey") is None:
        say("hey is not installed (Debian/Ubuntu: apt-get install hey)")
        return 2
    # SIGTERM (from timeout, say) unwinds like Ctrl-C, so the finally blocks stop serve and the load processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="shadowserve-compute-bound-"))
    try:
        raw = run(args, workdir)
    except (Unavailable, subprocess.CalledProcessError) as exc:
        say(f"cannot run the compute-bound benchmark: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    section = header(args, raw) + "\n\n" + render(args, raw)
    print(section)
    if args.markdown:
        args.markdown.write_text(section + "\n")
    if args.write:
        write_section(RESULTS, START, END, section)
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    failed = sum(p.failures for ps in raw["points"].values() for p in ps)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
