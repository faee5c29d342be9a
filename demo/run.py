"""shadowserve end to end on the bundled example, with the same CLIs the README documents.

1. `shadowserve-registry` on an embedded registry in ``<out>/registry``: versions 1 and 2 of
   the example classifier registered, `@champion` -> 1, `@challenger` -> 2;
2. `serve` from the registry: `models:/classifier@champion` as the primary,
   `models:/classifier@challenger` as a shadow and again as a 10% canary (three processes, as
   three pods would be, each with its own model cache);
3. the `sidecar` in front of the primary, mirroring to the shadow, routing the canary slice,
   recording every mirrored request to ``<out>/records`` and writing its canary decisions into
   the registry's audit log;
4. clients sending classifier requests through the sidecar over HTTP and gRPC, whose inputs
   shift half-way, with a live line of throughput, latency, batch size, shadow agreement and
   canary weight;
5. then the canary verdict, every process stopped with SIGTERM (each drains and exits 0), a drift
   report of the shift (with a control: the first half against itself), the primary-vs-shadow
   comparison judging version 2, the promotion of version 2 refused on it, and the audit log;
6. leaving ``<out>/registry``, ``<out>/reports``, ``<out>/records`` and ``<out>/summary.json``
   (what a test asserts on).

Ctrl-C at any point stops every process the demo started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import display, registry
from .processes import Child, Children, StartError, command
from .reports import SHADOW, agreement, judged, reference_profile, reports
from .traffic import Traffic

ROOT = Path(__file__).resolve().parent.parent
SERVE_FLAGS = ["--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
               "--log-format", "json", "--cpu-threads", "1", "--exit-timeout-secs", "10"]
SCRATCH = ("cache", "logs")  # removed after a clean run; the logs stay when something went wrong


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic (default 30)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "demo", help="where records and reports go")
    parser.add_argument("--keep", action="store_true",
                        help="keep the services running after the traffic, with the lines to try them by hand")
    return parser.parse_args(argv)


def start_serve(children: Children, out: Path, role: str, source: str) -> Child:
    """`serve --model-source URI` straight from the demo's registry, with this role's own model cache."""
    return children.start(f"serve {role} ({source.rpartition('@')[2]})", [
        *command("serving"), "--model-source", source, "--registry-uri", str(registry.location(out)),
        "--model-cache-dir", str(out / "cache" / role), *SERVE_FLAGS], out / "logs" / f"serve-{role}.log")


def endpoints(child: Child) -> dict[str, Any]:
    """Where a started serve listens, once its models are ready."""
    ports = child.wait_for("listening ")
    child.wait_for("ready=true")
    return {"http": f"http://127.0.0.1:{ports['http_port']}", "grpc": f"127.0.0.1:{ports['grpc_port']}",
            "metrics": f"http://127.0.0.1:{ports['metrics_port']}/metrics"}


def sidecar_config(out: Path, shadow: dict[str, Any], canary: dict[str, Any], profile: Path) -> Path:
    config = {
        "sampling": {"header": "x-user-id"},
        "shadows": [{"model": registry.CHALLENGER, "http": shadow["http"], "grpc": shadow["grpc"], "fraction": 1.0}],
        "canary": {"model": registry.CHALLENGER, "http": canary["http"], "grpc": canary["grpc"], "weight": 10,
                   "sticky_header": "x-user-id",
                   "analysis": {"interval": "5s", "min_requests": 20, "step_weight": 10, "max_weight": 30,
                                "failure_limit": 2, "max_error_rate": 0.01, "max_p99_ratio": 3.0,
                                "max_disagreement": 0.05}},
        "recording": {"inputs": "none", "segment_seconds": "2s"},
        # live drift (the sidecar_live_drift_* gauges and the dashboard's panel) against the
        # primary's answers to unshifted traffic: they rise after the shift
        "drift": {"profile": str(profile), "window": 2000},
    }
    path = out / "sidecar.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_sidecar(children: Children, out: Path, primary: dict[str, Any], config: Path) -> dict[str, Any]:
    child = children.start("sidecar", [
        *command("sidecar"), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--metrics-port", "0",
        "--admin-listen", "127.0.0.1:0", "--primary", primary["http"], "--primary-grpc", primary["grpc"],
        "--record-dir", str(out / "records"), "--config", str(config), "--registry-uri", str(registry.location(out)),
        "--log-format", "json", "--drain-timeout-secs", "10"], out / "logs" / "sidecar.log")
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
            compared = total(side, "sidecar_shadow_compared_rows_total", shadow=SHADOW)
            agreed = total(side, "sidecar_shadow_top1_agree_rows_total", shadow=SHADOW)
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


def get_json(url: str) -> Any:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def by_hand(out: Path, sidecar: dict[str, Any], primary: dict[str, Any]) -> str:
    x = "[" + ", ".join(["0.1"] * 64) + "]"
    return f"""
The services keep running; try them by hand (Ctrl-C stops everything):

  curl -s -X POST {sidecar['http']}/v2/models/classifier/infer -H 'x-user-id: me' \\
       -d '{{"inputs": [{{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64], "data": {x}}}]}}'
  python -c "import numpy as np, tritonclient.grpc as g; c = g.InferenceServerClient('{sidecar['grpc']}'); \\
i = g.InferInput('INPUT__0', [1, 64], 'FP32'); i.set_data_from_numpy(np.ones((1, 64), np.float32)); \\
print(c.infer('classifier', [i]).as_numpy('OUTPUT__0'))"
  curl -s {sidecar['admin']}/sidecar/status
  curl -s {sidecar['admin']}/sidecar/canary/verdict
  shadowserve-registry --registry-uri {registry.location(out)} history classifier

  metrics: {sidecar['metrics']}  (sidecar)   {primary['metrics']}  (primary serve)
