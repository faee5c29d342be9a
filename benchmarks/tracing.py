"""What tracing costs serve: off, on (every request traced and exported), and on but sampled out.

    python benchmarks/tracing.py            # 3 repetitions of 10 s points at c=1 and c=16 (about 3 minutes)
    python benchmarks/tracing.py --quick    # a smoke run: 2 s points, once, c=16

Four serve processes on the example ``classifier`` (one row of 64 floats, JSON, driven by
``hey`` with a W3C ``traceparent`` on every request):

- **off**: no ``OTEL_*`` variable (the default): the transports find `tracing.current()` None;
- **on**: ``OTEL_TRACES_SAMPLER=always_on``, spans exported over OTLP/HTTP (protobuf) to a real
  receiver in this script's process (``tests/otlp.py``, which decodes every span as a collector
  would), with the SDK's default batching (5 s delay, batches of 512, a queue of 2048); after each of
  its points the next row waits until the last of its spans has arrived, so that the export
  and the receiver's decoding do not run into the next row's time;
- **always_off**: the same with ``OTEL_TRACES_SAMPLER=always_off``, which can record nothing, so
  serve leaves tracing off: this row should read as the off row;
- **unsampled caller**: the default sampler (``parentbased_always_on``) and a traceparent whose
  caller did not sample (flags ``00``): every request takes tracing's path (the header parsed, a
  span started, made current and ended, the sampler asked) and nothing is recorded: what a
  request costs when a low sampling ratio upstream leaves it out.

With ``--before REV`` a fifth row, **before**, serves from a git worktree of ``REV`` (a commit
from before tracing, e.g. ``--before 843166e``) with no ``OTEL_*`` variable: off against before
is what tracing's hooks cost a request when tracing is off.

The rows are interleaved (off, on, always_off, unsampled caller, off, ...) so that the machine's
noise hits them alike; the table shows the median req/s with its range and the medians of p50
and p99, each against the off row, and the spans the receiver got per request of the on row
(three per request: the request, its queue, the batch's compute span, less what batching shares,
less what a full queue dropped). Last, the cost of the one check a request pays when tracing is
off (`tracing.current()`, timed in-process).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from harness import Point, ServerProcess, Unavailable, machine, median_point, parse_hey

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the receiver lives in tests/, the server in serving/

from serving import tracing  # after the path, for the timing of the check
from tests.otlp import Receiver

MODEL = "classifier"
REPOSITORY = ROOT / "examples" / "models"
# each row's sampler (None: no OTEL_* at all) and the sampled flag of the traceparent its requests carry
ROWS = {"off": (None, "01"), "on": ("always_on", "01"), "always_off": ("always_off", "01"),
        "unsampled caller": ("parentbased_always_on", "00")}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s points, 1 repetition, c=16")
    parser.add_argument("--duration", type=float, help="seconds per load point (default 10; --quick 2)")
    parser.add_argument("--repeats", type=int, help="repetitions of each point (default 3; --quick 1)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per server (default 2000; --quick 300)")
    parser.add_argument("--concurrency", help="comma-separated client concurrencies (default 1,16; --quick 16)")
    parser.add_argument("--before", metavar="REV", help="add a row serving from a git worktree of REV (a commit "
                        "without tracing): what the hooks cost when tracing is off")
    args = parser.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (300 if args.quick else 2000)
    args.concurrency = [int(c) for c in (args.concurrency or ("16" if args.quick else "1,16")).split(",")]
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment(row: str, receiver: Receiver) -> dict[str, str]:
    sampler = ROWS[row][0]
    if sampler is None:
        return {}
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.http_endpoint, "OTEL_TRACES_SAMPLER": sampler}


def start(row: str, receiver: Receiver, workdir: Path, tree: Path = ROOT) -> tuple[ServerProcess, str]:
    argv = [sys.executable, "-m", "serving", "--model-repository", str(REPOSITORY), "--host", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    # the parent's OTEL_* would leak into the off row: each row gets exactly its own
    clean = dict.fromkeys(("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER",
                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"), "")
    process = ServerProcess(f"serve ({row})", argv, workdir / f"serve-{row.replace(' ', '-')}.log",
                            env={**clean, **environment(row, receiver), "PYTHONPATH": str(tree)}, cwd=tree)
    try:
        match = process.wait_log(r"listening http=\S*:(\d+)", timeout=60)
        base = f"http://127.0.0.1:{match.group(1)}"
        process.wait_ready(f"{base}/v2/health/ready", timeout=120)
    except BaseException:
        process.stop()
        raise
    return process, f"{base}/v2/models/{MODEL}/infer"


def hey(url: str, body: Path, concurrency: int, flags: str, duration: float | None = None, requests: int = 0) -> Point:
    """``hey`` as harness.hey runs it, with a traceparent (sampled or not: ``flags``) on every request."""
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"
    argv = ["hey", "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-D", str(body),
            "-H", f"traceparent: {traceparent}"]
    argv += ["-z", f"{duration:g}s"] if duration is not None else ["-n", str(max(requests, concurrency))]
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=(duration or 0) + 120, check=False)
    return parse_hey(done.stdout + done.stderr)


def write_body(workdir: Path) -> Path:
    row = ", ".join(f"{(i % 7) / 7:.4f}" for i in range(64))
    path = workdir / "request.json"
    path.write_text(f'{{"inputs": [{{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64], "data": [{row}]}}]}}')
    return path


def check_cost_ns() -> float:
    """Nanoseconds of the check a request pays with tracing off (the best of several timings)."""
    tracing.set_current(None)
    loops = 1_000_000
    best = min(timeit.repeat("current() is None", globals={"current": tracing.current}, number=loops, repeat=5))
    return best / loops * 1e9


def worktree(rev: str, workdir: Path) -> Path:
    """A detached git worktree of ``rev`` under ``workdir``, for the before row."""
    tree = workdir / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True, timeout=120)
    return tree


def settle(receiver: Receiver, quiet_s: float = 6.0, limit_s: float = 40.0) -> None:
    """Waits until the on row's spans have all arrived (none for ``quiet_s``, longer than the SDK's 5 s
    export delay): its exporter and this process's receiver would otherwise take CPU from the row
    measured next."""
    deadline, last, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(receiver.spans())
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def run(args: argparse.Namespace, workdir: Path, receiver: Receiver) -> dict[tuple[str, int], list[Point]]:
    body = write_body(workdir)
    if args.before:
        ROWS["before"] = (None, "01")
    servers: dict[str, tuple[ServerProcess, str]] = {}
    points: dict[tuple[str, int], list[Point]] = {}
    windows: dict[int, list[tuple[int, int]]] = {}  # the on row's timed windows (epoch ns), by concurrency
    try:
        for row in ROWS:
            tree = worktree(args.before, workdir) if row == "before" else ROOT
            servers[row] = start(row, receiver, workdir, tree)
            hey(servers[row][1], body, 16, ROWS[row][1], requests=args.warmup)
            if row == "on":
                settle(receiver)
            say(f"{row}: started and warmed up")
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                for row in ROWS:
                    began = time.time_ns()
                    point = hey(servers[row][1], body, concurrency, ROWS[row][1], duration=args.duration)
                    if row == "on":
                        windows.setdefault(concurrency, []).append((began, time.time_ns()))
                        settle(receiver)
                    points.setdefault((row, concurrency), []).append(point)
                    say(f"repeat {repeat + 1}/{args.repeats} c={concurrency} {row}: {point.rps:.0f} req/s, "
                        f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, {point.failures} failed")
    finally:
        for process, _ in servers.values():
            process.stop()  # serve flushes its last spans at SIGTERM
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(workdir / "before")],
                           capture_output=True, timeout=120, check=False)
    spans = receiver.spans()
    for concurrency, timed in windows.items():  # spans that started inside a timed window, per request timed
        inside = sum(1 for span in spans if any(a <= span.start_unix_nano <= b for a, b in timed))
        requests = sum(p.requests for p in points[("on", concurrency)])
        points[("on", concurrency)][0].detail.append(f"spans per request={inside / max(1, requests):.2f}")
    return points


def render(args: argparse.Namespace, points: dict[tuple[str, int], list[Point]], check_ns: float) -> str:
    lines = [f"serve, {MODEL}, hey (JSON, one row, a traceparent on every request); {args.duration:g} s points, "
             f"median of {args.repeats}; {machine()}", "",
             "| c | tracing | req/s (range) | vs off | p50 ms | p99 ms | p99 vs off | spans / request | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for concurrency in args.concurrency:
        off, _, _ = median_point(points[("off", concurrency)])
        for row in ROWS:
            point, low, high = median_point(points[(row, concurrency)])
            spans = next((d.split("=")[1] for d in point.detail if d.startswith("spans per request=")), "0")
            lines.append(f"| {concurrency} | {row} | {point.rps:.0f} ({low:.0f}–{high:.0f}) | "
                         f"{point.rps / off.rps:.3f} | {point.p50_ms:.2f} | {point.p99_ms:.2f} | "
                         f"{point.p99_ms / off.p99_ms:.3f} | {spans} | {point.failures} |")
    lines += ["", f"The check a request pays when tracing is off (`tracing.current() is None`): {check_ns:.0f} ns."]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tracing-bench-") as tmp, Receiver() as receiver:
        try:
            points = run(args, Path(tmp), receiver)
        except Unavailable as exc:
            say(f"cannot run: {exc}")
            return 1
        print(render(args, points, check_cost_ns()))
    medians = [statistics.median(p.failures for p in ps) for ps in points.values()]
    return 1 if any(medians) else 0


if __name__ == "__main__":
    sys.exit(main())
