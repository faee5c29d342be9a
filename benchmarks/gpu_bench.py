"""serve on a GPU: a ResNet-18-style model and the compute-bound MLP, in-process and behind serve.

    python benchmarks/gpu_bench.py                        # on the first GPU (about 3 minutes)
    python benchmarks/gpu_bench.py --write                # and rewrite the GPU section of RESULTS.md
    python benchmarks/gpu_bench.py --device cpu --quick   # the whole flow on a CPU, tiny durations

The model is built here (BasicBlocks as in ResNet-18, input [3, 64, 64] FP32, 1000 classes,
random weights from a fixed seed), traced with torch.jit.trace and saved into a temporary
model repository with a config.pbtxt (pytorch_libtorch, max_batch_size 64, dynamic batching,
KIND_GPU). Then:

1. the limit: the saved TorchScript file called in-process under torch.inference_mode at each
   batch size, with a synchronisation after every call, without and with the host-to-device
   and device-to-host copies (from and to page-locked memory);
2. serve: ``python -m serving --device cuda`` on that repository, driven over gRPC at a fixed
   concurrency by several load processes (programs/grpc_load.py: tritonclient.grpc.aio, raw
   tensors, one image per request) that share one timed window; serve's mean batch size,
   queue time and compute time per batch come from its /metrics.

3. the compute-bound table (gpu_compute.py): the issue's MLP on the GPU, serve with CUDA graphs
   off and on against the model in-process, 1-row and 8-row requests over HTTP and gRPC, with
   serve's busy fraction and mean batch (``--no-compute-bound`` leaves it out).

It prints the two Markdown tables; benchmarks/gpu_check.sh runs it on a GPU host.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gpu_compute
import numpy as np
import torch
from compute_points import grpc_loads, start_serve
from harness import Unavailable, machine, scrape_histogram, write_section
from resnet import CLASSES, ResNet18
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"
MODEL = "resnet"
IMAGE = (3, 64, 64)


CONFIG = """\
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 64
input [ {{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ {c}, {h}, {w} ] }} ]
output [ {{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ {classes} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay} }}
instance_group [ {{ count: {instances}, kind: KIND_GPU }} ]
"""


def build_repository(root: Path, delay_us: int, instances: int) -> Path:
    """Trace the model into <root>/resnet/1/model.pt with its config.pbtxt; returns model.pt."""
    torch.manual_seed(0)
    model = ResNet18().eval()
    with torch.no_grad():
        for module in model.modules():  # BatchNorm statistics that keep activations in range
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_var is not None and module.running_mean is not None  # tracked by default
                module.running_var.uniform_(0.5, 1.5)
                module.running_mean.uniform_(-0.1, 0.1)
        traced = torch.jit.trace(model, torch.randn(1, *IMAGE), check_trace=False)
    version = root / MODEL / "1"
    version.mkdir(parents=True)
    traced.save(str(version / "model.pt"))
    (root / MODEL / "config.pbtxt").write_text(CONFIG.format(
        name=MODEL, c=IMAGE[0], h=IMAGE[1], w=IMAGE[2], classes=CLASSES, delay=delay_us, instances=instances))
    return version / "model.pt"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], object], device: torch.device, seconds: float, warmup: int) -> np.ndarray:
    """Seconds per call, each call followed by a synchronisation, for at least ``seconds``."""
    for _ in range(warmup):  # cuDNN's choice of kernels, the profiling executor's specialisation
        call()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        begin = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - begin)
    return np.asarray(times)


def in_process(model_file: Path, device: torch.device, batches: list[int], seconds: float,
               warmup: int) -> list[dict]:
    """The TorchScript file at each batch size: compute only and, on a GPU, with the copies."""
    module = torch.jit.load(str(model_file), map_location=device).eval()
    rows = []
    for batch in batches:
        x = torch.randn(batch, *IMAGE, device=device)
        with torch.inference_mode():
            compute = time_calls(functools.partial(module, x), device, seconds, warmup)
            row = {"batch": batch, "compute": compute}
            if device.type == "cuda":
                copied = functools.partial(round_trip, module, torch.randn(batch, *IMAGE).pin_memory(),
                                           torch.empty(batch, CLASSES).pin_memory(), device)
                row["copies"] = time_calls(copied, device, seconds, max(2, warmup // 4))
        rows.append(row)
        say(f"  in-process batch {batch:>2}: {batch / np.median(compute):9.0f} images/s, "
            f"{np.median(compute) * 1000:7.3f} ms/batch")
    return rows


def round_trip(module: torch.jit.ScriptModule, host_in: torch.Tensor, host_out: torch.Tensor,
               device: torch.device) -> None:
    """Page-locked input to the device, the model, the output back to page-locked memory."""
    host_out.copy_(module(host_in.to(device, non_blocking=True)), non_blocking=True)


def check_answer(grpc_url: str, model_file: Path, device: torch.device) -> float:
    """Largest absolute difference between serve's answer and the in-process one, for one image."""
    import tritonclient.grpc as grpcclient
    x = np.random.default_rng(1).standard_normal((1, *IMAGE)).astype(np.float32)
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        request = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        served = client.infer(MODEL, [request]).as_numpy("OUTPUT__0")
    finally:
        client.close()
    module = torch.jit.load(str(model_file), map_location=device).eval()
    with torch.inference_mode():
        expected = module(torch.from_numpy(x).to(device)).cpu().numpy()
    return float(np.max(np.abs(served - expected)))


