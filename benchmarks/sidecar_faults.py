"""What a misbehaving shadow costs the primary's clients: latency through the sidecar, healthy shadow vs faulty ones.

    python benchmarks/sidecar_faults.py            # about 5 minutes
    python benchmarks/sidecar_faults.py --quick    # a smoke run: 2 s points, once
    python benchmarks/sidecar_faults.py --write    # also rewrite its section of benchmarks/RESULTS.md

One sidecar per shadow, all with their defaults (shadow timeout 10 s, max_in_flight 64,
max_response_size 4 MiB, a 128 MiB memory budget), in front of the same primary, a no-op
stub (`sidecar_bench.py stub`: it answers at once, so whatever the sidecar adds shows);
the shadow is a healthy double, or one of the misbehaving doubles of
`tests.sidecar.doubles` (refuse, blackhole, reset, reset mid-body, garbage, 500s, 5 s
late, endless and huge bodies, slow drip, stall), all in one process of their own. Each
point is an open-loop rate (``--rate`` req/s over 16 connections, `sidecar_bench.py load`),
points interleaved over ``--repeats`` runs, medians reported; the p99 of each faulty
shadow is compared with the healthy shadow's. Then the back-off under load: a fresh
sidecar whose shadow is dead (nothing listens) at concurrency 64, closed loop, and the
copies it skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sidecar_bench import RESULTS, ROOT, Process, free_port, measure, median, scrape, total

START, END = "<!-- sidecar-faults:start -->", "<!-- sidecar-faults:end -->"
KINDS = ("healthy", "refuse", "blackhole", "reset", "reset_mid_body", "garbage", "error500", "late", "endless", "huge",
         "drip", "stall")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def peak_rss(pid: int) -> float:
    """VmHWM of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args: argparse.Namespace) -> str:
    logs = Path(tempfile.mkdtemp(prefix="sidecar-faults-"))
    body = logs / "body.json"
    body.write_text(json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                                            "data": [0.1] * 64}]}))
    before = loadavg()
    processes: list[Process] = []
    ports_file = logs / "doubles.json"
    try:
        primary_port = free_port()
        primary = Process("primary", [sys.executable, str(Path(__file__).with_name("sidecar_bench.py")), "stub",
                                      "--port", str(primary_port)], logs)
        processes.append(primary)
        primary.wait_ready(f"http://127.0.0.1:{primary_port}/v2/health/ready")
        doubles = Process("doubles", [sys.executable, "-m", "tests.sidecar.doubles", "--port-file", str(ports_file)],
                          logs)
        processes.append(doubles)
        deadline = time.monotonic() + 30
        while not ports_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        urls: dict[str, str] = json.loads(ports_file.read_text())
        sidecars: dict[str, tuple[Process, int, str]] = {}
        urls["dead"] = urls["refuse"]
        for kind in (*args.kinds, "dead"):
            port, metrics = free_port(), free_port()
            process = Process(f"sidecar-{kind}", [
                sys.executable, "-m", "sidecar", "--listen", f"127.0.0.1:{port}", "--grpc-listen", "off",
                "--admin-listen", "off", "--metrics-port", str(metrics), "--drain-timeout-secs", "0",
                "--shadow-drain-secs", "0", "--primary", f"http://127.0.0.1:{primary_port}",
                "--shadow", f"{kind.replace('_', '-')}={urls[kind]}"], logs)
            processes.append(process)
            process.wait_ready(f"http://127.0.0.1:{metrics}/readyz")
            sidecars[kind] = (process, port, f"http://127.0.0.1:{metrics}/metrics")
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.kinds}
        for _ in range(args.repeats):
            for kind in args.kinds:
                runs[kind].append(measure(sidecars[kind][1], body, 16, args.duration, args.warmup, args.rate))
        results = {kind: median(runs[kind]) for kind in args.kinds}
        for kind in args.kinds:  # the spread over the runs: how far the machine's noise alone moves a p99
            p99s = [r["p99"] for r in runs[kind] if r["requests"]]
            results[kind]["p99_range"] = (min(p99s), max(p99s)) if p99s else (float("nan"), float("nan"))
        counters = {kind: scrape(sidecars[kind][2]) for kind in args.kinds}
        peaks = {kind: peak_rss(sidecars[kind][0].proc.pid) for kind in args.kinds}
        dead_before = scrape(sidecars["dead"][2])
        backoff = measure(sidecars["dead"][1], body, 64, args.duration, 0.0)  # from its first copy on
        dead_after = scrape(sidecars["dead"][2])
    finally:
        for process in reversed(processes):
            process.stop()
    after = loadavg()
    return report(args, results, counters, peaks, backoff, dead_before, dead_after, before, after)


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], counters: dict[str, dict[str, float]],
           peaks: dict[str, float], backoff: dict[str, Any], dead_before: dict[str, float],
           dead_after: dict[str, float], before: str, after: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = (" --quick" if args.quick else "") + (f" --kinds {','.join(args.kinds)}" if args.kinds != KINDS else "")
    base = results["healthy"]
    lines = [
        (f"- Date: {now}; {os.cpu_count()} CPU(s); command: `python benchmarks/sidecar_faults.py{flags} --write` "
         f"({args.rate:g} req/s open loop over 16 connections, {args.duration:g} s per point after "
         f"{args.warmup:g} s of warm-up, {args.repeats} run(s) interleaved, medians)"),
        (f"- /proc/loadavg before: {before}; after: {after}. The primary (a no-op stub), the doubles, the "
         "sidecars and the load generator share these cores with whatever else runs on the machine."),
        "",
        ("| shadow | req/s | p50 ms | p99 ms | p99 range over runs | p99 vs healthy | failed | copies sent | "
         "what the sidecar counted | peak RSS MiB |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for kind in args.kinds:
        r, c = results[kind], counters[kind]
        change = (r["p99"] - base["p99"]) / base["p99"] * 100 if base["p99"] else float("nan")
        counted = [f"{name} {total(c, key):,.0f}" for name, key in (
            ("errors", "sidecar_shadow_errors_total"), ("timeouts", "sidecar_shadow_timeouts_total"),
            ("skipped", "sidecar_shadow_skipped_total"), ("dropped", "sidecar_shadow_dropped_total"))
            if total(c, key)]
        reasons = sorted({key.split('reason="')[1].split('"')[0] for key in c
                          if 'reason="' in key and key.startswith(("sidecar_shadow_errors_total",
                                                                    "sidecar_shadow_skipped_total")) and c[key]})
        low, high = r["p99_range"]
        lines.append(f"| {kind} | {r['rps']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {low:.2f}–{high:.2f} | "
                     f"{'—' if kind == 'healthy' else f'{change:+.1f}%'} | {r['failures']} | "
                     f"{total(c, 'sidecar_shadow_requests_total'):,.0f} | {', '.join(counted) or 'answers only'}"
                     f"{' (' + ', '.join(reasons) + ')' if reasons else ''} | {peaks[kind]:.0f} |")
    skipped = total(dead_after, "sidecar_shadow_skipped_total") - total(dead_before, "sidecar_shadow_skipped_total")
    errors = total(dead_after, "sidecar_shadow_errors_total") - total(dead_before, "sidecar_shadow_errors_total")
    lines += ["", (f"- Back-off under load: a fresh sidecar with a dead shadow (nothing listens) at concurrency 64, "
                   f"closed loop, {args.duration:g} s: {backoff['requests']:,} primary requests "
                   f"({backoff['rps']:,.0f}/s, {backoff['failures']} failed), {errors:,.0f} connection errors and "
                   f"{skipped:,.0f} copies skipped while the shadow rested.")]
    return "\n".join(lines)


def write_section(section: str) -> None:
    text = RESULTS.read_text()
    if START not in text:
        text = text.rstrip("\n") + f"\n\n## The sidecar with misbehaving shadows (`benchmarks/sidecar_faults.py`)\n\n" \
                                   f"{START}\n{END}\n"
    head, rest = text.split(START, 1)
    RESULTS.write_text(f"{head}{START}\n{section}\n{END}{rest.split(END, 1)[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second, open loop (default 300)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per point (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every point, interleaved (default 3)")
    parser.add_argument("--kinds", type=lambda v: tuple(k for k in v.split(",") if k), default=KINDS,
                        help=f"the shadows to measure, comma-separated (default all: {','.join(KINDS)})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s points, one run")
    parser.add_argument("--write", action="store_true", help="rewrite this benchmark's section of RESULTS.md")
    args = parser.parse_args()
    if "healthy" not in args.kinds or set(args.kinds) - set(KINDS):
        parser.error(f"--kinds: name shadows among {', '.join(KINDS)}, healthy included (the reference)")
    if args.quick:
        args.duration, args.warmup, args.repeats = 2.0, 0.5, 1
    os.chdir(ROOT)  # the doubles run as a module of the tests
    section = run(args)
    print(section)
    if args.write:
        write_section(section)
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
