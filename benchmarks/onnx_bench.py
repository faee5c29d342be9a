"""An ONNX model served: serve (tritonclient gRPC and HTTP binary, and hey with JSON) against ONNX Runtime
called in-process (the limit), at batch 1, 16 and 64 rows a request, and against MLServer running a
runtime that calls ONNX Runtime the same way (``--peers``; its virtualenv is made on first use).

The model is an MLP the size of the example classifier (64 -> 256 -> 10, softmax), built with
onnx.helper; serve loads it as a Triton repository would ship it (``platform: "onnxruntime_onnx"``,
max_batch_size 64, dynamic batching with a 0.5 ms delay), MLServer with its adaptive batching at the
same limits. Every system gets the same intra-op thread count (serve's default: the cores less one).

    python benchmarks/onnx_bench.py --quick            # a smoke run: short points, one repetition
    python benchmarks/onnx_bench.py --peers --write    # and MLServer; rewrite the ONNX section of RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import peers
from harness import (
    PROGRAMS,
    Point,
    ServerProcess,
    Unavailable,
    failed_point,
    free_port,
    hey,
    log_tail,
    machine,
    median_point,
    scrape_batch_size,
    write_section,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- onnx:start -->", "<!-- onnx:end -->"
BATCHES = (1, 16, 64)
FEATURES, CLASSES = 64, 10
CONFIG = """platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
"""
# MLServer's side: a runtime calling ONNX Runtime, written into its model folder as runtime.py
MLSERVER_RUNTIME = '''
import os

import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "1"))
        uri = await get_model_uri(self._settings)
        self._session = onnxruntime.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        array = NumpyCodec.decode_input(payload.inputs[0])
        (scores,) = self._session.run(["OUTPUT__0"], {"INPUT__0": array})
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("OUTPUT__0", scores)])
'''


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) - 1)


def rows(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, FEATURES)).astype(np.float32)


def write_repository(workdir: Path) -> Path:
    from tests.backends.onnx_models import mlp
    model_dir = workdir / "repo" / "classifier"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(CONFIG)
    (model_dir / "1" / "model.onnx").write_bytes(mlp(FEATURES, 256, CLASSES))
    return model_dir / "1" / "model.onnx"


def in_process(model_file: Path, batch: int, duration: float) -> Point:
    """The limit: ``session.run`` in a loop, one call at a time, no server and no serialisation."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads()
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    feeds = {"INPUT__0": rows(batch)}
    for _ in range(100):
        session.run(["OUTPUT__0"], feeds)
    latencies = []
    start = now = time.perf_counter()
    while now < start + duration:
        session.run(["OUTPUT__0"], feeds)
        end = time.perf_counter()
        latencies.append(end - now)
        now = end
    ms = np.asarray(latencies) * 1000
    return Point(rps=len(latencies) / (now - start), p50_ms=float(np.percentile(ms, 50)),
                 p99_ms=float(np.percentile(ms, 99)), requests=len(latencies))