def drive(grpc_url: str, concurrency: int, processes: int, duration: float, warmup_rounds: int,
          workdir: Path) -> dict:
    """Run ``processes`` copies of grpc_load.py that start timing at one moment; merge their figures."""
    return grpc_loads(grpc_url, MODEL, (1, *IMAGE), concurrency, processes, duration, warmup_rounds, workdir)


def mean(after: tuple[float, float], before: tuple[float, float]) -> float:
    count = after[1] - before[1]
    return (after[0] - before[0]) / count if count else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def render(args: argparse.Namespace, limit: list[dict], served: dict) -> str:
    device = args.device_name
    lines = ["| measured | batch | images/s | p50 ms | p99 ms |", "|---|--:|--:|--:|--:|"]
    for kind, label in (("compute", "in-process, compute only"), ("copies", "in-process, with host↔device copies")):
        for row in limit:
            if kind in row:
                t = row[kind]
                lines.append(f"| {label} | {row['batch']} | {fmt(row['batch'] / np.median(t))} | "
                             f"{fmt(np.median(t) * 1000, 3)} | {fmt(np.percentile(t, 99) * 1000, 3)} |")
    shares = " + ".join(map(str, served["shares"]))
    lines.append(f"| serve, gRPC, {args.concurrency} clients ({shares}), 1 image each | "
                 f"{fmt(served['batch'], 1)} (mean) | **{fmt(served['rps'])}** | {fmt(served['p50_ms'], 2)} | "
                 f"{fmt(served['p99_ms'], 2)} |")
    compute = {row["batch"]: row["batch"] / np.median(row.get("copies", row["compute"])) for row in limit}
    nearest = None if math.isnan(served["batch"]) else min(compute, key=lambda b: abs(b - served["batch"]))
    notes = ["", f"In-process rows: p50/p99 are per call (one batch); serve's row: per request, seen by the "
             f"client, over {args.duration:g} s.",
             f"- serve's mean queue time {fmt(served['queue_ms'], 2)} ms and compute time per batch "
             f"{fmt(served['compute_ms'], 2)} ms (input, inference, output), from its /metrics",
             f"- serve's answer for one image against the in-process one: max abs difference "
             f"{served['max_diff']:.2e}"]
    if nearest is not None:
        kind = "with copies" if "copies" in limit[0] else "compute only"
        notes.append(f"- serve / in-process ({kind}) at batch {nearest}, the closest to serve's mean batch: "
                     f"**{served['rps'] / compute[nearest]:.2f}**")
    if served["failures"] or served["errors"]:
        notes.append(f"- {served['failures']} failed request(s): {'; '.join(served['errors'])}")
    if served["late_s"] > 0.05:
        notes.append(f"- a load process started timing {served['late_s']:.2f} s late")
    return "\n".join([f"{device}: {MODEL} (ResNet-18 layout, [3, 64, 64] FP32 in, {CLASSES} classes out), "
                      "TorchScript.", "", *lines, *notes])


