"""Overload: serve's goodput when far more clients send than a model's queue admits.

A temporary repository holds the example `classifier` (TorchScript, 64 FP32 in) with
``max_queue_size: 32``. The script starts `python -m serving` on it and measures with
`wrk` (a C load generator: a Python client would be the bottleneck):

1. capacity: ``--capacity-connections`` (default 32) closed-loop connections, so the
   queue cannot overflow;
2. the flood: ``--flood-connections`` (default 512) connections, 16 times the queue;

alternated ``--repeats`` times (default 3), so that other work on the machine hits both
alike; then 200 sequential requests from a plain client, which must all get 200.

Goodput is 200s per second, counted by serve's own ``nv_inference_request_success``
(and cross-checked with wrk's non-2xx count); rejections are serve's
``nv_inference_request_failure{reason="REJECTED"}``; unanswered requests are wrk's socket
errors (connect, read, write, timeout); requests whose connection wrk closed as a phase
ended are counted apart (serve's ``reason="CANCELED"``). RSS is read from /proc.

    python benchmarks/overload.py                     # about 45 s
    python benchmarks/overload.py --write             # and rewrite its section in RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from harness import ServerProcess, machine, write_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLASSIFIER = ROOT / "examples" / "models" / "classifier"
MODEL = "overload"
CONFIG = """name: "overload"
platform: "pytorch_libtorch"
max_batch_size: 64
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 10 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 200
  default_queue_policy { max_queue_size: %d }
}
"""
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("OVERLOAD_BODY")):read("*a")
"""


def repository(workdir: Path, queue: int) -> Path:
    repo = workdir / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG % queue)
    shutil.copy(CLASSIFIER / "2" / "model.pt", repo / MODEL / "1" / "model.pt")
    return repo


def request_body(workdir: Path) -> Path:
    row = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    path = workdir / "request.json"
    path.write_text(json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                                            "data": [round(float(v), 6) for v in row]}]}))
    return path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def counters(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = {"success": 0.0, "rejected": 0.0, "canceled": 0.0, "failed": 0.0}
    for name, labels, value in re.findall(r"^(nv_inference_request_(?:success|failure))\{([^}]*)\}\s+(\S+)$",
                                          text, re.M):
        if f'model="{MODEL}"' not in labels:
            continue
        if name.endswith("success"):
            found["success"] += float(value)
        else:
            found["failed"] += float(value)
            for reason in ("REJECTED", "CANCELED"):
                if f'reason="{reason}"' in labels:
                    found[reason.lower()] += float(value)
    return found


def wrk(url: str, body: Path, connections: int, seconds: float, threads: int) -> dict[str, float]:
    script = body.with_suffix(".lua")
    script.write_text(LUA)
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
            "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False,
                          env={**os.environ, "OVERLOAD_BODY": str(body)})
    text = done.stdout + done.stderr
    total = re.search(r"(\d+) requests in ([0-9.]+)(m?s)", text)
    if total is None:
        raise RuntimeError(f"wrk printed no summary: {' '.join(text.split())[-300:]}")
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"requests": float(total.group(1)), "seconds": elapsed,
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
            "errors_detail": errors.group(0) if errors else "none"}  # type: ignore[dict-item]  # the one text field


