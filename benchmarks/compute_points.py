"""The parts of the compute-bound benchmark that gpu_bench.py reuses: the model, its limit, serve, one point.

    from compute_points import build_repository, in_process_limit, start_serve, measure

- ``build_repository``: the issue's MLP (256→2048→2048→16, ReLU), TorchScript, in a temporary
  Triton layout with ``max_batch_size: 64`` and a 2 ms queue delay (CPU or GPU instances,
  CUDA graphs on or off);
- ``in_process_limit``: the same TorchScript file called at one batch size under
  ``torch.inference_mode`` with a given number of torch threads (on a GPU with a
  synchronisation after each call, and optionally the copies from and to page-locked memory);
- ``start_serve``: ``python -m serving`` from a source tree on free ports, read back from its
  ``listening http=… grpc=… metrics=…`` line (a ``Serve``: its ``Endpoints`` and the process);
- ``measure``: one load point (``hey`` over HTTP with a JSON body, or processes of
  programs/grpc_load.py over gRPC with raw tensors and one connection per call, sharing one
  timed window) with serve's busy fraction and mean batch from two scrapes of /metrics taken
  inside the load, so that the ramp-up and the tail stay out of them.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from harness import PROGRAMS, ServerProcess, Unavailable, hey
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "mlp"
DIMS = (256, 2048, 2048, 16)
MAX_METRICS_BYTES = 8 << 20  # serve's /metrics is tens of kB; more is not a serve we started
BUSY = "serving_instance_busy_seconds_total"
COMPUTE_SUM = "serving_compute_duration_seconds_sum"  # before the busy counter: summed per batch

CONFIG = """\
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: {max_batch}
input [ {{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ {inputs} ] }} ]
output [ {{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ {outputs} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay} }}
instance_group [ {{ count: {instances}, kind: {kind} }} ]
parameters {{ key: "cuda_graphs", value: {{ string_value: "{graphs}" }} }}
"""


def build_repository(root: Path, *, device: str = "cpu", delay_us: int = 2000, max_batch: int = 64,
                     instances: int = 1, cuda_graphs: bool = False) -> Path:
    """Script the MLP into ``<root>/mlp/1/model.pt`` beside its config.pbtxt; returns model.pt."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for i, (width_in, width_out) in enumerate(itertools.pairwise(DIMS)):
        layers += [torch.nn.Linear(width_in, width_out)] + ([torch.nn.ReLU()] if i < len(DIMS) - 2 else [])
    scripted = torch.jit.script(torch.nn.Sequential(*layers).eval())
    version = root / MODEL / "1"
    version.mkdir(parents=True)
    scripted.save(str(version / "model.pt"))
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    (root / MODEL / "config.pbtxt").write_text(CONFIG.format(
        name=MODEL, max_batch=max_batch, inputs=DIMS[0], outputs=DIMS[-1], delay=delay_us, instances=instances,
        kind=kind, graphs="true" if cuda_graphs else "false"))
    return version / "model.pt"


@dataclass
class Limit:
    """The model called in-process: rows per second and milliseconds per call."""

    batch: int
    threads: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    calls: int


def in_process_limit(model_file: Path, *, device: str = "cpu", batch: int = 64, threads: int = 1,
                     seconds: float = 5.0, warmup: int = 20, copies: bool = False) -> Limit:
    """The TorchScript file at ``batch`` rows under inference_mode with ``threads`` torch threads.

    On a GPU each call is followed by a synchronisation; with ``copies`` the input comes from
    and the output goes back to page-locked host memory, as a server's must.
    """
    target = torch.device(device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = torch.jit.load(str(model_file), map_location=target).eval()
        host = torch.randn(batch, DIMS[0])
        out = torch.empty(batch, DIMS[-1])
        if target.type == "cuda" and copies:
            host, out = host.pin_memory(), out.pin_memory()
        x = host if copies else host.to(target)

        def call() -> None:
            y = module(x.to(target, non_blocking=True))
            if copies:
                out.copy_(y, non_blocking=True)
            if target.type == "cuda":
                torch.cuda.synchronize(target)

        times: list[float] = []
        with torch.inference_mode():
            for _ in range(warmup):  # the profiling executor specialises after a few calls
                call()
            start = time.perf_counter()
            while time.perf_counter() - start < seconds or len(times) < 3:
                begin = time.perf_counter()
                call()
                times.append(time.perf_counter() - begin)
            elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    ms = np.asarray(times) * 1000
    return Limit(batch=batch, threads=threads, rows_per_s=len(times) * batch / elapsed,
                 p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)), calls=len(times))


@dataclass
class Endpoints:
    """Where a serve answers: what a load point needs."""

    http: str  # 127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    metrics: str  # http://127.0.0.1:PORT/metrics


@dataclass
class Serve(Endpoints):
    """A serve process that start_serve started, and the source tree it runs from."""

    process: ServerProcess
    tree: Path


