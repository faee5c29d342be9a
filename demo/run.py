"""shadowserve end to end on the bundled example, with the same CLIs the README documents.

1. `serve` with the example classifier: version 1 as the primary, version 2 as a shadow, and
   version 2 again as a 10% canary (three processes, as three pods would be);
2. the `sidecar` in front of the primary, mirroring to the shadow, routing the canary slice
   and recording every mirrored request to ``<out>/records``;
3. clients sending classifier requests through the sidecar over HTTP and gRPC, whose inputs
   shift half-way, with a live line of throughput, latency, batch size, shadow agreement and
   canary weight;
4. then a drift report of the shift (with a control: the first half against itself), the
   primary-vs-shadow comparison and the canary analysis verdict;
5. then every process gets SIGTERM, drains and exits 0, leaving ``<out>/reports`` and
   ``<out>/records`` (and ``<out>/summary.json``, what a test asserts on).

Ctrl-C at any point stops every process the demo started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import display
from .processes import Children, StartError, command
from .traffic import Traffic

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "models" / "classifier"
SERVE_FLAGS = ["--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
               "--log-format", "json", "--cpu-threads", "1", "--exit-timeout-secs", "10"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic (default 30)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo", help="where records and reports go")
    parser.add_argument("--keep", action="store_true",
                        help="keep the services running after the traffic, with the lines to try them by hand")
    return parser.parse_args(argv)


def repository(out: Path, role: str, version: int) -> Path:
    """A model repository holding one version of the classifier, as that role's image would."""
    repo = out / "repos" / role
    model = repo / "classifier"
    shutil.copytree(EXAMPLE / str(version), model / str(version))
    shutil.copy(EXAMPLE / "labels.txt", model / "labels.txt")
    config = (EXAMPLE / "config.pbtxt").read_text().replace(
        "version_policy: { all { } }", f"version_policy: {{ specific {{ versions: [ {version} ] }} }}")
    (model / "config.pbtxt").write_text(config)
    return repo


def start_serve(children: Children, out: Path, role: str, version: int) -> dict[str, Any]:
    child = children.start(f"serve {role} (v{version})",
                           [*command("serving"), "--model-repository", str(repository(out, role, version)),
                            *SERVE_FLAGS], out / "logs" / f"serve-{role}.log")
    ports = child.wait_for("listening ")
    child.wait_for("ready=true")
    return {"http": f"http://127.0.0.1:{ports['http_port']}", "grpc": f"127.0.0.1:{ports['grpc_port']}",
            "metrics": f"http://127.0.0.1:{ports['metrics_port']}/metrics"}


def sidecar_config(out: Path, shadow: dict[str, Any], canary: dict[str, Any]) -> Path:
    config = {
        "sampling": {"header": "x-user-id"},
        "shadows": [{"name": "v2", "http": shadow["http"], "grpc": shadow["grpc"], "fraction": 1.0}],
        "canary": {"http": canary["http"], "grpc": canary["grpc"], "weight": 10, "sticky_header": "x-user-id",
                   "analysis": {"interval": "5s", "min_requests": 20, "step_weight": 10, "max_weight": 30,
                                "failure_limit": 2, "max_error_rate": 0.01, "max_p99_ratio": 3.0,
                                "max_disagreement": 0.05}},
        "recording": {"inputs": "none", "segment_seconds": "2s"},
    }
    path = out / "sidecar.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_sidecar(children: Children, out: Path, primary: dict[str, Any], config: Path) -> dict[str, Any]:
    child = children.start("sidecar", [
        *command("sidecar"), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--metrics-port", "0",
        "--admin-listen", "127.0.0.1:0", "--primary", primary["http"], "--primary-grpc", primary["grpc"],
        "--record-dir", str(out / "records"), "--config", str(config), "--log-format", "json",
        "--drain-timeout-secs", "10"], out / "logs" / "sidecar.log")
    ports = child.wait_for("listening ")
    admin = child.wait_for("admin ")
    return {"http": f"http://127.0.0.1:{ports['http_port']}", "grpc": f"127.0.0.1:{ports['grpc_port']}",
            "metrics": f"http://127.0.0.1:{ports['metrics_port']}/metrics",
            "admin": f"http://127.0.0.1:{admin['admin_port']}"}