def after_check(url: str, body: Path, count: int = 200) -> tuple[int, float]:
    """``count`` sequential requests: how many got 200, and their median latency in ms."""
    data = body.read_bytes()
    ok, times = 0, []
    for _ in range(count):
        started = time.perf_counter()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                ok += response.status == 200
                response.read()
        except urllib.error.URLError:
            pass
        times.append((time.perf_counter() - started) * 1000)
    return ok, float(np.median(times))


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def phase(name: str, url: str, body: Path, metrics: str, connections: int, args: argparse.Namespace) -> dict:
    before = counters(metrics)
    run = wrk(url, body, connections, args.seconds, args.threads)
    after = counters(metrics)
    delta = {key: after[key] - before[key] for key in after}
    return {"name": name, "connections": connections, "ok_rps": delta["success"] / run["seconds"],
            "wrk_ok_rps": (run["requests"] - run["non2xx"]) / run["seconds"], "rejected": delta["rejected"],
            "canceled": delta["canceled"], "other": delta["failed"] - delta["rejected"] - delta["canceled"],
            "unanswered": run["socket_errors"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, default=32, help="the model's max_queue_size (default 32)")
    parser.add_argument("--capacity-connections", type=int, default=32)
    parser.add_argument("--flood-connections", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=6.0, help="per phase (default 6)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="capacity and flood phases, alternated, this many times each (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--source", type=Path, default=ROOT,
                        help="run serve from this source tree, e.g. an older commit's (git archive) to compare")
    parser.add_argument("--write", action="store_true", help="rewrite the overload section of RESULTS.md")
    parser.add_argument("serve_flags", nargs="*", help="extra flags for serve, after --")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    load_before = loadavg()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        workdir = Path(tmp)
        repo, body = repository(workdir, args.queue), request_body(workdir)
        argv = [sys.executable, "-m", "serving", "--model-repository", str(repo), "--host", "127.0.0.1",
                "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args.serve_flags]
        source = args.source.resolve()
        serve = ServerProcess("serve", argv, workdir / "serve.log", cwd=source, env={"PYTHONPATH": str(source)})
        try:
            match = serve.wait_log(r"listening http=\S*:(\d+) grpc=\S*:(\d+) metrics=\S*:(\d+)", timeout=60)
            base, metrics = f"http://127.0.0.1:{match.group(1)}", f"http://127.0.0.1:{match.group(3)}/metrics"
            url = f"{base}/v2/models/{MODEL}/infer"
            serve.wait_ready(f"{base}/v2/health/ready", timeout=120)
            wrk(url, body, args.capacity_connections, 2, args.threads)  # warm-up
            rss_start = rss_mib(serve.proc.pid)
            for _ in range(args.repeats):
                rows.append(phase("capacity", url, body, metrics, args.capacity_connections, args))
                rows.append(phase("flood", url, body, metrics, args.flood_connections, args))
            rss_end = rss_mib(serve.proc.pid)
            ok, p50 = after_check(url, body)
            alive = serve.proc.poll() is None
        finally:
            status = serve.stop()
    load_after = loadavg()
    pairs = zip(rows[::2], rows[1::2], strict=False)  # (capacity, flood) phases, alternated
    ratios = [flood["ok_rps"] / cap["ok_rps"] for cap, flood in pairs if cap["ok_rps"]]
    label = f" ({args.label})" if args.label else ""
    defaults = vars(parser.parse_args([]))  # the command as it was run: every flag that differs
    shown = [f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k not in ("write", "source", "serve_flags") and v != defaults[k]]
    flags = "".join(shown) + (f" --source {args.source}" if args.source != ROOT else "") + \
        (" -- " + " ".join(args.serve_flags) if args.serve_flags else "")
    lines = [
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC{label}; "
        f"machine: {machine()}",
        f"- Command: `python benchmarks/overload.py{' --write' if args.write else ''}{flags}` "
        f"(wrk -t {args.threads}, {args.repeats} x {args.seconds:g} s per phase, alternated; model "
        f"`classifier` with max_queue_size {args.queue}; one [1, 64] FP32 row as JSON per request)",
        f"- Load average (1 min) {load_before} before, {load_after} after",
        "",
        "| phase | connections | 200/s (serve's count) | 200/s (wrk) | 503 rejected | canceled by wrk at the end "
        "| other failures | unanswered (wrk socket errors) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['connections']} | {row['ok_rps']:,.0f} | {row['wrk_ok_rps']:,.0f} | "
                     f"{row['rejected']:,.0f} | {row['canceled']:,.0f} | {row['other']:,.0f} | "
                     f"{row['unanswered']:,.0f} |")
    lines += [
        "",
        f"- Goodput under the flood, against the capacity phase just before it: "
        f"**{statistics.median(ratios):.0%}** (median; each: {', '.join(f'{r:.0%}' for r in ratios)})",
        f"- RSS: {rss_start:.0f} MiB before the first phase, {rss_end:.0f} MiB after the last",
        f"- Right after the last flood: {ok}/200 sequential requests answered 200, median {p50:.2f} ms; serve "
        f"{'still running' if alive else 'had exited'}, exit status {status} on SIGTERM",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        write_section(HERE / "RESULTS.md", "<!-- overload:start -->", "<!-- overload:end -->", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