def start_serve(repository: Path, workdir: Path, *, name: str = "serve", tree: Path = ROOT, device: str = "cpu",
                threads: int = 1, extra: tuple[str, ...] = ()) -> Serve:
    """``python -m serving`` run from ``tree`` (its working directory and PYTHONPATH, so that it imports
    that tree's package and no other), on free ports, waited for until ready."""
    argv = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--device", device,
            "--cpu-threads", str(threads), "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
            "--metrics-port", "0", *extra]
    process = ServerProcess(name, argv, workdir / f"{name.replace(' ', '-')}.log", env={"PYTHONPATH": str(tree)},
                            cwd=tree)
    try:
        match = process.wait_log(r"listening http=\S*:(\d+) grpc=\S*:(\d+) metrics=\S*:(\d+)", timeout=120)
        http, grpc, metrics = (f"127.0.0.1:{match.group(i)}" for i in (1, 2, 3))
        process.wait_ready(f"http://{http}/v2/health/ready", timeout=240)
    except BaseException:
        process.stop()
        raise
    return Serve(http, grpc, f"http://{metrics}/metrics", process, tree)


@dataclass
class Snapshot:
    """What one scrape of /metrics says about one model, and when it was taken."""

    at: float  # time.perf_counter() halfway through the scrape
    busy: dict[str, float]  # busy seconds by instance ("0", "1", ...)
    busy_source: str  # BUSY, or COMPUTE_SUM where serve has no busy counter yet
    batch_sum: float
    batch_count: float
    compute: float = 0.0  # COMPUTE_SUM, for a window whose first scrape came before the busy counter


def snapshot(metrics_url: str, model: str) -> Snapshot:
    """Scrape serve's /metrics once (bounded in bytes and time) for ``model``, all versions together."""
    begin = time.perf_counter()
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        raw = response.read(MAX_METRICS_BYTES + 1)
    at = (begin + time.perf_counter()) / 2
    if len(raw) > MAX_METRICS_BYTES:
        raise Unavailable(f"{metrics_url} sent more than {MAX_METRICS_BYTES} bytes; is that serve's metrics port?")
    return parse_snapshot(raw.decode("utf-8", errors="replace"), model, at)


def parse_snapshot(text: str, model: str, at: float = 0.0) -> Snapshot:
    """The busy seconds per instance and the batch-size sums of ``model`` in a Prometheus text exposition."""
    busy: dict[str, float] = {}
    compute = batch_sum = batch_count = 0.0
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("model") != model:
                    continue
                if sample.name == BUSY:
                    instance = sample.labels.get("instance", "0")
                    busy[instance] = busy.get(instance, 0.0) + sample.value
                elif sample.name == COMPUTE_SUM:
                    compute += sample.value
                elif sample.name == "serving_batch_size_sum":
                    batch_sum += sample.value
                elif sample.name == "serving_batch_size_count":
                    batch_count += sample.value
    except ValueError as exc:  # the parser's one complaint for text that is no exposition
        raise Unavailable(f"serve's /metrics did not parse: {' '.join(str(exc).split())[:200]}") from None
    if busy:
        return Snapshot(at, busy, BUSY, batch_sum, batch_count, compute)
    return Snapshot(at, {"0": compute}, COMPUTE_SUM, batch_sum, batch_count, compute)


@dataclass
class Window:
    """serve's side of a load point, between two scrapes taken inside it."""

    seconds: float
    busy: dict[str, float]  # busy fraction by instance: Δbusy / Δwall
    busy_source: str
    batch: float  # mean rows per batch
    rows_per_s: float  # rows computed per second, by serve's count
    batches: float = float("nan")  # batches computed in the window, all instances together

    @property
    def busy_mean(self) -> float:
        return sum(self.busy.values()) / len(self.busy) if self.busy else float("nan")

    @property
    def ms_per_batch(self) -> float:
        """Busy time per batch: beside the limit's time per call, it tells slower compute from idle gaps."""
        if not self.busy or not self.batches:
            return float("nan")
        return sum(self.busy.values()) * self.seconds / self.batches * 1000


def window(metrics_url: str, model: str, start: float, duration: float, margin: float) -> Window:
    """Scrape at ``start + margin`` and at ``start + duration - margin`` (``start`` in time.time())."""
    time.sleep(max(0.0, start + margin - time.time()))
    first = snapshot(metrics_url, model)
    time.sleep(max(0.0, start + duration - margin - time.time()))
    last = snapshot(metrics_url, model)
    return between(first, last)


def between(first: Snapshot, last: Snapshot) -> Window:
    seconds = last.at - first.at
    source = last.busy_source
    if source == first.busy_source:
        delta = {i: last.busy[i] - first.busy.get(i, 0.0) for i in last.busy}
    else:  # the busy counter appeared between the scrapes: both have the compute sum
        source, delta = COMPUTE_SUM, {"0": last.compute - first.compute}
    busy = {i: d / seconds for i, d in delta.items()} if seconds > 0 else {}
    count = last.batch_count - first.batch_count
    rows = last.batch_sum - first.batch_sum
    return Window(seconds, busy, source, rows / count if count else float("nan"),
                  rows / seconds if seconds > 0 else float("nan"), count)


