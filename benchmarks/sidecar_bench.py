"""What the sidecar costs: direct to ``serve`` vs through the sidecar, in one run.

    python benchmarks/sidecar_bench.py            # about 4 minutes
    python benchmarks/sidecar_bench.py --quick    # a smoke run: 2 s points, once
    python benchmarks/sidecar_bench.py --write    # also rewrite the sidecar section of benchmarks/RESULTS.md

Systems, all answering the example ``classifier`` (one row of 64 floats, JSON):
direct to ``serve``; through the sidecar with no shadow; with one shadow at 100% (a second
``serve``); with a dead shadow (nothing listens) and a slow one (answers after
``--slow-ms``) at 100%. Each at concurrency 1 and 64 (closed loop). Then the hop alone at
1000 req/s over 16 connections (open loop), to a no-op upstream and to ``serve``, direct
and through the sidecar: the difference of the percentiles is what the sidecar adds, the
figure Istio publishes for its two Envoy hops (p90 0.228 ms, p99 0.298 ms). Last, the hop's
upstream client alone, the sidecar's against aiohttp's ClientSession, at concurrency 1 and 16
to the no-op upstream (``benchmarks/upstream_clients.py``): the row that decides which client
the sidecar keeps.

Every point runs ``--repeats`` times, the points interleaved so that the machine's noise
hits all of them alike; the medians are reported. The load generator (``load`` mode of
this script, ``benchmarks/loadgen.py``) is a raw HTTP/1.1 keep-alive client on uvloop in
its own process, timing each request with ``perf_counter`` (hey reports in 0.1 ms steps,
too coarse for a hop).
Every process runs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadgen import run_load  # beside this script: python benchmarks/sidecar_bench.py puts it on the path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- sidecar:start -->", "<!-- sidecar:end -->"
MODEL_PATH = "/v2/models/classifier/infer"
ISTIO = {"p90": 0.228, "p99": 0.298}


# -- stub upstreams (each in its own process) ---------------------------------------------------

async def _stub(port: int, delay_ms: float) -> None:
    from aiohttp import web

    reply = json.dumps({"model_name": "classifier", "model_version": "1", "outputs": [
        {"name": "OUTPUT__0", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}]}).encode()

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return web.Response(body=reply, content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ready": true}', content_type="application/json")

    app = web.Application()
    app.router.add_post(MODEL_PATH, infer)
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# -- orchestration ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A server in its own process group, logging to a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        self._file = open(self.log, "wb")  # noqa: SIM115 - the process writes to it until stop() closes it
        self.proc = subprocess.Popen(argv, stdout=self._file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, start_new_session=True)

    def wait_ready(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-600:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready at {url}: {self.log.read_text()[-600:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._file.close()


def measure(port: int, body: Path, concurrency: int, duration: float, warmup: float,
            rate: float | None = None) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__)), "load", "--port", str(port), "--body", str(body),
            "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup)]
    if rate:
        argv += ["--rate", str(rate)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 120, check=False)
    if done.returncode != 0:
        return {"rps": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "requests": 0,
                "failures": 1, "error": done.stderr.strip()[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def clients(port: int, concurrency: int, duration: float, warmup: float) -> dict[str, dict[str, Any]]:
    """The sidecar's upstream client and aiohttp's, each in a closed loop to ``port`` from one process."""
    argv = [sys.executable, str(HERE / "upstream_clients.py"), "--port", str(port), "--concurrency",
            str(concurrency), "--duration", str(duration), "--warmup", str(warmup)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=2 * (duration + warmup) + 120, check=False)
    if done.returncode != 0:
        failed = {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "cpu_us": float("nan"),
                  "requests": 0, "failures": 1}
        return {"lean": failed, "aiohttp": failed}
    out: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repetitions; failures add up."""
    good = [r for r in runs if r["requests"]] or runs
    out: dict[str, Any] = {key: statistics.median(r[key] for r in good)
                           for key in ("rps", "p50", "p90", "p99", "cpu_us")
                           if key in good[0]}
    out["failures"] = sum(r["failures"] for r in runs)
    return out