"""


def run(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    for sub in ("logs", "records", "reports", "cache"):
        (out / sub).mkdir(parents=True)
    print(f"registering versions 1 and 2 of the classifier in the embedded registry {registry.location(out)} ...")
    aliases = registry.publish(out)
    print("starting serve x3 from the registry (primary @champion, shadow and canary @challenger) and the sidecar ...")
    started = [start_serve(children, out, role, source) for role, source in
               (("primary", registry.CHAMPION), ("shadow", registry.CHALLENGER), ("canary", registry.CHALLENGER))]
    primary, shadow, canary = (endpoints(child) for child in started)  # the three start side by side
    profile = reference_profile(out / "reports" / "reference.json", primary["http"])
    sidecar = start_sidecar(children, out, primary, sidecar_config(out, shadow, canary, profile))
    print(f"sidecar: http {sidecar['http']}  grpc {sidecar['grpc']}  admin {sidecar['admin']}\n")
    print(f"traffic for {args.duration:g}s through the sidecar (HTTP and gRPC); the inputs shift half-way:")
    clients = asyncio.run(drive(args, sidecar, primary))
    status = get_json(f"{sidecar['admin']}/sidecar/status")
    verdict = registry.save_verdict(sidecar["admin"], out / "reports" / "verdict.json")
    if args.keep:
        print(by_hand(out, sidecar, primary))
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    print("\nstopping: SIGTERM to every process, as Kubernetes stops a pod ...")
    statuses = children.stop_all()  # the sidecar flushes its queued registry writes before it exits
    results = reports(out, clients)
    promotion = registry.promote(out, out / "reports" / "compare.json")
    audit = registry.history(out)
    pids = [child.process.pid for child in children.children]
    return {"clients": clients, "canary": status, "verdict": verdict, "exit_statuses": statuses, "pids": pids,
            "aliases": aliases, "promotion": promotion, "history": audit, **results}


def canary_verdict(status: dict[str, Any]) -> str:
    canary = status["canary"]
    decisions = canary.get("decisions") or []
    reason = decisions[-1]["reason"] if decisions else "no decision yet"
    return f"{canary['phase']} at weight {canary['weight']:g}%: {reason}"


def promotion_line(promotion: dict[str, Any]) -> str:
    said = promotion["output"].splitlines()[-1] if promotion["output"] else ""
    for prefix in ("shadowserve-registry: ", "refused: "):  # the table's line says it already
        said = said.removeprefix(prefix)
    outcome = "done" if promotion["exit_status"] == 0 else "refused"
    return f"{outcome} (exit {promotion['exit_status']}): {said}"


def live_drift_line(status: dict[str, Any]) -> str:
    """The live drift gauges' top-1 column at the end of the traffic, per upstream."""
    values = [v for v in ((status.get("drift") or {}).get("values") or []) if v["output"].endswith(".top1")]
    if not values:
        return "no values yet"
    return ", ".join(f"{v['upstream']} PSI {v['psi']:.2f}" for v in sorted(values, key=lambda v: v["upstream"]))


def summarize(result: dict[str, Any]) -> str:
    clients = result["clients"]
    compare = result["compare"]
    aliases = result["aliases"]
    actors = sorted({entry["actor"] for entry in result["history"]})
    rows = [
        ("registry", f"@champion -> {aliases['champion']}, @challenger -> {aliases['challenger']}"),
        ("requests answered", f"{sum(clients['ok'].values())} of {sum(clients['sent'].values())} "
                              f"(HTTP {clients['ok']['http']}, gRPC {clients['ok']['grpc']})"),
        ("drift after the shift", f"{result['after_shift']['status']}: "
                                  f"{len(result['after_shift'].get('drifted_columns', []))} column(s) moved"),
        ("drift in the control", result["control"]["status"]),
        ("primary vs shadow", f"{compare['status']}; top-1 agreement {agreement(compare):.1%}; "
                              f"judged {judged(compare)}"),
        ("canary (10% to @challenger)", canary_verdict(result["canary"])),
        ("live drift (top-1, last window)", live_drift_line(result["canary"])),
        ("promotion to @champion", promotion_line(result["promotion"])),
        ("audit log", registry.actions(result["history"])),
        ("written by", ", ".join(actors)),
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
    summary = {key: result[key] for key in ("clients", "canary", "exit_statuses", "pids", "aliases")}
    verdict = result["verdict"]
    summary.update({"drift_after_shift": result["after_shift"]["drift"], "drift_in_control": result["control"]["drift"],
                    "shadow_agreement": agreement(result["compare"]), "judged": result["compare"].get("judged"),
                    "verdict": {key: verdict.get(key) for key in ("model", "version", "registry", "phase", "passed")},
                    "promotion": result["promotion"],
                    "history": [registry.summary(entry) for entry in result["history"]]})
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    clean = not result["clients"]["failures"] and all(s == 0 for s in result["exit_statuses"].values())
    if clean:  # leave only what the demo produced; logs stay when something went wrong
        for scratch in SCRATCH:
            shutil.rmtree(args.out / scratch, ignore_errors=True)
        (args.out / "sidecar.json").unlink(missing_ok=True)
    print("\n" + summarize(result))
    print(f"\nreports: {args.out / 'reports'}/drift.html, compare.html, verdict.json   "
          f"records: {args.out / 'records'}   registry: {registry.location(args.out)}")
    if not clean:
        print(f"something went wrong: see the logs in {args.out / 'logs'}", file=sys.stderr)
    return 0 if clean else 1