@dataclass
class Measured:
    """One load point: the client's figures and serve's, for ``rows``-row requests."""

    transport: str  # http or grpc
    rows: int
    concurrency: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    failures: int
    window: Window | None
    detail: list[str] = field(default_factory=list)


def write_body(workdir: Path, rows: int) -> Path:
    """The JSON request of ``rows`` rows of 256 FP32 values (flat data, shape [rows, 256])."""
    data = np.random.default_rng(rows).standard_normal(rows * DIMS[0]).astype(np.float32)
    body = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [rows, DIMS[0]],
                        "data": [round(float(v), 4) for v in data]}]}
    path = workdir / f"request-{rows}.json"
    path.write_text(json.dumps(body))
    return path


def measure(serve: Endpoints, transport: str, rows: int, concurrency: int, duration: float, workdir: Path, *,
            processes: int = 2, warmup_rounds: int = 2, margin: float | None = None, model: str = MODEL) -> Measured:
    """One point: ``concurrency`` requests of ``rows`` rows in flight for ``duration`` seconds."""
    margin = min(1.0, duration / 5) if margin is None else margin
    if transport == "http":
        url = f"http://{serve.http}/v2/models/{model}/infer"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            start = time.time()
            load = pool.submit(hey, url, write_body(workdir, rows), concurrency, duration)
            try:
                served = window(serve.metrics, model, start, duration, margin)
            finally:
                point = load.result()
        return Measured(transport, rows, concurrency, point.rps * rows, point.p50_ms, point.p99_ms, point.failures,
                        served, point.detail)
    if transport != "grpc":
        raise ValueError(f"transport {transport!r}: use http or grpc")
    out = drive_grpc(serve, model, rows, concurrency, processes, duration, warmup_rounds, workdir, margin)
    return Measured(transport, rows, concurrency, out["rps"] * rows, out["p50_ms"], out["p99_ms"], out["failures"],
                    out["window"], out["errors"])


def drive_grpc(serve: Endpoints, model: str, rows: int, concurrency: int, processes: int, duration: float,
               warmup_rounds: int, workdir: Path, margin: float) -> dict:
    """``processes`` copies of grpc_load.py that start timing at one moment, serve scraped meanwhile."""
    scraped: list[Window | None] = []
    out = grpc_loads(serve.grpc, model, (rows, DIMS[0]), concurrency, processes, duration, warmup_rounds, workdir,
                     during=lambda start_at: scraped.append(window(serve.metrics, model, start_at, duration, margin)))
    if out["late_s"] > 0.05:
        out["errors"].append(f"a load process started timing {out['late_s']:.2f} s late")
    return {**out, "window": scraped[0] if scraped else None}


def grpc_loads(url: str, model: str, shape: tuple[int, ...], concurrency: int, processes: int, duration: float,
               warmup_rounds: int, workdir: Path, during: Callable[[float], object] | None = None) -> dict:
    """``processes`` copies of grpc_load.py (one connection per call) that start timing at one moment, their
    figures merged; ``during(start_at)`` runs while they load (a scrape of serve, say)."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    procs: list[subprocess.Popen[str]] = []
    try:
        for i, share in enumerate(shares):
            argv = [sys.executable, str(PROGRAMS / "grpc_load.py"), "--url", url, "--model", model,
                    "--shape", ",".join(map(str, shape)), "--concurrency", str(share), "--duration", str(duration),
                    "--connections", str(share),  # one per call, as hey: serve takes each connection's calls in turn
                    "--warmup", str(share * warmup_rounds), "--start-at", "stdin",
                    "--latencies", str(workdir / f"latencies-{i}.npy")]
            procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
        deadline = time.monotonic() + 120
        for proc in procs:  # each says "warm" once its warm-up is done
            assert proc.stdout is not None and proc.stderr is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "warm":
                why = proc.stderr.read() if proc.poll() is not None else "no word after 120 s"
                raise Unavailable(f"a gRPC load process did not warm up: {line.strip()} {' '.join(why.split())[-300:]}")
        start_at = time.time() + 0.5
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        if during is not None:
            during(start_at)
        outs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=duration + 120)
            try:
                outs.append(json.loads(stdout.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                raise Unavailable(f"a gRPC load process failed: {' '.join(stderr.split())[-300:]}") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    latencies = np.concatenate([np.load(workdir / f"latencies-{i}.npy") for i in range(len(shares))]) * 1000
    if latencies.size == 0:
        latencies = np.asarray([float("nan")])
    return {"rps": sum(o["rps"] for o in outs), "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "failures": sum(o["failures"] for o in outs),
            "errors": sorted({e for o in outs for e in o["errors"]}), "late_s": max(o["late_s"] for o in outs),
            "shares": shares}