def scrape(url: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name
               and all(f'{lk}="{lv}"' in k for lk, lv in labels.items()))


async def drive(args: argparse.Namespace, sidecar: dict[str, Any], primary: dict[str, Any]) -> dict[str, Any]:
    """Run the traffic with the live line; returns what the clients saw."""
    traffic = Traffic(sidecar["http"], sidecar["grpc"], args.duration, args.concurrency)
    stop = asyncio.Event()
    live = display.Live()
    task = asyncio.ensure_future(traffic.run(stop))
    loop = asyncio.get_running_loop()
    started, last_ok = loop.time(), 0
    last_primary = await loop.run_in_executor(None, scrape, primary["metrics"])
    try:
        while not task.done():
            await asyncio.sleep(0.5)
            now = await loop.run_in_executor(None, scrape, primary["metrics"])
            side = await loop.run_in_executor(None, scrape, sidecar["metrics"])
            rows = total(now, "serving_batch_size_sum") - total(last_primary, "serving_batch_size_sum")
            batches = total(now, "serving_batch_size_count") - total(last_primary, "serving_batch_size_count")
            compared = total(side, "sidecar_shadow_compared_rows_total", shadow="v2")
            agreed = total(side, "sidecar_shadow_top1_agree_rows_total", shadow="v2")
            weights = [v for k, v in side.items() if k.startswith("sidecar_canary_weight")]
            ok = traffic.tally.total_ok
            live.update(display.live_line(loop.time() - started, args.duration, (ok - last_ok) / 0.5,
                                          traffic.tally.take(), rows / batches if batches else None,
                                          agreed / compared if compared else None,
                                          weights[0] if weights else None, traffic.tally.shifted_at is not None),
                        loop.time() - started)
            last_primary, last_ok = now, ok
    finally:
        stop.set()
        tally = await task
        live.done()
    return {"sent": tally.sent, "ok": tally.ok, "failures": tally.failures, "shifted_at": tally.shifted_at,
            "started_at": time.time() - (loop.time() - started)}


def drift(out: Path, name: str, arguments: list[str]) -> dict[str, Any]:
    """Run shadowserve-drift as a user would; returns its JSON report (its table goes to the screen)."""
    report = out / "reports" / f"{name}.json"
    done = subprocess.run(command("sidecar.drift") + arguments + [
        "--model", "classifier", "--no-progress", "--json", str(report), "--html", str(report.with_suffix(".html"))],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"shadowserve-drift {' '.join(arguments)} exited {done.returncode}:\n{done.stderr}")
    print(done.stdout.rstrip())
    return json.loads(report.read_text())


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}+00:00"


# A few thousand records per window: decide by KS and chi-square p-values (Bonferroni over the
# columns) at a family-wise 0.1%, so the control's false alarms stay rare and the shift, whose
# p-values are astronomically small, is found every time.
TESTS = ["--small-sample", "1000000", "--alpha", "0.001"]


def reports(out: Path, clients: dict[str, Any]) -> dict[str, Any]:
    """The drift of the shift, a control without one, and primary vs shadow."""
    records = str(out / "records")
    start, shift = clients["started_at"], clients["shifted_at"]
    middle = start + (shift - start) / 2
    print("\n== Drift: before the shift against after it ==")
    after = drift(out, "drift", ["report", "--reference", records, "--reference-until", iso(shift),
                                 "--current", records, "--since", iso(shift), *TESTS])
    print("\n== Control: the first half of the unshifted traffic against the second ==")
    control = drift(out, "control", ["report", "--reference", records, "--reference-until", iso(middle),
                                     "--current", records, "--since", iso(middle), "--until", iso(shift), *TESTS])
    print("\n== Primary (v1) against the shadow (v2), on the same requests ==")
    compare = drift(out, "compare", ["compare", "--records", records, "--shadow", "v2"])
    return {"after_shift": after, "control": control, "compare": compare}