def header(args: argparse.Namespace) -> str:
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):  # where a copy of the section goes is no part of the run
        if arg == "--markdown":
            argv = argv[:i] + argv[i + 2:]
            break
        if arg.startswith("--markdown="):
            argv = argv[:i] + argv[i + 1:]
            break
    command = " ".join(["python", "benchmarks/gpu_bench.py", *argv])
    cuda = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if args.device == "cuda" else ""
    return "\n".join([
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Device: {args.device_name}; host: {machine()}",
        f"- Command: `{command}`",
        f"- Software: torch {torch.__version__}{cuda}, Python {platform.python_version()}; "
        f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, cudnn.benchmark={torch.backends.cudnn.benchmark} "
        "(torch's defaults, in both the in-process runs and serve)",
        f"- serve: max_queue_delay_microseconds {args.delay_us}, {args.instances} instance(s); "
        f"{args.processes} load process(es) on the same host; {torch.get_num_threads()} torch CPU thread(s) "
        "in-process and in serve (its default: the cores less one)"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batches 1,4, short points, concurrency 8 over 2 processes")
    parser.add_argument("--batches", help="in-process batch sizes (default 1,2,4,8,16,32,64)")
    parser.add_argument("--seconds", type=float, help="seconds per in-process measurement (default 1)")
    parser.add_argument("--concurrency", type=int, help="gRPC requests in flight against serve (default 64)")
    parser.add_argument("--processes", type=int, help="load processes sharing the concurrency (default 4)")
    parser.add_argument("--duration", type=float, help="seconds of load against serve (default 10)")
    parser.add_argument("--delay-us", type=int, default=100, help="serve's max_queue_delay_microseconds (100)")
    parser.add_argument("--instances", type=int, default=1, help="model instances on the GPU (default 1)")
    parser.add_argument("--no-compute-bound", dest="compute_bound", action="store_false",
                        help="leave out the compute-bound MLP table (gpu_compute.py)")
    parser.add_argument("--write", action="store_true", help="rewrite the GPU section of benchmarks/RESULTS.md")
    parser.add_argument("--markdown", type=Path, help="also save the section to this file")
    args = parser.parse_args()
    if args.quick and args.write:
        parser.error("--write records full runs only; drop --quick")
    quick = args.quick
    args.batches = [int(b) for b in (args.batches or ("1,4" if quick else "1,2,4,8,16,32,64")).split(",")]
    args.seconds = args.seconds or (0.3 if quick else 1.0)
    args.concurrency = args.concurrency or (8 if quick else 64)
    args.processes = min(args.processes or (2 if quick else 4), args.concurrency)
    args.duration = args.duration or (3.0 if quick else 10.0)
    args.warmup = 5 if quick else 20  # in-process calls before timing each batch size
    args.warmup_rounds = 1 if quick else 10  # rounds of requests each load process sends before timing
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, workdir: Path) -> str:
    device = torch.device(args.device)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - 1))  # as serve: the cores less one
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise Unavailable("torch sees no CUDA device; use --device cpu for a smoke run")
        args.device_name = torch.cuda.get_device_name(device)
    else:
        args.device_name = "CPU"
    say(f"building and tracing {MODEL} ...")
    model_file = build_repository(workdir / "models", args.delay_us, args.instances)
    say(f"in-process on {args.device_name} ...")
    limit = in_process(model_file, device, args.batches, args.seconds, args.warmup)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU's memory to serve
    say("starting serve ...")
    serve = start_serve(workdir / "models", workdir, device=args.device, threads=0)  # 0: serve's default
    process, grpc_url, metrics = serve.process, serve.grpc, serve.metrics
    try:
        max_diff = check_answer(grpc_url, model_file, device)
        before = {name: scrape_histogram(metrics, name, MODEL) for name in
                  ("serving_batch_size", "serving_queue_duration_seconds", "serving_compute_duration_seconds")}
        say(f"driving serve over gRPC: {args.concurrency} in flight, {args.processes} processes, "
            f"{args.duration:g} s ...")
        served = drive(grpc_url, args.concurrency, args.processes, args.duration, args.warmup_rounds, workdir)
        after = {name: scrape_histogram(metrics, name, MODEL) for name in before}
    finally:
        status = process.stop()
        if status not in (0, -15, None):
            say(f"serve exited with status {status} on SIGTERM; its log ends: {process.log.read_text()[-2000:]}")
    served.update(max_diff=max_diff, batch=mean(after["serving_batch_size"], before["serving_batch_size"]),
                  queue_ms=1000 * mean(after["serving_queue_duration_seconds"],
                                       before["serving_queue_duration_seconds"]),
                  compute_ms=1000 * mean(after["serving_compute_duration_seconds"],
                                         before["serving_compute_duration_seconds"]))
    say(f"  serve: {served['rps']:.0f} images/s, p50 {served['p50_ms']:.2f} ms, mean batch {served['batch']:.1f}")
    section = header(args) + "\n\n" + render(args, limit, served)
    if args.compute_bound:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        say("compute-bound MLP ...")
        section += "\n\n" + gpu_compute.run(gpu_compute.settings(args.device, args.quick), workdir, say)
    return section


def main() -> int:
    args = parse_args()
    # SIGTERM (from timeout, say) unwinds like Ctrl-C, so the finally blocks stop serve and the load processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="shadowserve-gpu-bench-"))
    try:
        section = run(args, workdir)
    except Unavailable as exc:
        say(f"cannot run the GPU benchmark: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(section)
    if args.markdown:
        args.markdown.write_text(section + "\n")
    if args.write:
        write_section(RESULTS, START, END, section)
        say(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