def scrape(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(sidecar_[a-z_]+?)(\{[^}]*\})? ([0-9.eE+-]+)$", text, re.M):
        key = name + (labels or "")
        values[key] = values.get(key, 0.0) + float(value)
    return values


def total(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


def _machine() -> str:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s){', ' + model if model else ''}"


def run(args: argparse.Namespace) -> str:
    logs = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    body = logs / "body.json"
    body.write_text(json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                                            "data": [0.1] * 64}]}))
    args.load_before = os.getloadavg()[0]
    ports = {name: free_port() for name in ("serve", "shadow", "noop", "slow", "dead")}
    processes: list[Process] = []

    def start(name: str, argv: list[str], ready: str) -> None:
        process = Process(name, argv, logs)
        processes.append(process)
        process.wait_ready(ready)

    def serve(name: str) -> None:
        start(name, [sys.executable, "-m", "serving", "--model-repository", "examples/models", "--host", "127.0.0.1",
                     "--http-port", str(ports[name]), "--grpc-port", "0", "--metrics-port", "0", "--cpu-threads", "1"],
              f"http://127.0.0.1:{ports[name]}/v2/health/ready")

    def url(name: str) -> str:
        return f"http://127.0.0.1:{ports[name]}"

    sidecars = {
        "sidecar, no shadow": ["--primary", url("serve")],
        "sidecar, 1 shadow at 100%": ["--primary", url("serve"), "--shadow", f"shadow={url('shadow')}"],
        "sidecar, dead + slow shadow": ["--primary", url("serve"), "--shadow", f"dead={url('dead')}",
                                        "--shadow", f"slow={url('slow')}"],
        "sidecar, no-op upstream": ["--primary", url("noop")],
    }
    listen: dict[str, int] = {}
    metrics: dict[str, str] = {}
    results: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        serve("serve")
        serve("shadow")
        for name, delay in (("noop", 0.0), ("slow", args.slow_ms)):
            start(name, [sys.executable, str(Path(__file__)), "stub", "--port", str(ports[name]), "--delay-ms",
                         str(delay)], f"{url(name)}/v2/health/ready")
        for label, flags in sidecars.items():
            listen[label], metrics_port = free_port(), free_port()
            metrics[label] = f"http://127.0.0.1:{metrics_port}/metrics"
            start(label, [sys.executable, "-m", "sidecar", "--listen", f"127.0.0.1:{listen[label]}", "--grpc-listen",
                          "off", "--admin-listen", "off", "--metrics-port", str(metrics_port),
                          "--drain-timeout-secs", "0", *flags],
                  f"http://127.0.0.1:{metrics_port}/readyz")
        model_systems = [("direct to serve", ports["serve"])] + [(label, listen[label]) for label in sidecars
                                                                 if "no-op" not in label]
        hop_systems = [("direct to no-op", ports["noop"]),
                       ("sidecar, no-op upstream", listen["sidecar, no-op upstream"]),
                       ("direct to serve", ports["serve"]), ("sidecar, no shadow", listen["sidecar, no shadow"])]
        points: list[tuple[str, int, int, float | None]] = [
            (label, port, concurrency, None) for concurrency in (1, 64) for label, port in model_systems]
        points += [(label, port, 16, 1000.0) for label, port in hop_systems]
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):  # points interleaved, so the machine's noise hits all alike
            for label, port, concurrency, rate in points:
                point = "1000/s" if rate else f"c={concurrency}"
                print(f"  [{repeat + 1}/{args.repeats}] {label}, {point} ...", file=sys.stderr, flush=True)
                runs.setdefault((label, point), []).append(
                    measure(port, body, concurrency, args.duration, args.warmup, rate))
            for concurrency in (1, 16):
                print(f"  [{repeat + 1}/{args.repeats}] upstream clients, c={concurrency} ...", file=sys.stderr,
                      flush=True)
                for name, figures in clients(ports["noop"], concurrency, args.duration, args.warmup).items():
                    runs.setdefault((f"client: {name}", f"c={concurrency}"), []).append(figures)
        results.update({key: median(values) for key, values in runs.items()})
        scraped = {label: scrape(address) for label, address in metrics.items()}
        args.load_after = os.getloadavg()[0]
    finally:
        for process in reversed(processes):
            process.stop()
    return report(args, results, scraped)