def get_json(url: str) -> Any:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def by_hand(sidecar: dict[str, Any], primary: dict[str, Any]) -> str:
    x = "[" + ", ".join(["0.1"] * 64) + "]"
    return f"""
The services keep running; try them by hand (Ctrl-C stops everything):

  curl -s -X POST {sidecar['http']}/v2/models/classifier/infer -H 'x-user-id: me' \\
       -d '{{"inputs": [{{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64], "data": {x}}}]}}'
  python -c "import numpy as np, tritonclient.grpc as g; c = g.InferenceServerClient('{sidecar['grpc']}'); \\
i = g.InferInput('INPUT__0', [1, 64], 'FP32'); i.set_data_from_numpy(np.ones((1, 64), np.float32)); \\
print(c.infer('classifier', [i]).as_numpy('OUTPUT__0'))"
  curl -s {sidecar['admin']}/sidecar/status

  metrics: {sidecar['metrics']}  (sidecar)   {primary['metrics']}  (primary serve)
"""


def run(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    for sub in ("logs", "records", "reports", "repos"):
        (out / sub).mkdir(parents=True)
    print("starting serve x3 (primary v1, shadow v2, canary v2) and the sidecar ...")
    primary = start_serve(children, out, "primary", 1)
    shadow = start_serve(children, out, "shadow", 2)
    canary = start_serve(children, out, "canary", 2)
    sidecar = start_sidecar(children, out, primary, sidecar_config(out, shadow, canary))
    print(f"sidecar: http {sidecar['http']}  grpc {sidecar['grpc']}  admin {sidecar['admin']}\n")
    print(f"traffic for {args.duration:g}s through the sidecar (HTTP and gRPC); the inputs shift half-way:")
    clients = asyncio.run(drive(args, sidecar, primary))
    verdict = get_json(f"{sidecar['admin']}/sidecar/status")
    if args.keep:
        print(by_hand(sidecar, primary))
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    print("\nstopping: SIGTERM to every process, as Kubernetes stops a pod ...")
    statuses = children.stop_all()
    results = reports(out, clients)
    pids = [child.process.pid for child in children.children]
    return {"clients": clients, "canary": verdict, "exit_statuses": statuses, "pids": pids, **results}


def agreement(compare: dict[str, Any]) -> float:
    return float(compare["outputs"][0]["statistics"]["agreement"]["value"])


def canary_verdict(status: dict[str, Any]) -> str:
    canary = status["canary"]
    decisions = canary.get("decisions") or []
    reason = decisions[-1]["reason"] if decisions else "no decision yet"
    return f"{canary['phase']} at weight {canary['weight']:g}%: {reason}"


def summarize(result: dict[str, Any]) -> str:
    clients = result["clients"]
    compare = result["compare"]
    rows = [
        ("requests answered", f"{sum(clients['ok'].values())} of {sum(clients['sent'].values())} "
                              f"(HTTP {clients['ok']['http']}, gRPC {clients['ok']['grpc']})"),
        ("drift after the shift", f"{result['after_shift']['status']}: "
                                  f"{len(result['after_shift'].get('drifted_columns', []))} column(s) moved"),
        ("drift in the control", result["control"]["status"]),
        ("primary vs shadow", f"{compare['status']}; top-1 agreement {agreement(compare):.1%}"),
        ("canary (10% to v2)", canary_verdict(result["canary"])),
        ("processes", ", ".join(f"{name}: exit {status}" for name, status in result["exit_statuses"].items())),
    ]
    return display.table(["", ""], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    children = Children()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwind like Ctrl-C
    try:
        result = run(args, children)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything ...", file=sys.stderr)
        children.stop_all()
        return 130
    except (StartError, RuntimeError) as exc:
        print(f"\nthe demo failed: {exc}", file=sys.stderr)
        children.stop_all()
        return 1
    finally:
        children.stop_all()
    summary = {key: result[key] for key in ("clients", "canary", "exit_statuses", "pids")}
    summary.update({"drift_after_shift": result["after_shift"]["drift"], "drift_in_control": result["control"]["drift"],
                    "shadow_agreement": agreement(result["compare"])})
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    clean = not result["clients"]["failures"] and all(s == 0 for s in result["exit_statuses"].values())
    if clean:  # leave only what the demo produced; logs stay when something went wrong
        for scratch in ("repos", "logs"):
            shutil.rmtree(args.out / scratch, ignore_errors=True)
        (args.out / "sidecar.json").unlink(missing_ok=True)
    print("\n" + summarize(result))
    print(f"\nreports: {args.out / 'reports'}/drift.html, compare.html   records: {args.out / 'records'}")
    if not clean:
        print(f"something went wrong: see the logs in {args.out / 'logs'}", file=sys.stderr)
    return 0 if clean else 1
