"""The model registry: what a verified pull costs, and an alias move under load.

1. Pull cost by model size (the example classifier, and copies of it carrying 64 MiB and
   512 MiB of weights): ``register``, a cold ``pull`` (download, verify every digest, install)
   and a warm one (``--cache``: the copy is verified again, nothing downloaded), against the
   time to read and hash the same bytes once (the floor of any verification), on the embedded
   registry and, with ``--server``, on a real ``mlflow server`` (from ``.peers/mlflow``, which the
   tests install), whose artifacts travel over its REST API.
2. An alias move under load: ``serve --model-source models:/classifier@live`` in poll mode
   (1 s), ``hey`` at 16 connections for 20 s; in one run of each pair the alias moves from version
   1 to 2 at 5 s, in the other nothing moves. Failed requests, p50/p99 of both, and the time from
   the move to the first answer from version 2 (a probe asks every 20 ms).

    python benchmarks/registry_bench.py                 # about 3 minutes
    python benchmarks/registry_bench.py --server --write
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from harness import ServerProcess, free_port, hey, machine, write_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
CLASSIFIER = ROOT / "examples" / "models" / "classifier"
MIB = 1024 * 1024

from model_registry.pull import pull  # after the path is set: the benchmarks run as files
from model_registry.store import Registry, bound_calls


def model_with(where: Path, weights: int) -> Path:
    """The example classifier's version 1, plus ``weights`` bytes of random weights."""
    target = where / f"model-{weights}"
    shutil.copytree(CLASSIFIER, target, ignore=shutil.ignore_patterns("2"))
    if weights:
        with (target / "1" / "weights.bin").open("wb") as f:
            for _ in range(weights // MIB):
                f.write(os.urandom(MIB))
    return target


def hash_floor(path: Path) -> float:
    """Seconds to read and SHA-256 every file under ``path`` once."""
    started = time.perf_counter()
    for file in path.rglob("*"):
        if file.is_file():
            with file.open("rb") as f:
                digest = hashlib.sha256()
                while chunk := f.read(MIB):
                    digest.update(chunk)
    return time.perf_counter() - started


def pull_costs(registry: Registry, work: Path, sizes: list[int], repeats: int) -> list[dict[str, float]]:
    rows = []
    for size in sizes:
        source = model_with(work, size)
        timings: dict[str, list[float]] = {"register": [], "cold": [], "warm": [], "floor": []}
        for repeat in range(repeats):
            started = time.perf_counter()
            version = registry.register(source, "classifier")
            timings["register"].append(time.perf_counter() - started)
            dest, cache = work / f"cold-{size}-{repeat}", work / f"cache-{size}-{repeat}"
            started = time.perf_counter()
            pull(registry, [version.uri], dest)
            timings["cold"].append(time.perf_counter() - started)
            pull(registry, [version.uri], work / "fill", cache)  # fills the cache
            started = time.perf_counter()
            pull(registry, [version.uri], work / f"warm-{size}-{repeat}", cache)
            timings["warm"].append(time.perf_counter() - started)
            timings["floor"].append(hash_floor(source))
            for path in (dest, cache, work / "fill", work / f"warm-{size}-{repeat}"):
                shutil.rmtree(path, ignore_errors=True)
        rows.append({"bytes": sum(p.stat().st_size for p in source.rglob("*") if p.is_file()),
                     **{key: statistics.median(values) for key, values in timings.items()}})
        shutil.rmtree(source)
    return rows


def start_mlflow(work: Path) -> tuple[ServerProcess, str]:
    executable = ROOT / ".peers" / "mlflow" / "bin" / "mlflow"
    if not executable.exists():
        raise SystemExit("--server needs .peers/mlflow (the tests install it: pytest tests/registry -k server)")
    port = free_port()
    server = ServerProcess("mlflow", [str(executable), "server", "--host", "127.0.0.1", "--port", str(port),
                                      "--workers", "1", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                                      "--artifacts-destination", str(work / "mlflow-artifacts")],
                           work / "mlflow.log")
    server.wait_ready(f"http://127.0.0.1:{port}/health", 120)
    return server, f"http://127.0.0.1:{port}"


def version_of(url: str, body: bytes) -> str | None:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(json.loads(response.read())["model_version"])
    except OSError:
        return None


def alias_move(work: Path, repeats: int, duration: float = 20.0) -> list[dict[str, object]]:
    registry = Registry.open(str(work / "serve-registry"))
    for version_dir in ("1", "2"):
        registry.register(CLASSIFIER, "classifier", version_dir=version_dir)
    body = work / "body.json"
    payload = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 64],
                                      "data": [0.1] * 64}]}).encode()
    body.write_bytes(payload)
    runs: list[dict[str, object]] = []
    for repeat in range(repeats):
        for moves in (False, True) if repeat % 2 == 0 else (True, False):
            registry.set_alias("classifier", "live", 1)
            port = free_port()
            serve = ServerProcess("serve", [sys.executable, "-m", "serving", "--model-source",
                                            "models:/classifier@live", "--registry-uri", registry.uri,
                                            "--model-cache-dir", str(work / f"cache-{repeat}-{moves}"),
                                            "--model-control-mode", "poll", "--repository-poll-secs", "1",
                                            "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0",
                                            "--metrics-port", "0", "--cpu-threads", "1"], work / "serve.log")
            url = f"http://127.0.0.1:{port}/v2/models/classifier/infer"
            try:
                serve.wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", 120)
                takeover: list[float] = []

                def move(url: str = url, takeover: list[float] = takeover) -> None:
                    time.sleep(5)
                    registry.set_alias("classifier", "live", 2)
                    moved = time.monotonic()
                    while time.monotonic() < moved + 30:
                        if version_of(url, payload) == "2":
                            takeover.append(time.monotonic() - moved)
                            return
                        time.sleep(0.02)

                mover = threading.Thread(target=move) if moves else None
                if mover is not None:
                    mover.start()
                point = hey(url, body, 16, duration)
                if mover is not None:
                    mover.join()
                runs.append({"moves": moves, "rps": point.rps, "p50_ms": point.p50_ms, "p99_ms": point.p99_ms,
                             "requests": point.requests, "failures": point.failures,
                             "takeover_s": takeover[0] if takeover else None, "last": version_of(url, payload)})
            finally:
                serve.stop()
    return runs


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def render(pulls: dict[str, list[dict[str, float]]], moves: list[dict[str, object]], args: argparse.Namespace,
           before: str, after: str) -> str:
    lines = [f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- Machine: {machine()}; load average before {before}, after {after}",
             f"- Command: `python benchmarks/registry_bench.py{' --server' if args.server else ''} --write`",
             f"- Pull cost: median of {args.repeats} per size; alias move: {args.repeats} pairs of 20 s hey runs "
             "(c=16, JSON), the order alternating", "",
             "| registry | size | register s | cold pull s | warm pull s | read+hash once s | cold MiB/s |"
             " warm / floor |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for where, rows in pulls.items():
        for row in rows:
            mib = row["bytes"] / MIB
            lines.append(f"| {where} | {mib:,.1f} MiB | {row['register']:.2f} | {row['cold']:.2f} | "
                         f"{row['warm']:.2f} | {row['floor']:.2f} | {mib / row['cold']:,.0f} | "
                         f"{row['warm'] / row['floor']:.2f} |")
    lines += ["", "| run | req/s | p50 ms | p99 ms | requests | failed | move to first v2 answer s | "
                  "version after |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for run in moves:
        takeover = run["takeover_s"]
        lines.append(f"| {'alias moved at 5 s' if run['moves'] else 'no move'} | {run['rps']:,.0f} | "
                     f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['requests']:,} | {run['failures']} | "
                     f"{f'{takeover:.2f}' if isinstance(takeover, float) else ''} | {run['last']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="store_true", help="also against a real mlflow server")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes-mib", default="0,64,512", help="extra weights per model, in MiB")
    parser.add_argument("--write", action="store_true", help="rewrite the section in RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    bound_calls(os.environ)  # as the entry points do (and no "View run" line per registration)
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    before = load()
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        work = Path(tmp)
        pulls = {"embedded": pull_costs(Registry.open(str(work / "embedded")), work, sizes, args.repeats)}
        if args.server:
            server, uri = start_mlflow(work)
            try:
                pulls["mlflow server"] = pull_costs(Registry.open(uri), work, sizes, args.repeats)
            finally:
                server.stop()
        moves = alias_move(work, args.repeats)
    section = render(pulls, moves, args, before, load())
    print(section)
    if args.write:
        write_section(HERE / "RESULTS.md", "<!-- registry:start -->", "<!-- registry:end -->", section)
    return 0 if all(run["failures"] == 0 for run in moves) else 1


if __name__ == "__main__":
    sys.exit(main())
