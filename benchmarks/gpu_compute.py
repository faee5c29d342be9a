"""gpu_bench.py's second table: the issue's compute-bound MLP on the GPU, serve against the model in-process.

The model, the limit, serve's start and each load point come from compute_points.py (the
same functions compute_bound.py measures the CPU with), so the GPU table and the CPU one
measure alike:

* the limit: the TorchScript MLP (256→2048→2048→16) at batch 64 on the GPU, with the same
  torch thread count as serve, a synchronisation after every call, compute only and with the
  copies from and to page-locked host memory (what a server must also do);
* serve: ``python -m serving --device cuda`` with one GPU instance (``max_batch_size: 64``,
  2 ms queue delay), once with CUDA graphs off and once on, each driven with 1-row and 8-row
  requests over HTTP (``hey``, JSON; skipped with a note where hey is not installed) and
  gRPC (processes of programs/grpc_load.py, raw tensors) at one concurrency; per point:
  rows/s, its ratio to the limit with copies, the busy fraction, the mean batch, p50 and p99.

On a CPU (``gpu_bench.py --device cpu``) the same flow runs without the CUDA graphs row.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from compute_points import BUSY, DIMS, Limit, Measured, build_repository, in_process_limit, measure, start_serve


@dataclass
class Settings:
    """What one compute-bound run measures, and for how long."""

    device: str  # cuda, cuda:N or cpu
    threads: int  # torch threads in-process and serve's --cpu-threads
    concurrency: int
    duration: float  # seconds per load point
    limit_seconds: float  # seconds per in-process measurement
    grpc_processes: int


def settings(device: str, quick: bool, threads: int = 1) -> Settings:
    """The full run (about 90 s on one GPU) or a smoke run (about 30 s)."""
    return Settings(device=device, threads=threads, concurrency=16 if quick else 128, duration=2.0 if quick else 5.0,
                    limit_seconds=0.5 if quick else 3.0, grpc_processes=2 if quick else 4)


def run(config: Settings, workdir: Path, say: Callable[[str], None]) -> str:
    """Measure the limit and every serve point; returns the Markdown section."""
    on_gpu = config.device.startswith("cuda")
    load_before = os.getloadavg()[0]
    limits: list[tuple[str, Limit]] = []
    points: list[tuple[bool, Measured]] = []
    notes: list[str] = []
    transports = ["http", "grpc"]
    if shutil.which("hey") is None:
        transports = ["grpc"]
        notes.append("- HTTP rows skipped: `hey` is not installed on this host (`apt-get install hey`)")
    for graphs in (False, True) if on_gpu else (False,):
        root = workdir / f"compute-{'graphs' if graphs else 'plain'}"
        model_file = build_repository(root / "models", device=config.device, cuda_graphs=graphs)
        if not graphs:
            for copies in (False, True) if on_gpu else (False,):
                say(f"  compute-bound limit, batch 64{' with copies' if copies else ''} ...")
                limits.append(("with host↔device copies" if copies else "compute only", in_process_limit(
                    model_file, device=config.device, batch=64, threads=config.threads,
                    seconds=config.limit_seconds, copies=copies)))
            if on_gpu:
                torch.cuda.empty_cache()  # leave the GPU's memory to serve
        say(f"  starting serve on the MLP, CUDA graphs {'on' if graphs else 'off'} ...")
        serve = start_serve(root / "models", root, device=config.device, threads=config.threads)
        try:
            for transport in transports:
                for rows in (1, 8):
                    point = measure(serve, transport, rows, config.concurrency, config.duration, root,
                                    processes=config.grpc_processes)
                    say(f"    {transport} {rows}-row: {point.rows_per_s:,.0f} rows/s, p99 {point.p99_ms:.2f} ms")
                    points.append((graphs, point))
        finally:
            serve.process.stop()
    notes.append(f"- Load average (1 min) {load_before:.1f} before the table and {os.getloadavg()[0]:.1f} after it")
    return render(config, limits, points, notes)


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def render(config: Settings, limits: list[tuple[str, Limit]], points: list[tuple[bool, Measured]],
           notes: list[str]) -> str:
    """The table: the limit's rows first, then serve's points, each against the limit a server can reach."""
    on_gpu = config.device.startswith("cuda")
    reference = limits[-1][1].rows_per_s if limits else float("nan")  # with copies on a GPU
    lines = ["| measured | transport | rows/request | CUDA graphs | rows/s | / limit | busy | mean batch | p50 ms "
             "| p99 ms | failed |", "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|"]
    for kind, limit in limits:
        lines.append(f"| in-process, batch {limit.batch}, {kind} | - | - | - | {fmt(limit.rows_per_s)} | "
                     f"{fmt(limit.rows_per_s / reference, 2)} | - | {limit.batch} | {fmt(limit.p50_ms, 3)} | "
                     f"{fmt(limit.p99_ms, 3)} | - |")
    sources = set()
    for graphs, point in points:
        window = point.window
        busy = window.busy_mean if window is not None else float("nan")
        batch = window.batch if window is not None else float("nan")
        if window is not None:
            sources.add(window.busy_source)
        lines.append(f"| serve, c={point.concurrency} | {point.transport} | {point.rows} | "
                     f"{'on' if graphs else 'off'} | **{fmt(point.rows_per_s)}** | "
                     f"**{fmt(point.rows_per_s / reference, 2)}** | {fmt(busy, 2)} | {fmt(batch, 1)} | "
                     f"{fmt(point.p50_ms, 2)} | {fmt(point.p99_ms, 2)} | {point.failures} |")
        label = f"{point.transport} {point.rows}-row, graphs {'on' if graphs else 'off'}"
        notes += [f"- {label}: {detail}" for detail in point.detail]
    where = "GPU" if on_gpu else "CPU"
    against = "the in-process limit with copies" if on_gpu else "the in-process limit"
    busy_note = ("Δ`serving_instance_busy_seconds_total` / Δwall" if sources <= {BUSY} else
                 "Δ`serving_compute_duration_seconds_sum` / Δwall (this serve has no busy counter)")
    head = [f"The issue's compute-bound MLP ({'→'.join(map(str, DIMS))}, TorchScript, `max_batch_size: 64`, "
            f"2 ms queue delay, one {where} instance), {config.threads} torch thread(s) in-process and in serve "
            f"(`--cpu-threads`); serve's points {config.duration:g} s each at concurrency {config.concurrency}, "
            f"gRPC over {config.grpc_processes} load process(es). `/ limit` is against {against}; busy is "
            f"{busy_note} and mean batch Δsum / Δcount of `serving_batch_size`, both from two scrapes of "
            "/metrics inside each point; p50/p99 are the client's (per call for the in-process rows).", ""]
    return "\n".join([*head, *lines, "", *notes])