async def _http_load(url: str, batch: int, concurrency: int, duration: float, warmup: int) -> dict[str, Any]:
    import tritonclient.http.aio as httpaio
    inputs = [httpaio.InferInput("INPUT__0", [batch, FEATURES], "FP32")]
    inputs[0].set_data_from_numpy(rows(batch), binary_data=True)
    outputs = [httpaio.InferRequestedOutput("OUTPUT__0", binary_data=True)]
    client = httpaio.InferenceServerClient(url=url, conn_limit=concurrency)
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def one() -> bool:
        try:
            result = await client.infer("classifier", inputs, outputs=outputs)
            return bool(result.as_numpy("OUTPUT__0").shape == (batch, CLASSES))
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            errors[key] = errors.get(key, 0) + 1
            return False

    async def worker(deadline: float) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            if await one():
                latencies.append(time.perf_counter() - began)

    try:
        for _ in range(max(1, warmup // concurrency)):
            await asyncio.gather(*(one() for _ in range(concurrency)))
        errors.clear()
        began = time.perf_counter()
        await asyncio.gather(*(worker(began + duration) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await client.close()
    ms = np.asarray(latencies or [float("nan")]) * 1000
    failures = sum(errors.values())
    return {"rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": len(latencies) + failures, "failures": failures,
            "errors": [f"{n} x {m}" for m, n in errors.items()]}


def run_program(argv: list[str], duration: float) -> Point:
    """A load generator in a process of its own (the client must not share the server's interpreter)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, check=False)
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return failed_point("the load generator did not finish in time")
    except (IndexError, json.JSONDecodeError):
        return failed_point(f"the load generator failed: {' '.join(done.stderr.split())[-300:]}")
    return Point(rps=out["rps"], p50_ms=out["p50_ms"], p99_ms=out["p99_ms"], requests=out["requests"],
                 failures=out["failures"], detail=out["errors"])


def grpc_point(url: str, batch: int, args: argparse.Namespace) -> Point:
    return run_program([sys.executable, str(PROGRAMS / "grpc_load.py"), "--url", url, "--model", "classifier",
                        "--input", "INPUT__0", "--output", "OUTPUT__0", "--shape", f"{batch},{FEATURES}",
                        "--concurrency", str(args.concurrency), "--duration", str(args.duration),
                        "--warmup", str(args.warmup)], args.duration)


def http_point(url: str, batch: int, args: argparse.Namespace) -> Point:
    return run_program([sys.executable, __file__, "http-load", "--url", url, "--batch", str(batch),
                        "--concurrency", str(args.concurrency), "--duration", str(args.duration),
                        "--warmup", str(args.warmup)], args.duration)


def json_body(workdir: Path, batch: int) -> Path:
    body = workdir / f"body-{batch}.json"
    body.write_text(json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [batch, FEATURES],
                                            "data": rows(batch).reshape(-1).tolist()}]}))
    return body


def start_serve(workdir: Path) -> tuple[ServerProcess, str, str, str]:
    argv = [sys.executable, "-m", "serving", "--model-repository", str(workdir / "repo"), "--host", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    process = ServerProcess("serve", argv, workdir / "serve.log", cwd=ROOT)
    try:
        match = process.wait_log(r"listening http=\S*:(\d+) grpc=\S*:(\d+) metrics=\S*:(\d+)", timeout=60)
        http, grpc = f"127.0.0.1:{match.group(1)}", f"127.0.0.1:{match.group(2)}"
        process.wait_ready(f"http://{http}/v2/health/ready", timeout=120)
    except BaseException:
        process.stop()
        raise
    return process, http, grpc, f"http://127.0.0.1:{match.group(3)}/metrics"


def ensure_mlserver() -> Path:
    """MLServer with the ONNX Runtime serve uses, in a virtualenv of its own beside run.py's peers (no torch).

    Returns its ``mlserver`` executable; made on first use, and again when the pins change.
    """
    import onnxruntime
    venv = peers.PEERS_DIR / "mlserver-onnx"
    wanted = "\n".join((*peers.MLSERVER.requirements, f"onnxruntime=={onnxruntime.__version__}"))
    marker = venv / ".installed"
    if not (marker.is_file() and marker.read_text() == wanted):
        peers.PEERS_DIR.mkdir(exist_ok=True)
        log = peers.PEERS_DIR / "mlserver-onnx-install.log"
        say(f"setting up MLServer with onnxruntime in {venv} (log: {log})")
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *wanted.splitlines()]]
        with open(log, "w") as out:
            for argv in steps:
                try:
                    done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1800, check=False)
                except subprocess.TimeoutExpired:
                    raise Unavailable("installing MLServer took over 30 minutes") from None
                if done.returncode != 0:
                    raise Unavailable(f"MLServer did not install: {log_tail(log, 3)}")
        marker.write_text(wanted)
    return venv / "bin" / "mlserver"


def start_mlserver(model_file: Path, workdir: Path) -> tuple[ServerProcess, str]:
    """MLServer with the runtime above and adaptive batching at serve's limits (64 rows, 0.5 ms)."""
    mlserver = ensure_mlserver()
    root = workdir / "mlserver"
    (root / "classifier").mkdir(parents=True)
    port = free_port()
    (root / "settings.json").write_text(json.dumps({"debug": False, "host": "127.0.0.1", "http_port": port,
                                                    "grpc_port": free_port(), "metrics_port": free_port()}))
    (root / "classifier" / "model-settings.json").write_text(json.dumps({
        "name": "classifier", "implementation": "runtime.OnnxRuntime", "max_batch_size": 64,
        "max_batch_time": 0.0005, "parameters": {"uri": str(model_file)}}))
    (root / "classifier" / "runtime.py").write_text(MLSERVER_RUNTIME)
    process = ServerProcess("MLServer", [str(mlserver), "start", str(root)], workdir / "mlserver.log",
                            env={"BENCH_THREADS": str(threads())}, cwd=root)
    try:
        process.wait_ready(f"http://127.0.0.1:{port}/v2/models/classifier/ready", timeout=300)
    except BaseException:
        process.stop()
        raise
    return process, f"http://127.0.0.1:{port}"


def measure(args: argparse.Namespace, workdir: Path, model_file: Path) -> dict[str, dict[int, Any]]:
    """Every system at every batch size, repeated (systems interleaved), as (median point, min, max) rows."""
    points: dict[str, dict[int, list[Point]]] = {}
    batch_sizes: dict[int, float] = {}

    def add(key: str, batch: int, point: Point) -> None:
        points.setdefault(key, {}).setdefault(batch, []).append(point)

    say("starting serve ...")
    serve, http, grpc, metrics = start_serve(workdir)
    mlserver = None
    try:
        if args.peers:
            say("starting MLServer (its virtualenv is made on first use) ...")
            try:
                mlserver = start_mlserver(model_file, workdir)
            except Unavailable as exc:
                say(f"MLServer left out: {exc}")
        for batch in BATCHES:
            body = json_body(workdir, batch)
            before = scrape_batch_size(metrics, "classifier")
            for repeat in range(args.repeats):
                say(f"batch {batch}, repetition {repeat + 1}/{args.repeats}")
                add("inprocess", batch, in_process(model_file, batch, args.duration))
                add("serve-grpc", batch, grpc_point(grpc, batch, args))
                add("serve-binary", batch, http_point(http, batch, args))
                add("serve-json", batch, hey(f"http://{http}/v2/models/classifier/infer", body, args.concurrency,
                                             args.duration))
                if mlserver is not None:
                    add("mlserver-json", batch, hey(f"{mlserver[1]}/v2/models/classifier/infer", body,
                                                    args.concurrency, args.duration))
            after = scrape_batch_size(metrics, "classifier")
            if after[1] > before[1]:
                batch_sizes[batch] = (after[0] - before[0]) / (after[1] - before[1])
    finally:
        serve.stop()
        if mlserver is not None:
            mlserver[0].stop()
    medians = {key: {batch: median_point(runs) for batch, runs in by_batch.items()} for key, by_batch in points.items()}
    return {**medians, "mean_batch_rows": dict(batch_sizes)}


LABELS = {"inprocess": "ONNX Runtime in-process (the limit)", "serve-grpc": "serve, gRPC (tritonclient aio)",
          "serve-binary": "serve, HTTP binary (tritonclient aio)", "serve-json": "serve, HTTP JSON (hey)",
          "mlserver-json": "MLServer + onnxruntime, HTTP JSON (hey)"}


def render(args: argparse.Namespace, results: dict[str, dict[int, Any]]) -> str:
    lines = [f"ONNX Runtime model (MLP 64-256-10), {args.concurrency} connections, {args.duration:g} s points, "
             f"median of {args.repeats}. Machine: {machine()}.", "",
             "| system | batch | rows/s | requests/s | p50 ms | p99 ms | failures |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in LABELS.items():
        for batch, (point, _low, _high) in sorted(results.get(key, {}).items()):
            lines.append(f"| {label} | {batch} | {point.rps * batch:,.0f} | {point.rps:,.0f} | {point.p50_ms:.2f} | "
                         f"{point.p99_ms:.2f} | {point.failures} |")
    mean_rows = results.get("mean_batch_rows", {})
    if mean_rows:
        lines += ["", "serve's mean rows per executed batch, from /metrics: " + ", ".join(
            f"{rows_:.1f} at batch {batch}" for batch, rows_ in sorted(mean_rows.items()))]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", action="store_true", help="also MLServer with an onnxruntime runtime")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s points, one repetition")
    parser.add_argument("--write", action="store_true", help="rewrite the ONNX section of benchmarks/RESULTS.md")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.warmup = 2.0, 1, 40
    return args


def http_load_main() -> None:
    parser = argparse.ArgumentParser(description="tritonclient.http.aio load with binary tensors, one JSON line out")
    parser.add_argument("--url", required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(sys.argv[2:])
    print(json.dumps(asyncio.run(_http_load(args.url, args.batch, args.concurrency, args.duration, args.warmup))))


def main() -> int:
    if sys.argv[1:2] == ["http-load"]:
        http_load_main()
        return 0
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="shadowserve-onnx-bench-") as tmp:
        workdir = Path(tmp)
        model_file = write_repository(workdir)
        results = measure(args, workdir, model_file)
    text = render(args, results)
    print(text)
    if args.write:
        write_section(RESULTS, START, END, text)
        say(f"wrote the ONNX section of {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