def _row(label: str, point: str, r: dict[str, Any]) -> str:
    return (f"| {label} | {point} | {r['rps']:,.0f} | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | "
            f"{r['failures']} |")


def report(args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]],
           scraped: dict[str, dict[str, float]]) -> str:
    lines = [
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {_machine()}",
        f"- Command: `python benchmarks/sidecar_bench.py{' --write' if args.write else ''}"
        f"{' --quick' if args.quick else ''}` (one run: every point {args.repeats} time(s), points interleaved, "
        f"medians shown; {args.duration:g} s per point after {args.warmup:g} s of warm-up; Python "
        f"{platform.python_version()}; every server, sidecar and the load generator share this machine's cores)",
        f"- Load average (1 min) {args.load_before:.1f} before the run and {args.load_after:.1f} after it: other "
        "work on the machine competes for the same cores, so compare rows of this run with each other.",
        "- Request: `classifier`, one row of 64 FP32 as JSON. Latencies in ms, measured by the client.",
        "", "| system | load | req/s | p50 | p90 | p99 | failed |", "|---|---|---:|---:|---:|---:|---:|"]
    for (label, point), r in results.items():
        if point != "1000/s" and not label.startswith("client: "):
            lines.append(_row(label, point, r))
    lines += ["", "Added by the sidecar (through the sidecar less direct, same load):", "",
              "| configuration | load | p50 | p90 | p99 |", "|---|---|---:|---:|---:|"]
    for (label, point), r in results.items():
        base = results.get(("direct to serve", point))
        if label.startswith("sidecar") and point != "1000/s" and base:
            lines.append(f"| {label} | {point} | {r['p50'] - base['p50']:+.3f} | {r['p90'] - base['p90']:+.3f} | "
                         f"{r['p99'] - base['p99']:+.3f} |")
    lines += ["", "The hop alone at 1000 req/s over 16 connections (open loop):", "",
              "| upstream | direct p50 / p90 / p99 | through the sidecar p50 / p90 / p99 | added p90 | added p99 |",
              "|---|---|---|---:|---:|"]
    hop = {}
    for upstream, direct, proxied in (("no-op", "direct to no-op", "sidecar, no-op upstream"),
                                      ("serve", "direct to serve", "sidecar, no shadow")):
        d, p = results[(direct, "1000/s")], results[(proxied, "1000/s")]
        hop[upstream] = (p["p90"] - d["p90"], p["p99"] - d["p99"])
        lines.append(f"| {upstream} | {d['p50']:.3f} / {d['p90']:.3f} / {d['p99']:.3f} | {p['p50']:.3f} / "
                     f"{p['p90']:.3f} / {p['p99']:.3f} | {hop[upstream][0]:+.3f} | {hop[upstream][1]:+.3f} |")
    lines += ["", "The hop's upstream client alone, to the no-op upstream from one process (closed loop; CPU: "
              "that process's, per request):", "", "| client | load | req/s | p50 | p99 | CPU µs/request |",
              "|---|---|---:|---:|---:|---:|"]
    for (label, point), r in results.items():
        if label.startswith("client: "):
            name = "sidecar.upstream (llhttp)" if label == "client: lean" else "aiohttp ClientSession"
            lines.append(f"| {name} | {point} | {r['rps']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                         f"{r['cpu_us']:.0f} |")
    own = scraped.get("sidecar, no-op upstream", {})
    count = total(own, "sidecar_hop_duration_seconds_count")
    mean_hop = total(own, "sidecar_hop_duration_seconds_sum") / count * 1000 if count else float("nan")
    lines.append("")
    one, faulty = scraped.get("sidecar, 1 shadow at 100%", {}), scraped.get("sidecar, dead + slow shadow", {})
    share = results[("sidecar, no shadow", "c=64")]["rps"] / results[("direct to serve", "c=64")]["rps"]
    lines += [
        f"- Throughput at c=64 through the sidecar with no shadow is {share:.0%} of direct: the sidecar's own "
        f"CPU per request shares the machine's {os.cpu_count()} cores with `serve` and the load generator.",
        f"- The sidecar's own view (`sidecar_hop_duration_seconds`, no-op upstream): a mean of {mean_hop:.3f} ms "
        "per request between reading the request and handing back the response, without the kernel's part.",
        f"- One shadow at 100%: {total(one, 'sidecar_shadow_requests_total'):,.0f} copies sent, "
        f"{total(one, 'sidecar_shadow_successes_total'):,.0f} answered, "
        f"{total(one, 'sidecar_shadow_dropped_total'):,.0f} dropped (max_in_flight). The shadow `serve` runs on the "
        "same cores as the primary, so its compute competes with the primary's, which a real deployment avoids.",
        f"- Dead + slow ({args.slow_ms:g} ms) shadows: {total(faulty, 'sidecar_shadow_errors_total'):,.0f} "
        f"connection errors and {total(faulty, 'sidecar_shadow_skipped_total'):,.0f} copies skipped while the "
        f"dead one rested, {total(faulty, 'sidecar_shadow_dropped_total'):,.0f} copies dropped (max_in_flight), "
        f"{total(faulty, 'sidecar_shadow_successes_total'):,.0f} answered by the slow shadow; no primary request "
        "failed or waited for them.",
        f"- Istio publishes p90 {ISTIO['p90']} ms / p99 {ISTIO['p99']} ms added at 1000 req/s for its two Envoy hops "
        f"(client and server sidecars). This sidecar is one hop, in Python: it adds p90 {hop['no-op'][0]:.3f} ms / "
        f"p99 {hop['no-op'][1]:.3f} ms over a no-op upstream here, "
        f"{'within' if hop['no-op'][0] <= ISTIO['p90'] and hop['no-op'][1] <= ISTIO['p99'] else 'above'} "
        "Istio's two-hop figure, on a machine where the load generator, the upstream and the sidecar share "
        f"{os.cpu_count()} cores (Istio's figure comes from its own test set-up, not from this machine)."]
    return "\n".join(lines)


def write_section(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## The sidecar\n\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    RESULTS.write_text(f"{before}{START}\n{section}\n{END}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    load = sub.add_parser("load", help="the load generator (used by the benchmark itself)")
    load.add_argument("--host", default="127.0.0.1")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--body", type=Path, required=True)
    load.add_argument("--concurrency", type=int, default=1)
    load.add_argument("--duration", type=float, default=10.0)
    load.add_argument("--warmup", type=float, default=2.0)
    load.add_argument("--rate", type=float, help="open loop: requests per second over all connections")
    stub = sub.add_parser("stub", help="a stub upstream (used by the benchmark itself)")
    stub.add_argument("--port", type=int, required=True)
    stub.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every point; medians reported "
                                                                "(default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per point (default 1)")
    parser.add_argument("--slow-ms", type=float, default=50.0, help="the slow shadow's delay (default 50)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s points, one repetition")
    parser.add_argument("--write", action="store_true", help="rewrite the sidecar section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    runner = asyncio.run
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if args.mode == "load":
        out = runner(run_load(args.host, args.port, MODEL_PATH, args.body.read_bytes(), args.concurrency,
                          args.duration, args.warmup, args.rate))
        print(json.dumps(out))
        return 0
    if args.mode == "stub":
        runner(_stub(args.port, args.delay_ms))
        return 0
    if args.quick:
        args.duration, args.warmup, args.repeats = 2.0, 0.5, 1
    section = run(args)
    print(section)
    if args.write:
        write_section(section)
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
